"""StageEnv's QoE-aware masks (dora_rl/envs/qoe_bound.py): sound (a compliant plan is never
masked) and with teeth (a single-device plan that misses the SLO by more than 2x is masked)."""

from __future__ import annotations

import numpy as np
import pytest

from dora_rl.envs.instance import Instance
from dora_rl.envs.stage import StageEnv, stage_actions_for_plan
from dora_rl.errors import DoraError
from dora_rl.synthetic import random_scenario


def _instances(k: int, seed: int, max_devices: int = 4, n_blocks: int = 12):
    out, i = [], 0
    while len(out) < k:
        sc = random_scenario(np.random.default_rng([seed, i]), max_devices=max_devices, n_blocks=n_blocks)
        i += 1
        inst = Instance(sc, sc.cluster.n)
        if inst.completable:
            out.append(inst)
    return out


def _env(inst, qoe_masks=True):
    env = StageEnv(max_devices=inst.n, max_blocks=inst.B, pool_size=1, qoe_masks=qoe_masks)
    env.reset(options={"scenario": inst})
    return env


@pytest.mark.parametrize("planner", ["oracle", "dora"])
def test_qoe_masks_never_remove_a_step_of_a_compliant_plan(planner):
    from dora_rl.planners import run_planner

    checked = narrowed = 0
    for inst in _instances(60, 4242):
        try:
            res = run_planner(planner, inst.scenario, inst.cost)
        except DoraError:
            continue
        if not res.metrics.qoe_ok:
            continue
        env, env0 = _env(inst), _env(inst, qoe_masks=False)
        checked += 1
        for a in stage_actions_for_plan(res.plan, inst.scenario, inst.n, inst.B):
            assert env0.action_masks()[a]
            narrowed += env.action_masks().sum() < env0.action_masks().sum()
            assert env.action_masks()[a], (inst.scenario.name, res.plan.to_dict())
            env.step(a)
            env0.step(a)
    assert checked >= 15 and narrowed >= 5       # the check ran, and the masks did narrow something


def test_a_single_device_plan_far_over_the_slo_is_masked():
    """A one-device plan's latency is fill + (M - 1) T with fill exactly the bound's and T at
    most twice the bound's (the input and output share at most one medium), so a plan
    more than 2x over the SLO has a bound over the SLO: its close is masked, unless no
    close passes (the fallback to the memory masks, `qoe_masked` False)."""
    seen = 0
    for inst in _instances(80, 777, max_devices=5, n_blocks=10):
        slo = inst.scenario.qoe.latency_slo_ms
        if slo is None or inst.training:
            continue
        env = _env(inst)
        Bm = inst.B
        for d in range(inst.n):
            if inst.reach_l[d][0] < inst.B:
                continue
            M, st, m = inst.finish([(0, inst.B, (d,))])
            if m.latency_ms > 2.01 * slo:
                seen += 1
                assert not env.action_masks()[d * Bm + inst.B - 1] or not env.qoe_masked
    assert seen >= 5


def test_qoe_masks_always_leave_an_action_and_plans_fit():
    """Random rollouts under the QoE masks: some action is always allowed (the fallback to
    the memory masks) and every finished plan fits in memory."""
    rng = np.random.default_rng(1)
    for inst in _instances(30, 99, max_devices=6, n_blocks=16):
        env = _env(inst)
        done = False
        while not done:
            m = env.action_masks()
            assert m.any()
            _, _, done, _, info = env.step(int(rng.choice(np.flatnonzero(m))))
        assert info["feasible"]


def test_the_entry_into_a_group_is_bounded_by_the_senders_interface():
    # worked example 4's hub: cam sends a micro-batch of 2 samples of the toy input (100 kB
    # each) to the group {boardA, boardB}; every byte leaves through cam's interface, as fast
    # as its fastest link (100 Mbps = 12.5e6 B/s): occupancy >= 2e5 / 12.5e6 = 0.016 s, and
    # some flow takes at least the least latency of cam's pairs to the boards (1 ms)
    from dora_rl.envs.qoe_bound import QoEBound
    from tests.toy import HUB, scenario

    sc = scenario(HUB)
    inst = Instance(sc, sc.cluster.n)
    cam, a, b = (sc.cluster.index[x] for x in ("cam", "boardA", "boardB"))
    qb = QoEBound(inst)
    assert qb._xfer([cam], [a, b], 0) == pytest.approx((0.016, 0.001))
    # a lower bound of the cost model's own transfer (here it is tight: the interface is the bottleneck)
    occ, lat = inst.cost.transfer([cam], [1.0], [a, b], [0.5, 0.5], 2e5)[:2]
    assert occ >= 0.016 - 1e-12 and lat >= 0.001 - 1e-12
    # the way back (a group to one device outside it) through cam's receive interface; a
    # sender inside the group keeps its own share: no bound
    assert qb._xfer([a, b], [cam], 0) == pytest.approx((0.016, 0.001))
    assert qb._xfer([a], [a, b], 0) == (0.0, 0.0)
