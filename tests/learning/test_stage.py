"""StageEnv (a stage per step), the size-free stage policy, its training, agents and searches."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest

from dora_rl.envs.instance import Instance
from dora_rl.envs.stage import StageEnv, stage_actions_for_plan
from dora_rl.errors import AgentError, NoFeasiblePlan
from dora_rl.synthetic import random_scenario


def _big(n=64, B=200, seed=3):
    return random_scenario(np.random.default_rng(seed), max_devices=n, min_devices=n, n_blocks=B)


def test_stage_env_passes_both_checkers():
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_env(StageEnv(max_devices=8, max_blocks=32), skip_render_check=True)
        sb3_check_env(StageEnv(max_devices=8, max_blocks=32))


@pytest.mark.parametrize("size", [(4, 32, 40), (16, 64, 6), (64, 200, 2)])
def test_masks_never_allow_an_infeasible_step(size):
    D, Bm, episodes = size
    gen = {"min_blocks": 10, "max_blocks": Bm} if Bm > 32 else {}
    env = StageEnv(max_devices=D, max_blocks=Bm, seed=5, min_devices=2, gen_kwargs=gen)
    rng = np.random.default_rng(0)
    for ep in range(episodes):
        env.reset(seed=ep)
        done = False
        while not done:
            m = env.action_masks()
            assert m.any()
            _, _, done, _, info = env.step(int(rng.choice(np.flatnonzero(m))))
            assert not info["masked_action"]
        assert info["feasible"], info["plan"]


def test_every_dora_plan_is_expressible():
    from dora_rl.planners import run_planner

    env = StageEnv(max_devices=8, max_blocks=32, seed=11)
    n = 0
    for i in range(40):
        inst = env.source.instance(i)
        try:
            res = run_planner("dora", inst.scenario, inst.cost)
        except NoFeasiblePlan:
            continue
        n += 1
        env.reset(options={"scenario": inst})
        for a in stage_actions_for_plan(res.plan, inst.scenario, 8, 32):
            assert env.action_masks()[a]
            _, _, done, _, info = env.step(a)
        assert done
        assert info["objective"] == pytest.approx(res.metrics.objective(inst.objective), rel=1e-9)
    assert n >= 10


def test_oversized_scenario_is_refused_by_the_env():
    env = StageEnv(max_devices=4, max_blocks=32)
    with pytest.raises(Exception, match="max_devices=4"):
        env.reset(options={"scenario": _big(8, 20)})


@pytest.fixture(scope="module")
def small_policy():
    import torch
    from sb3_contrib import MaskablePPO

    from dora_rl.learning.stage_policy import StagePolicy

    torch.manual_seed(0)
    return MaskablePPO(StagePolicy, StageEnv(max_devices=8, max_blocks=32), n_steps=32, batch_size=32, seed=0,
                       device="cpu")


def test_same_network_runs_on_2_and_64_devices(small_policy):
    import torch
    from sb3_contrib import MaskablePPO

    from dora_rl.learning.stage_actor import StageNumpyActor
    from dora_rl.learning.stage_policy import StagePolicy

    actor = StageNumpyActor(small_policy.policy)
    for sc in (random_scenario(np.random.default_rng(1), max_devices=2, min_devices=2), _big(64, 120)):
        n, B = sc.cluster.n, sc.profile.n_blocks
        env = StageEnv(scenario=sc, max_devices=n, max_blocks=B)
        obs, _ = env.reset(seed=0)
        mask = env.action_masks()
        lg = actor.logits(obs, mask)
        assert np.isfinite(lg[mask]).all() and np.isneginf(lg[~mask]).all()
        # the torch policy built for this size with the same weights gives the same logits
        big = MaskablePPO(StagePolicy, env, n_steps=32, batch_size=32, device="cpu")
        big.policy.load_state_dict(small_policy.policy.state_dict())
        with torch.no_grad():
            lt, _ = big.policy.any_size({k: torch.as_tensor(v)[None] for k, v in obs.items()})
        assert np.allclose(lt[0].numpy()[mask], lg[mask], atol=1e-4)


def test_numpy_actor_scores_a_batch_as_each_state_alone(small_policy):
    # the numpy actor computes the lookahead term only at allowed closes: a batch of states
    # (different masks) must give each state's own logits, -inf exactly where masked (in
    # float64, where the batch's other matmul paths round alike to 1e-9)
    from dora_rl.learning.stage_actor import StageNumpyActor

    actor = StageNumpyActor(small_policy.policy, "float64")
    env = StageEnv(scenario=_big(16, 60), max_devices=16, max_blocks=60)
    obs0, _ = env.reset(seed=0)
    m0 = env.action_masks()
    obs1, *_ = env.step(int(np.flatnonzero(m0)[0]))
    m1 = env.action_masks()
    if env.done:
        obs1, m1 = obs0, m0
    batch = {k: np.stack([obs0[k], obs1[k]]) for k in obs0 if k != "action_mask"}
    lb = actor.logits(batch, np.stack([m0, m1]))
    for row, o, m in ((lb[0], obs0, m0), (lb[1], obs1, m1)):
        one = actor.logits(o, m)
        assert np.isneginf(row[~m]).all() and np.allclose(row[m], one[m], rtol=0, atol=1e-9)


def test_fit_crops_each_batch_without_changing_the_logits(small_policy):
    """Imitation crops a mini-batch to its largest instance (padding per batch): the cropped
    logits of every allowed action, re-indexed, equal the padded ones."""
    import torch

    from dora_rl.learning import stage_training as st

    env = StageEnv(max_devices=12, max_blocks=40, seed=2, min_devices=3, gen_max_devices=7,
                   gen_kwargs={"min_blocks": 6, "max_blocks": 30})
    data, rng = st.Data(), np.random.default_rng(0)
    for ep in range(6):
        obs, _ = env.reset(seed=ep)
        done = False
        while not done:
            m = env.action_masks()
            a = int(rng.choice(np.flatnonzero(m)))
            data.add(obs, m, a, 0.0)
            obs, _, done, _, _ = env.step(a)
    t = data.tensors()
    idx = np.arange(len(data))
    o, m, a, _, _ = st._crop(t, idx)
    assert o["devices"].shape[1] <= 7 and o["blocks"].shape[1] <= 30
    with torch.no_grad():
        full, _ = small_policy.policy.any_size(t[0])
        crop, _ = small_policy.policy.any_size(o)
    for i in idx:
        assert int(m[i].sum()) == int(t[1][i].sum())
        assert float(crop[i, a[i]]) == pytest.approx(float(full[i, t[2][i]]), abs=1e-4)
        assert np.allclose(np.sort(crop[i][m[i]].numpy()), np.sort(full[i][t[1][i]].numpy()), atol=1e-4)


def test_two_workers_collect_the_same_data_as_one(small_policy):
    """A task is one training instance named by (family, seed, index): the teacher's and
    DAgger's data do not depend on the process that ran it."""
    import time

    from dora_rl.learning import stage_collect as sc
    from dora_rl.learning import stage_training as st
    from dora_rl.learning.stage_actor import StageNumpyActor

    fam = st.FAMILIES["small"]
    actor = StageNumpyActor(small_policy.policy)
    far = time.time() + 600
    for fn, tasks in ((sc.teach_one, [("small", fam, 0, i) for i in range(4)]),
                      (sc.dagger_one, [(actor, "small", fam, 0, i, 2, far) for i in range(3)])):
        runs = []
        for workers in (1, 2):
            got = []
            sc.run_tasks(fn, iter(tasks), far, workers, got.append)
            runs.append({r[1]: r for r in got if r is not None})
        assert sorted(runs[0]) == sorted(runs[1]) and len(runs[0]) >= 2
        n_states = 0
        for i, r in runs[0].items():
            a, b = r[2], runs[1][i][2]
            assert a.acts == b.acts and a.equiv == b.equiv and r[3:] == runs[1][i][3:]
            assert all(np.array_equal(x, y) for k in st.OBS for x, y in zip(a.obs[k], b.obs[k]))
            n_states += len(a)
        assert n_states > 0


