"""Environments: checkers, determinism, masks, expressiveness, speed (fast: < 30 s)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import dora_rl.envs
from dora_rl.envs.partition import PartitionEnv, actions_for_plan
from dora_rl.synthetic import random_scenario


def _rollout(env, seed, rng=None, policy="first"):
    obs, _ = env.reset(seed=seed)
    traj = [obs]
    done = False
    r = 0.0
    info = {}
    while not done:
        mask = env.action_masks()
        allowed = np.flatnonzero(mask)
        a = int(allowed[0]) if rng is None else int(rng.choice(allowed))
        obs, r, term, trunc, info = env.step(a)
        done = term or trunc
        traj.append(obs)
    return traj, r, info


def test_registered_ids():
    for env_id in ("dora_rl/Partition-v0", "dora_rl/Adapt-v0", "dora_rl/Partition-smart_home-v0",
                   "dora_rl/Partition-traffic_analytics-v0", "dora_rl/Partition-edge_cluster-v0",
                   "dora_rl/Adapt-smart_home-v0"):
        assert env_id in gym.registry, env_id


@pytest.mark.parametrize("env_id", ["dora_rl/Partition-v0", "dora_rl/Partition-traffic_analytics-v0"])
def test_partition_checkers(env_id):
    env = gym.make(env_id).unwrapped
    gym_check_env(env, skip_render_check=True)
    sb3_check_env(gym.make(env_id).unwrapped, warn=False)


def test_adapt_checkers():
    gym_check_env(gym.make("dora_rl/Adapt-traffic_analytics-v0").unwrapped, skip_render_check=True)
    sb3_check_env(gym.make("dora_rl/Adapt-v0").unwrapped, warn=False)


@pytest.mark.parametrize("env_id", ["dora_rl/Partition-v0", "dora_rl/Adapt-v0"])
def test_deterministic_under_seed(env_id):
    a, b = gym.make(env_id).unwrapped, gym.make(env_id).unwrapped
    for seed in (0, 7):
        ra, rb = np.random.default_rng(seed), np.random.default_rng(seed)
        obs_a, _ = a.reset(seed=seed)
        obs_b, _ = b.reset(seed=seed)
        for _ in range(200):
            for k in obs_a:
                np.testing.assert_array_equal(obs_a[k], obs_b[k])
            ma, mb = a.action_masks(), b.action_masks()
            np.testing.assert_array_equal(ma, mb)
            act = int(ra.choice(np.flatnonzero(ma)))
            assert act == int(rb.choice(np.flatnonzero(mb)))
            obs_a, r1, t1, u1, _ = a.step(act)
            obs_b, r2, t2, u2, _ = b.step(act)
            assert (r1, t1, u1) == (r2, t2, u2)
            if t1 or u1:
                break


def test_masks_never_allow_infeasible_plans():
    """Random masked rollouts on many synthetic instances: every finished plan is valid
    and fits in memory (up to 8 devices)."""
    env = PartitionEnv(seed=3)
    rng = np.random.default_rng(0)
    for seed in range(300):
        _, r, info = _rollout(env, seed, rng)
        plan, m, u = env.result
        inst = env.inst
        inst.cost.validate(plan)
        assert m.feasible, (seed, m.violations, plan.to_dict())
        assert not info["masked_action"]
        assert r == pytest.approx(u)


@pytest.mark.parametrize("preset", ["smart_home", "traffic_analytics", "edge_cluster"])
def test_masks_on_presets(preset):
    env = gym.make(f"dora_rl/Partition-{preset}-v0").unwrapped
    rng = np.random.default_rng(1)
    for seed in range(30):
        _rollout(env, seed, rng)
        assert env.result[1].feasible


def test_masked_action_is_replaced_not_applied():
    env = PartitionEnv(seed=0)
    env.reset(seed=0)
    bad = int(np.flatnonzero(~env.action_masks())[0])
    _, _, _, _, info = env.step(bad)
    assert info["masked_action"]


def test_plan_shares_are_proportional_shares():
    """Groups get exactly the planners' shares (realized in whole samples)."""
    from dora_rl.planners.base import proportional_shares

    env = PartitionEnv(seed=9, gen_kwargs={"kind": "training"})
    rng = np.random.default_rng(2)
    groups = 0
    for seed in range(150):
        _rollout(env, seed, rng)
        plan, m, _ = env.result
        cost = env.inst.cost
        M, S = plan.microbatches, len(plan.stages)
        for s, st in enumerate(plan.stages):
            devs = [cost.cluster.index[d] for d in st.devices]
            groups += len(devs) > 1
            want = proportional_shares(cost, devs, st.start, st.end, cost.workload.batch / M, min(M, S - s))
            assert want is not None and list(st.shares) == pytest.approx(want)
    assert groups > 0


