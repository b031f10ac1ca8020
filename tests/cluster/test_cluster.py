"""Device presets and the random cluster generator."""

import networkx as nx
import numpy as np
import pytest

from dora_rl.cluster import DEVICE_PRESETS, Cluster, Device, device_preset, random_cluster
from dora_rl.errors import ClusterError, DoraError
from dora_rl.scenario import Scenario
from dora_rl.synthetic import random_profile, random_scenario

EXPECTED = {"phone", "laptop", "smart_tv", "smart_speaker", "rpi4", "rpi5", "jetson_nano",
            "jetson_orin_nano", "jetson_agx_orin", "edge_server", "camera"}


# ------------------------------------------------------------------ presets
def test_presets_cover_the_kinds_and_validate():
    assert EXPECTED <= set(DEVICE_PRESETS)
    for kind, fields in DEVICE_PRESETS.items():
        d = device_preset(kind)
        assert isinstance(d, Device) and d.name == kind and d.kind == kind
        assert set(fields) == {"kind", "gflops", "memory_gb", "idle_w", "active_w", "battery_wh", "radio_j_per_mb"}


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_presets_in_plausible_ranges(kind):
    p = DEVICE_PRESETS[kind]
    assert 1 <= p["gflops"] <= 10_000            # effective, so well below datacentre peaks
    assert 0.5 <= p["memory_gb"] <= 128
    assert 0 < p["idle_w"] < p["active_w"] <= 400
    assert 0 < p["radio_j_per_mb"] < 1
    if p["battery_wh"] is not None:
        assert 5 <= p["battery_wh"] <= 100


def test_preset_ordering_is_sane():
    g = {k: v["gflops"] for k, v in DEVICE_PRESETS.items()}
    assert g["rpi4"] < g["jetson_nano"] < g["jetson_orin_nano"] < g["jetson_agx_orin"]
    assert g["camera"] < g["jetson_orin_nano"]          # same board, 7 W mode
    assert DEVICE_PRESETS["phone"]["battery_wh"] and DEVICE_PRESETS["laptop"]["battery_wh"]
    assert DEVICE_PRESETS["edge_server"]["battery_wh"] is None


def test_device_preset_name_and_overrides():
    d = device_preset("phone", "alice_phone", battery_level=0.5, gflops=123.0)
    assert d.name == "alice_phone" and d.battery_level == 0.5 and d.gflops == 123.0
    assert d.memory_gb == DEVICE_PRESETS["phone"]["memory_gb"]


def test_device_preset_unknown_kind_lists_kinds():
    with pytest.raises(ClusterError) as e:
        device_preset("toaster")
    assert "jetson_nano" in str(e.value) and "toaster" in str(e.value)


def test_device_preset_bad_override():
    with pytest.raises(ClusterError):
        device_preset("phone", colour="red")
    with pytest.raises(DoraError):
        device_preset("phone", gflops=-1)


# ---------------------------------------------------------------- generator
def test_generator_deterministic():
    for seed in range(10):
        a = random_cluster(np.random.default_rng(seed)).to_dict()
        b = random_cluster(np.random.default_rng(seed)).to_dict()
        assert a == b
    assert random_cluster(np.random.default_rng(1)).to_dict() != random_cluster(np.random.default_rng(2)).to_dict()


@pytest.mark.parametrize("seed", range(40))
def test_generator_connected_bounded_unique(seed):
    rng = np.random.default_rng(seed)
    c = random_cluster(rng, min_devices=2, max_devices=9)
    assert 2 <= c.n <= 9
    assert nx.is_connected(c.graph)
    assert len(set(c.names)) == c.n
    for d in c.devices:
        assert d.name.startswith(d.kind + "_")
    assert np.all(np.isfinite(c.bw[~np.eye(c.n, dtype=bool)]))
    for ln in c.links:
        if ln.medium is not None:
            assert ln.medium == "wifi" and ln.mbps <= c.media["wifi"].mbps
        else:
            assert ln.mbps > 0
    if "wifi" in c.media:
        assert 100 <= c.media["wifi"].mbps <= 600
    # round-trips through the scenario dict format
    assert Cluster.from_dict(c.to_dict()).to_dict() == c.to_dict()