def _blas_threads(i):
    from threadpoolctl import threadpool_info

    return i, {d["num_threads"] for d in threadpool_info() if d["user_api"] == "blas"}


def test_workers_run_blas_on_one_thread():
    """The teacher's and DAgger's worker processes start with numpy's BLAS on one thread
    (each would otherwise start one thread per core beside the other workers)."""
    import time

    from dora_rl.learning import stage_collect as sc

    got = []
    sc.run_tasks(_blas_threads, iter([(0,), (1,)]), time.time() + 600, 2, got.append)
    assert sorted(i for i, _ in got) == [0, 1] and all(t == {1} for _, t in got)


def test_a_seconds_long_imitation_beats_the_uniform_policy(small_policy):
    from dora_rl.learning import stage_training as st
    from dora_rl.learning.search import greedy_complete
    from dora_rl.learning.stage_actor import StageNumpyActor
    from dora_rl.learning.stage_search import UniformActor

    fam = {"small": st.FAMILIES["small"]}
    datas = {"small": st.Data()}
    env = st.make_env(fam["small"], seed=0)
    for i in range(40):
        inst = env.source.instance(i)
        best = st.best_known(inst)
        st.replay_plan(env, inst, best[0], datas["small"], best[2])
    st.fit(small_policy.policy, datas, seconds=20, epochs=30, seed=0)
    actor = StageNumpyActor(small_policy.policy)
    ev = st.make_env(fam["small"], seed=1)
    u_net, u_uni = [], []
    for i in range(25):
        inst = ev.source.instance(i)
        for a, acc in ((actor, u_net), (UniformActor(), u_uni)):
            ev.reset(options={"scenario": inst})
            acc.append(greedy_complete(a, [ev])[0][2])
    assert np.mean(u_net) > np.mean(u_uni) + 0.1


def test_a_phase_gets_its_share_of_the_time_left_so_unused_time_passes_on():
    from dora_rl.learning.stage_run import PHASES, allotment

    shares = {"teacher": 0.25, "imitate": 0.15, "dagger": 0.55, "ppo": 0.05}     # the recipe of sessions 11-25
    assert allotment(2520, shares, PHASES, "teacher") == pytest.approx(630)      # 2520 * .25 / 1
    assert allotment(1890, shares, PHASES, "imitate") == pytest.approx(378)      # 1890 * .15 / .75
    # imitation stopped after 226 of its 378 s: DAgger gets .55 / .60 of the 1664 s left, not 1386
    assert allotment(1664, shares, PHASES, "dagger") == pytest.approx(1664 * 0.55 / 0.60)
    assert allotment(100, shares, PHASES, "ppo") == pytest.approx(100)           # the last phase: all that is left
    no_dagger = ("teacher", "imitate", "ppo")                                    # a scenario run
    assert allotment(200, shares, no_dagger, "imitate") == pytest.approx(200 * 0.15 / 0.20)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from dora_rl.learning.stage_run import train_stage

    out = tmp_path_factory.mktemp("stage")
    # the optional add lookahead on (the shipped agent has it off): every test below then runs it too
    return train_stage(out, max_minutes=0.25, progress=False, env_kwargs={"families": ["small"]},
                       recipe={"policy_kwargs": {"add_lookahead": True}, "fit_threads": 2})


def test_budget_bound_training_saves_a_loadable_agent(trained):
    from sb3_contrib import MaskablePPO

    from dora_rl.learning.agents import load_agent
    from dora_rl.learning.stage_agent import StageAgent

    assert (trained / "model.zip").is_file() and (trained / "config.yml").is_file()
    agent = load_agent(trained)
    assert isinstance(agent, StageAgent)
    assert agent.config["trained_range"]["devices"] == [2, 8]
    assert agent.config["policy_kwargs"] == {"add_lookahead": True}
    plain = MaskablePPO.load(str(trained / "model.zip"), device="cpu")        # plain SB3, no custom objects
    assert plain.policy.action_net.add_look and agent.model.policy.action_net.add_look
    sel = agent.config["selection"]
    assert sel["kept"] in [h["at"] for h in sel["history"]] and sel["history"][0]["at"] == "imitation"


def _weights_equal(a, b) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_warm_start_fine_tunes_the_init_agents_network(trained, tmp_path):
    """train_stage(init=AGENT): PPO only (FINE_TUNE), the agent's policy kwargs, its weights
    the selection's first checkpoint (kept exactly when nothing beats them), the agent started
    from and both runs' time in the config; with too little budget for PPO the saved network
    is the init agent's, weight for weight."""
    from dora_rl.learning.agents import load_agent
    from dora_rl.learning.stage_run import train_stage

    base = load_agent(trained)
    folder = train_stage(tmp_path / "ft", max_minutes=0.45, progress=False, seed=4, init=trained,
                         env_kwargs={"families": ["small"]})
    agent = load_agent(folder)
    c = agent.config
    assert set(c["phases"]) == {"ppo"} and c["phases"]["ppo"]["result"]["timesteps"]["small"] >= 128
    assert c["policy_kwargs"] == {"add_lookahead": True} and c["init"]["agent"] == str(trained)
    assert c["total_train_seconds"] == pytest.approx(c["train_seconds"] + base.config["train_seconds"], abs=0.2)
    hist = c["selection"]["history"]
    assert hist[0]["at"] == "init" and hist[-1]["at"] == "ppo"
    same = _weights_equal(agent.policy.state_dict(), base.policy.state_dict())
    assert same == (c["selection"]["kept"] == "init")
    short = load_agent(train_stage(tmp_path / "short", max_minutes=0.2, progress=False, init=trained,
                                   env_kwargs={"families": ["small"]}))
    assert short.config["phases"] == {} and short.config["selection"]["kept"] == "init"
    assert _weights_equal(short.policy.state_dict(), base.policy.state_dict())