@pytest.mark.parametrize("preset", ["smart_home", "traffic_analytics"])
def test_dora_plan_is_expressible(preset):
    """The action space reaches the `dora` partitioner's plan (data-parallel groups included)."""
    from dora_rl.planners import run_planner
    from dora_rl.scenario import load_scenario

    sc = load_scenario(preset)
    res = run_planner("dora", sc)
    env = PartitionEnv(scenario=sc)
    env.reset(seed=0)
    for a in actions_for_plan(res.plan, sc):
        assert env.action_masks()[a], (a, env.render())
        _, _, done, _, info = env.step(a)
        if done:
            break
    assert done
    obj = sc.qoe.objective
    assert env.result[1].objective(obj) == pytest.approx(res.metrics.objective(obj), rel=1e-9)


def test_group_actions_build_data_parallel_stage():
    # seed 14: after opening the first stage, three devices may join its group
    sc = random_scenario(np.random.default_rng(14), max_devices=6, min_devices=4)
    env = PartitionEnv(scenario=sc)
    env.reset(seed=0)
    D = env.max_devices
    first = int(np.flatnonzero(env.action_masks()[1 + D:])[0])
    env.step(1 + D + first)
    adds = np.flatnonzero(env.action_masks()[1:1 + D])
    assert len(adds) > 0
    env.step(1 + int(adds[0]))
    assert len(env.group) == 2 and int(adds[0]) in env.group and first in env.group
    assert not env.action_masks()[1 + first] and not env.action_masks()[1 + int(adds[0])]   # no device twice


def test_adapt_masked_action_keeps_the_current_plan_and_is_flagged():
    from dora_rl.adapter.observation import SLOTS
    from dora_rl.envs.adapt import AdaptEnv

    env = AdaptEnv(scenario="traffic_analytics", horizon=4, partition_agent=False)
    obs, _ = env.reset(seed=0)
    assert obs["action_mask"][0] == 0.0 and obs["action_mask"][1] == 1.0   # no `keep` before a plan runs
    _, _, _, _, info = env.step(1)
    assert not info["masked_action"] and info["agent"]
    before = env.ad.current.pids
    pad = int(np.flatnonzero(env.action_masks() == 0)[0]) if not env.action_masks().all() else SLOTS
    _, _, _, _, info = env.step(pad)                     # a padded (masked) slot: keep
    assert info["masked_action"] and not info["switched"] and env.ad.current.pids == before


