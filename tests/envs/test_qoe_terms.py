"""The session-10 terms of StageEnv's QoE bound (dora_rl/envs/qoe_bound.py, qoe_rest.py,
qoe_add.py, qoe_samples.py), each on a hand-computed case: stages on whole samples (the
close and the add's pair lookahead), the devices that can serve the rest (battery at the
least busy time), the bytes on a shared medium, every member's flow into and out of a group."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from dora_rl.envs.instance import Instance
from dora_rl.envs.qoe_bound import QoEBound
from dora_rl.envs.qoe_samples import least_split, least_split_rows, least_split_without
from dora_rl.envs.stage import StageEnv
from tests.toy import HOME, HUB, scenario


def _env(sc, qoe_masks=True) -> StageEnv:
    inst = Instance(sc, sc.cluster.n)
    env = StageEnv(max_devices=inst.n, max_blocks=inst.B, pool_size=1, qoe_masks=qoe_masks)
    env.reset(options={"scenario": inst})
    return env


def test_least_split_of_whole_samples():
    # m = 2 on rates 100 and 300: the values k / g are 0.01, 0.02 and 1/300, 2/300; the 2nd
    # smallest is 2/300 (both samples on the fast device; the rate split says 2/400)
    assert least_split([100.0, 300.0], 2) == pytest.approx(2 / 300)
    # rates 100 and 150: 0.01, 0.02, 1/150, 2/150 -> 0.01 (one sample each: the slower one
    # sets the time; the rate split says 2/250 = 0.008)
    assert least_split([100.0, 150.0], 2) == pytest.approx(0.01)
    assert least_split([], 2) == np.inf
    # without device 2 (rate 300) of {100, 150, 300}: as {100, 150}; without 0: {150, 300} -> 2/300
    got = least_split_without([100.0, 150.0, 300.0], [0, 1, 2], np.array([[2], [0]]), 2)
    assert got == pytest.approx([0.01, 2 / 300])
    assert least_split_without([100.0], [0], np.array([[0]]), 2) == [np.inf]
    # a group {100} plus one device: {100, 150} -> 0.01, {100, 300} -> 2/300
    assert least_split_rows([100.0], [150.0, 300.0], 2) == pytest.approx([0.01, 2 / 300])


def _twins():
    """cam (25 GFLOPS, the source) and boards A (200) and B (100) on 1000 Mbps links
    (1.25e8 B/s, 0.1 ms); inference of 2 samples in one micro-batch at 12 req/s: T must
    stay under 1 / 12 = 0.0833 s. The toy model: 2, 4, 3, 1 GFLOPs per sample per block."""
    d = copy.deepcopy(HUB)
    d["name"] = "twins"
    d["workload"]["request_rate"] = 12
    d["devices"][1]["gflops"], d["devices"][2]["gflops"] = 200, 100
    d["links"] = [{"a": a, "b": b, "mbps": 1000, "latency_ms": 0.1}
                  for a, b in (("cam", "boardA"), ("cam", "boardB"), ("boardA", "boardB"))]
    return scenario(d)


def test_a_groups_stage_computes_on_whole_samples():
    """The pair {A, B} on the whole model (10 GFLOPs per sample): one sample each, so B's
    1e10 / 1e11 = 0.1 s sets the time (the rate split said 2e10 / 3e11 = 0.067 s), over
    the 0.0833 s period: its close is masked. Adding A is masked too (the pair lookahead:
    closed by B, the rest goes to cam alone, >= 2 x 4e9 / 2.5e10 = 0.32 s for [2, 4) and
    the pair's stage is >= 0.09 s beyond r = 2; closed by cam, its sample takes 2e9 / 2.5e10
    = 0.08 s for [0, 1) and B alone then takes >= 2 x 8e9 / 1e11 = 0.16 s), while the memory
    masks allow it. Adding B is kept, rightly: [0, 1) on B + cam (0.08 s), [1, 4) on A
    (2 x 8e9 / 2e11 = 0.08 s) complies."""
    from dora_rl.plan import Plan

    sc = _twins()
    env, env0 = _env(sc), _env(sc, qoe_masks=False)
    cam, A, B = (sc.cluster.index[x] for x in ("cam", "boardA", "boardB"))
    n, Bm = env.inst.n, env.inst.B
    qb = env._bound()
    assert qb._group_t([A], [B])[0] == pytest.approx(1e-11)
    assert qb._group_t([], [A])[0] == pytest.approx(2 / 2e11)             # one device: m / g
    assert env0.action_masks()[n * Bm + A] and not env.action_masks()[n * Bm + A]
    assert env.action_masks()[n * Bm + B] and env.qoe_masked
    m = env.inst.cost.evaluate(Plan.make([(0, 1, ["boardB", "cam"]), (1, 4, ["boardA"])], 1))
    assert m.qoe_ok and m.bottleneck_s == pytest.approx(0.08, rel=0.02)
    # the group's close itself: on the memory env, add A, then the close of [0, 4) on B
    env0.step(n * Bm + A)
    F = qb.close_ok(0.0, 0.0, np.zeros(1), np.zeros(1), [A], np.array([B]), 0, np.array([4]),
                    np.zeros(1), np.zeros(1), np.zeros(1), prev=[cam])
    assert not F[0, 0]
    qb.T_cap = 0.1001          # a period cap just above the whole-sample time: kept
    assert qb.close_ok(0.0, 0.0, np.zeros(1), np.zeros(1), [A], np.array([B]), 0, np.array([4]),
                       np.zeros(1), np.zeros(1), np.zeros(1), prev=[cam])[0, 0]


def _home_with(extra: dict):
    d = copy.deepcopy(HOME)
    d["devices"].append(extra)
    d["links"].append({"a": "phone", "b": extra["name"], "mbps": 80, "latency_ms": 2, "medium": "wifi"})
    return scenario(d)


@pytest.mark.parametrize("gflops,battery_wh,serves", [(100, 2.0, False), (10, 4.0, False), (100, 4.0, True)])
def test_a_battery_device_serves_only_if_it_lasts_one_sample_of_the_lightest_block(gflops, battery_wh, serves):
    """HOME (6 h target, 2 req/s: a compliant plan's period is 0.5 s) plus a tablet (idle
    0.5 W, active 5 W, full battery). 2 Wh = 7200 J lasts 7200 / 0.5 / 3600 = 4 h even idle.
    4 Wh = 14400 J lasts 8 h idle, but a member computes at least one sample of the
    lightest block (1 GFLOP): at 10 GFLOPS 0.1 s per 0.5 s, 0.5 + 4.5 x 0.2 = 1.4 W, 2.86 h;
    at 100 GFLOPS 0.01 s, 0.59 W, 14400 / 0.59 / 3600 = 6.78 h >= 6: serves. A device that
    cannot serve leaves the rest's rates, and its add is masked (the memory masks allow it)."""
    tab = {"name": "tablet", "kind": "phone", "gflops": gflops, "memory_gb": 4, "idle_w": 0.5, "active_w": 5,
           "battery_wh": battery_wh, "battery_level": 1.0, "radio_j_per_mb": 0.1}
    sc = _home_with(tab)
    inst = Instance(sc, sc.cluster.n)
    qb = QoEBound(inst)
    t = sc.cluster.index["tablet"]
    assert not qb.serve[t, inst.B]
    assert qb.serve[t, :inst.B].tolist() == [serves] * inst.B
    assert qb.serve[[d for d in range(inst.n) if d != t], :inst.B].all()     # phone 20.3 h; laptop, tv: mains
    pool = list(range(inst.n))
    assert qb.rest_bound(pool, 1)[3] == pytest.approx(float(inst.rate.sum()) - (0.0 if serves else inst.rate[t]))
    if not serves:
        n, Bm = inst.n, inst.B
        assert _env(sc, qoe_masks=False).action_masks()[n * Bm + t]
        assert not _env(sc).action_masks()[n * Bm + t]


