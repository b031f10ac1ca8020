"""The published baselines (dora_rl/planners/baselines/, docs/baselines.md): each on a
hand-made instance where its rule gives a known answer, pipeedge against brute force,
determinism of `random`, memory failures, and speed."""

import itertools

import numpy as np
import pytest

from dora_rl.cost import CostModel
from dora_rl.errors import NoFeasiblePlan
from dora_rl.planners.base import get_planner
from dora_rl.planners.baselines import device_order, proportional_cuts
from dora_rl.profile.model_profile import Block, ModelProfile
from dora_rl.scenario import Scenario
from tests.toy import HOME, LAB
from tests.toy import scenario as toy_scenario

NAMES = ["local", "offload", "neurosurgeon", "even", "proportional", "pipeedge", "data_parallel", "random"]


# --- instance builders -------------------------------------------------------------

def uniform_profile(B: int, flops=1e9, params=1_000_000, out=10_000, inp=10_000) -> ModelProfile:
    return ModelProfile("u", inp, [Block(f"b{i}", flops, params, out) for i in range(B)])


def make(devices, *, profile, mbps=1e6, latency_ms=0.0, kind="inference", batch=1, M=1, source=None,
         objective="latency", links=None, media=None, optimizer="sgd") -> Scenario:
    """Devices given as (name, gflops, memory_gb); a full mesh of dedicated links unless
    `links` is given."""
    devs = [{"name": n, "gflops": g, "memory_gb": mem, "idle_w": 1, "active_w": 5} for n, g, mem in devices]
    names = [d["name"] for d in devs]
    if links is None:
        links = [{"a": a, "b": b, "mbps": mbps, "latency_ms": latency_ms} for a, b in itertools.combinations(names, 2)]
    wl = {"kind": kind, "batch": batch, "microbatches": M, "source": source or names[0]}
    if kind == "training":
        wl["optimizer"] = optimizer
    d = {"name": "t", "model": {"profile": "t.json"}, "workload": wl, "qoe": {"objective": objective},
         "devices": devs, "links": links}
    if media:
        d["media"] = media
    return Scenario.from_dict(d, profile=profile)


def random_instance(rng, n, B, *, training=False, M=1, mem=(0.3, 3.0)) -> Scenario:
    prof = ModelProfile("r", int(rng.integers(10_000, 1_000_000)), [
        Block(f"b{i}", float(rng.uniform(1e8, 5e9)), int(rng.integers(1e6, 5e8)), int(rng.integers(1e3, 1e6)))
        for i in range(B)])
    devices = [(f"d{i}", float(rng.uniform(20, 500)), float(rng.uniform(*mem))) for i in range(n)]
    names = [d[0] for d in devices]
    links = [{"a": a, "b": b, "mbps": float(rng.uniform(20, 1000)), "latency_ms": float(rng.uniform(0, 5))}
             for a, b in itertools.combinations(names, 2)]
    return make(devices, profile=prof, links=links, kind="training" if training else "inference",
                batch=8 if training else 4, M=M)


def plan_of(name, sc, **opts):
    cost = CostModel(sc)
    p = get_planner(name, **opts).plan(sc, cost)
    cost.validate(p)
    return p, cost.evaluate(p), cost


def stages_of(p):
    return [(s.start, s.end, list(s.devices)) for s in p.stages]


# --- every baseline ------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("which", [HOME, LAB])
def test_every_baseline_valid_feasible_and_keeps_microbatches(name, which):
    sc = toy_scenario(which)
    p, m, _ = plan_of(name, sc)
    assert p.microbatches == sc.workload.microbatches
    assert m.feasible


@pytest.mark.parametrize("name", NAMES)
def test_no_fit_when_nothing_fits(name):
    sc = make([("a", 100, 0.001), ("b", 100, 0.001), ("c", 100, 0.001)], profile=uniform_profile(4))
    with pytest.raises(NoFeasiblePlan) as e:
        get_planner(name).plan(sc, CostModel(sc))
    assert e.value.constraint == "memory"
    assert name in str(e.value)


def test_baselines_ignore_qoe():
    """A latency SLO nobody can meet: baselines still return their plan."""
    d = dict(HOME, qoe={"latency_slo_ms": 0.001, "objective": "latency"})
    sc = toy_scenario(d)
    for name in NAMES:
        p, m, _ = plan_of(name, sc)
        assert m.feasible and not m.qoe_ok