def test_interval_sim_reproduces_simulate():
    """AdaptEnv's dynamics (adapt_sim.IntervalSim) are simulate()'s, interval for interval."""
    from dora_rl.adapter import get_adapter, simulate
    from dora_rl.cluster.traces import markov_trace
    from dora_rl.envs.adapt_sim import IntervalSim
    from dora_rl.scenario import load_scenario

    sc = load_scenario("smart_home")
    m = sc.dynamic_medium()
    tr = markov_trace(np.random.default_rng(3), sc.cluster.media[m].mbps, 120.0)
    log = simulate(sc, get_adapter("pareto", sc), tr, duration_s=40, interval_s=1.0, seed=5)
    ad = get_adapter("pareto", sc)
    sim = IntervalSim(sc, ad, tr, m, 1.0, seed=5)
    rows = [sim.step(ad.decide(sim.state())) for _ in range(40)]
    assert [r["pids"] for r in rows] == [r["pids"] for r in log.rows]
    assert [r["ok"] for r in rows] == [r["ok"] for r in log.rows]
    np.testing.assert_allclose([r["energy_j"] for r in rows], [r["energy_j"] for r in log.rows], rtol=1e-9)


def test_adapt_observation_comes_from_the_shared_builder(monkeypatch):
    """AdaptEnv's observation is the `ppo` adapter's, built by `adapter.observation.build_observation`."""
    import dora_rl.adapter.learned as learned
    from dora_rl.adapter import observation as adapt_obs
    from dora_rl.envs.adapt import AdaptEnv

    calls = []

    def spy(rows, *a, **k):
        calls.append(len(rows))
        return adapt_obs.build_observation(rows, *a, **k)

    monkeypatch.setattr(learned, "build_observation", spy)
    env = AdaptEnv(scenario="smart_home", horizon=4, partition_agent=False)
    obs, _ = env.reset(seed=1)
    assert len(calls) == 1 and obs["candidates"].shape == (adapt_obs.SLOTS, adapt_obs.NC)
    assert obs["global"].shape == (adapt_obs.NGA,) and obs["action_mask"].sum() == calls[0] - 1   # no keep yet


def test_trace_split_is_deterministic_and_needs_validation_traces(tmp_path):
    from dora_rl.envs.adapt_sim import is_validation, trace_split
    from dora_rl.errors import TraceError

    (tmp_path / "norway_3g").mkdir()
    names = [f"t{i}.log" for i in range(40)]
    for n in names:
        (tmp_path / "norway_3g" / n).write_text("0 1.0\n1 2.0\n")
    train, val = trace_split(tmp_path)
    assert val and train and not set(train) & set(val) and len(train) + len(val) == 40
    assert val == sorted(f"norway_3g/{n}" for n in names if is_validation(f"norway_3g/{n}"))
    for v in val:
        (tmp_path / v).unlink()
    with pytest.raises(TraceError, match="no validation traces"):
        trace_split(tmp_path)
    assert trace_split(tmp_path / "missing") == ([], [])


