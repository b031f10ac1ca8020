"""The AdaptEnv observation and QoE utility: one builder for the environment and for the deployed adapter agent.

Why one builder: the agent trained on AdaptEnv must see, at deploy time, exactly the features
it saw in training. Both AdaptEnv (dora_rl/envs/adapt.py) and the `ppo` runtime adapter
(dora_rl/adapter/learned.py) run the SAME adapter code on the SAME inputs (the
Monitor's State each interval); the adapter calls `build_observation` with its options.

Rows (`ADAPT_OBS_VERSION` 3): the agent's action is a row index.
- row 0 `keep`: what runs now (re-scored; a time-share with the LP's fractions when the LP's best runs the
  same plans, else re-solved for the required rate: what `pareto` keeps; masked before the first deployment);
- row 1 `lp`: the composition LP's best plan or time-share over the planning band (robust: what
  `pareto` would consider);
- row 2 `lp_est`: the LP's best at the current estimate (the band's mid point, battery budgets up
  to its high end): aggressive, it keeps no margin for a drop;
- row 3 `lp_safe`: the LP's best with the band's low end at `headroom` (10%) less and at most the
  lowest estimate of the last `memory_s` (`pareto`'s hysteresis band): the most robust;
- rows 4.. : the single candidate plans (the Pareto sets, the partition agent's plans),
  in plan-id order, at most `slots - 4`.
Each row: ROW_FEATURES, from the option scored over the planning band (compose.band_score) and
at the current estimate: compliance at both, capacity / the required rate at both, power at the
estimate, and, for a single plan, the lowest bandwidth at which it complies over the estimate
(its robustness margin). No feature says what `pareto`'s rule would pick.
Global: the Monitor's recent history, HISTORY intervals x HIST_FEATURES (estimated bandwidth
of the dynamic medium / nominal, its recent overshoot, the lowest battery level, the battery
devices' 60 s trailing-average draw / their battery-life budget: the runtime's battery
judgement), then TREND_FEATURES over the last TREND_WINDOW estimates (variability, depth of the
last dip, slope), then GLOBAL_TAIL.

QoE utility (`qoe_utility`, what the bench reports and AdaptEnv's reward): per interval,
1 if the interval met every QoE target (as simulate judges it, battery on the trailing
average) else 0, minus W_ENERGY x the interval's mean power / the reference power (the
initial `dora` plan's power at nominal bandwidth).
"""

from __future__ import annotations

import numpy as np

from dora_rl.features import CLIP, clip_log

ROW_FEATURES = ("valid", "is_keep", "is_lp", "is_lp_est", "is_lp_safe", "in_current", "log_latency", "log_power",
                "latency_ok", "throughput_ok", "battery_ok", "qoe_ok", "n_parts", "moved", "qoe_ok_est",
                "log_cap_vs_need", "log_cap_vs_need_est", "log_min_bw_vs_est")
HIST_FEATURES = ("log_bw", "overshoot", "min_battery", "log_draw_vs_budget")
HISTORY = 6
TREND_FEATURES = ("log_bw_std_short", "log_bw_std", "log_bw_vs_min", "log_bw_vs_max", "log_bw_slope")
TREND_WINDOW = 30          # intervals of estimates the trend features look at (short: the last 6)
GLOBAL_TAIL = ("current_ok", "dwell", "obj_energy", "has_battery_target", "has_rate_target", "first")
NC = len(ROW_FEATURES)
NGA = HISTORY * len(HIST_FEATURES) + len(TREND_FEATURES) + len(GLOBAL_TAIL)
ADAPT_OBS_VERSION = 3
SLOTS = 12                 # rows: keep, lp, lp_est, lp_safe, up to 8 single candidates
FIXED_ROWS = 4
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