def _wifi_cam():
    """cam (25 GFLOPS, the source), B and C (2000 GFLOPS); every link 800 Mbps (1e8 B/s),
    0.1 ms, on one wifi medium of 80 Mbps (1e7 B/s); inference of 1 sample at 60 req/s:
    T must stay under 1 / 60 = 0.01667 s."""
    dev = {"kind": "jetson_orin_nano", "gflops": 2000, "memory_gb": 8, "idle_w": 2, "active_w": 10,
           "radio_j_per_mb": 0.05}
    d = {"name": "wifi_cam", "model": {"profile": "toy.json"},
         "workload": {"kind": "inference", "batch": 1, "microbatches": 1, "request_rate": 60, "source": "cam"},
         "qoe": {"objective": "latency"},
         "devices": [dict(HUB["devices"][0]), {"name": "B", **dev}, {"name": "C", **dev}],
         "links": [{"a": a, "b": b, "mbps": 800, "latency_ms": 0.1, "medium": "wifi"}
                   for a, b in (("cam", "B"), ("cam", "C"), ("B", "C"))],
         "media": {"wifi": {"mbps": 80}}}
    return scenario(d)


def test_the_bytes_on_a_shared_medium_add_up_in_the_period():
    """A stage [0, r) on B: cam's input (1e5 B) enters over wifi, and B's output leaves over
    wifi (all of B's links are on it): b0 -> 2e5 B, b1 -> 1e5, b2 -> 5e4; at r = 4 the
    4e3 B result returns to cam. The medium carries both: T >= (1e5 + 2e5) / 1e7 = 0.03 s
    (r = 1), 0.02 (r = 2), 0.015 (r = 3), 0.0104 (r = 4) against the 0.01667 s cap: r = 1
    and 2 masked, 3 and 4 kept. Each transfer alone takes 0.01 s at most: without the sum
    the bound keeps all four (the memory masks do). After closing [0, 3) on B the committed
    bytes are cam's input, 1e5."""
    sc = _wifi_cam()
    env, env0 = _env(sc), _env(sc, qoe_masks=False)
    B, Bm = sc.cluster.index["B"], env.inst.B
    qb = env._bound()
    assert qb.forced[:, 0].tolist() == [1.0, 1.0, 1.0] and qb.mcap.tolist() == [1e7]
    assert qb.media_in([qb.src], [], [B], 0)[0, 0] == pytest.approx(1e5)
    assert [bool(env.action_masks()[B * Bm + r - 1]) for r in (1, 2, 3, 4)] == [False, False, True, True]
    assert all(env0.action_masks()[B * Bm + r - 1] for r in (1, 2, 3, 4))
    env.step(B * Bm + 2)
    assert env._qM.tolist() == pytest.approx([1e5])


