"""The worked examples of docs/cost-model.md as scenarios (hand-computed numbers live
in the tests, derived from the formulas in the doc)."""

from dora_rl.profile.model_profile import Block, ModelProfile
from dora_rl.scenario import Scenario


def toy_profile() -> ModelProfile:
    return ModelProfile("toy", 100_000, [
        Block("b0", 2e9, 4_000_000, 200_000),
        Block("b1", 4e9, 8_000_000, 100_000),
        Block("b2", 3e9, 2_000_000, 50_000),
        Block("b3", 1e9, 1_000_000, 4_000),
    ])


HOME = {
    "name": "toy_home", "model": {"profile": "toy.json"},
    "workload": {"kind": "inference", "batch": 2, "microbatches": 1, "request_rate": 2, "source": "phone"},
    "qoe": {"latency_slo_ms": 200, "min_throughput": 2, "min_battery_hours": 6, "objective": "latency"},
    "devices": [
        {"name": "phone", "kind": "phone", "gflops": 100, "memory_gb": 4, "idle_w": 0.5, "active_w": 5,
         "battery_wh": 15, "battery_level": 0.8, "radio_j_per_mb": 0.1},
        {"name": "laptop", "kind": "laptop", "gflops": 500, "memory_gb": 16, "idle_w": 5, "active_w": 30,
         "battery_wh": None, "radio_j_per_mb": 0.05},
        {"name": "tv", "kind": "smart_tv", "gflops": 250, "memory_gb": 2, "idle_w": 2, "active_w": 10,
         "radio_j_per_mb": 0.05},
    ],
    "links": [
        {"a": "phone", "b": "laptop", "mbps": 80, "latency_ms": 2, "medium": "wifi"},
        {"a": "phone", "b": "tv", "mbps": 80, "latency_ms": 2, "medium": "wifi"},
        {"a": "laptop", "b": "tv", "mbps": 80, "latency_ms": 2, "medium": "wifi"},
    ],
    "media": {"wifi": {"mbps": 80}},
}

LAB = {
    "name": "toy_lab", "model": {"profile": "toy.json"},
    "workload": {"kind": "training", "batch": 8, "microbatches": 4, "source": "jetA", "optimizer": "sgd"},
    "qoe": {"objective": "latency"},
    "devices": [{"name": n, "kind": "jetson_orin_nano", "gflops": 200, "memory_gb": 8, "idle_w": 2, "active_w": 10,
                 "radio_j_per_mb": 0.05} for n in ("jetA", "jetB", "jetC")],
    "links": [{"a": a, "b": b, "mbps": 800, "latency_ms": 0.5} for a, b in
              (("jetA", "jetB"), ("jetA", "jetC"), ("jetB", "jetC"))],
}


def scenario(d: dict) -> Scenario:
    return Scenario.from_dict(d, profile=toy_profile())

# worked example 4: a camera hub whose one 100 Mbps interface feeds two boards
HUB = {
    "name": "toy_hub", "model": {"profile": "toy.json"},
    "workload": {"kind": "inference", "batch": 2, "microbatches": 1, "request_rate": 2, "source": "cam"},
    "qoe": {"objective": "latency"},
    "devices": [
        {"name": "cam", "kind": "camera", "gflops": 25, "memory_gb": 2, "idle_w": 2, "active_w": 5,
         "radio_j_per_mb": 0.08},
        *({"name": n, "kind": "jetson_orin_nano", "gflops": 200, "memory_gb": 8, "idle_w": 2, "active_w": 10,
           "radio_j_per_mb": 0.05} for n in ("boardA", "boardB")),
    ],
    "links": [
        {"a": "cam", "b": "boardA", "mbps": 100, "latency_ms": 1},
        {"a": "cam", "b": "boardB", "mbps": 100, "latency_ms": 1},
        {"a": "boardA", "b": "boardB", "mbps": 1000, "latency_ms": 0.5},
    ],
}

# worked example 5: a battery phone relays every transfer between the camera and a server
RELAY = {
    "name": "toy_relay", "model": {"profile": "toy.json"},
    "workload": {"kind": "inference", "batch": 2, "microbatches": 1, "request_rate": 2, "source": "cam"},
    "qoe": {"objective": "latency", "min_battery_hours": 1000},
    "devices": [
        HUB["devices"][0],
        HOME["devices"][0],
        {"name": "server", "kind": "laptop", "gflops": 500, "memory_gb": 16, "idle_w": 5, "active_w": 30,
         "battery_wh": None, "radio_j_per_mb": 0.05},
    ],
    "links": [
        {"a": "cam", "b": "phone", "mbps": 80, "latency_ms": 2},
        {"a": "phone", "b": "server", "mbps": 80, "latency_ms": 2},
    ],
}
