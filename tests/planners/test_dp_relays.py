"""The DP under relays: a device inside a route is a participant (idle power over the
window, radio on every byte it forwards, battery checked; docs/cost-model.md "Energy and
battery"), so `dora` must score relays as the cost model does and stay equal to `oracle`.

Hand-computed figures use the toy profile (tests/toy.py; per sample: input 100 kB, FLOPs
2e9 + 4e9 + 3e9 + 1e9 = 10e9, model output 4 kB), n = 2 samples at 2 requests/s from
`cam` (window P = 0.5 s), M = 1, and chains of dedicated 80 Mbps = 1e7 B/s links (2 ms)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from dora_rl.cost import CostModel
from dora_rl.planners import run_planner
from dora_rl.planners.dp import search
from dora_rl.planners.dp.engine import DPEngine
from dora_rl.planners.dp.space import choose_spaces
from dora_rl.planners.oracle import oracle_search
from dora_rl.scenario import Scenario
from dora_rl.synthetic import random_scenario, sparse_scenario
from tests.toy import HOME, HUB, scenario

REL = 1e-9


def _gateway(objective: str, hours=None) -> dict:
    """cam - gw - server in a chain, and cam - board directly: the server is reachable
    only through gw (a relay); the board is not. gw is HOME's phone (0.5 W idle, 0.1 J/MB,
    on battery) when `hours` is given, else a mains gateway with 3 W idle."""
    gw = ({**HOME["devices"][0], "name": "gw"} if hours is not None else
          {"name": "gw", "kind": "generic", "gflops": 1, "memory_gb": 0.01, "idle_w": 3, "active_w": 6,
           "radio_j_per_mb": 0.05})
    board_w = (6, 40) if hours is not None else (2, 10)
    qoe = {"objective": objective}
    if hours is not None:
        qoe["min_battery_hours"] = hours
    return {
        "name": "toy_gateway", "model": {"profile": "toy.json"},
        "workload": {"kind": "inference", "batch": 2, "microbatches": 1, "request_rate": 2, "source": "cam"},
        "qoe": qoe,
        "devices": [
            HUB["devices"][0],
            gw,
            {"name": "server", "kind": "edge_server", "gflops": 500, "memory_gb": 16, "idle_w": 1, "active_w": 10,
             "radio_j_per_mb": 0.05},
            {"name": "board", "kind": "jetson_orin_nano", "gflops": 200, "memory_gb": 8, "idle_w": board_w[0],
             "active_w": board_w[1], "radio_j_per_mb": 0.05},
        ],
        "links": [{"a": a, "b": b, "mbps": 80, "latency_ms": 2}
                  for a, b in (("cam", "gw"), ("gw", "server"), ("cam", "board"))],
    }


def _agree(sc):
    """dora's best (exact) equals the oracle's; returns (dora result, oracle value)."""
    cost = CostModel(sc)
    dora = run_planner("dora", sc, cost)
    assert not dora.approximate
    ob, _ = oracle_search(sc, cost)
    obj = sc.qoe.objective
    assert dora.metrics.qoe_ok
    assert dora.metrics.objective(obj) == pytest.approx(ob[0], rel=REL)
    return dora, cost


def test_best_plan_avoids_an_idle_relay():
    """Energy objective. server alone: cam -> gw -> server (gw relays): c = 2 x 10e9 / 5e11
    = 0.04 s; cam 2 x 0.5 + 0.08 x 0.208 = 1.01664 J; gw 3 x 0.5 + 0.05 x 0.416 = 1.5208 J
    (idle over the window + 208 kB received and sent); server 10 x 0.04 + 1 x 0.46 +
    0.05 x 0.208 = 0.8704 J: 3.40784 J (1.90784 J without gw's idle).
    board alone: c = 0.1 s; board 10 x 0.1 + 2 x 0.4 + 0.05 x 0.208 = 1.8104 J; cam
    1.01664 J: 2.82704 J, the cheapest once the relay pays its idle power."""
    sc = scenario(_gateway("energy"))
    dora, cost = _agree(sc)
    assert dora.metrics.energy_j == pytest.approx(2.82704, rel=1e-9)
    assert [s.devices for s in dora.plan.stages] == [("board",)]
    server = cost.evaluate_stages([(0, 4, [cost.cluster.index["server"]], [1.0])], 1)
    assert server.energy_j == pytest.approx(3.40784, rel=1e-9)
    assert cost.cluster.index["gw"] in server.participants
    # the DP's own arithmetic (before re-scoring) charges the relay too
    for c in search(sc, cost, constrained=False).candidates:
        assert c.energy_j == pytest.approx(c.metrics.energy_j, rel=1e-9)


def test_a_routing_the_plan_does_not_take_keeps_no_plan_off_the_front():
    """Energy objective, the gateway cluster plus a direct cam - server link of 800 Mbps =
    1e8 B/s and 30 ms. The cost model routes the server plan through gw (least latency,
    M = 1: input 0.004 + 200 kB / 1e7 = 0.024 s vs 0.030 + 200 kB / 1e8 = 0.032 s direct,
    output 0.004 + 8 kB / 1e7 = 0.0048 s vs 0.030 + 8 kB / 1e8 = 0.03008 s; 68.8 ms in
    all): 3.40784 J (test above), so board alone (124.8 ms, 2.82704 J) is the best. The
    direct routings are options too (less occupancy: 0.002 s vs 0.02 s), so the DP also
    holds the server plan on them, which the cost model does not take: 0.032 + 0.04 +
    0.03008 = 102.08 ms and 0.8704 + 1.01664 = 1.88704 J without gw, below board on both;
    ranked on those figures, board left the front (dora then returned the server plan at
    3.40784 J)."""
    d = _gateway("energy")
    d["links"].append({"a": "cam", "b": "server", "mbps": 800, "latency_ms": 30})
    sc = scenario(d)
    dora, cost = _agree(sc)
    assert dora.metrics.energy_j == pytest.approx(2.82704, rel=1e-9)
    assert [s.devices for s in dora.plan.stages] == [("board",)]
    server = cost.evaluate_stages([(0, 4, [cost.cluster.index["server"]], [1.0])], 1)
    assert server.energy_j == pytest.approx(3.40784, rel=1e-9)
    assert server.latency_ms == pytest.approx(68.8, rel=1e-9)
    found, _ = DPEngine(cost, choose_spaces(cost, None, True)[0], constrained=False).run()
    srv = [[cost.cluster.index["server"]]]
    figs = sorted((c.energy_j, c.latency_s) for c in found if [d for _, _, d, _ in c.stages] == srv)
    assert figs[0] == pytest.approx((1.88704, 0.10208), rel=1e-9)   # the DP's figures on the direct routings


def test_best_plan_uses_the_relay_when_it_pays():
    """Latency objective on the same cluster: server alone takes x0 = 0.004 + 200 kB / 1e7
    = 0.024 s, c = 0.04 s, x1 = 0.004 + 8 kB / 1e7 = 0.0048 s: 68.8 ms, through gw; board
    alone 0.022 + 0.1 + 0.0028 = 124.8 ms. The DP's energy of the relay plan is the cost
    model's 3.40784 J."""
    sc = scenario(_gateway("latency"))
    dora, cost = _agree(sc)
    assert dora.metrics.latency_ms == pytest.approx(68.8, rel=1e-9)
    assert dora.metrics.energy_j == pytest.approx(3.40784, rel=1e-9)
    assert cost.cluster.index["gw"] in dora.metrics.participants
    assert all("gw" not in s.devices for s in dora.plan.stages)
    best = min(search(sc, cost).candidates, key=lambda c: c.latency_s)
    assert best.energy_j == pytest.approx(3.40784, rel=1e-9)        # the DP's own figure, relay included


def test_relay_on_battery_is_checked():
    """gw on battery (15 Wh at 80 % = 43 200 J, 0.5 W idle, 0.1 J/MB), target 24 h. The
    server plan makes gw relay 416 kB: 0.5 x 0.5 + 0.1 x 0.416 = 0.2916 J per 0.5 s =
    0.5832 W -> 43 200 / 0.5832 / 3600 = 20.6 h < 24 h: non-compliant, though fastest
    (68.8 ms). The board (40 W active, 6 W idle) then wins at 124.8 ms; it uses more
    energy (40 x 0.1 + 6 x 0.4 + 0.0104 + 1.01664 = 7.42704 J) than the server plan
    (3.40784 - 1.5208 + 0.2916 = 2.17864 J), so a DP that misses the relay's battery
    keeps only the server plan."""
    sc = scenario(_gateway("latency", hours=24))
    dora, cost = _agree(sc)
    assert dora.metrics.latency_ms == pytest.approx(124.8, rel=1e-9)
    assert dora.metrics.energy_j == pytest.approx(7.42704, rel=1e-9)
    server = cost.evaluate_stages([(0, 4, [cost.cluster.index["server"]], [1.0])], 1)
    assert server.energy_j == pytest.approx(2.17864, rel=1e-9)
    assert any(v.startswith("battery: gw lasts 20.6 h") for v in server.violations), server.violations


def test_traffic_analytics_at_12_requests_per_second():
    """traffic_analytics at 12 req/s: camera + a jetson data-parallel on block 0, then
    roadside. The camera's slice reaches roadside through either jetson (two equally fast
    2-hop routes, both candidates: docs/cost-model.md "Routes and network resources");
    among equally fast routings of a boundary the one whose relay is one of its own ends
    wins. The answer back to the camera has two equally fast routes too, through jetson1
    or jetson2, neither an end of that boundary: the first in candidate order is taken,
    so one mirror plan pays a relay's idle power (2.6 W / 12 req/s = 0.21667 J) and the
    other does not. dora keeps a plan without an outside relay, as the oracle does."""
    root = Path(__file__).resolve().parents[2] / "envs"
    d = yaml.safe_load((root / "traffic_analytics.yaml").read_text())
    d["workload"]["request_rate"] = 12
    d["qoe"]["min_throughput"] = 12
    sc = Scenario.from_dict(d, base_dir=root)
    dora, cost = _agree(sc)
    idx = cost.cluster.index
    stages = cost.stage_indices(dora.plan)
    j1, j2 = idx["jetson1"], idx["jetson2"]
    first = sorted(stages[0][2])
    assert first in (sorted([idx["camera"], j1]), sorted([idx["camera"], j2])) and stages[1][2] == [idx["roadside"]]
    members = {x for s in stages for x in s[2]} | {cost.src}
    assert set(dora.metrics.participants) == members
    swap = {j1: j2, j2: j1}
    mirror = [(l, r, sorted(swap.get(x, x) for x in devs), sh) for l, r, devs, sh in stages]
    m = cost.evaluate_stages(mirror, 1)
    assert m.energy_j >= dora.metrics.energy_j * (1 - 1e-12)
    if len(m.participants) > len(members):       # the mirror's answer takes an outside relay
        assert m.energy_j - dora.metrics.energy_j == pytest.approx(2.6 / 12, rel=1e-9)


@pytest.mark.parametrize("kind", ["inference", "training"])
def test_dora_equals_oracle_on_sparse_topologies(kind):
    """Random 3-5 device clusters thinned to a spanning tree (`sparse_scenario`): routes
    have relays; the exact DP equals the oracle, and its own figures are the cost model's
    where the plan takes every boundary's fastest routing (the DP's composition); where
    the cost model's one routing for the plan differs (docs/cost-model.md "Routes and
    network resources", step 3), its latency is lower than the DP's figure, never higher."""
    with_relay = compliant = same = 0
    for seed in range(16):
        rng = np.random.default_rng(4000 + seed)
        sc = random_scenario(rng, min_devices=3, max_devices=5, n_blocks=int(rng.integers(2, 6)), kind=kind,
                             objective="energy" if seed % 2 else "latency", qoe="random" if seed % 3 else "none")
        sc = sparse_scenario(rng, sc)
        cost = CostModel(sc)
        for c in search(sc, cost, exact=True, constrained=False).candidates:     # every complete plan kept
            if not c.metrics.feasible:
                continue
            assert c.latency_s * 1e3 >= c.metrics.latency_ms * (1 - 1e-9)
            if c.latency_s * 1e3 <= c.metrics.latency_ms * (1 + 1e-9):
                assert c.energy_j == pytest.approx(c.metrics.energy_j, rel=1e-9)
                same += 1
            members = {x for s in c.stages for x in s[2]} | {cost.src}
            with_relay += any(x not in members for x in c.metrics.participants)
        good = [c for c in search(sc, cost, exact=True).candidates if c.metrics.qoe_ok]
        obj = sc.qoe.objective
        ob, _ = oracle_search(sc, cost)
        assert (ob is None) == (not good)
        if ob is not None:
            compliant += 1
            assert min(c.metrics.objective(obj) for c in good) == pytest.approx(ob[0], rel=REL)
    assert compliant >= 4 and with_relay >= 1 and same >= 20
