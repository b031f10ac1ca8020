"""The DP under the joint routing of training rings: `CostModel._allreduces` routes a
plan's ring all-reduces together for the least A = max(max_s AR_s, max_mu sum_s
bytes_s,mu / C_mu) (docs/cost-model.md "All-reduce"), so a ring sharing a medium with
another may take a slower routing that stays off it; `dora` must follow (one label per
ring routing, `Pieces.rings`) and stay equal to `oracle`.

The instance (hand-built, `_rings`): profile of 2 blocks, each 5e9 FLOPs and P = 250 kB
of parameters, no activation between them (out 0 B), input 1000 B per sample; training,
batch 2, M = 1 (m = 2: a 2-device group computes one sample per member), sgd; A, B, C, D
at 100 GFLOP/s; the hub (and the camera) at 1 GFLOP/s. Links (1 ms each): A-B, B-C, C-D
on the shared medium wifi (100 Mbps = 12.5e6 B/s, links as fast), hub-C 1000 Mbps =
125e6 B/s, hub-D 50 Mbps = 6.25e6 B/s (dedicated). Interfaces are as fast as a device's
fastest link: hub and C 125e6 B/s, A (or 125e6 with the camera's link), B, D 12.5e6.
Ring of {A, B}: one routing. Ring of {C, D}: direct on wifi, or both flows through the
hub on dedicated links (slower alone, off the medium); mixed routings are dominated."""

from __future__ import annotations

import pytest

from dora_rl.cost import CostModel
from dora_rl.planners import run_planner
from dora_rl.planners.dp.engine import DPEngine
from dora_rl.planners.dp.space import choose_spaces
from dora_rl.planners.oracle import oracle_search
from dora_rl.profile.model_profile import Block, ModelProfile
from dora_rl.scenario import Scenario

REL = 1e-9

# One ring step of g = 2 sends chunk = P / 2 = 125 kB each way; 2 (g - 1) = 2 steps.
# {A, B} and {C, D} direct: wifi carries both chunks, 250 kB / 12.5e6 = 0.02 s (links and
#   interfaces carry one: 0.01 s), x = 1 ms + 0.02 = 0.021 s; AR = 2 x 0.021 = 0.042 s,
#   2 x 250 kB = 500 kB on wifi per ring.
# {C, D} through the hub: links hub-D carry 125 kB / 6.25e6 = 0.02 s each way (hub-C
#   0.001 s, hub's interface 250 kB / 125e6 = 0.002 s, D's 0.01 s), x = 2 ms + 0.02 =
#   0.022 s; AR = 0.044 s, nothing on wifi.
# Both rings direct: A = max(0.042, 0.042, (500 + 500) kB / 12.5e6 = 0.08) = 0.08 s;
# {C, D} through the hub: A = max(0.042, 0.044, 500 kB / 12.5e6 = 0.04) = 0.044 s (the
# cost model's choice); each ring's fastest alone would say 0.08 s.
A_JOINT, A_FASTEST = 0.044, 0.08
# stage compute: c = 1 sample x 5e9 / 1e11 = 0.05 s, u = 3 c = 0.15 s per stage; the
# boundary between the stages carries 0 B.
U = 0.15
# hub as source: input to {C, D} hub -> C 1000 B (link 1000 / 125e6 = 8e-6 s) and hub -> D
#   1000 B (link 1000 / 6.25e6 = 1.6e-4 s; hub's send interface 2000 / 125e6 = 1.6e-5, D's
#   receive 1000 / 12.5e6 = 8e-5), x0 = 1 ms + 1.6e-4 = 1.16e-3 s; plan [0,1) {C, D},
#   [1,2) {A, B}: latency = 1.16e-3 + 0.15 + 0.15 + 0.044 = 0.34516 s.
# camera as source (linked to A at 1000 Mbps): cam -> A 1000 B direct, cam -> B through A
#   (2 ms; A -> B link and wifi 1000 / 12.5e6 = 8e-5 s), x0 = 2 ms + 8e-5 = 2.08e-3 s;
#   plan [0,1) {A, B}, [1,2) {C, D} (the ring with the hub routing in the last stage):
#   latency = 2.08e-3 + 0.3 + 0.044 = 0.34608 s.
# With each ring on its fastest routing these plans would take 0.38116 s and 0.38208 s,
# above the 360 ms SLO; every other plan is slower (one stage on {C, D}: 1.16e-3 + 0.3 +
# 0.082 = 0.38316 s; a 1-device stage doubles its compute to 0.3 s).
SLO_MS = 360
BEST_S = {"hub": 1.16e-3 + 2 * U + A_JOINT, "cam": 2.08e-3 + 2 * U + A_JOINT}