def test_all_plan_16_devices_50_blocks():
    """Every baseline returns a valid plan at 16 x 50 (their times: bench_planners, baseline_ms_16x50)."""
    rng = np.random.default_rng(7)
    for training in (False, True):
        sc = random_instance(rng, 16, 50, training=training, M=4 if training else 1, mem=(30, 60))
        cost = CostModel(sc)
        for name in NAMES:
            p = get_planner(name).plan(sc, cost)
            p.validate(50, cost.names)


# --- local / offload -------------------------------------------------------------------

def test_local_is_one_stage_on_source():
    sc = make([("a", 100, 4), ("src", 50, 4)], profile=uniform_profile(5), source="src")
    p, _, _ = plan_of("local", sc)
    assert stages_of(p) == [(0, 5, ["src"])]


def test_local_raises_when_model_overflows_source():
    sc = make([("src", 100, 0.001), ("big", 100, 8)], profile=uniform_profile(5))
    with pytest.raises(NoFeasiblePlan):
        get_planner("local").plan(sc)


def test_offload_picks_10x_faster_device_on_fast_links():
    sc = make([("src", 100, 4), ("mid", 200, 4), ("fast", 1000, 4), ("slow", 50, 4)],
              profile=uniform_profile(6), mbps=1e7, latency_ms=0.0)
    p, _, _ = plan_of("offload", sc)
    assert stages_of(p) == [(0, 6, ["fast"])]


def test_offload_stays_local_on_very_slow_links():
    prof = uniform_profile(6, inp=1_000_000, out=1_000_000)
    sc = make([("src", 100, 4), ("fast", 1000, 4)], profile=prof, mbps=0.1, latency_ms=50)
    p_off, _, cost = plan_of("offload", sc)
    p_loc, m_loc, _ = plan_of("local", sc)
    assert stages_of(p_off) == stages_of(p_loc) == [(0, 6, ["src"])]
    remote = cost.evaluate_stages([(0, 6, [1], [1.0])], 1)
    assert m_loc.latency_ms < remote.latency_ms


def test_offload_skips_devices_without_memory():
    sc = make([("src", 100, 0.001), ("tiny", 5000, 0.001), ("ok", 200, 8)], profile=uniform_profile(4))
    p, _, _ = plan_of("offload", sc)
    assert stages_of(p) == [(0, 4, ["ok"])]


# --- neurosurgeon ----------------------------------------------------------------------

def cut_profile():
    """Huge input and activations except after block 1 (and a tiny model output): the
    only cheap place to leave the phone is after block 1, i.e. k = 2."""
    outs = [5_000_000, 100, 5_000_000, 100]
    return ModelProfile("cut", 5_000_000, [Block(f"b{i}", 1e9, 1_000_000, o) for i, o in enumerate(outs)])


def test_neurosurgeon_picks_the_tiny_activation_cut():
    sc = make([("phone", 10, 4), ("server", 1000, 16), ("tv", 50, 16)], profile=cut_profile(),
              mbps=10, latency_ms=1)
    p, m, cost = plan_of("neurosurgeon", sc)
    assert stages_of(p) == [(0, 2, ["phone"]), (2, 4, ["server"])]
    # and it is the best of every (device, k) the rule can express
    for d in (1, 2):
        for k in range(5):
            st = ([(0, 4, [d], [1.0])] if k == 0 else [(0, 4, [0], [1.0])] if k == 4
                  else [(0, k, [0], [1.0]), (k, 4, [d], [1.0])])
            assert m.latency_ms <= cost.evaluate_stages(st, 1).latency_ms + 1e-9


def test_neurosurgeon_full_offload_and_local_are_allowed():
    fast = make([("phone", 10, 4), ("server", 1000, 16)], profile=uniform_profile(4), mbps=1e7)
    assert stages_of(plan_of("neurosurgeon", fast)[0]) == [(0, 4, ["server"])]
    slow = make([("phone", 10, 4), ("server", 1000, 16)], profile=uniform_profile(4, inp=10**7, out=10**7),
                mbps=0.01)
    assert stages_of(plan_of("neurosurgeon", slow)[0]) == [(0, 4, ["phone"])]