def test_adapt_training_cli_bad_input_is_one_line(tmp_path, monkeypatch, capsys):
    """A trace root whose split leaves no validation trace: one line on stderr, exit 2."""
    from dora_rl.envs.adapt_sim import is_validation
    from dora_rl.learning.adapt_training import main

    (tmp_path / "fcc_broadband").mkdir()
    for i in range(30):
        if not is_validation(f"fcc_broadband/x{i}"):
            (tmp_path / "fcc_broadband" / f"x{i}").write_text("0 1.0\n")
    monkeypatch.setenv("DORA_TRACES", str(tmp_path))
    assert main(["--out", str(tmp_path / "out"), "--minutes", "0.01", "--episodes", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no validation traces" in err[0]
    assert main(["--minutes", "0"]) == 2


def test_lower_layers_never_import_learning():
    """planners/, envs/, cost/ (and the planner registry listing its names) leave dora_rl.learning alone."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys, dora_rl, dora_rl.cost, dora_rl.planners, dora_rl.envs, dora_rl.envs.partition, "
            "dora_rl.envs.adapt; from dora_rl.planners import planner_names; assert 'ppo' in planner_names(); "
            "print(sorted(m for m in sys.modules if m.startswith('dora_rl.learning')))")
    root = str(Path(dora_rl.envs.__file__).resolve().parents[2])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": root})
    assert out.stdout.strip() == "[]", out.stdout


def test_row_utilities_are_the_rewards_the_rows_would_get():
    """AdaptEnv.row_utilities (IntervalSim.what_if on a fork of the Monitor) predicts, for the row
    taken, exactly the reward step() then pays: every row's target is the runtime's judgement."""
    from dora_rl.envs.adapt import AdaptEnv

    env = AdaptEnv(scenario="smart_home", horizon=25, synthetic_frac=1.0, mean_frac=(0.6, 0.6),
                   partition_agent=False)
    obs, _ = env.reset(seed=4)
    rng = np.random.default_rng(0)
    spread = 0.0
    for _ in range(25):
        q = env.row_utilities()
        valid = np.flatnonzero(obs["action_mask"] > 0.5)
        assert np.isfinite(q[valid]).all() and np.isnan(q[obs["action_mask"] < 0.5]).all()
        a = int(rng.choice(valid))
        obs, r, _, _, _ = env.step(a)
        assert r == pytest.approx(q[a], abs=1e-12)
        spread = max(spread, float(np.ptp(q[valid])))
    assert spread > 0.01          # the rows differ: the targets carry information


def test_numpy_actor_picks_what_the_policy_picks():
    from sb3_contrib import MaskablePPO

    from dora_rl.envs.adapt import AdaptEnv
    from dora_rl.learning.adapter_agent import NumpyActor

    env = AdaptEnv(scenario="traffic_analytics@uplink1.5", horizon=10, synthetic_frac=1.0, partition_agent=False)
    model = MaskablePPO("MultiInputPolicy", env, seed=1, device="cpu", n_steps=64, batch_size=64)
    actor = NumpyActor(model.policy)
    obs, _ = env.reset(seed=0)
    rng = np.random.default_rng(1)
    for _ in range(10):
        o = {k: v.copy() for k, v in obs.items()}
        o["candidates"] = o["candidates"] + rng.normal(0, 1, o["candidates"].shape).astype(np.float32)
        want = int(model.predict(o, deterministic=True, action_masks=o["action_mask"] > 0.5)[0])
        assert actor.act(o) == want
        obs, *_ = env.step(1)


@pytest.mark.parametrize("make", ["partition", "stage"])
def test_masked_action_is_substituted_and_an_ended_episode_refuses_steps(make):
    # the protocol both plan-building environments share (envs/build.py): a forbidden
    # action becomes the first allowed one, said in info; an ended episode raises
    from dora_rl.envs.stage import StageEnv
    from dora_rl.errors import DoraError

    env = PartitionEnv(seed=5) if make == "partition" else StageEnv(seed=5)
    env.reset(seed=5)
    masks = env.action_masks()
    forbidden = int(np.flatnonzero(~masks)[0])
    first_allowed = int(np.flatnonzero(masks)[0])
    twin = env.fork()
    *_, info = env.step(forbidden)
    assert info["masked_action"] is True
    *_, info2 = twin.step(first_allowed)
    assert info2["masked_action"] is False
    assert np.array_equal(env.action_masks(), twin.action_masks())
    env.done = True
    with pytest.raises(DoraError, match=f"{type(env).__name__}.step called after the episode ended"):
        env.step(first_allowed)


def test_miss_weight_shapes_the_reward_but_not_the_reported_utility():
    """AdaptEnv(miss_weight=w) pays utility - (w - 1) x 1[missed]; info["utility"] stays the bench's
    utility, and the episode itself (what runs, QoE, energy) does not depend on w."""
    from dora_rl.envs.adapt import AdaptEnv, shaped_reward
    from dora_rl.errors import AgentError

    # hand values: a met interval keeps its utility, a missed one loses (3 - 1) x 1 = 2
    assert float(shaped_reward(0.4, 1, 3.0)) == pytest.approx(0.4)
    assert float(shaped_reward(0.4, 0, 3.0)) == pytest.approx(0.4 - 2.0)
    assert np.allclose(shaped_reward(np.array([0.5, -0.1]), np.array([1.0, 0.0]), 2.0), [0.5, -1.1])
    kw = dict(scenario="smart_home", horizon=20, synthetic_frac=1.0, mean_frac=(0.45, 0.45), partition_agent=False)
    e1, e3 = AdaptEnv(**kw), AdaptEnv(miss_weight=3.0, **kw)
    e1.reset(seed=2)
    e3.reset(seed=2)
    misses = 0
    for k in range(20):
        a = 1 if k % 3 else 2
        _, r1, _, _, i1 = e1.step(a)
        _, r3, _, _, i3 = e3.step(a)
        assert i1["utility"] == pytest.approx(i3["utility"], abs=1e-12) and i1["qoe_ok"] == i3["qoe_ok"]
        assert r1 == pytest.approx(i1["utility"], abs=1e-12)
        assert r3 == pytest.approx(i3["utility"] - (0.0 if i3["qoe_ok"] else 2.0), abs=1e-12)
        misses += not i3["qoe_ok"]
    assert misses > 0            # the weight was exercised
    with pytest.raises(AgentError, match="miss_weight"):
        AdaptEnv(miss_weight=0.5)


def test_log_utility_by_hand():
    """log_utility = clip(log(min(4, ref / objective)), -3) - the penalties (hand values)."""
    from types import SimpleNamespace as NS

    from dora_rl.cost.qoe import log_utility

    cost = NS(qoe=NS(objective="latency", latency_slo_ms=100.0, min_throughput=None, min_battery_hours=None),
              workload=NS(training=False, request_rate=None))

    def m(latency_ms):
        return NS(feasible=True, latency_ms=latency_ms, throughput=1.0, battery_hours={},
                  objective=lambda k: latency_ms)

    assert log_utility(cost, m(50.0), 100.0) == pytest.approx(0.693147, abs=1e-6)        # log 2
    assert log_utility(cost, m(1.0), 1000.0) == pytest.approx(1.386294, abs=1e-6)        # capped: log 4
    # 150 ms misses the 100 ms SLO: log(100 / 150) - (2 + 0.5)
    assert log_utility(cost, m(150.0), 100.0) == pytest.approx(-0.405465 - 2.5, abs=1e-6)
    # 1000x the reference: the floor -3, and the miss capped at 1: -3 - 3
    assert log_utility(cost, m(1000.0), 1.0) == pytest.approx(-6.0, abs=1e-9)


def test_stage_env_log_reward_changes_the_reward_not_the_episode():
    """StageEnv(reward="log_utility"): the same actions give the same plan and info["utility"];
    the reward is log_utility of that plan (on a compliant plan: the log of the utility)."""
    from dora_rl.cost.qoe import log_utility
    from dora_rl.envs.stage import StageEnv

    seen_ok = 0
    for seed in range(6):
        a_env, b_env = StageEnv(seed=seed), StageEnv(seed=seed, reward="log_utility")
        a_env.reset(seed=seed)
        b_env.reset(seed=seed)
        rng = np.random.default_rng(seed)
        done = False
        while not done:
            act = int(rng.choice(np.flatnonzero(a_env.action_masks())))
            _, ra, done, _, ia = a_env.step(act)
            _, rb, done_b, _, ib = b_env.step(act)
            assert done == done_b
        assert ia["plan"] == ib["plan"] and ia["utility"] == ib["utility"] == ra
        inst = b_env.inst
        assert rb == pytest.approx(log_utility(inst.cost, b_env.result[1], inst.ref_obj), abs=1e-12)
        if ia["qoe_ok"] and ra > np.exp(-3):
            seen_ok += 1
            assert rb == pytest.approx(np.log(min(4.0, ra)), abs=1e-9)
    assert seen_ok > 0
    with pytest.raises(Exception, match="reward must be one of utility, log_utility"):
        StageEnv(reward="ratio")