def trend_features(log_bw: list[float]) -> list[float]:
    """TREND_FEATURES of the last TREND_WINDOW estimates, as natural logs of bandwidth / nominal (oldest
    first): std over the last HISTORY and over all, the latest over the lowest and over the highest, and
    the latest over the mean of the three before it (0 when too short)."""
    x = np.asarray(list(log_bw)[-TREND_WINDOW:], dtype=float)
    if x.size == 0:
        return [0.0] * len(TREND_FEATURES)
    last = x[-1]
    slope = last - float(np.mean(x[-4:-1])) if x.size >= 4 else 0.0
    return [float(np.std(x[-HISTORY:])), float(np.std(x)), last - float(x.min()), last - float(x.max()), slope]


def build_observation(rows: list, flags: list[tuple[bool, ...]], moved: list[float], history: list,
                      trend: list[float], tail: list[float], qoe, need: float | None, lat_ref: float, p_ref: float,
                      slots: int = SLOTS) -> dict:
    """The observation dict. `rows[k]`: None for an absent row (keep before the first decision), else
    (band, est, min_bw_vs_est): the option scored over the planning band and at the current estimate
    (objects with `latency_ms`, `cap`, `power`, `ok`, `violations` (list of str) and `parts`: a runtime
    Mix) and, for a single plan, the lowest bandwidth at which it complies / the estimate (None: not
    known or a time-share); `flags[k]` = (is_keep, is_lp, is_lp_est, is_lp_safe, in_current); `moved[k]` the share
    of weights to move for row k; `history` the last HISTORY history_row()s, oldest first (shorter:
    padded with the oldest); `trend` the TREND_FEATURES (trend_features); `tail` the GLOBAL_TAIL values."""
    c = np.zeros((slots, NC), dtype=np.float32)
    mask = np.zeros(slots, dtype=np.float32)
    slo = qoe.latency_slo_ms
    for k, row in enumerate(rows[:slots]):
        if row is None:
            continue
        m, e, thr = row
        viol = list(getattr(m, "violations", []) or [])
        c[k, 0] = 1.0
        c[k, 1:6] = [float(x) for x in flags[k]]
        c[k, 6] = clip_log(m.latency_ms / (slo or lat_ref)) / 3.0 if m.latency_ms > 0 else -1.0
        c[k, 7] = clip_log(e.power / p_ref) / 3.0 if e.power > 0 else -1.0
        c[k, 8] = 0.0 if any(v.startswith("latency") for v in viol) else 1.0
        c[k, 9] = 1.0 if not need or m.cap >= need * (1 - 1e-9) else 0.0
        c[k, 10] = 0.0 if any(v.startswith("battery") for v in viol) else 1.0
        c[k, 11] = 1.0 if m.ok else 0.0
        c[k, 12] = min(len(getattr(m, "parts", []) or [1]), 4) / 4.0
        c[k, 13] = min(float(moved[k]), 2.0)
        c[k, 14] = 1.0 if e.ok else 0.0
        c[k, 15] = clip_log(m.cap / need) if need else 0.0
        c[k, 16] = clip_log(e.cap / need) if need else 0.0
        c[k, 17] = clip_log(thr) if thr is not None else 0.0
        mask[k] = 1.0
    hist = list(history)[-HISTORY:]
    if not hist:
        hist = [[0.0, 0.0, 1.0, -CLIP / 3.0]]
    hist = [hist[0]] * (HISTORY - len(hist)) + hist
    g = np.asarray([x for h in hist for x in h] + list(trend) + list(tail), dtype=np.float32)
    g = np.clip(g, -CLIP, CLIP)
    return {"candidates": np.clip(c, -CLIP, CLIP), "global": g, "action_mask": mask}


def layout() -> dict:
    """What an agent's config.yml records of the observation (checked when it is loaded)."""
    return {"obs_version": ADAPT_OBS_VERSION, "candidate_features": NC, "global_features": NGA,
            "history": HISTORY, "max_candidates": SLOTS}


__all__ = ["ROW_FEATURES", "HIST_FEATURES", "HISTORY", "TREND_FEATURES", "TREND_WINDOW", "GLOBAL_TAIL",
           "FIXED_ROWS", "NC", "NGA", "ADAPT_OBS_VERSION", "SLOTS", "W_ENERGY", "CLIP", "clip_log", "qoe_utility",
           "moved_fraction", "history_row", "trend_features", "build_observation", "layout"]
