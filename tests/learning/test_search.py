"""Rollout search over the partition policy (dora_rl/learning/search.py) and expert
iteration (dora_rl/learning/imitation.py): forks are independent copies, batched logits
equal one-at-a-time logits, search is never worse than greedy and is strictly better
somewhere for a weak policy, and expert iteration fits the search's decisions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dora_rl.cli import main as cli_main
from dora_rl.envs.instance import Instance
from dora_rl.envs.partition import PartitionEnv
from dora_rl.errors import NoFeasiblePlan, PlannerError
from dora_rl.scenario import load_scenario
from dora_rl.synthetic import random_scenario

KW = {"features_extractor_kwargs": {"hidden": 32, "device_dim": 16}, "net_arch": {"pi": [], "vf": [32]}}


@pytest.fixture(scope="module")
def weak_agent():
    """An untrained set-pointer policy: greedy plans from it are poor, which is what
    search is for."""
    import torch
    from sb3_contrib import MaskablePPO

    from dora_rl.learning.agents import PartitionAgent
    from dora_rl.learning.extractor import SetPointerPolicy

    torch.manual_seed(0)
    model = MaskablePPO(SetPointerPolicy, PartitionEnv(seed=0), seed=0, device="cpu", policy_kwargs=KW)
    return PartitionAgent(model, {"max_devices": 8}, Path("."))


def _instances(n=24, seed=7):
    out = []
    for i in range(n):
        sc = random_scenario(np.random.default_rng([seed, i]), max_devices=6)
        sc.name = f"s{i}"
        if Instance(sc, 8).completable:
            out.append(sc)
    return out


def test_fork_is_an_independent_copy():
    env = PartitionEnv(seed=3)
    env.reset(seed=1)
    rng = np.random.default_rng(0)
    for _ in range(2):
        env.advance(int(rng.choice(np.flatnonzero(env._mask))))
    before = {k: v.copy() for k, v in env.observe().items()}
    twin = env.fork()
    path = []
    while not twin.done:
        a = int(rng.choice(np.flatnonzero(twin._mask)))
        path.append(a)
        twin.advance(a)
    for k, v in env.observe().items():        # the original did not move
        np.testing.assert_array_equal(v, before[k])
    for a in path:                             # the same actions give the same plan
        env.advance(a)
    assert env.done and env.result[0].to_dict() == twin.result[0].to_dict() and env.result[2] == twin.result[2]


def test_batched_logits_equal_single(weak_agent):
    actor = weak_agent.actor()
    env = PartitionEnv(seed=4)
    obs, masks = [], []
    for s in range(6):
        o, _ = env.reset(seed=s)
        obs.append(o)
        masks.append(env._mask.copy())
    batch = {k: np.stack([o[k] for o in obs]) for k in ("devices", "device_mask", "global")}
    got = actor.logits(batch, np.stack(masks))
    for i, (o, m) in enumerate(zip(obs, masks)):
        np.testing.assert_allclose(got[i], actor.logits(o, m), rtol=1e-12, atol=1e-12)


def test_rollout_search_never_worse_than_greedy_and_better_somewhere(weak_agent):
    from dora_rl.learning.search import search_key

    better = 0
    for sc in _instances():
        greedy, = weak_agent.rollouts(sc)
        searched, = weak_agent.rollouts(sc, search="rollout")
        kg, ks = search_key(greedy, sc.qoe.objective), search_key(searched, sc.qoe.objective)
        assert ks <= kg, (sc.name, ks, kg)
        better += ks < kg
        top1, = weak_agent.rollouts(sc, search="rollout", top_k=1)   # one candidate = greedy, then polished
        polished, = weak_agent.rollouts(sc, search="polish")         # the same: greedy, then polished
        assert search_key(top1, sc.qoe.objective) == search_key(polished, sc.qoe.objective) <= kg
        assert ks <= search_key(polished, sc.qoe.objective)           # rollout is never worse than polish
    assert better >= 5, better


def test_search_records_only_allowed_decisions(weak_agent):
    from dora_rl.learning.search import rollout_search

    env = PartitionEnv(seed=9)
    env.reset(seed=2)
    rec = []
    plan, m, u = rollout_search(weak_agent.actor(), env, record=rec)
    assert rec and all(mask[a] and mask.sum() > 1 and obs["action_mask"][a] == 1.0 for obs, mask, a in rec)
    assert plan.to_dict() == env.result[0].to_dict() or u >= env.result[2]


def test_expert_iteration_fits_the_search_decisions(weak_agent):
    """One round of expert iteration on a fresh copy of the weak policy: the greedy
    network agrees with the search's labels far more often after fitting them."""
    import copy

    import torch

    from dora_rl.learning.imitation import expert_iteration, rollout_dataset

    torch.set_num_threads(1)
    policy = copy.deepcopy(weak_agent.policy)
    labels = rollout_dataset(policy, range(40), top_k=None)

    def greedy_actions(pol):
        with torch.no_grad():
            obs = {k: torch.from_numpy(v) for k, v in labels["obs"].items()}
            dist = pol.get_distribution(obs, action_masks=labels["obs"]["action_mask"] > 0.5)
            return dist.distribution.probs.argmax(-1).numpy()

    before = greedy_actions(policy) == labels["actions"]
    assert 0 < before.sum() < len(before)      # the search overrules greedy somewhere
    hist = expert_iteration(policy, labels, rounds=1, episodes=20, start=40, epochs=30, lr=3e-3, top_k=None)
    assert hist["rounds"][0]["episodes"] > 0 and hist["rounds"][0]["samples"] > len(labels["actions"])
    after = greedy_actions(policy) == labels["actions"]
    assert after.mean() > before.mean(), (before.mean(), after.mean())
    assert after[~before].mean() >= 0.3, after[~before].mean()     # overruled decisions learned (0 before)