def _rings(source: str, medium: bool = True) -> Scenario:
    prof = ModelProfile("rings", 1000, [Block("b0", 5e9, 250_000, 0), Block("b1", 5e9, 250_000, 0)])

    def dev(name, gflops):
        return {"name": name, "kind": "generic", "gflops": gflops, "memory_gb": 8, "idle_w": 1, "active_w": 5,
                "radio_j_per_mb": 0.05}

    def link(a, b, mbps, med=None):
        return {"a": a, "b": b, "mbps": mbps, "latency_ms": 1, **({"medium": med} if med else {})}

    wifi = "wifi" if medium else None
    devs = [dev(n, 100) for n in "ABCD"]
    links = [link("A", "B", 100, wifi), link("B", "C", 100, wifi), link("C", "D", 100, wifi),
             link("hub", "C", 1000), link("hub", "D", 50)]
    if source == "cam":
        devs = [dev("cam", 1), *devs, dev("hub", 1)]
        links.append(link("cam", "A", 1000))
    else:
        devs = [dev("hub", 1), *devs]
    d = {"name": "rings", "model": {"profile": "rings.json"},
         "workload": {"kind": "training", "batch": 2, "microbatches": 1, "source": source, "optimizer": "sgd"},
         "qoe": {"objective": "latency", "latency_slo_ms": SLO_MS}, "devices": devs, "links": links,
         **({"media": {"wifi": {"mbps": 100}}} if medium else {})}
    return Scenario.from_dict(d, profile=prof)


@pytest.mark.parametrize("source", ["hub", "cam"])
def test_dora_follows_the_joint_routing_of_rings(source):
    """The optimum needs {C, D}'s ring off the medium: dora (exact) finds it, as the oracle
    does (with each ring on its fastest routing the DP put it above the SLO and found no
    plan; main before this change raised NoFeasiblePlan here)."""
    sc = _rings(source)
    cost = CostModel(sc)
    best, _ = oracle_search(sc, cost)
    assert best is not None
    assert best[2].latency_ms == pytest.approx(BEST_S[source] * 1e3, rel=REL)
    assert best[2].allreduce_s == pytest.approx(A_JOINT, rel=REL)
    res = run_planner("dora", sc, cost)
    assert not res.approximate
    assert res.metrics.latency_ms == pytest.approx(best[0], rel=REL)
    assert res.metrics.energy_j == pytest.approx(best[2].energy_j, rel=REL)
    names = [tuple(s.devices) for s in res.plan.stages]
    assert names == ([("C", "D"), ("A", "B")] if source == "hub" else [("A", "B"), ("C", "D")])


@pytest.mark.parametrize("source", ["hub", "cam"])
def test_ring_routings_of_a_stage(source):
    """{C, D}'s ring has two routings (direct: 0.042 s, 500 kB on wifi; through the hub:
    0.044 s, none on wifi, the hub a relay when it is not the source); {A, B}'s one."""
    sc = _rings(source)
    cost = CostModel(sc)
    eng = DPEngine(cost, choose_spaces(cost, None, None)[0])
    idx = cost.cluster.index
    cd = eng.pieces.rings([idx["C"], idx["D"]], 250_000.0)
    assert [r.time for r in cd] == pytest.approx([0.042, 0.044], rel=REL)
    assert [r.loads for r in cd] == [[500_000.0], [0.0]]
    hub = idx["hub"]
    assert cd[0].relays == 0
    assert cd[1].relays == (0 if source == "hub" else 1 << hub)
    # the hub forwards each 125 kB chunk (received + sent) on both flows of 2 steps: 1 MB
    assert cd[1].relay_j == pytest.approx({hub: 0.05e-6 * 1e6}, rel=REL)
    ab = eng.pieces.rings([idx["A"], idx["B"]], 250_000.0)
    assert [r.time for r in ab] == pytest.approx([0.042], rel=REL)


def test_ring_routing_slower_without_a_medium_is_dropped():
    """Without a shared medium A = max_s AR_s, so the joint choice takes each ring's
    fastest routing: a slower one with less occupancy is an option of the step
    (`routing.options`) but not of the DP. C-D direct (100 Mbps, 1 ms): 125 kB / 12.5e6 =
    0.01 s, x = 0.011 s; through the hub (1000 Mbps, 10 ms per link): lat 0.02 s,
    occupancy 250 kB / 125e6 = 0.002 s (the hub's interfaces), x = 0.022 s."""
    d = {"name": "ring_nomedium", "model": {"profile": "rings.json"},
         "workload": {"kind": "training", "batch": 2, "microbatches": 1, "source": "hub", "optimizer": "sgd"},
         "qoe": {"objective": "latency"},
         "devices": [{"name": n, "kind": "generic", "gflops": 100, "memory_gb": 8, "idle_w": 1, "active_w": 5,
                      "radio_j_per_mb": 0.05} for n in ("hub", "C", "D")],
         "links": [{"a": "C", "b": "D", "mbps": 100, "latency_ms": 1},
                   {"a": "hub", "b": "C", "mbps": 1000, "latency_ms": 10},
                   {"a": "hub", "b": "D", "mbps": 1000, "latency_ms": 10}]}
    prof = ModelProfile("rings", 1000, [Block("b0", 5e9, 250_000, 0), Block("b1", 5e9, 250_000, 0)])
    cost = CostModel(Scenario.from_dict(d, profile=prof))
    eng = DPEngine(cost, choose_spaces(cost, None, None)[0])
    opts = cost.allreduce_options([1, 2], 250_000.0)
    assert [o.x for o in opts] == pytest.approx([0.011, 0.022], rel=REL)
    assert [o.occ for o in opts] == pytest.approx([0.01, 0.002], rel=REL)
    rings = eng.pieces.rings([1, 2], 250_000.0)
    assert [r.time for r in rings] == pytest.approx([2 * 0.011], rel=REL)
