"""StageEnv's observation: the feature layout (`STAGE_OBS_VERSION`) and the function that builds it.

Why a module of its own: the observation is half of StageEnv's code and is built at every
decision the network faces, so it is kept apart from the stepping and mask logic, with
what does not change within an instance computed once (`_consts`, cached on the
Instance) and the per-step parts vectorised. Layout: dora_rl/envs/stage.py's docstring
and docs/learning.md."""

from __future__ import annotations

import numpy as np

from dora_rl.envs.instance import NG
from dora_rl.envs.stage_energy import entry_relays, pstar_of
from dora_rl.envs.stage_group import group_key
from dora_rl.envs.stage_two import promise, two_stage
from dora_rl.features import CLIP, clip_log

STAGE_OBS_VERSION = 7      # 4 (session 32): "relay_w"; 5 (33): "two_stage"; 6 (34): "promise"; 7 (35): "group"
DEVICE_FEATURES = (
    "valid", "log_rate", "log_mem", "log_active_w", "idle_over_active", "on_battery", "log_battery_h",
    "is_source", "log_t_input_from_source", "log_t_output_to_source", "log_lat_source",
    "used", "in_group", "log_t_cut_from_prev", "log_rate_join", "reach_frac", "can_close", "can_add",
    "log_t_rest_join", "min_end_frac", "log_in_fill", "log_in_period", "log_out_fill", "log_rate_rest",
    "log_dyn_w", "log_idle_w_new", "log_rate_rest_fill",
)
BLOCK_FEATURES = (
    "valid", "candidate", "log_flops", "log_params", "log_act_out", "log_work", "frac_after", "log_t_cut",
    "is_end", "len_frac", "pos_frac", "log_stage_params", "log_peak_act", "log_work_after",
)
# StageEnv's global vector: PartitionEnv's GLOBAL_FEATURES (instance.py), then the QoE bound's
# state (dora_rl/envs/qoe_bound.py; times per micro-batch over T*) and the micro-batch count
STAGE_GLOBAL_EXTRA = ("log_fill_closed", "log_period_closed", "log_microbatches", "microbatches_m1_64",
                      "log_latency_cap", "log_period_cap", "log_request_period", "training", "log_rest_dyn",
                      "log_idle_w_used")
SNG = NG + len(STAGE_GLOBAL_EXTRA)
NFD, NFB = len(DEVICE_FEATURES), len(BLOCK_FEATURES)
DEV_LOG_RATE_JOIN = DEVICE_FEATURES.index("log_rate_join")
BLK_LOG_WORK = BLOCK_FEATURES.index("log_work")
# the columns the policy combines into its one-step lookahead (dora_rl/learning/stage_lookahead.py:lookahead)
DEV_LOOKAHEAD = tuple(DEVICE_FEATURES.index(k) for k in ("log_rate_join", "log_rate_rest", "log_in_fill",
                                                         "log_in_period", "log_out_fill", "log_dyn_w",
                                                         "log_idle_w_new", "log_rate_rest_fill"))
BLK_LOOKAHEAD = tuple(BLOCK_FEATURES.index(k) for k in ("log_work", "log_work_after", "is_end"))


def relay_power(env, part: set, pstar: float, idle) -> np.ndarray:
    """The "relay_w" key, (D,): per free device d, the log over P* of the idle power of the
    devices that relay but compute nothing - those the committed stages' transfers relay
    through (`env.relays`) and those the entry of a stage on d (from the previous stage's
    devices, at the current cut) would add - -CLIP where there are none. Why: a relay is a
    participant (the cost model charges its idle power over the period), and the lookahead's
    energy estimate counted only the stage devices' idle power: validation small seed 1's
    instance 64 put blocks 0-21 on a Jetson Orin Nano reached through a Jetson Nano, 2.0x
    the whole model on the source phone, with 0.17 J of the 0.33 J gap the relay's idle
    (docs/learning.md, "Session 32"). Only the lookahead reads it (`head_columns`), not the
    encoder, so a network trained without it runs unchanged but for that term."""
    inst = env.inst
    out = np.full(env.max_devices, -CLIP)
    nb = inst.batch * inst.bnd_l[min(env.p, inst.B)]
    done = env.relays - part
    base = sum(idle[x] for x in done)
    taken = part | done | set(env.group)
    ds = np.array([d for d in range(inst.n) if d not in taken], dtype=np.int64)
    new = entry_relays(inst, env.prev, ds, nb)          # (F, n): the relays the entry to d adds
    new[:, sorted(taken)] = False
    new[np.arange(len(ds)), ds] = False
    w = base + (new * np.asarray(idle, dtype=float)).sum(axis=1)
    out[ds] = np.where(w > 0, np.clip(np.log(np.where(w > 0, w, 1.0) / pstar), -CLIP, CLIP), -CLIP)
    return out


def _consts(inst, qb) -> dict:
    """What the observation needs of an instance that no step changes (built once per Instance)."""
    c = getattr(inst, "_stage_obs", None)
    if c is None:
        pstar = pstar_of(inst)                                 # energies over P* T* (P* = mean active power)
        c = inst._stage_obs = {
            "pstar": pstar, "rate": inst.rate.tolist(), "r": np.arange(1, inst.B + 1),
            "fp": np.asarray(inst.fp), "pp": np.asarray(inst.cost.pp),
            "out_fill": np.array([o[0] + o[1] for o in qb.out], dtype=float),
            "dyn": np.clip(np.log(np.maximum(qb.dyn_w / pstar, 1e-30)), -CLIP, CLIP),
            "idle": np.clip(np.log(np.maximum(qb.idle / pstar, 1e-30)), -CLIP, CLIP)}
    return c