def test_neurosurgeon_energy_mode_minimises_source_energy():
    sc = make([("phone", 10, 4), ("server", 1000, 16)], profile=cut_profile(), mbps=10, latency_ms=1,
              objective="energy")
    p, m, cost = plan_of("neurosurgeon", sc)
    for k in range(5):
        st = ([(0, 4, [1], [1.0])] if k == 0 else [(0, 4, [0], [1.0])] if k == 4
              else [(0, k, [0], [1.0]), (k, 4, [1], [1.0])])
        assert m.energy_by_device[0] <= cost.evaluate_stages(st, 1).energy_by_device[0] + 1e-12


# --- even / proportional -----------------------------------------------------------------

def test_even_splits_8_blocks_over_4_devices_2_2_2_2():
    sc = make([("a", 100, 4), ("b", 400, 4), ("src", 50, 4), ("c", 200, 4)], profile=uniform_profile(8),
              source="src")
    p, _, _ = plan_of("even", sc)
    # source first, then by decreasing speed
    assert stages_of(p) == [(0, 2, ["src"]), (2, 4, ["b"]), (4, 6, ["c"]), (6, 8, ["a"])]


def test_even_remainder_and_more_devices_than_blocks():
    sc = make([("s", 100, 4), ("a", 300, 4), ("b", 200, 4)], profile=uniform_profile(7))
    assert [s.end - s.start for s in plan_of("even", sc)[0].stages] == [3, 2, 2]
    sc = make([("s", 100, 4), ("a", 300, 4), ("b", 200, 4), ("c", 50, 4)], profile=uniform_profile(2))
    assert stages_of(plan_of("even", sc)[0]) == [(0, 1, ["s"]), (1, 2, ["a"])]


def test_device_order_source_first_then_by_speed_ties_by_declaration():
    sc = make([("a", 100, 4), ("b", 300, 4), ("src", 50, 4), ("c", 300, 4)], profile=uniform_profile(4),
              source="src")
    assert device_order(CostModel(sc)) == [2, 1, 3, 0]


def test_proportional_gives_2x_device_twice_the_flops():
    sc = make([("slow", 100, 8), ("fast", 200, 8)], profile=uniform_profile(30))
    p, _, cost = plan_of("proportional", sc)
    assert [list(s.devices) for s in p.stages] == [["slow"], ["fast"]]
    f = [cost.fp[s.end] - cost.fp[s.start] for s in p.stages]
    assert f[1] / f[0] == pytest.approx(2.0, rel=0.1)


def test_proportional_cuts_follow_flops_not_block_counts():
    fp = list(np.cumsum([0, 9, 1, 1, 1, 1, 1, 1, 1, 1, 1]))   # one heavy block then light ones
    assert proportional_cuts(fp, [1.0, 1.0]) == [0, 1, 10]
    assert proportional_cuts(list(range(7)), [1, 1, 1]) == [0, 2, 4, 6]
    assert proportional_cuts(list(range(4)), [100, 1, 1]) == [0, 1, 2, 3]   # every stage keeps a block


# --- pipeedge -------------------------------------------------------------------------------

def brute_force_pipelines(cost, M):
    """Every one-device-per-stage plan: (bottleneck, latency) of the feasible ones."""
    n, B = cost.n, cost.n_blocks
    out = []
    for S in range(1, min(n, B) + 1):
        for cuts in itertools.combinations(range(1, B), S - 1):
            c = (0,) + cuts + (B,)
            for perm in itertools.permutations(range(n), S):
                m = cost.evaluate_stages([(c[s], c[s + 1], [perm[s]], [1.0]) for s in range(S)], M)
                if m.feasible:
                    out.append((m.bottleneck_s, m.latency_ms))
    return out