def test_warm_start_errors_are_one_line(trained, tmp_path):
    """`dora train --init`: a missing agent, a recipe asking for another network, or a
    non-stage environment: one line on stderr, exit code 2, nothing written."""
    for env, extra, says in (
            ("dora_rl/PartitionStage-v0", ["--init", str(tmp_path / "nowhere")], "not found"),
            ("dora_rl/PartitionStage-v0", ["--init", str(trained), "--recipe", '{"policy_kwargs": {}}'],
             "keeps the agent's network"),
            ("dora_rl/Partition-v0", ["--init", str(trained)], "--init applies to the stage policy")):
        r = subprocess.run([sys.executable, "-m", "dora_rl.cli", "train", env, *extra, "--out",
                            str(tmp_path / "out"), "--max-minutes", "0.1", "--no-progress"],
                           check=False, capture_output=True, text=True)
        assert r.returncode == 2, r.stderr
        assert says in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert not (tmp_path / "out").exists()


def test_ppo_checkpoints_are_offered_to_the_selection_during_the_phase(tmp_path):
    """recipe ppo_checkpoints=3: the selection sees PPO's weights after its first and second
    thirds of the phase (at a rollout's end) and at its end, after imitation's."""
    import yaml

    from dora_rl.learning.stage_run import train_stage

    folder = train_stage(tmp_path, max_minutes=0.5, progress=False, env_kwargs={"families": ["small"]},
                         recipe={"shares": {"teacher": 0.1, "imitate": 0.1, "dagger": 0.0, "ppo": 0.8},
                                 "dagger_rounds": 0, "ppo_checkpoints": 3})
    ats = [h["at"] for h in yaml.safe_load((folder / "config.yml").read_text())["selection"]["history"]]
    assert ats[0] == "imitation" and ats[-1] == "ppo"
    assert 1 <= len(ats) - 2 <= 2 and all(a in ("ppo 1/3", "ppo 2/3") for a in ats[1:-1])
    assert ats[1:-1] == sorted(ats[1:-1])


def test_ppo_takes_turns_on_each_family_with_one_policy(tmp_path, monkeypatch):
    """recipe ppo_families: PPO runs on both families' envs (each a MaskablePPO of its own
    padding, 8 x 32 and 12 x 40), every model's rollouts and updates on the one policy that
    is saved; the saved agent loads."""
    import yaml

    from dora_rl.learning import stage_run
    from dora_rl.learning import stage_training as st
    from dora_rl.learning.agents import load_agent
    from dora_rl.synthetic import random_scenario

    mid = {"max_devices": 12, "max_blocks": 40, "min_devices": 9, "gen_max_devices": 12,
           "gen_kwargs": {"min_blocks": 25, "max_blocks": 40}}
    monkeypatch.setattr(st, "FAMILIES", {"small": st.FAMILIES["small"], "mid": mid})
    seen = []
    from sb3_contrib import MaskablePPO

    orig = MaskablePPO.learn

    def learn(self, *a, **k):
        seen.append((self.observation_space["devices"].shape[0], id(self.policy)))
        return orig(self, *a, **k)
    monkeypatch.setattr(MaskablePPO, "learn", learn)
    folder = stage_run.train_stage(tmp_path, max_minutes=0.75, progress=False, seed=3,
                                   recipe={"shares": {"teacher": 0.15, "imitate": 0.1, "dagger": 0.0, "ppo": 0.75},
                                           "dagger_rounds": 0, "ppo_families": {"small": 1, "mid": 1},
                                           "ppo_turn": 8.0, "ppo_pool": 4})
    steps = yaml.safe_load((folder / "config.yml").read_text())["phases"]["ppo"]["result"]["timesteps"]
    assert steps["small"] >= 128 and steps["mid"] >= 128
    assert {d for d, _ in seen} == {8, 12} and len({p for _, p in seen}) == 1
    order = [d for d, _ in seen]
    assert any(a != b for a, b in zip(order, order[1:]))       # turns alternate
    agent = load_agent(folder)
    assert agent.config["trained_range"]["devices"] == [2, 12]
    assert agent.plan(random_scenario(np.random.default_rng(4), max_devices=5, min_devices=5))[1].feasible


def test_training_keeps_the_best_checkpoint_on_the_selection_instances(small_policy, monkeypatch):
    import copy

    import torch

    from dora_rl.learning.stage_run import _Selection

    pol = small_policy.policy
    before = copy.deepcopy(pol.state_dict())
    sel = _Selection(pol, {"small": {}}, None, {}, seed=0, max_minutes=42)
    # (compliance, mean utility) per checkpoint: compliance first, then utility -> "c"
    scores = iter([(0.5, -1.0), (0.6, -2.0), (0.6, -1.5), (0.4, 0.0)])
    monkeypatch.setattr(sel, "_evaluate", lambda: {"small": dict(zip(("qoe_ok", "mean_utility"), next(scores)))})
    snaps = []
    try:
        for at in "abcd":
            with torch.no_grad():
                for p in pol.parameters():
                    p.add_(0.01)
            snaps.append(copy.deepcopy(pol.state_dict()))
            sel(at)
        rec = sel.restore()
        assert rec["kept"] == "c" and [h["at"] for h in rec["history"]] == list("abcd")
        now = pol.state_dict()
        assert all(torch.equal(now[k], snaps[2][k]) for k in now)
        assert not all(torch.equal(now[k], snaps[3][k]) for k in now)
    finally:
        pol.load_state_dict(before)


def test_fit_runs_on_the_threads_asked_and_restores_the_setting(small_policy, monkeypatch):
    import torch

    from dora_rl.learning import stage_training as st

    seen = []
    monkeypatch.setattr(st, "_fit", lambda *a: seen.append(torch.get_num_threads()) or {})
    before = torch.get_num_threads()
    st.fit(small_policy.policy, {}, 1.0, threads=before + 1)
    assert seen == [before + 1] and torch.get_num_threads() == before


