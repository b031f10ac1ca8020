"""`single_reach`: the last block range a device holds alone, found by bisection."""

import numpy as np

from dora_rl.envs.instance import Instance, single_reach
from dora_rl.synthetic import random_scenario


def test_single_reach_by_hand():
    """Blocks of 2, 2 and 5 parameter bytes (prefix 0, 2, 4, 9), 1 activation byte in
    every range: a device of 6 bytes holds [0, 2) (4 + 1 <= 6, 9 + 1 > 6), [1, 2) and
    [2, 3) (5 + 1 = 6); one of 2.5 bytes no block (2 + 1 > 2.5), nor one of 0.5."""
    pp = np.array([0.0, 2.0, 4.0, 9.0])
    base = pp[None, :] - pp[:, None]
    act = np.ones((4, 4))
    got = single_reach(np.array([6.0, 2.5, 0.5]), base, act)
    assert got.tolist() == [[2, 2, 3, 3], [0, 1, 2, 3], [0, 1, 2, 3]]


def test_single_reach_counts_every_block_that_fits():
    """On generated instances of 2-56 devices and 5-203 blocks (training and inference
    workloads), the bisection gives the count of ends r > l where the device holds [l, r),
    counted over every end (one start block at a time)."""
    for i in range(10):
        sc = random_scenario(np.random.default_rng([31, i]), max_devices=64, min_devices=2 + 6 * i,
                             n_blocks=5 + 22 * i)
        inst = Instance(sc, 64)
        B = inst.B
        want = np.stack([l + np.count_nonzero(inst.mem[:, None] - inst.base[l, l + 1:] >= inst.act[l, l + 1:],
                                              axis=1) for l in range(B + 1)], axis=1)
        assert (inst.reach == want).all(), i


def _every_device(inst):
    return min(inst.cost.evaluate_stages([(0, inst.B, [d], [1.0])], 1).objective(inst.objective)
               for d in range(inst.n))


def test_reference_is_the_best_single_device_plan():
    """`ref_obj` (which stops at the first device whose compute-time bound is no better than
    the best found) equals the least objective over every single-device plan, on generated
    instances of both workloads and objectives (measured block times:
    tests/profile/test_profile_measured.py)."""
    seen = set()
    for i in range(24):
        sc = random_scenario(np.random.default_rng([37, i]), max_devices=24, min_devices=2 + i % 20, n_blocks=6 + 5 * i)
        inst = Instance(sc, 32)
        seen.add((sc.workload.training, inst.objective))
        assert inst.ref_obj == _every_device(inst), i
    assert len(seen) == 4


def test_finish_once_is_finish_remembered_failures_included(monkeypatch):
    """`Instance.finish_once` gives `finish`'s plan and metrics, the same objects on a
    second call; a plan that fits no micro-batch count (the whole model on a device that
    does not hold it) raises NoFeasiblePlan both times; with FINISHED plans kept the memo
    starts again (a third plan evicts the first two at FINISHED = 2)."""
    import pytest

    from dora_rl.envs import instance as instance_mod
    from dora_rl.errors import NoFeasiblePlan

    for i in range(20):
        sc = random_scenario(np.random.default_rng([37, i]), max_devices=8, min_devices=6, n_blocks=20)
        inst = Instance(sc, 8)
        small = [d for d in range(inst.n) if inst.reach[d, 0] < inst.B]
        whole = [d for d in range(inst.n) if inst.reach[d, 0] >= inst.B]
        if small and len(whole) >= 2:
            break
    plan = [(0, inst.B, (whole[0],))]
    M, st, m = inst.finish(plan)
    got = inst.finish_once(plan)
    assert got[0] == M and got[1] == st and got[2].objective(inst.objective) == m.objective(inst.objective)
    assert inst.finish_once(plan) is got
    for _ in range(2):
        with pytest.raises(NoFeasiblePlan):
            inst.finish_once([(0, inst.B, (small[0],))])
    monkeypatch.setattr(instance_mod, "FINISHED", 2)
    inst.finish_once([(0, inst.B, (whole[1],))])
    assert inst.finish_once(plan) is not got and len(inst._finished) == 2      # the third plan and it