def test_ppo_planner_search_option_and_cli(capsys):
    from dora_rl.planners import run_planner

    sc = load_scenario("traffic_analytics")
    from dora_rl.cost import CostModel
    from dora_rl.cost.qoe import utility
    from dora_rl.learning.search import search_key

    ref = Instance(sc, 8).ref_obj
    keys = []
    for opts in ({}, {"search": "rollout"}):
        m = run_planner("ppo", sc, **opts).metrics
        keys.append(search_key((None, m, utility(CostModel(sc), m, ref)), sc.qoe.objective))
    assert keys[1] <= keys[0], keys
    with pytest.raises(PlannerError, match="search="):
        run_planner("ppo", sc, search="nope")
    assert cli_main(["plan", "traffic_analytics", "--planner", "ppo", "--search", "rollout", "--json"]) == 0
    assert '"plan"' in capsys.readouterr().out
    assert cli_main(["plan", "traffic_analytics", "--planner", "dora", "--search", "rollout"]) == 2
    assert "--search is an option of the ppo planner" in capsys.readouterr().err


def test_polish_repairs_a_shifted_cut():
    """dora's smart_home plan with its cut moved 3 blocks is worse; polishing it on the
    cost model finds dora's objective again (a cut shift is one move)."""
    from dora_rl.cost.qoe import utility
    from dora_rl.learning.search import index_stages, polish, search_key
    from dora_rl.planners import run_planner

    sc = load_scenario("smart_home")
    inst = Instance(sc, 8)
    ref = run_planner("dora", sc)
    st = index_stages(inst, ref.plan)
    assert len(st) == 2
    (l0, r0, g0), (_, r1, g1) = st
    bad = [(l0, r0 - 3, g0), (r0 - 3, r1, g1)]
    M, stages, m = inst.finish(bad)
    start = (inst.to_plan(stages, M), m, utility(inst.cost, m, inst.ref_obj))
    obj = sc.qoe.objective
    assert m.objective(obj) > ref.metrics.objective(obj) * 1.001 or not m.qoe_ok
    plan, m2, u2 = polish(inst, start)
    assert search_key((plan, m2, u2), obj) <= search_key(start, obj)
    assert m2.qoe_ok and m2.objective(obj) == pytest.approx(ref.metrics.objective(obj), rel=1e-9)


def test_polish_builds_a_data_parallel_group():
    """traffic_analytics from one Jetson alone (172 ms > the 150 ms SLO): adding the other
    Jetson to the stage's group is a group move, and reaches dora's plan (both Jetsons
    data-parallel)."""
    from dora_rl.cost.qoe import utility
    from dora_rl.learning.search import polish
    from dora_rl.planners import run_planner

    sc = load_scenario("traffic_analytics")
    inst = Instance(sc, 8)
    ref = run_planner("dora", sc)
    assert len(ref.plan.stages) == 1 and len(ref.plan.stages[0].devices) == 2
    idx = {n: i for i, n in enumerate(inst.cost.names)}
    M, stages, m = inst.finish([(0, inst.B, (idx["jetson1"],))])
    assert not m.qoe_ok
    plan, m2, _ = polish(inst, (inst.to_plan(stages, M), m, utility(inst.cost, m, inst.ref_obj)))
    obj = sc.qoe.objective
    assert m2.qoe_ok and m2.objective(obj) == pytest.approx(ref.metrics.objective(obj), rel=1e-9)
    assert sorted(plan.stages[0].devices) == sorted(ref.plan.stages[0].devices)


def test_unused_candidates_are_the_fastest_and_the_most_efficient():
    from dora_rl.planners.local import unused_candidates

    orders = ([5, 4, 3, 2, 1, 0], [0, 1, 2, 3, 4, 5])         # by speed, by efficiency
    assert unused_candidates(orders, {5, 0}, k=2) == [4, 3, 1, 2]
    assert unused_candidates(orders, {5, 0}, k=3) == [4, 3, 2, 1]         # 2 once, though in both lists
    assert sorted(unused_candidates(orders, {0}, k=6)) == [1, 2, 3, 4, 5]   # k covers every unused device


