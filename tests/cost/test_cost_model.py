"""Hand-computed cases of docs/cost-model.md. Every golden number here is derived in
that page from the formulas, step by step; none is copied from a run."""

import math

import pytest

from dora_rl.cost import CostModel
from dora_rl.plan import Plan
from tests.toy import HOME, LAB, scenario

REL = 1e-9


def approx(x):
    return pytest.approx(x, rel=REL, abs=1e-12)


@pytest.fixture(scope="module")
def home():
    return CostModel(scenario(HOME))


def test_worked_example_plan_a(home):
    m = home.evaluate(Plan.make([(0, 2, ["phone"]), (2, 4, ["laptop"])], 1))
    assert m.stage_compute_s == [approx(0.120), approx(0.016)]
    assert m.transfer_s == [0.0, approx(0.022), approx(0.0028)]
    assert m.bottleneck == "stage 0" and m.bottleneck_s == approx(0.120)
    assert m.latency_ms == approx(160.8)
    assert m.throughput == approx(1 / 0.12)
    assert m.period_s == approx(0.5)
    d = m.to_dict()
    assert d["energy_by_device_j"] == {"phone": approx(0.8108), "laptop": approx(2.9104)}
    assert m.energy_j == approx(3.7212)
    assert d["battery_hours"]["phone"] == approx(15 * 0.8 * 3600 / (0.8108 / 0.5) / 3600)
    assert d["memory_bytes"] == {"phone": approx(12.6e6), "laptop": approx(3.3e6)}
    assert m.qoe_ok and m.violations == []


def test_worked_example_plan_b_contention(home):
    m = home.evaluate(Plan.make([(0, 1, ["phone"]), (1, 4, ["laptop", "tv"], [0.5, 0.5])], 1))
    # m = 2 samples: phone 2 x 2e9 / 1e11; laptop 1 x 8e9 / 5e11; tv 1 x 8e9 / 2.5e11
    assert m.stage_compute_s == [approx(0.040), approx(0.032)]
    # the two 200 kB flows of boundary 1 share the WiFi: 400 kB / 1e7 B/s, not 200 kB / 1e7
    assert m.transfer_s == [0.0, approx(0.002 + 0.040), approx(0.002 + 0.0008)]
    assert m.bottleneck == "medium wifi" and m.bottleneck_s == approx(0.0408)
    assert m.latency_ms == approx(116.8)
    assert m.throughput == approx(1 / 0.0408)
    d = m.to_dict()
    assert d["energy_by_device_j"] == {"phone": approx(0.4708), "laptop": approx(2.9102), "tv": approx(1.2662)}
    assert m.energy_j == approx(4.6472)
    assert d["memory_bytes"]["tv"] == approx(11.3e6)


def test_shares_are_realized_in_whole_samples(home):
    """A 1-sample micro-batch cannot be split: shares (2/3, 1/3) give the laptop the
    sample (edges [0, floor(2/3 + 1/2) = 1, 1]) and the tv nothing."""
    m = home.evaluate(Plan.make([(0, 1, ["phone"]), (1, 4, ["laptop", "tv"], [2 / 3, 1 / 3])], 2))
    assert m.stage_compute_s == [approx(0.020), approx(8e9 / 5e11)]
    assert m.busy_s[2] == 0.0
    from dora_rl.plan import sample_edges

    assert sample_edges(1, [2 / 3, 1 / 3]) == [0, 1, 1]
    assert sample_edges(10, [0.25, 0.25, 0.5]) == [0, 3, 5, 10]
    assert sample_edges(3, [1 / 3] * 3) == [0, 1, 2, 3]


def test_contention_halves_bandwidth():
    """Two equal flows on one medium each see half of it; on dedicated links they still
    share the sender's interface (as fast as its fastest link, 80 Mbps = 1e7 B/s), so
    taking the medium away does not make the phone's two sends concurrent."""
    d = {**HOME, "qoe": {"objective": "latency"}}
    plan = Plan.make([(0, 1, ["phone"]), (1, 4, ["laptop", "tv"], [0.5, 0.5])], 1)
    shared = CostModel(scenario(d)).evaluate(plan)
    dedicated = {**d, "links": [{k: v for k, v in ln.items() if k != "medium"} for ln in HOME["links"]], "media": {}}
    alone = CostModel(scenario(dedicated)).evaluate(plan)
    flow = 0.5 * 2 * 200_000 / 1e7  # half of m=2 samples x 200 kB per receiver at 1e7 B/s
    assert shared.transfer_s[1] == approx(0.002 + 2 * flow)
    assert alone.transfer_s[1] == approx(0.002 + 2 * flow)      # phone's send interface: 400 kB / 1e7
    # the answers (4 kB from each member) share the phone's receive interface: 8 kB / 1e7
    assert alone.transfer_s[2] == approx(0.002 + 8_000 / 1e7)