def test_generator_fixed_count_and_kinds():
    c = random_cluster(np.random.default_rng(3), n_devices=5, kinds=["rpi4", "jetson_nano"])
    assert c.n == 5 and {d.kind for d in c.devices} <= {"rpi4", "jetson_nano"}
    assert random_cluster(np.random.default_rng(0), n_devices=1).n == 1


def test_generator_mixed_media_appear():
    wifi = wired = 0
    for seed in range(30):
        c = random_cluster(np.random.default_rng(seed), min_devices=4, max_devices=10)
        wifi += sum(ln.medium == "wifi" for ln in c.links)
        wired += sum(ln.medium is None and ln.mbps == 940.0 for ln in c.links)
    assert wifi > 0 and wired > 0


@pytest.mark.parametrize("seed", range(15))
def test_generator_dedicated_links_only(seed):
    shared = random_cluster(np.random.default_rng(seed), shared_media=True)
    c = random_cluster(np.random.default_rng(seed), shared_media=False)
    assert c.media == {} and all(ln.medium is None for ln in c.links)
    assert nx.is_connected(c.graph)
    # same devices and bandwidths, only the media differ
    assert c.to_dict()["devices"] == shared.to_dict()["devices"]
    assert [ln.mbps for ln in c.links] == [ln.mbps for ln in shared.links]


def test_generator_jitter_keeps_devices_valid():
    for seed in range(20):
        for d in random_cluster(np.random.default_rng(seed), n_devices=12).devices:
            d.validate()
            base = DEVICE_PRESETS[d.kind]
            assert 0.3 * base["gflops"] < d.gflops < 3 * base["gflops"]
            assert 0.7 * base["memory_gb"] <= d.memory_gb <= 1.3 * base["memory_gb"]


def test_generator_bad_arguments():
    rng = np.random.default_rng(0)
    with pytest.raises(ClusterError):
        random_cluster(rng, min_devices=5, max_devices=3)
    with pytest.raises(ClusterError):
        random_cluster(rng, n_devices=0)
    with pytest.raises(ClusterError):
        random_cluster(rng, kinds=["toaster"])


# ------------------------------------------------- synthetic profiles and scenarios


def test_random_profile_ranges_and_determinism():
    for seed in range(20):
        p = random_profile(np.random.default_rng(seed))
        q = random_profile(np.random.default_rng(seed))
        assert p.to_dict() == q.to_dict()
        assert 4 <= p.n_blocks <= 24
        assert [b.name for b in p.blocks] == [f"b{i}" for i in range(p.n_blocks)]
        for b in p.blocks:
            assert 1e6 < b.flops < 1e11
            assert 0.1e6 <= b.param_bytes <= 20e6 + 1
            assert 10e3 <= b.out_bytes <= 2e6 + 1
        assert 30e3 < p.input_bytes < 1e6
    assert random_profile(np.random.default_rng(0), n_blocks=7).n_blocks == 7


@pytest.mark.parametrize("seed", range(50))
def test_random_scenario_valid_and_round_trips(seed):
    s = random_scenario(np.random.default_rng(seed), dynamics=seed % 2 == 0)
    assert 2 <= s.cluster.n <= 6
    assert s.workload.source in s.cluster.index
    assert s.workload.batch % s.workload.microbatches == 0
    assert s.model == {"profile": "synthetic"}
    d = s.to_dict()
    back = Scenario.from_dict(d, profile=s.profile)
    assert back.to_dict() == d
    assert random_scenario(np.random.default_rng(seed), dynamics=seed % 2 == 0).to_dict() == d