def test_every_members_flow_enters_and_leaves_a_group():
    """HUB with cam - boardB at 5 ms and boardA - boardB at 10 ms (cam - boardA 1 ms: the
    least latency cam -> boardB is the direct 5 ms): into {A, B} from cam, each board
    gets a sample, so the boundary takes cam's interface (2 x 100 kB / 1.25e7 B/s = 0.016 s)
    plus the slowest flow's 5 ms = 0.021 s (the interface bound alone had the least latency,
    1 ms). Back to cam at the end: 2 x 4 kB / 1.25e7 = 0.00064 s plus 5 ms."""
    d = copy.deepcopy(HUB)
    d["links"][1]["latency_ms"] = 5
    d["links"][2]["latency_ms"] = 10
    sc = scenario(d)
    inst = Instance(sc, sc.cluster.n)
    qb = QoEBound(inst)
    cam, A, B = (sc.cluster.index[x] for x in ("cam", "boardA", "boardB"))
    assert qb._flows_in([cam], [A], [B], 0)[0] == pytest.approx(0.021)
    assert qb._xfer([cam], [A, B], 0) == pytest.approx((0.016, 0.001))
    assert qb._flows_out([A], [B], False)[0] == pytest.approx(0.00064 + 0.005)
    # the source inside the group: only the other member's flow, of at least one sample (4 kB)
    assert qb._flows_out([cam], [B], False)[0] == pytest.approx(4e3 / 1.25e7 + 0.005)
