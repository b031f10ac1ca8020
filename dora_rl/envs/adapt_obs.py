"""The AdaptEnv observation: one builder for the environment and for the deployed adapter agent.

Why one builder: the agent trained on AdaptEnv must see, at deploy time, exactly the features
it saw in training. AdaptEnv (dora_rl/envs/adapt.py) fills the candidates from its episode
(simulated bandwidth, drained batteries); the learned adapter (dora_rl/learning/adapter_agent.py)
fills them from the runtime adapter's scored options. Both describe each candidate as a
`CandidateView` and the situation as an `AdaptSituation`, and `build_observation` turns them
into the same arrays.

Layout (`ADAPT_OBS_VERSION`): `candidates (K, NC)` in CAND_FEATURES order, `global (NGA,)` in
GLOBAL_FEATURES order, `action_mask (K,)` (1 for the real candidates, which come first).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dora_rl.envs.features import CLIP, clip_log

CAND_FEATURES = ("valid", "current", "log_latency", "log_energy", "latency_ok", "throughput_ok", "battery_ok",
                 "log_battery_margin", "switch_cost", "qoe_ok")
GLOBAL_FEATURES = ("log_bw", "log_bw_prev", "progress", "min_battery", "obj_energy", "has_battery_target")
NC, NGA = len(CAND_FEATURES), len(GLOBAL_FEATURES)
ADAPT_OBS_VERSION = 1


def moved_fraction(pp, stages_from, stages_to) -> float:
    """Share of the model's weights that devices must receive to go from one plan's
    stages `(l, r, devices, shares)` to another's (what AdaptEnv charges `w_switch` for);
    `pp` is the cumulative parameter bytes per block."""
    total = pp[-1] or 1.0
    held = {}
    for (lo, hi, devs, _) in stages_from:
        for d in devs:
            held[d] = (lo, hi)
    mv = 0.0
    for (lo, hi, devs, _) in stages_to:
        for d in devs:
            if d in held:
                lo0, hi0 = held[d]
                ov = pp[min(hi, hi0)] - pp[max(lo, lo0)] if min(hi, hi0) > max(lo, lo0) else 0.0
                mv += (pp[hi] - pp[lo]) - ov
            else:
                mv += pp[hi] - pp[lo]
    return mv / total


@dataclass(frozen=True)
class CandidateView:
    """One candidate plan as the observation sees it: its metrics now (`latency_ms`,
    `energy_j`, `throughput`), the least battery life it leaves (hours, inf without a
    battery device), whether it is the plan in use, the weight fraction to move to it,
    and whether it meets every QoE target."""

    metrics: object
    battery_hours: float
    current: bool
    moved: float
    qoe_ok: bool


@dataclass(frozen=True)
class AdaptSituation:
    """What the observation needs besides the candidates: the QoE targets (`qoe`), the
    required rate (`need`, requests or samples per second; 0/None: none), the latency and
    energy references (`lat_ref`, `e_ref`), the bandwidth now and at the previous decision
    and the nominal one (Mbps; None without a dynamic medium), the episode's progress in
    [0, 1] and the lowest battery level (fraction; 1.0 without battery devices)."""

    qoe: object
    need: float | None
    lat_ref: float
    e_ref: float
    mbps: float | None
    mbps_prev: float | None
    nominal: float | None
    progress: float
    min_battery: float


def build_observation(situation: AdaptSituation, candidates: list[CandidateView], slots: int) -> dict:
    """The observation dict for `candidates` (at most `slots`, placed first) in `situation`."""
    s, q = situation, situation.qoe
    c = np.zeros((slots, NC), dtype=np.float32)
    need = s.need
    for k, v in enumerate(candidates):
        m, hours = v.metrics, v.battery_hours
        c[k, 0] = 1.0
        c[k, 1] = 1.0 if v.current else 0.0
        c[k, 2] = clip_log(m.latency_ms / (q.latency_slo_ms or s.lat_ref)) / 3.0
        c[k, 3] = clip_log(m.energy_j / s.e_ref) / 3.0
        c[k, 4] = 1.0 if q.latency_slo_ms is None or m.latency_ms <= q.latency_slo_ms else 0.0
        c[k, 5] = 1.0 if not need or m.throughput >= need * (1 - 1e-9) else 0.0
        c[k, 6] = 1.0 if q.min_battery_hours is None or hours >= q.min_battery_hours else 0.0
        c[k, 7] = (clip_log(hours / q.min_battery_hours) if q.min_battery_hours and math.isfinite(hours)
                   else (CLIP if math.isinf(hours) else 0.0)) / 3.0
        c[k, 8] = v.moved
        c[k, 9] = 1.0 if v.qoe_ok else 0.0
    g = np.zeros(NGA, dtype=np.float32)
    mb = s.mbps
    if mb is not None and s.nominal:
        g[0] = clip_log(mb / s.nominal) / 3.0
        g[1] = clip_log((s.mbps_prev or mb) / s.nominal) / 3.0
    g[2] = s.progress
    g[3] = s.min_battery
    g[4] = 1.0 if q.objective == "energy" else 0.0
    g[5] = 1.0 if q.min_battery_hours is not None else 0.0
    mask = np.zeros(slots, dtype=np.float32)
    mask[:len(candidates)] = 1.0
    return {"candidates": c, "global": g, "action_mask": mask}


__all__ = ["CAND_FEATURES", "GLOBAL_FEATURES", "NC", "NGA", "ADAPT_OBS_VERSION", "CLIP", "clip_log",
           "moved_fraction", "CandidateView", "AdaptSituation", "build_observation"]