def test_random_scenario_variety():
    scen = [random_scenario(np.random.default_rng(s)) for s in range(60)]
    kinds = {s.workload.kind for s in scen}
    assert kinds == {"inference", "training"}
    assert {s.qoe.objective for s in scen} == {"latency", "energy"}
    assert any(s.qoe.latency_slo_ms is None for s in scen) and any(s.qoe.latency_slo_ms for s in scen)
    assert any("param_scale" in s.profile.meta for s in scen)       # memory made binding sometimes
    # memory binding: the model no longer fits on the smallest device
    tight = [s for s in scen if "param_scale" in s.profile.meta]
    assert any(s.profile.total_params > s.cluster.mem.min() for s in tight)


def test_random_scenario_options():
    s = random_scenario(np.random.default_rng(0), kind="training", objective="energy", qoe="none",
                        shared_media=False, n_blocks=5, max_devices=3)
    assert s.workload.training and s.qoe.objective == "energy"
    assert (s.qoe.latency_slo_ms, s.qoe.min_throughput, s.qoe.min_battery_hours) == (None, None, None)
    assert s.cluster.media == {} and s.profile.n_blocks == 5 and s.cluster.n <= 3
    with pytest.raises(DoraError):
        random_scenario(np.random.default_rng(0), kind="serving")


# ------------------------------------------------------------------ kind: fills figures from the preset table
def _one(row):
    return Cluster.from_dict({"devices": [row], "links": []}).devices[0]


def test_kind_fills_every_figure_not_given():
    d = _one({"name": "pi", "kind": "rpi5"})
    p = DEVICE_PRESETS["rpi5"]
    assert (d.gflops, d.memory_gb, d.idle_w, d.active_w, d.battery_wh, d.radio_j_per_mb) == \
        (p["gflops"], p["memory_gb"], p["idle_w"], p["active_w"], p["battery_wh"], p["radio_j_per_mb"])
    d = _one({"name": "p", "kind": "phone", "gflops": 77})
    assert d.gflops == 77 and d.battery_wh == DEVICE_PRESETS["phone"]["battery_wh"] == 19.4
    assert d.memory_gb == DEVICE_PRESETS["phone"]["memory_gb"]


def test_kind_explicit_null_battery_means_mains_and_survives_a_round_trip():
    c = Cluster.from_dict({"devices": [{"name": "lap", "kind": "laptop", "battery_wh": None}], "links": []})
    assert c.devices[0].battery_wh is None
    again = Cluster.from_dict(c.to_dict())
    assert again.devices[0].battery_wh is None and again.devices[0].gflops == DEVICE_PRESETS["laptop"]["gflops"]


def test_no_kind_is_generic():
    d = _one({"name": "x"})
    assert d.kind == "generic" and d.gflops == DEVICE_PRESETS["generic"]["gflops"] == 100.0


def test_unknown_kind_lists_known_kinds():
    with pytest.raises(ClusterError) as e:
        _one({"name": "t", "kind": "toaster", "gflops": 5})
    msg = str(e.value)
    assert "toaster" in msg and "rpi5" in msg and "jetson_orin_nx" in msg
    with pytest.raises(ClusterError):
        Device("t", kind="toaster").validate()


def test_unknown_kind_in_a_scenario_is_a_scenario_error():
    from dora_rl.errors import ScenarioError
    from dora_rl.scenario import Scenario
    from tests.toy import HOME, toy_profile
    d = {**HOME, "devices": [dict(HOME["devices"][0], kind="toaster")] + HOME["devices"][1:]}
    with pytest.raises(ScenarioError, match="known kinds"):
        Scenario.from_dict(d, profile=toy_profile())


def test_random_cluster_draws_only_the_default_kinds():
    from dora_rl.cluster.generator import DEFAULT_KINDS
    kinds = {d.kind for s in range(20) for d in random_cluster(np.random.default_rng(s)).devices}
    assert kinds <= set(DEFAULT_KINDS) and "generic" not in kinds and "jetson_orin_nx" not in kinds
