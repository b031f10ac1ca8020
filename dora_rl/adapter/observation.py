"""The AdaptEnv observation and QoE utility: one builder for the environment and for the deployed adapter agent.

Why one builder: the agent trained on AdaptEnv must see, at deploy time, exactly the features
it saw in training. Both AdaptEnv (dora_rl/envs/adapt.py) and the `ppo` runtime adapter
(dora_rl/adapter/learned.py) run the SAME adapter code on the SAME inputs (the
Monitor's State each interval); the adapter calls `build_observation` with its options.

Rows (`ADAPT_OBS_VERSION` 2): the agent's action is a row index.
- row 0 `keep`: what runs now (re-scored; masked before the first plan is deployed);
- row 1 `lp`: the composition LP's best plan or time-share over the planning band;
- rows 2.. : the single candidate plans (the Pareto sets, the partition agent's plans),
  in plan-id order, at most `slots - 2`.
Each row: ROW_FEATURES, from the option scored over the planning band (compose.band_score).
Global: the Monitor's recent history, HISTORY intervals x HIST_FEATURES (estimated bandwidth
of the dynamic medium / nominal, its recent overshoot, the lowest battery level, the battery
devices' 60 s trailing-average draw / their battery-life budget: the runtime's battery
judgement), then GLOBAL_TAIL.

QoE utility (`qoe_utility`, what the bench reports and AdaptEnv's reward): per interval,
1 if the interval met every QoE target (as simulate judges it, battery on the trailing
average) else 0, minus W_ENERGY x the interval's mean power / the reference power (the
initial `dora` plan's power at nominal bandwidth).
"""

from __future__ import annotations

import numpy as np

from dora_rl.features import CLIP, clip_log

ROW_FEATURES = ("valid", "is_keep", "is_lp", "in_current", "rule_pick", "log_latency", "log_power", "latency_ok",
                "throughput_ok", "battery_ok", "qoe_ok", "n_parts", "moved")
HIST_FEATURES = ("log_bw", "overshoot", "min_battery", "log_draw_vs_budget")
HISTORY = 6
GLOBAL_TAIL = ("current_ok", "dwell", "obj_energy", "has_battery_target", "has_rate_target", "first")
NC = len(ROW_FEATURES)
NGA = HISTORY * len(HIST_FEATURES) + len(GLOBAL_TAIL)
ADAPT_OBS_VERSION = 2
SLOTS = 10                 # rows: keep, lp, up to 8 single candidates
W_ENERGY = 0.5
DWELL_NORM_S = 30.0


def qoe_utility(ok: bool, energy_j: float, interval_s: float, p_ref_w: float) -> float:
    """One interval's QoE utility: 1[QoE met] - W_ENERGY x mean power / p_ref_w."""
    return (1.0 if ok else 0.0) - W_ENERGY * (energy_j / max(interval_s, 1e-12)) / max(p_ref_w, 1e-12)


def moved_fraction(pp, stages_from, stages_to) -> float:
    """Share of the model's weights that devices must receive to go from one plan's
    stages `(l, r, devices, shares)` to another's; `pp` is the cumulative parameter bytes per block."""
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


def history_row(mbps: float | None, nominal: float | None, overshoot: float, min_battery: float,
                draw_vs_budget: float) -> list[float]:
    """One interval of the Monitor's history, in HIST_FEATURES order."""
    bw = clip_log(mbps / nominal) / 3.0 if mbps and nominal else 0.0
    dv = clip_log(draw_vs_budget) / 3.0 if draw_vs_budget > 0 else -CLIP / 3.0
    return [bw, min(float(overshoot), CLIP), float(min_battery), dv]


def build_observation(rows: list, flags: list[tuple[bool, bool, bool, bool]], moved: list[float], history: list,
                      tail: list[float], qoe, need: float | None, lat_ref: float, p_ref: float,
                      slots: int = SLOTS) -> dict:
    """The observation dict. `rows`: option objects with `latency_ms`, `cap`, `power`, `ok`,
    `violations` (list of str) and `parts` (a runtime Mix), None for an absent row (keep before
    the first decision); `flags[k]` = (is_keep, is_lp, in_current, rule_pick); `moved[k]` the share
    of weights to move for row k; `history` the last HISTORY history_row()s, oldest first
    (shorter: padded with the oldest); `tail` the GLOBAL_TAIL values."""
    c = np.zeros((slots, NC), dtype=np.float32)
    mask = np.zeros(slots, dtype=np.float32)
    slo = qoe.latency_slo_ms
    for k, m in enumerate(rows[:slots]):
        if m is None:
            continue
        viol = list(getattr(m, "violations", []) or [])
        c[k, 0] = 1.0
        c[k, 1:5] = [float(x) for x in flags[k]]
        c[k, 5] = clip_log(m.latency_ms / (slo or lat_ref)) / 3.0 if m.latency_ms > 0 else -1.0
        c[k, 6] = clip_log(m.power / p_ref) / 3.0 if m.power > 0 else -1.0
        c[k, 7] = 0.0 if any(v.startswith("latency") for v in viol) else 1.0
        c[k, 8] = 1.0 if not need or m.cap >= need * (1 - 1e-9) else 0.0
        c[k, 9] = 0.0 if any(v.startswith("battery") for v in viol) else 1.0
        c[k, 10] = 1.0 if m.ok else 0.0
        c[k, 11] = min(len(getattr(m, "parts", []) or [1]), 4) / 4.0
        c[k, 12] = min(float(moved[k]), 2.0)
        mask[k] = 1.0
    hist = list(history)[-HISTORY:]
    if not hist:
        hist = [[0.0, 0.0, 1.0, -CLIP / 3.0]]
    hist = [hist[0]] * (HISTORY - len(hist)) + hist
    g = np.asarray([x for h in hist for x in h] + list(tail), dtype=np.float32)
    g = np.clip(g, -CLIP, CLIP)
    return {"candidates": np.clip(c, -CLIP, CLIP), "global": g, "action_mask": mask}


def layout() -> dict:
    """What an agent's config.yml records of the observation (checked when it is loaded)."""
    return {"obs_version": ADAPT_OBS_VERSION, "candidate_features": NC, "global_features": NGA,
            "history": HISTORY, "max_candidates": SLOTS}


__all__ = ["ROW_FEATURES", "HIST_FEATURES", "HISTORY", "GLOBAL_TAIL", "NC", "NGA", "ADAPT_OBS_VERSION", "SLOTS",
           "W_ENERGY", "CLIP", "clip_log", "qoe_utility", "moved_fraction", "history_row", "build_observation",
           "layout"]