def test_stage_agent_plans_any_size_with_every_search(trained):
    from dora_rl.learning.agents import load_agent
    from dora_rl.learning.stage_agent import OutOfRangeWarning
    from dora_rl.learning.stage_search import MODES

    agent = load_agent(trained)
    sc = random_scenario(np.random.default_rng(4), max_devices=5, min_devices=5)
    res = {m: agent.plan(sc, search=m, budget_ms=30)[1] for m in MODES}
    for m in MODES:
        assert res[m].feasible
    with pytest.warns(OutOfRangeWarning, match="2-8 devices"):
        plan, m = agent.plan(_big(20, 60))
    assert m.feasible
    with pytest.raises(AgentError, match="budget_ms"):
        agent.plan(sc, search="sample", budget_ms=0)


def test_restart_search_is_never_worse_than_its_first_polish(trained):
    """`restart` polishes the greedy plan first (converged well within the budget on 3-5
    devices), then only replaces it by a better polished sample."""
    from dora_rl.envs.instance import Instance
    from dora_rl.learning.agents import load_agent
    from dora_rl.learning.search import search_key
    from dora_rl.learning.stage_search import decode

    agent = load_agent(trained)
    for seed in (5, 6, 7):
        sc = random_scenario(np.random.default_rng(seed), max_devices=5, min_devices=3)
        inst = Instance(sc, sc.cluster.n)
        pol = decode(agent.actor(), agent.env_for(inst), "polish")
        res = decode(agent.actor(), agent.env_for(inst), "restart", budget_ms=300)
        assert res[1].feasible
        assert search_key(res, inst.objective) <= search_key(pol, inst.objective)


