"""The all-reduce term of StageEnv's QoE masks (dora_rl/envs/qoe_bound.py): a hand-computed
case where a data-parallel add is masked and one where it is kept, and, by exhaustive
enumeration of every plan the environment can build on small instances, that no step of
a QoE-compliant plan is ever masked."""

from __future__ import annotations

import numpy as np
import pytest

from dora_rl.cost.model import CostModel
from dora_rl.envs.instance import Instance
from dora_rl.envs.stage import StageEnv
from dora_rl.plan import Plan
from dora_rl.profile.model_profile import Block, ModelProfile
from dora_rl.scenario import Scenario
from dora_rl.synthetic import random_scenario


def _lab(slo_ms: float) -> Scenario:
    """Training, batch 2 in M = 1 micro-batch (m = 2), three 200 GFLOPS boards a (source), b, c,
    every pair on its own 800 Mbps (1e8 B/s), 0.5 ms link. Two blocks of 4 GFLOPs per
    sample; block 1 holds 100 MB of parameters."""
    prof = ModelProfile("ar", 100_000, [Block("b0", 4e9, 1_000_000, 100_000), Block("b1", 4e9, 100_000_000, 4_000)])
    d = {"name": "ar_lab", "model": {"profile": "ar.json"},
         "workload": {"kind": "training", "batch": 2, "microbatches": 1, "source": "a", "optimizer": "sgd"},
         "qoe": {"latency_slo_ms": slo_ms, "objective": "latency"},
         "devices": [{"name": x, "kind": "jetson_orin_nano", "gflops": 200, "memory_gb": 8, "idle_w": 2,
                      "active_w": 10, "radio_j_per_mb": 0.05} for x in ("a", "b", "c")],
         "links": [{"a": x, "b": y, "mbps": 800, "latency_ms": 0.5} for x, y in (("a", "b"), ("a", "c"), ("b", "c"))]}
    return Scenario.from_dict(d, profile=prof)


# Hand computation (back = 3, m = 2, M = 1, so latency = fill + A):
# stage [0, 1) on a: u0 = 3 x 2 x 4e9 / 2e11 = 0.12 s (the input starts on a: no transfer).
# At p = 1, a single-device close on b: boundary a -> b twice (activation, gradient) of
# 2 x 100 kB: 2 x (0.0005 + 2e5 / 1e8) = 0.005 s; u1 = 0.12 s: 0.245 s, exact.
# Adding b (then c closes [1, 2)): the stage computes at 4e11 FLOP/s at most: u = 0.06 s;
# its all-reduce: g = 2, chunk = 100 MB / 2 = 5e7 B, the least latency 0.0005 s and the
# least 1e-8 s/B on any route b -> c: A >= 2 (2 - 1) (0.0005 + 5e7 x 1e-8) = 1.001 s.
# Bound: 0.12 + 0.06 + 1.001 = 1.181 s. Without the all-reduce term it was 0.18 s.
# The real plan [0, 1) on a, [1, 2) on b + c: the input of the group leaves a's one send
# interface (1e8 B/s) in two 100 kB flows: 2 x (0.0005 + 2e5 / 1e8) = 0.005 s; A = 1.001 s
# (b -> c and c -> b use separate link directions): 0.12 + 0.005 + 0.06 + 1.001 = 1.186 s.
A_LB = 2 * (0.0005 + 5e7 * 1e-8)
ADD_B, ADD_C, CLOSE_A_1, CLOSE_B_2, CLOSE_C_2 = 3 * 2 + 1, 3 * 2 + 2, 0 * 2 + 0, 1 * 2 + 1, 2 * 2 + 1


def _env(sc: Scenario, qoe_masks: bool = True) -> StageEnv:
    inst = Instance(sc, 3)
    env = StageEnv(max_devices=3, max_blocks=2, pool_size=1, qoe_masks=qoe_masks)
    env.reset(options={"scenario": inst})
    return env


def test_the_data_parallel_plan_costs_what_the_hand_computation_says():
    m = CostModel(_lab(1000)).evaluate(Plan.make([(0, 1, ["a"]), (1, 2, ["b", "c"])], 1))
    assert m.allreduce_s == pytest.approx(A_LB)
    assert m.latency_ms == pytest.approx((0.12 + 0.005 + 0.06 + A_LB) * 1e3)      # 1186 ms


def test_an_add_whose_all_reduce_alone_breaks_the_slo_is_masked():
    """SLO 1000 ms: the add's bound is 1181 ms > 1000 (masked), the single-device close 245 ms
    (kept); the memory masks alone allow the add."""
    env, env0 = _env(_lab(1000)), _env(_lab(1000), qoe_masks=False)
    for e in (env, env0):
        assert e.action_masks()[CLOSE_A_1]
        e.step(CLOSE_A_1)
    qb = env._bound()
    assert env._qF == pytest.approx(0.12) and env._qA == 0.0
    assert qb.close_allreduce([1], np.array([2]), 1, np.array([2]))[0, 0] == pytest.approx(A_LB)
    assert env0.action_masks()[ADD_B] and env0.action_masks()[ADD_C]
    assert not env.action_masks()[ADD_B] and not env.action_masks()[ADD_C]
    assert env.action_masks()[CLOSE_B_2] and env.qoe_masked