@pytest.mark.parametrize("training", [False, True])
def test_pipeedge_bottleneck_is_optimal_against_brute_force(training):
    rng = np.random.default_rng(11 + training)
    checked = 0
    for t in range(25):
        M = [1, 2, 4][t % 3] if training else [1, 2][t % 2]
        sc = random_instance(rng, int(rng.integers(2, 5)), int(rng.integers(2, 6)), training=training, M=M,
                             mem=(0.3, 3.0) if t % 2 else (30, 60))
        cost = CostModel(sc)
        every = brute_force_pipelines(cost, M)
        if not every:
            with pytest.raises(NoFeasiblePlan):
                get_planner("pipeedge").plan(sc, cost)
            continue
        p = get_planner("pipeedge").plan(sc, cost)
        m = cost.evaluate(p)
        assert all(len(s.devices) == 1 for s in p.stages)
        assert m.feasible
        best_T = min(b for b, _ in every)
        assert m.bottleneck_s <= best_T * (1 + 1e-9)
        # latency tie-break among the bottleneck-optimal plans
        assert m.latency_ms <= min(lat for b, lat in every if b <= best_T * (1 + 1e-9)) * (1 + 1e-9)
        checked += 1
    assert checked >= 10


def test_pipeedge_spreads_a_compute_bound_model_over_equal_devices():
    sc = make([(f"d{i}", 100, 8) for i in range(4)], profile=uniform_profile(8), mbps=1e7)
    p, m, _ = plan_of("pipeedge", sc)
    assert [s.end - s.start for s in p.stages] == [2, 2, 2, 2]


def test_pipeedge_respects_memory():
    # each device holds at most 2 of the 6 blocks' parameters (1 GB each)
    prof = uniform_profile(6, params=1_000_000_000)
    sc = make([("a", 100, 2.5), ("b", 1000, 2.5), ("c", 300, 2.5)], profile=prof, mbps=1e7)
    p, m, _ = plan_of("pipeedge", sc)
    assert m.feasible and all(s.end - s.start == 2 for s in p.stages)


def test_pipeedge_fallback_beyond_max_devices_is_bounded():
    rng = np.random.default_rng(3)
    sc = random_instance(rng, 14, 20, mem=(30, 60))
    cost = CostModel(sc)
    p = get_planner("pipeedge", max_devices=5).plan(sc, cost)
    allowed = {cost.names[d] for d in device_order(cost)[:5]}
    assert set(p.devices) <= allowed


# --- data_parallel ----------------------------------------------------------------------------

def test_data_parallel_shares_proportional_to_speed():
    sc = make([("s", 100, 8), ("a", 300, 8), ("b", 200, 8)], profile=uniform_profile(4), batch=6)
    p, _, _ = plan_of("data_parallel", sc)
    assert len(p.stages) == 1 and (p.stages[0].start, p.stages[0].end) == (0, 4)
    got = dict(zip(p.stages[0].devices, p.stages[0].shares))
    assert got == pytest.approx({"s": 100 / 600, "a": 300 / 600, "b": 200 / 600})
    assert p.stages[0].devices[0] == "s"   # source first


def test_data_parallel_leaves_out_devices_that_cannot_hold_the_model():
    prof = uniform_profile(4, params=500_000_000)     # 2 GB of parameters
    sc = make([("s", 100, 8), ("small", 5000, 1), ("b", 100, 8)], profile=prof, batch=2)
    p, _, _ = plan_of("data_parallel", sc)
    assert set(p.stages[0].devices) == {"s", "b"}
    assert p.stages[0].shares == pytest.approx((0.5, 0.5))


# --- random -----------------------------------------------------------------------------------

def test_random_is_deterministic_per_seed_and_valid():
    rng = np.random.default_rng(5)
    sc = random_instance(rng, 6, 12, mem=(1, 4))
    cost = CostModel(sc)
    plans = {}
    for seed in range(8):
        a = get_planner("random", seed=seed).plan(sc, cost)
        b = get_planner("random", seed=seed).plan(sc, cost)
        assert a == b
        cost.validate(a)
        assert cost.evaluate(a).feasible
        for s in a.stages:
            assert sum(s.shares) == pytest.approx(1.0)
        plans[seed] = a.to_json()
    assert len(set(plans.values())) > 1
    assert get_planner("random").plan(sc, cost) == get_planner("random", seed=0).plan(sc, cost)


def test_data_parallel_uses_no_more_replicas_than_samples():
    """A 1-sample request cannot be split: data_parallel keeps one replica (the source)."""
    sc = make([("s", 100, 8), ("a", 300, 8), ("b", 200, 8)], profile=uniform_profile(4), batch=1)
    p, _, _ = plan_of("data_parallel", sc)
    assert p.stages[0].devices == ("s",)