def test_stage_agent_errors_say_which(trained, tmp_path):
    import shutil

    import yaml

    from dora_rl.learning.agents import load_agent

    bad = tmp_path / "corrupt"
    shutil.copytree(trained, bad)
    (bad / "model.zip").write_bytes(b"not a zip")
    with pytest.raises(AgentError, match="corrupt"):
        load_agent(bad)
    other = tmp_path / "layout"
    shutil.copytree(trained, other)
    cfg = yaml.safe_load((other / "config.yml").read_text())
    cfg["block_features"] = 99
    (other / "config.yml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(AgentError, match="observation layout"):
        load_agent(other)
    (tmp_path / "missing").mkdir()
    with pytest.raises(AgentError, match="model.zip is missing"):
        load_agent(tmp_path / "missing")


def test_cli_budget_must_be_positive():
    r = subprocess.run([sys.executable, "-m", "dora_rl.cli", "plan", "smart_home", "--planner", "ppo",
                        "--budget-ms", "0"], check=False, capture_output=True, text=True)
    assert r.returncode == 2
    assert "--budget-ms must be > 0" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_env_kwargs_parse_json_and_pairs():
    from dora_rl.commands.learning import parse_env_kwargs

    assert parse_env_kwargs('{"max_devices": 16}') == {"max_devices": 16}
    assert parse_env_kwargs("max_devices=16,max_blocks=64") == {"max_devices": 16, "max_blocks": 64}
    with pytest.raises(AgentError, match="k=v"):
        parse_env_kwargs("max_devices")


@pytest.mark.parametrize("env,recipe,says", [
    ("dora_rl/PartitionStage-v0", "bogus=1,dagger_rounds=0", "unknown key(s) bogus"),
    ("dora_rl/PartitionStage-v0", '{"ppo_families": {"huge": 1}}', "unknown family huge"),
    ("dora_rl/PartitionStage-v0", "ppo_reward=ratio", "unknown reward 'ratio'"),
    ("dora_rl/PartitionStage-v0", "[1, 2]", "a JSON object is needed"),
    ("dora_rl/Partition-v0", "dagger_rounds=0", "--recipe applies to the stage policy"),
])
def test_cli_recipe_errors_are_one_line(tmp_path, env, recipe, says):
    """`dora train --recipe`: an unknown key, an unknown PPO family, JSON that is not an
    object, or a recipe for an env that has none: one line on stderr, exit code 2, before
    any training (nothing written)."""
    r = subprocess.run([sys.executable, "-m", "dora_rl.cli", "train", env, "--recipe", recipe, "--out",
                        str(tmp_path / "out"), "--max-minutes", "0.1", "--no-progress"],
                       check=False, capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert says in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_cli_recipe_reaches_the_training_run(tmp_path, monkeypatch):
    """`--recipe` in both forms reaches `train_stage` as the overrides, values parsed."""
    import json

    from dora_rl import cli
    from dora_rl.learning import stage_run

    got = []

    def fake(out, **kw):
        got.append(kw["recipe"])
        folder = tmp_path / "agent"
        folder.mkdir(exist_ok=True)
        (folder / "results.json").write_text(json.dumps({"train_seconds": 1.0, "selection": {"kept": "ppo"}}))
        return folder
    monkeypatch.setattr(stage_run, "train_stage", fake)
    for text in ('{"ppo_families": {"small": 2, "large": 1}, "ppo_turn": 30}', "ppo_turn=30,dagger_rounds=0"):
        assert cli.main(["train", "dora_rl/PartitionStage-v0", "--recipe", text, "--no-progress"]) == 0
    assert got == [{"ppo_families": {"small": 2, "large": 1}, "ppo_turn": 30}, {"ppo_turn": 30, "dagger_rounds": 0}]


def test_ablation_rows_are_in_the_bench_output(trained):
    from bench.bench_ablation import run

    out = run(trained, n=2, per_size=0, timeout=20, budget_ms=20, progress=False)
    rows = out["heldout"]["summary"]
    for k in ("net_greedy", "net_polish", "net_rollout", "net_sample", "net_beam", "net_restart", "lookahead_greedy",
              "uniform_greedy", "uniform_polish", "uniform_rollout", "uniform_restart", "fastest", "fastest_polish",
              "dora", "best_baseline", "oracle"):
        assert k in rows, k
    for k in ("net_polish_at_budget vs fastest_polish_at_budget", "net_restart vs fastest_polish_at_budget",
              "net_restart vs uniform_restart"):
        assert k in out["heldout"]["duels"], k


def test_large_sets_run_the_guided_search_with_doras_own_time(trained, monkeypatch):
    """The equal-budget duel against `dora`: the guided search is given the time `dora` took
    on that instance (the bench's budget where `dora` gave no plan)."""
    import bench.bench_ablation as ba
    from dora_rl.learning.agents import load_agent
    from dora_rl.learning.evaluation import held_out_scenarios

    given = []
    monkeypatch.setattr(ba, "guided_at", lambda agent, sc, budget_ms: given.append(budget_ms) or {"ok": True})
    sc = held_out_scenarios(1)[0]
    rows = ba.run_set(load_agent(trained), [sc], ("dora",), 20, 20, "t", progress=False, at_dora_time=True)
    dora = rows[0]["m"]["dora"]
    assert given == [dora.get("ms", 20)] and rows[0]["m"][ba.AT_DORA] == {"ok": True}
    given.clear()
    ba.run_set(load_agent(trained), [sc], ("dora",), 20, 20, "t", progress=False)
    assert given == []


def test_decision_time_rows_are_the_median_of_several_timings(trained):
    """bench_ablation's TIMED rows: `runs` timings per instance, the row's ms their median and
    ms_first the first; `dora`'s only where it is the first planner (the large sets); one
    timing (no runs kept) with runs=1."""
    import bench.bench_ablation as ba
    from dora_rl.learning.agents import load_agent
    from dora_rl.learning.evaluation import held_out_scenarios

    agent, sc = load_agent(trained), held_out_scenarios(4)[3]        # one dora plans
    m = ba.run_set(agent, [sc], ("dora",), 20, 20, "t", progress=False, runs=3)[0]["m"]
    assert "error" not in m["dora"]
    for k in ba.TIMED:
        runs = m[k]["ms_runs"]
        assert len(runs) == 3 and abs(m[k]["ms"] - sorted(runs)[1]) < 1e-3 and abs(m[k]["ms_first"] - runs[0]) < 1e-3
    m = ba.run_set(agent, [sc], ("oracle", "dora"), 20, 20, "t", progress=False, runs=2)[0]["m"]
    assert len(m["net_greedy"]["ms_runs"]) == 2 and "ms_runs" not in m["dora"]
    m = ba.run_set(agent, [sc], ("dora",), 20, 20, "t", progress=False)[0]["m"]
    assert not any("ms_runs" in m[k] for k in ba.TIMED)


def test_validation_relative_counts_where_any_agent_complies():
    """bench/validate_agents.py --relative: the denominator is the instances where any agent
    complies (not every instance), and the geo-mean is over the first agent's objective
    where both comply (hand-computed: B 12 / A 10 on instance 0 only)."""
    from bench.validate_agents import relative

    a = [(True, 10.0), (False, 5.0), (False, 1.0), (True, 4.0)]
    b = [(True, 12.0), (True, 6.0), (False, 1.0), (False, 3.0)]
    ra, rb = relative(["A", "B"], [a, b])
    assert (ra["n"], ra["compliant"], ra["geo_vs_first"], ra["n_ratio"]) == (3, 2, 1.0, 2)
    assert (rb["n"], rb["compliant"], rb["geo_vs_first"], rb["n_ratio"]) == (3, 2, 1.2, 1)


def test_bench_duel_orders_plans_as_the_planners_prefer_them():
    """bench_ablation._better: QoE first, then feasibility (an infeasible plan's lower
    objective does not win), then the objective beyond a 0.1 % tolerance."""
    from bench.bench_ablation import _better

    ok, miss = {"ok": True, "feasible": True, "obj": 10.0}, {"ok": False, "feasible": True, "obj": 1.0}
    unfit = {"ok": False, "feasible": False, "obj": 0.5}
    assert _better(ok, miss) == 1 and _better(miss, ok) == -1
    assert _better(miss, unfit) == 1 and _better(unfit, miss) == -1
    assert _better(ok, {**ok, "obj": 10.005}) == 0 and _better(ok, {**ok, "obj": 10.02}) == 1


def test_bench_checks_the_equal_budget_duels_of_the_guided_search():
    from bench.bench_ablation import checks

    def row(ms, comp=1.0, geo=1.0):
        return {"compliance": comp, "geo_ratio": geo, "median_ms": ms}

    def duel(w, l_):
        return {"wins": w, "losses": l_, "ties": 5 - w - l_}

    out = {"heldout": {"summary": {"net_greedy": row(2.0)}},
           "large": {"16x50": {"summary": {"net_greedy": row(3.0), "fastest_polish": row(8.0), "dora": row(100.0)},
                               "duels": {"net_restart vs fastest_polish_at_budget": duel(2, 1),
                                         "net_restart vs dora": duel(1, 1)}}}}
    c = checks(out)["large"]["16x50"]
    assert c["guided_vs_polish_met"] is True and c["guided_vs_dora_met"] is False       # a tie is not a win
    # with the guided search given dora's own time, that duel decides (the fixed budget's is only shown)
    out["large"]["16x50"]["duels"]["net_restart_at_dora_time vs dora"] = duel(2, 1)
    assert checks(out)["large"]["16x50"]["guided_vs_dora_met"] is True
    out["large"]["16x50"]["duels"]["net_restart vs dora"] = duel(3, 0)
    out["large"]["16x50"]["duels"]["net_restart_at_dora_time vs dora"] = duel(1, 2)
    assert checks(out)["large"]["16x50"]["guided_vs_dora_met"] is False
    assert c["time_vs_polish_met"] is False and c["time_vs_dora_met"] is True          # 3 > 8 / 3; 3 <= 100 / 10
    assert "single_timing" not in c
    # the same targets on the first timings alone, beside (not instead of) the medians'
    s = out["large"]["16x50"]["summary"]
    s["net_greedy"]["median_ms_first"], s["fastest_polish"]["median_ms_first"] = 2.5, 8.0
    s["dora"]["median_ms_first"] = 20.0
    c = checks(out)["large"]["16x50"]
    assert c["time_vs_polish_met"] is False and c["single_timing"]["time_vs_polish_met"] is True     # 2.5 <= 8 / 3
    assert c["single_timing"]["time_vs_dora_met"] is False                                           # 2.5 > 20 / 10


def test_instance_completion_table_matches_the_greedy():
    sc = random_scenario(np.random.default_rng(9), max_devices=6, min_devices=6)
    inst = Instance(sc, 6)
    taken = {0}
    rows = [1, 2, 3]
    G = inst.completion_table(taken, rows)
    for i, d in enumerate(rows):
        for r in range(inst.B + 1):
            assert min(G[i, r], inst.B) == min(inst.greedy(r, taken | {d}), inst.B)


def _shipped_stage():

    import yaml

    from dora_rl.resources import agents_dir

    folder = agents_dir() / "dora_rl__Partition-v0"
    cfg = yaml.safe_load((folder / "config.yml").read_text()) if (folder / "config.yml").is_file() else {}
    return folder if (cfg or {}).get("action_space") == "stage" else None


@pytest.mark.skipif(_shipped_stage() is None, reason="the shipped generalist is not a stage agent")
def test_shipped_agent_loads_in_plain_sb3_and_reproduces_results():
    import json

    import gymnasium as gym
    import yaml
    from sb3_contrib import MaskablePPO

    from dora_rl import envs
    from dora_rl.scenario import load_scenario

    envs.register_all()
    folder = _shipped_stage()
    cfg = yaml.safe_load((folder / "config.yml").read_text())
    res = json.loads((folder / "results.json").read_text())
    assert res["check"] and "ablation" in res
    model = MaskablePPO.load(str(folder / "model.zip"), device="cpu")       # plain SB3
    for c in res["check"]:
        env = gym.make("dora_rl/PartitionStage-v0", scenario=load_scenario(c["scenario"]),
                       max_devices=cfg["max_devices"], max_blocks=cfg["max_blocks"])
        obs, _ = env.reset(seed=c["seed"])
        done = False
        while not done:
            a, _ = model.predict(obs, action_masks=env.unwrapped.action_masks(), deterministic=True)
            obs, _, done, _, info = env.step(a)
        assert info["objective"] == pytest.approx(c["objective"], rel=1e-6), c["scenario"]
        assert info["qoe_ok"] == c["qoe_ok"]



def test_the_group_rule_adds_the_marked_members_then_closes_on_the_last():
    """`with_group` by hand on 3 devices x 2 blocks (block 1 ends the plan; actions 0-5 the
    closes d * 2 + j, 6-8 the adds): with devices 1 and 2 marked, the marked add the network
    ranks higher (device 2's, action 8, logit 1 against 0.5) is raised to the best allowed
    logit (5, action 0) + 1e-3; with only device 2 marked, its ending close (action 5), or,
    marked 0.75 (a stage that ends at r = 1: 0.5 + 0.5 r / Bm), its close after block 0
    (action 4); with the ending close masked, nothing; with no mark or a weight of 0, nothing. numpy and torch
    agree. Then greedy on docs/cost-model.md's worked example 4 with a random policy (the
    objective term on): the plan ends on the group the key marks, 68.64 ms."""
    import torch
    from sb3_contrib import MaskablePPO

    from dora_rl.envs.stage import StageEnv
    from dora_rl.learning.search import greedy_complete
    from dora_rl.learning.stage_actor import StageNumpyActor
    from dora_rl.learning.stage_lookahead import NGX, with_group
    from dora_rl.learning.stage_policy import StagePolicy
    from tests.toy import HUB, scenario

    xg = np.zeros(NGX)
    logits = np.array([5.0, 1.0, 2.0, 0.0, -1.0, -2.0, 3.0, 0.5, 1.0])
    allowed = np.ones(9, dtype=bool)

    def rule(group, allowed=allowed, w=(32.0, 32.0)):
        got = with_group(logits, np.array(group), xg, w, np, allowed)
        t = with_group(torch.tensor(logits)[None], torch.tensor(group)[None], torch.tensor(xg)[None], w, torch,
                       torch.tensor(allowed)[None])[0].numpy()
        assert np.allclose(got, t)
        return got

    def raised(k):
        out = logits.copy()
        out[k] = 5.0 + 1e-3
        return out

    assert np.allclose(rule([0.0, 1.0, 1.0]), raised(8))
    assert np.allclose(rule([0.0, 0.0, 1.0]), raised(5))
    assert np.allclose(rule([0.0, 0.0, 0.75]), raised(4))       # 0.5 + 0.5 r / Bm: the stage ends at r = 1
    no5 = allowed.copy()
    no5[5] = False
    assert np.allclose(rule([0.0, 0.0, 1.0], no5), logits)
    assert np.allclose(rule([0.0, 0.0, 0.0]), logits)
    assert np.allclose(rule([0.0, 1.0, 1.0], w=(0.0, 32.0)), logits)
    env = StageEnv(max_devices=8, max_blocks=32)
    model = MaskablePPO(StagePolicy, env, n_steps=32, batch_size=32, seed=3, device="cpu",
                        policy_kwargs={"objective_term": [2.0, 3.0]})
    hub = StageEnv(scenario=scenario(HUB), max_devices=8, max_blocks=32)
    hub.reset(seed=0)
    plan, m, _ = greedy_complete(StageNumpyActor(model.policy), [hub])[0]
    assert [s.devices for s in plan.stages] == [("boardA", "boardB")] and m.latency_ms == pytest.approx(68.64)


def test_v3_to_v6_stage_agents_load_with_the_new_keys_added_and_plan_as_v7(tmp_path):
    """Observation v4 only adds "relay_w", v5 only "two_stage", v6 only "promise" and v7 only
    "group", which the encoder does not read: the shipped network saved with v3's to v6's
    space and config loads (`add_new_keys`), its space gets the keys, and it plans the
    presets as the v7 agent does; a v2 config is still refused."""
    import shutil

    import yaml
    from gymnasium import spaces
    from sb3_contrib import MaskablePPO

    from dora_rl.learning.agents import load_agent
    from dora_rl.scenario import load_scenario

    folder = _shipped_stage()
    a6 = load_agent(folder)
    for version, gone in ((3, ("relay_w", "two_stage", "promise", "group")), (4, ("two_stage", "promise", "group")),
                          (5, ("promise", "group")), (6, ("group",))):
        old = tmp_path / f"v{version}"
        shutil.copytree(folder, old)
        model = MaskablePPO.load(str(folder / "model.zip"), device="cpu")
        space = spaces.Dict({k: v for k, v in model.observation_space.spaces.items() if k not in gone})
        model.observation_space = model.policy.observation_space = space
        model.save(str(old / "model.zip"))
        cfg = yaml.safe_load((old / "config.yml").read_text())
        (old / "config.yml").write_text(yaml.safe_dump({**cfg, "obs_version": version}, sort_keys=False))
        assert not set(gone) & set(MaskablePPO.load(str(old / "model.zip"), device="cpu").observation_space.spaces)
        a = load_agent(old)
        assert set(gone) <= set(a.model.observation_space.spaces)
        for name in ("smart_home", "traffic_analytics"):
            sc = load_scenario(name)
            (p, m), (p6, m6) = a.plan(sc), a6.plan(sc)
            assert p.to_dict() == p6.to_dict() and m.objective(sc.qoe.objective) == m6.objective(sc.qoe.objective)
    (old / "config.yml").write_text(yaml.safe_dump({**cfg, "obs_version": 2}, sort_keys=False))
    with pytest.raises(AgentError, match="layout v2"):
        load_agent(old)

def test_teacher_phase_draws_the_families_by_their_weights(monkeypatch):
    from itertools import islice

    from dora_rl.learning import stage_collect as sc
    from dora_rl.learning.stage_training import Data

    def first_twelve(fn, tasks, deadline, workers, on_result, tick=None):
        for name, _, _, i in islice(tasks, 12):
            on_result((name, i, Data(), True, False))

    monkeypatch.setattr(sc, "run_tasks", first_twelve)
    fams = {"small": {}, "large": {}}
    start = {"small": 0, "large": 100}
    stats = sc.teacher_phase(fams, {"small": Data(), "large": Data()}, 1.0, 0, False, start,
                             weights={"small": 5})
    # cycles of 5 small + 1 large (a family the weights leave out counts 1)
    assert stats["small"]["episodes"] == 10 and stats["large"]["episodes"] == 2
    assert start == {"small": 10, "large": 102}


def test_ctrl_c_still_saves_a_loadable_agent(tmp_path, monkeypatch):
    from dora_rl.learning import stage_collect as sc
    from dora_rl.learning.agents import load_agent
    from dora_rl.learning.stage_run import train_stage

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(sc, "teacher_phase", interrupted)
    folder = train_stage(tmp_path, max_minutes=0.5, progress=False, env_kwargs={"families": ["small"]})
    agent = load_agent(folder)
    assert agent.config["interrupted"] is True and "imitate" not in agent.config["phases"]


def test_stage_card_has_metadata_usage_and_checks(trained, tmp_path):
    import json
    import shutil

    from dora_rl.learning.stage_card import main

    folder = tmp_path / "agent"
    shutil.copytree(trained, folder)
    assert main([str(folder)]) == 0
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: stable-baselines3") and "MaskablePPO.load" in card
    assert "action_masks" in card
    kept = json.loads((folder / "results.json").read_text())["selection"]["kept"]
    assert f"best checkpoint (after imitation, each DAgger round or PPO) on selection instances planned greedily " \
           f"(kept: {kept})" in card
    res = json.loads((folder / "results.json").read_text())
    assert {c["scenario"] for c in res["check"]} >= {"smart_home", "traffic_analytics", "edge_cluster"}


def test_stage_card_quotes_the_64x200_time_target():
    """The 64 x 200 decision-time target (<= 50 ms CPU) is read off the bench's `plan`
    entry: 49.9 is met, 50.1 is not, and no line without that size."""
    from dora_rl.learning.stage_card import plan_time_line

    def entry(ms):
        return {"64x200": {"median_cpu_ms": ms, "median_ms": ms + 1.0}}

    assert "**met** (median 49.9 ms CPU, 50.9 ms wall" in plan_time_line(entry(49.9))[0]
    assert "**NOT met** (median 50.1 ms CPU" in plan_time_line(entry(50.1))[0]
    assert plan_time_line({"8x50": {"median_cpu_ms": 1.0, "median_ms": 1.0}}) == [] == plan_time_line(None)


def test_stage_card_leaves_out_duels_that_compared_nothing():
    """Without `--old-agent` the bench's duel against the previous network compares no
    instance (0/0/0); the card lists only the duels that compared some."""
    from dora_rl.learning.stage_card import _held

    duels = {"net_greedy vs v1_greedy": {"wins": 0, "losses": 0, "ties": 0},
             "net_restart vs dora": {"wins": 0, "losses": 0, "ties": 5},
             "net_restart vs uniform_restart": {"wins": 1, "losses": 2, "ties": 0}}
    assert [k for k, _ in _held(duels)] == ["net_restart vs dora", "net_restart vs uniform_restart"]


@pytest.mark.skipif(_shipped_stage() is None, reason="the shipped generalist is not a stage agent")
def test_polish_also_starts_from_the_fastest_device(monkeypatch):
    """edge_cluster: the planner's default (search=polish) also polishes from the fastest
    device and keeps the better plan. With the session-8 masks the network + polish missed
    QoE there; with the session-10 masks it polishes to a compliant 687 ms plan, and the
    fastest device's polish to a compliant 602 ms one, which must be returned. Stood in for
    the network's side: its greedy plan without the two-stage and group rules (which misses
    QoE; with the rules, since session 33, the network alone complies there)."""
    import dora_rl.learning.stage_actor as stage_actor
    from dora_rl.learning.agents import load_agent
    from dora_rl.scenario import load_scenario

    agent = load_agent(_shipped_stage())
    sc = load_scenario("edge_cluster")
    with monkeypatch.context() as mp:
        mp.setattr(stage_actor, "with_two_stage", lambda logits, *a, **k: logits)
        mp.setattr(stage_actor, "with_group", lambda logits, *a, **k: logits)
        mp.setattr(stage_actor.StageNumpyActor, "ruled", lambda self, env: None)     # the group rule's closes
        greedy = agent.rollouts(sc, search="greedy")
    assert not greedy[0][1].qoe_ok and agent.rollouts(sc, search="greedy")[0][1].qoe_ok
    monkeypatch.setattr(type(agent), "rollouts", lambda self, *a, **k: list(greedy))
    plan, m = agent.plan(sc, search="polish")
    assert m.qoe_ok
    assert [(s.start, s.end, s.devices) for s in plan.stages] == [(0, 7, ("agx1",)), (7, 14, ("agx2",))]
    monkeypatch.undo()
    plan2, m2 = agent.plan(sc, search="polish")      # the network's own polish is a candidate beside it
    assert m2.qoe_ok and m2.latency_ms <= m.latency_ms + 1e-9


@pytest.mark.skipif(_shipped_stage() is None, reason="the shipped generalist is not a stage agent")
def test_float32_actor_decodes_the_float64_plans():
    """The planning actor runs in float32 (the precision the network was trained in; half a
    64 x 200 decision's time): its logits equal float64's to 1e-3 at every allowed action and
    greedy decoding picks the same plan, on 12 held-out instances of 2-6 devices and 3 of 16-24
    devices (the bench's 290 card and validation instances: docs/learning.md)."""
    from dora_rl.learning.agents import load_agent
    from dora_rl.learning.evaluation import held_out_scenarios
    from dora_rl.learning.stage_actor import StageNumpyActor
    from dora_rl.learning.stage_search import decode

    agent = load_agent(_shipped_stage())
    a32, a64 = StageNumpyActor(agent.policy), StageNumpyActor(agent.policy, "float64")
    assert a32.dtype == "float32"
    scs = held_out_scenarios(12) + [_big(n, B) for n, B in ((16, 60), (20, 80), (24, 40))]
    for sc in scs:
        inst = Instance(sc, sc.cluster.n)
        if not inst.completable:
            continue
        env = agent.env_for(inst)
        mask = env._mask
        l32, l64 = a32.logits(env.observe(), mask), a64.logits(env.observe(), mask)
        assert l32.dtype == np.float64 and np.isneginf(l32[~mask]).all()
        assert np.abs(l32[mask] - l64[mask]).max() < 1e-3, sc.name
        p32, p64 = (decode(a, agent.env_for(inst), "greedy")[0].to_dict() for a in (a32, a64))
        assert p32 == p64, sc.name


@pytest.mark.skipif(_shipped_stage() is None, reason="the shipped generalist is not a stage agent")
def test_plan_runs_blas_on_one_thread(monkeypatch):
    """`agent.plan` decodes with numpy's BLAS on one thread (the card's "one core") and gives
    the caller's thread count back: with the pool set to 2 outside, 1 inside decoding."""
    from threadpoolctl import threadpool_limits

    from dora_rl.learning import stage_search
    from dora_rl.learning.agents import load_agent

    agent = load_agent(_shipped_stage())
    seen, decode = [], stage_search.decode

    def spy(*a, **k):
        seen.append(_blas_threads(None)[1])
        return decode(*a, **k)

    monkeypatch.setattr(stage_search, "decode", spy)
    with threadpool_limits(2, user_api="blas"):
        agent.plan(_big(8, 20), search="polish")
        after = _blas_threads(None)[1]
    assert len(seen) == 2 and all(s == {1} for s in seen)
    assert after == {2}


def test_one_blas_thread_reaches_a_blas_loaded_after_its_first_use():
    """scipy.linalg loads its own OpenBLAS beside numpy's: a limit taken after that import
    holds both (in a fresh process, so that the import comes after the first limit)."""
    import os
    import subprocess
    import sys

    code = ("from threadpoolctl import threadpool_info\n"
            "from dora_rl.learning.stage_actor import one_blas_thread\n"
            "with one_blas_thread():\n    pass\n"
            "import scipy.linalg\n"
            "with one_blas_thread():\n"
            "    print(sorted({d['num_threads'] for d in threadpool_info() if d['user_api'] == 'blas'}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "OPENBLAS_NUM_THREADS": "2"})
    assert out.stdout.strip() == "[1]"


def test_the_two_stage_rule_takes_a_two_stage_plan_faster_than_every_ending_close():
    """`with_two_stage` by hand on 2 devices x 3 blocks (block 2 ends the plan; actions 0-5
    the closes d * 3 + j, 6-7 the adds): the ending closes' entries 0.9 and 0.8 set the bar
    0.8; the least non-ending entry, 0.5 at (device 0, block 1) = action 1, is below it, so
    action 1 is raised to the best allowed logit + 1e-3; with actions 1 and 6 masked the
    choice is 0.7 (action 4), a masked action never chosen nor counted in the top. With no
    entry below the bar: the network's choice (the add, action 6) stands, also under a
    promise; a promise with the network choosing a close raises the best ending close
    (action 5); the network choosing an ending close more than 0.05 above the bar (action 2,
    0.9) is switched to action 5, one within 0.05 (0.84) is not. With no ending close
    allowed, the least entry is raised over the network's close, not over its add. A weight of 0 for the
    objective (latency, or energy by the objective's flag) leaves the logits alone. numpy
    and torch agree."""
    import torch

    from dora_rl.learning.stage_lookahead import _IS_END, NBL, NBX, NGL, NGX, with_two_stage

    xb = np.zeros((3, NBX))
    xb[2, _IS_END], xb[:, NBL] = 1.0, 1.0
    xg = np.zeros(NGX)
    two = np.array([[1.0, 0.5, 0.9], [0.8, 0.7, 0.8]])
    flat = np.array([[1.0, 0.85, 0.9], [0.8, 0.81, 0.8]])             # no entry below the bar
    logits = np.array([0.0, -5.0, 3.0, 1.0, 2.0, 4.0, 6.0, -1.0])
    allowed = np.ones(8, dtype=bool)
    w = (32.0, 32.0)

    def rule(two=two, xg=xg, allowed=allowed, promise=None, w=w, logits=logits):
        got = with_two_stage(logits, two, xb, xg, w, np, allowed, promise)
        t = with_two_stage(torch.tensor(logits)[None], torch.tensor(two)[None], torch.tensor(xb)[None],
                           torch.tensor(xg)[None], w, torch, torch.tensor(allowed)[None],
                           None if promise is None else torch.tensor(promise)[None])[0].numpy()
        assert np.allclose(got, t)
        return got

    def raised(k, top, logits=logits):
        out = logits.copy()
        out[k] = top + 1e-3
        return out

    assert np.allclose(rule(), raised(1, 6.0))
    no6 = allowed.copy()
    no6[[1, 6]] = False
    assert np.allclose(rule(allowed=no6), raised(4, 4.0))
    energy = xg.copy()
    energy[NGL + 1] = 1.0
    assert np.allclose(rule(xg=energy, w=(32.0, 0.0)), logits) and np.allclose(rule(w=(0.0, 32.0)), logits)
    assert np.allclose(rule(xg=energy, w=(0.0, 32.0)), raised(1, 6.0))
    promise = np.array([0.0, 1.0])
    assert np.allclose(rule(two=flat), logits) and np.allclose(rule(two=flat, promise=promise), logits)
    close_first = logits.copy()
    close_first[3] = 7.0                                                # the network picks a non-ending close
    assert np.allclose(rule(two=flat, logits=close_first), close_first)
    assert np.allclose(rule(two=flat, promise=promise, logits=close_first), raised(5, 7.0, close_first))
    end_first = logits.copy()
    end_first[2] = 7.0                                                  # the network picks device 0's ending
    assert np.allclose(rule(two=flat, logits=end_first), raised(5, 7.0, end_first))
    near = np.array([[1.0, 0.85, 0.84], [0.8, 0.81, 0.8]])
    assert np.allclose(rule(two=near, logits=end_first), end_first)
    # no ending close allowed (actions 2 and 5 masked: no bar): the least non-ending entry
    # (action 1) is raised over the network's close, not over its add (action 6)
    no_end = allowed.copy()
    no_end[[2, 5]] = False
    assert np.allclose(rule(allowed=no_end, logits=close_first), raised(1, 7.0, close_first))
    assert np.allclose(rule(allowed=no_end), logits)