def observation(env) -> dict:
    """StageEnv `env`'s current observation (padded to its max_devices / max_blocks)."""
    inst, D, Bm, n, B = env.inst, env.max_devices, env.max_blocks, env.inst.n, env.inst.B
    p = min(env.p, B)
    ts, t3 = inst.tstar, 3.0
    qb = env._bound()
    k = _consts(inst, qb)
    used, group = env.used, env.group
    dev = np.zeros((D, NFD))
    dev[:n, :11] = inst.static[:, :11]
    if used:
        dev[list(used), 11] = 1.0
    if group:
        dev[group, 12] = 1.0
    bwp = inst.bw[env.prev].min(axis=0)
    dev[:n, 13] = np.clip(np.log(np.maximum(inst.batch * inst.bnd_l[p] / bwp / ts, 1e-30)), -CLIP, CLIP) / t3
    rate = k["rate"]
    grate = sum(rate[x] for x in group)
    rj = inst.rate + grate
    mean_rate = inst.total_rate / n
    dev[:n, 14] = np.log(rj / mean_rate)
    free = [d for d in range(n) if d not in used]
    free_rate = float(sum(rate[d] for d in free))
    span = max(B - p, 1)
    rmin, rmax = env._rmin, env._rmax
    okc = rmin <= rmax
    dev[:n, 15] = np.where(okc, np.clip((rmax - p) / span, 0.0, 1.0), 0.0)     # (terminal obs: p = B)
    dev[:n, 16] = okc
    dev[:n, 17] = env._mask[D * Bm:D * Bm + n]
    rest = inst.back * inst.batch * (inst.fp[-1] - inst.fp[p])
    dev[:n, 18] = np.clip(np.log(np.maximum(rest / rj / ts, 1e-30)), -CLIP, CLIP) / t3
    dev[:n, 19] = np.where(okc, np.clip((rmin - p) / span, 0.0, 1.0), 1.0)
    f_in, t_in = env._qin
    lg = np.log(np.maximum(np.stack([f_in, t_in, k["out_fill"]], 1) / ts, 1e-30))
    dev[:n, 20:23] = np.clip(lg, -CLIP, CLIP)
    R_T, R_m, _, _ = qb.rest_rates([d for d in free if d not in group])
    dev[:n, 23] = np.clip(np.log(np.maximum(R_T / mean_rate, 1e-30)), -CLIP, CLIP)
    dev[:n, 26] = np.clip(np.log(np.maximum(R_m / mean_rate, 1e-30)), -CLIP, CLIP)
    pstar = k["pstar"]
    dev[:n, 24] = k["dyn"]
    part = used | {inst.src}
    dev[:n, 25] = k["idle"]
    dev[list(part), 25] = -CLIP
    blk = np.zeros((Bm, NFB))
    blk[:B] = inst.block_static(NFB)
    r = k["r"]
    cand = r > p
    blk[:B, 1] = cand
    fp = k["fp"]
    work = np.maximum(fp[1:] - fp[p], 0.0) / max(fp[-1], 1e-30)
    blk[:B, 5] = np.where(cand, np.log(np.maximum(work * n, 1e-30)), -CLIP).clip(-CLIP, CLIP)
    blk[:B, 9] = np.where(cand, (r - p) / B, 0.0)
    pp = k["pp"]
    log_params = np.log(np.maximum((pp[1:] - pp[p]) / inst.mem_med, 1e-30)).clip(-CLIP, CLIP)
    blk[:B, 11] = np.where(cand, log_params / t3, -CLIP / t3)
    bmask = np.zeros(Bm, np.float32)
    bmask[:B] = cand
    g = np.zeros(SNG)
    g[:NG] = inst.gstatic
    g[0] = p / B
    g[1] = len(env.stages) / 8.0
    g[2] = len(group) / 4.0
    g[3] = n / 64.0
    g[4] = (fp[-1] - fp[p]) / max(fp[-1], 1e-30)
    g[5] = clip_log(env.t_max_stage / ts) / t3 if env.stages else -CLIP / t3
    g[6] = clip_log(env.t_transfers / ts) / t3 if env.t_transfers > 0 else -CLIP / t3
    g[7] = clip_log(grate / mean_rate) if group else -CLIP
    g[8] = np.log(B) / np.log(300.0)
    g[9] = clip_log(inst.bnd_l[p] / max(inst.bnd_l[0], 1.0)) / t3
    g[19] = (n - len(used)) / n
    g[20] = free_rate / inst.total_rate
    g[21] = clip_log(rest / free_rate / ts) / t3 if free_rate > 0 else CLIP / t3
    g[23] = np.log(n) / np.log(64.0)
    M = qb.M
    rest_dyn = float((qb.dyn_w[free] / pstar * mean_rate / inst.rate[free]).min()) if free else 0.0
    wl = inst.cost.workload
    g[NG:] = (clip_log(env._qF / ts), clip_log(env._qT / ts), np.log(M), (M - 1) / 64.0,
              clip_log(qb.lat_cap / ts), clip_log(qb.T_cap / ts),
              clip_log(1.0 / wl.request_rate / ts) if (wl.request_rate and not inst.training) else -CLIP,
              float(inst.training), clip_log(rest_dyn), clip_log(sum(qb.idle[d] for d in part) / pstar))
    return {"devices": dev.astype(np.float32), "device_mask": env._dmask.copy(),
            "blocks": blk.astype(np.float32), "block_mask": bmask, "global": g.astype(np.float32),
            "relay_w": relay_power(env, part, pstar, qb.idle).astype(np.float32),
            "two_stage": two_stage(env, qb).astype(np.float32), "promise": promise(env), "group": group_key(env)}