def test_an_add_within_the_slo_is_kept_and_commits_the_cost_models_all_reduce():
    """SLO 1200 ms: the add's bound (1181 ms + the 5 ms into the group) passes, the plan
    (1186 ms) complies; once the group closes, the committed all-reduce is the cost model's
    own ring time (1.001 s here)."""
    env = _env(_lab(1200))
    env.step(CLOSE_A_1)
    assert env.action_masks()[ADD_B]
    env.step(ADD_B)
    assert env.action_masks()[CLOSE_C_2]
    env.step(CLOSE_C_2)
    assert env._qA == pytest.approx(A_LB)
    _, m, _ = env.result
    assert m.qoe_ok and m.latency_ms == pytest.approx(1186.0)
    # the add's bound counts the boundary into the group too (session 10: a's interface and
    # the slowest member's flow, 2 x (0.0005 + 2e5 / 1e8) = 0.005 s): 1181 + 5 = 1186 ms,
    # the plan's own latency - kept under 1187 ms, masked under 1185
    for slo, kept in ((1187, True), (1185, False)):
        env = _env(_lab(slo))
        env.step(CLOSE_A_1)
        assert bool(env.action_masks()[ADD_B]) is kept


def test_the_exit_of_a_single_device_stage_counts_its_send_interface():
    """Closing [0, 1) on a: 0.12 s, then its 2 x 100 kB leave through a's send interface
    (1e8 B/s) after a 0.5 ms link, twice (activation, gradient): 2 x (0.0005 + 0.002) =
    0.005 s; the rest [1, 2) on b + c at 4e11 FLOP/s: 0.06 s. Bound 0.185 s (0.18 s without
    the exit; the rest on whole samples, one each: 3 x 4e9 / 2e11 = 0.06 s too): the close
    fails under a 182 ms SLO (the plan with b next takes 0.245 s), and is kept under 190. At
    182 ms no step passes (no plan complies; the adds' pair lookahead sees it: with b or c
    closing, the stage [0, 1) on a pair takes 0.06 s and the rest on the third device 0.12
    s), so the env falls back to the memory masks (`qoe_masked` False)."""
    env = _env(_lab(182))
    qb = env._bound()
    R_T, t_m, ret = qb.rest_bound([1, 2], 1)[:3]
    f_in, t_in = env._qin
    args = (f_in[[0]], t_in[[0]], [], np.array([0]), 0, np.array([1]), R_T[[0]], t_m[[0]], ret[[0]])
    assert not qb.close_ok(0.0, 0.0, *args, prev=[0], Mq=env._qM)[0, 0]
    assert not env.qoe_masked and env.action_masks()[CLOSE_A_1]
    assert _env(_lab(190)).action_masks()[CLOSE_A_1] and _env(_lab(190)).qoe_masked


# --- exhaustive: no step of any compliant plan is masked ----------------------------------
def _dfs(off: StageEnv, on: StageEnv | None, n_close: int, seen: dict) -> bool:
    """Every plan below `off` (memory masks only); `on` follows with the QoE masks while its
    steps are allowed. Returns whether a QoE-compliant plan lies below; asserts that no
    action the QoE masks remove leads to one."""
    seen["nodes"] += 1
    m_off = off.action_masks()
    m_on = on.action_masks() if on is not None else None
    any_ok = False
    for a in np.flatnonzero(m_off):
        c = off.fork()
        _, _, done, _, info = c.step(int(a))
        kept = on is not None and bool(m_on[a])
        if done:
            ok = bool(info["qoe_ok"])
        else:
            c_on = None
            if kept:
                c_on = on.fork()
                c_on.step(int(a))
            ok = _dfs(c, c_on, n_close, seen)
        if on is not None and not kept:
            seen["masked"] += 1
            seen["adds_masked"] += a >= n_close
            assert not ok, (off.inst.scenario.name, off.stages, off.group, int(a))
        any_ok |= ok
    return any_ok


@pytest.mark.parametrize("kind,k,battery", [("training", 14, False), ("inference", 6, False),
                                            ("training", 4, True), ("inference", 4, True)])
def test_every_compliant_plan_stays_reachable_by_enumeration(kind, k, battery):
    """battery: only instances with a battery target and a device on battery (the serving
    devices of the rest, a member's battery at one sample: session 10)."""
    seen = {"nodes": 0, "masked": 0, "adds_masked": 0, "with_compliant": 0}
    i = done = 0
    while done < k:
        sc = random_scenario(np.random.default_rng([5151, i]), max_devices=4, min_devices=2, n_blocks=6, kind=kind)
        i += 1
        inst = Instance(sc, sc.cluster.n)
        if not inst.completable:
            continue
        if battery and (sc.qoe.min_battery_hours is None or all(b is None for b in inst.cost.battery_j)):
            continue
        done += 1
        envs = []
        for q in (False, True):
            e = StageEnv(max_devices=inst.n, max_blocks=inst.B, pool_size=1, qoe_masks=q)
            e.reset(options={"scenario": inst})
            envs.append(e)
        seen["with_compliant"] += _dfs(envs[0], envs[1], inst.n * inst.B, seen)
    # the enumeration ran over instances with compliant plans and the masks removed steps
    assert seen["with_compliant"] >= (1 if battery else 3) and seen["masked"] > 0
    if kind == "training" and not battery:
        assert seen["adds_masked"] > 0         # data-parallel adds among them (the all-reduce term)