def test_neighbours_bring_in_only_the_free_devices_given():
    """`free` limits the devices a move brings in; without it every unused device is tried."""
    from dora_rl.learning.search import _neighbours
    from dora_rl.planners.local import unused_candidates

    speed, eff = list(range(20)), list(range(19, -1, -1))     # device 0 fastest, device 19 most efficient
    plan = [(0, 5, (7,)), (5, 10, (8,))]
    allowed = unused_candidates((speed, eff), {7, 8})
    assert set(allowed) == {0, 1, 2, 3, 4, 5, 19, 18, 17, 16, 15, 14}
    brought = {d for c in _neighbours(plan, 20, 10, free=allowed) for _, _, g in c for d in g} - {7, 8}
    assert brought == set(allowed)
    every = {d for c in _neighbours(plan, 20, 10) for _, _, g in c for d in g} - {7, 8}
    assert every == set(range(20)) - {7, 8}


def test_a_split_tries_the_seam_of_each_run_of_cuts_and_a_cut_moves_to_the_seams():
    """Hand-computed: blocks [0, 9) have cuts 1..8; in 4 runs ([1, 2], [3, 4], [5, 6], [7, 8])
    the fewest bytes cross cuts 2, 4, 5 (a tie at 8 bytes: the first) and 7; without the
    bytes each run's first cut. A split of the one stage tries exactly those; the cut at 4
    between two stages shifts by 1 (to 3 and 5) and moves to the seams more than one block
    away (2 and 7)."""
    from dora_rl.learning.search import _neighbours, _seams

    bnd = [0, 9, 5, 7, 1, 8, 8, 3, 6, 0]
    assert _seams(bnd, 0, 9, 4) == [2, 4, 5, 7]
    assert _seams(None, 0, 9, 4) == [1, 3, 5, 7]
    assert _seams(bnd, 0, 9, 8) == list(range(1, 9))          # at most k cuts: every one

    def cuts(stages, **kw):
        return {c[0][1] for c in _neighbours(stages, 2, 9, split_points=4, **kw) if len(c) == len(stages) + 1}

    assert cuts([(0, 9, (0,))], bnd=bnd) == {2, 4, 5, 7}
    assert cuts([(0, 9, (0,))]) == {1, 3, 5, 7}
    two = [(0, 4, (0,)), (4, 9, (1,))]
    shifted = {c[0][1] for c in _neighbours(two, 2, 9, max_shift=1, split_points=4, bnd=bnd)
               if len(c) == 2 and c[0][2] == (0,) and c[1][2] == (1,)}
    assert shifted == {2, 3, 5, 7}


def _fastest_starts(seed: int, count: int, devices: int, blocks: int):
    """(Instance, the whole model on its fastest device) for random scenarios `[seed, i]`,
    i < count, where some single device holds the model."""
    from dora_rl.learning.stage_training import fastest_plan

    for i in range(count):
        sc = random_scenario(np.random.default_rng([seed, i]), max_devices=devices, min_devices=devices,
                             n_blocks=blocks)
        inst = Instance(sc, devices)
        f = fastest_plan(inst)
        if f is not None:
            yield inst, f


def _assert_no_move_improves(inst, plan, key, free=None):
    """No plan one `_neighbours` move (seams included) from `plan` ranks before `key`."""
    from dora_rl.cost.qoe import utility
    from dora_rl.learning import search

    for cand in search._neighbours(search.index_stages(inst, plan), inst.n, inst.B, free=free, bnd=inst.cost.bnd):
        try:
            _, _, m2 = inst.finish(cand)
        except NoFeasiblePlan:
            continue
        assert search.search_key((None, m2, utility(inst.cost, m2, inst.ref_obj)), inst.objective) >= key


def test_polish_ends_where_no_seam_move_improves():
    """On 60-block models (more cuts than split points), polish's result is a local optimum
    of the moves that split at or move a cut to the seams (`_neighbours(..., bnd=...)`)."""
    from dora_rl.learning import search

    checked = 0
    for inst, f in _fastest_starts(21, 8, devices=5, blocks=60):
        plan, m, u = search.polish(inst, f)
        _assert_no_move_improves(inst, plan, search.search_key((plan, m, u), inst.objective))
        checked += 1
    assert checked >= 6


def test_polish_with_candidates_ends_at_an_optimum_of_every_device(monkeypatch):
    """With one candidate (the fastest unused device, so the candidates' optimum is often not
    the full neighbourhood's), polish's wide final scan ends where no move over any unused
    device improves, and beats the candidates' optimum (wide=False) somewhere; without it,
    it ends where no move over the candidates improves."""
    from dora_rl.learning import search

    one = lambda orders, used: [d for d in orders[0] if d not in used][:1]      # noqa: E731
    monkeypatch.setattr(search, "unused_candidates", one)
    checked = better = 0
    for inst, f in _fastest_starts(20, 6, devices=20, blocks=12):
        keys = {}
        for wide in (True, False):
            plan, m, u = search.polish(inst, f, wide=wide)
            keys[wide] = key = search.search_key((plan, m, u), inst.objective)
            used = {d for _, _, g in search.index_stages(inst, plan) for d in g}
            free = None if wide else one(search.device_orders(inst.cost), used)
            _assert_no_move_improves(inst, plan, key, free=free)
            checked += 1
        better += keys[True] < keys[False]
    assert checked >= 6 and better >= 1