def test_memory_overflow_is_infeasible():
    d = {**HOME, "devices": [dict(x) for x in HOME["devices"]]}
    d["devices"][2]["memory_gb"] = 0.01  # tv: 10 MB < 11.1 MB needed
    m = CostModel(scenario(d)).evaluate(Plan.make([(0, 1, ["phone"]), (1, 4, ["laptop", "tv"], [0.5, 0.5])], 1))
    assert not m.feasible and not m.qoe_ok
    assert any(v.startswith("memory: tv needs 0.0113 GB > 0.01 GB") for v in m.violations)


def test_qoe_violations_are_named(home):
    m = home.evaluate(Plan.make([(0, 4, ["phone"])], 1))
    # phone alone: 2 * 10e9 / 1e11 = 0.2 s = 200 ms: exactly the SLO (met), 5 req/s capacity (met)
    assert m.latency_ms == approx(200.0)
    assert not any(v.startswith("latency") for v in m.violations)
    d = {**HOME, "qoe": {**HOME["qoe"], "latency_slo_ms": 150, "min_throughput": 6, "min_battery_hours": 20}}
    m = CostModel(scenario(d)).evaluate(Plan.make([(0, 4, ["phone"])], 1))
    kinds = sorted(v.split(":")[0] for v in m.violations)
    assert kinds == ["battery", "latency", "throughput"]
    # phone: 5 W * 0.2 + 0.5 W * 0.3 = 1.15 J per 0.5 s -> 2.3 W -> 43200 / 2.3 / 3600 h
    assert m.battery_hours[0] == approx(43200 / 2.3 / 3600)


def test_worked_example_training():
    cm = CostModel(scenario(LAB))
    m = cm.evaluate(Plan.make([(0, 2, ["jetA"]), (2, 4, ["jetB", "jetC"])], 4))
    # ring jetB -> jetC -> jetB: the two directions are separate capacities (full duplex)
    assert m.allreduce_s == approx(2 * (0.0005 + 1.5e6 / 1e8))
    # x1: jetA's send interface (1e8 B/s) carries both 100 kB flows: 0.0005 + 2e5/1e8 =
    # 0.0025 s, twice (activation + gradient); iteration = 0.18 + 0.06 + 0.005 + 3 x 0.18
    # + 0.031 = 0.816 s (was 0.814 when the two flows did not share jetA's interface)
    assert m.transfer_s[1] == approx(0.0025)
    assert m.latency_ms == approx(816.0)
    assert m.throughput == approx(8 / 0.816)
    d = m.to_dict()
    assert d["memory_bytes"] == {"jetA": approx(25.6e6), "jetB": approx(6.154e6), "jetC": approx(6.154e6)}
    # jetA: 10 x 0.72 + 2 x (0.816 - 0.72) + 0.05 x 1.6 MB = 7.472 J
    assert d["energy_by_device_j"]["jetA"] == approx(7.472)
    # jetB: 10 x 0.24 + 2 x (0.816 - 0.24) + 0.05 x (0.8 MB activations + gradients + 6 MB all-reduce)
    assert d["energy_by_device_j"]["jetB"] == approx(3.892)
    assert m.energy_j == approx(7.472 + 2 * 3.892)   # 15.256 J


def test_training_equal_stages_textbook_1f1b():
    """Equal stages, free links: iteration = (M + S - 1) * (t_f + t_b)."""
    d = {**LAB, "links": [{**ln, "mbps": 1e9, "latency_ms": 0} for ln in LAB["links"]]}
    s = scenario(d)
    from dora_rl.profile.model_profile import Block, ModelProfile

    prof = ModelProfile("eq", 1000, [Block(f"b{i}", 1e9, 1000, 1000) for i in range(4)])
    s = s.replace(profile=prof)
    m = CostModel(s).evaluate(Plan.make([(0, 2, ["jetA"]), (2, 4, ["jetB"])], 4))
    tf = 2 * 2e9 / 2e11
    assert m.latency_ms == pytest.approx((4 + 2 - 1) * 3 * tf * 1e3, rel=1e-4)  # links are ~free


def test_more_microbatches_pipeline():
    """Inference latency = fill + (M - 1) * T: with M micro-batches the period repeats."""
    cm = CostModel(scenario({**HOME, "workload": {**HOME["workload"], "batch": 4}}))
    m1 = cm.evaluate(Plan.make([(0, 2, ["phone"]), (2, 4, ["laptop"])], 1))
    m4 = cm.evaluate(Plan.make([(0, 2, ["phone"]), (2, 4, ["laptop"])], 4))
    # M=4, m=1: c0 = 6e9/1e11 = 0.06; fill = 0.06 + 0.008 + (0.002+0.01) + (0.002+0.0004); T = 0.06
    assert m4.latency_ms == approx((0.06 + 0.008 + 0.012 + 0.0024 + 3 * 0.06) * 1e3)
    assert m4.latency_ms < m1.latency_ms


def test_idle_only_participants_counted(home):
    m = home.evaluate(Plan.make([(0, 4, ["laptop"])], 1))
    assert sorted(m.to_dict()["energy_by_device_j"]) == ["laptop", "phone"]  # source always participates
    assert m.energy_by_device[2] == 0.0  # tv not used
    assert not math.isnan(m.energy_j)
