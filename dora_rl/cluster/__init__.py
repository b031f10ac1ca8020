"""Devices, links and shared media (`model`), device presets (`presets`), a random
heterogeneous-cluster generator (`generator`) and bandwidth traces (`traces`)."""

from dora_rl.cluster.generator import random_cluster
from dora_rl.cluster.model import MB, Cluster, Device, Link, Medium, device_preset
from dora_rl.cluster.presets import DEVICE_PRESETS, preset_kinds
from dora_rl.cluster.traces import (
                                    MIN_MBPS,
                                    BandwidthTrace,
                                    load_trace,
                                    markov_trace,
                                    resolve_trace,
                                    step_trace,
                                    traces_root,
)

__all__ = [
    "MB", "Cluster", "Device", "Link", "Medium",
    "DEVICE_PRESETS", "device_preset", "preset_kinds", "random_cluster",
    "MIN_MBPS", "BandwidthTrace", "load_trace", "markov_trace", "step_trace", "resolve_trace", "traces_root",
]
