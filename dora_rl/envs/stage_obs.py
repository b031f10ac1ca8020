"""StageEnv's observation: the feature layout (`STAGE_OBS_VERSION`) and the function that builds it.

Why a module of its own: the observation is half of StageEnv's code and is built at every
decision the network faces, so it is kept apart from the stepping and mask logic, with
what does not change within an instance computed once (`_consts`, cached on the
Instance) and the per-step parts vectorised. Layout: dora_rl/envs/stage.py's docstring
and docs/learning.md."""

from __future__ import annotations

import numpy as np

from dora_rl.envs.instance import NG
from dora_rl.features import CLIP, clip_log

STAGE_OBS_VERSION = 5      # 4 (session 32): the "relay_w" key; 5 (session 33): "two_stage"
TWO_STAGE_PARTNERS = 16    # the second stage's device is one of the 16 fastest free devices
TWO_STAGE_MARGIN = 0.2     # energy: a two-stage plan's latency and period must meet the QoE caps by 20 %
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


def route_relays(inst, a: int, b: int, nbytes: float) -> tuple[int, ...]:
    """The devices the route a -> b of a flow of `nbytes` relays through (`routes.Network.route`:
    a lone flow's route; the plan's routing may pick another under contention)."""
    return inst.cost.net.route(a, b, nbytes).relays if a != b else ()


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
    for d in range(inst.n):
        if d in taken:
            continue
        new = {x for g in env.prev for x in route_relays(inst, g, d, nb)} - taken - {d}
        w = base + sum(idle[x] for x in new)
        if w > 0:
            out[d] = np.clip(np.log(w / pstar), -CLIP, CLIP)
    return out


def two_stage(env, qb) -> np.ndarray:
    """The "two_stage" key, (D, Bm): with no pending group and some close that ends the plan
    allowed (else CLIP everywhere: no estimate), per close (d, j) the log of the objective of
    the plan that closes [p, j + 1) on d and then ends on one other free device e with the
    rest [j + 1, B) - the least over the e that hold the rest in memory (`Instance.reach`)
    and are not at battery risk (on battery under a target, lasting less than it at active
    power), among the TWO_STAGE_PARTNERS fastest free - and at the close that ends the plan
    (j = B - 1) that plan's own; CLIP where there is none. Latency (over T*) by the QoE
    bound's formula (dora_rl/envs/qoe_bound.py) with the rest on e: fill = F + f_in(d) + u_d
    + dirs (occ + lat)(d -> e) + u_e + out_fill(e), T = max(T closed, t_in(d), u_d, dirs occ,
    u_e, out_occ(e)), latency = fill + (M - 1) T (F, T: the closed stages'; d -> e a lone flow
    on the least route, `routes.Network.least`, a lower bound; the return to the source
    exact). Energy (over P* T*; session 33) by the cost model's window formula
    (docs/cost-model.md, "Energy and battery") for the plan's part from here: the idle power
    of every participant (the closed stages' devices, the source, d, e) over the window P
    (inference max(1 / request rate, M T), training the latency), d's and e's dynamic power
    over their busy time M u, the radio energy of the entry, the boundary d -> e and the
    return at both ends, and the idle power of the devices the entry, the boundary and the
    return relay through that are not participants yet (`_relays`; a relayed edge server
    made large 32 x 50 instance 4's three-stage plan 1.54 x the two-Orin plan it replaced);
    the closed stages' own dynamic and radio energy, the same for every entry, and the
    relays' radio are left out; an energy entry whose latency or period misses the QoE caps
    by less than TWO_STAGE_MARGIN is CLIP. Why: the lookahead bounds a close's rest by
    spreading it over every free device, a bound too loose to act on (a bonus for closes
    whose bound beat the best ending close lost compliance on validation), so the network's
    greedy choice ended plans where a second stage would pipeline them: held-out instance
    123 put the whole model on its source camera, 1.49 x the oracle's two-camera pipeline
    (docs/learning.md, "Session 33"). A two-stage completion is a plan, not a bound: the
    policy's rule (`stage_lookahead.with_two_stage`) takes it when it is better than every
    allowed ending close."""
    inst, D, Bm, n, B, p = env.inst, env.max_devices, env.max_blocks, env.inst.n, env.inst.B, env.p
    out = np.full((D, Bm), CLIP)
    cm = env._mask[:D * Bm].reshape(D, Bm)
    if inst.objective not in ("latency", "energy") or env.group or p >= B or not cm[:n, B - 1].any():
        return out
    energy = inst.objective == "energy"
    free = np.array([d for d in range(n) if d not in env.used], dtype=np.int64)
    rate = np.asarray(inst.rate, dtype=float)
    fp = np.asarray(inst.fp, dtype=float)
    r = np.arange(p + 1, B + 1)                                              # the stage's end (exclusive)
    M, M1 = qb.M, qb.M - 1
    oo = np.array([o[0] for o in qb.out])
    of = np.array([o[0] + o[1] for o in qb.out])
    f_in, t_in = env._qin
    ud = qb.back * qb.m * (fp[r] - fp[p])[None, :] / rate[free, None]        # (F, R)
    fd, td = (env._qF + f_in[free])[:, None], np.maximum(env._qT, t_in[free])[:, None]
    T_end = np.maximum.reduce([td[:, 0], ud[:, -1], oo[free]])
    fill_end = fd[:, 0] + ud[:, -1] + of[free]
    end = fill_end + M1 * T_end
    if energy:
        E = _Energy(env, qb, free)
        end = np.where(qb._ok(fill_end, T_end), E.of(end, T_end, E.dyn[free] * M * ud[:, -1]
                                                      + E.rin + E.ret[free]), np.inf)
    out[free, B - 1] = _logs(end, inst.tstar * (E.pstar if energy else 1.0))
    bj = np.asarray(qb.bj, dtype=float)
    risky = np.zeros(n, dtype=bool)
    if qb.min_h is not None:
        with np.errstate(invalid="ignore", divide="ignore"):
            risky = np.isfinite(bj) & (bj / np.asarray(inst.act_w, dtype=float) / 3600.0 < qb.min_h)
    part = np.array(sorted((e for e in free if not risky[e]), key=lambda e: -rate[e])[:TWO_STAGE_PARTNERS],
                    dtype=np.int64)
    if len(part) == 0 or len(r) < 2:
        return out
    r2 = r[:-1]                                                              # the ends that leave a rest
    ue = qb.back * qb.m * (fp[B] - fp[r2])[None, :] / rate[part, None]      # (E, R - 1)
    fits = np.asarray(inst.reach)[part][:, r2] >= B                          # e holds [r, B)
    L, K = inst.cost.net.least
    nb = qb.m * np.asarray(qb.bnd, dtype=float)[r2]                          # (R - 1,)
    Lde, Kde = L[np.ix_(free, part)], K[np.ix_(free, part)]                 # (F, E)
    with np.errstate(invalid="ignore"):
        occ = qb.dirs * Kde[:, :, None] * nb[None, None, :]
        lat = qb.dirs * np.where(nb[None, None, :] > 0, Lde[:, :, None], 0.0)
    u1 = ud[:, None, :-1]
    fill = fd[:, :, None] + u1 + occ + lat + ue[None] + of[part][None, :, None]
    T = np.maximum(np.maximum(np.maximum(td[:, :, None], u1), occ), np.maximum(ue[None], oo[part][None, :, None]))
    tot = fill + M1 * T
    ok = fits[None] & (free[:, None] != part[None, :])[:, :, None] & np.isfinite(tot)
    if energy:
        work = (E.dyn[free][:, None, None] * M * u1 + E.dyn[part][None, :, None] * M * ue[None] + E.rin[:, None, None]
                + qb.dirs * M * (E.radio[free][:, None, None] + E.radio[part][None, :, None]) * nb[None, None, :]
                + E.ret[part][None, :, None])
        tot = E.of(tot, T, work, part)
        ok &= qb._ok(fill * (1 + TWO_STAGE_MARGIN), T * (1 + TWO_STAGE_MARGIN))
    best = np.where(ok, tot, np.inf).min(axis=1)                             # (F, R - 1)
    rows = out[free]
    rows[:, p:B - 1] = _logs(best, inst.tstar * (E.pstar if energy else 1.0))
    out[free] = rows
    return out


def _relays(inst, s, t) -> np.ndarray:
    """(len(s), len(t), n) bool: x relays the route s -> t (`route_relays`; a lone flow of the
    model's median boundary bytes, so one route per pair), filled pair by pair as asked for and
    kept on the Instance (its routes never change)."""
    n = inst.n
    c = getattr(inst, "_relay_mask", None)
    if c is None:
        c = inst._relay_mask = (np.zeros((n, n, n), dtype=bool), np.zeros((n, n), dtype=bool),
                                inst.batch * float(np.median(inst.bnd_l[1:inst.B])))
    rel, done, nb = c
    s, t = np.asarray(s, dtype=np.int64), np.asarray(t, dtype=np.int64)
    for a, b in np.argwhere(~done[np.ix_(s, t)]):
        x, y = int(s[a]), int(t[b])
        rel[x, y, list(route_relays(inst, x, y, nb))] = True
        done[x, y] = True
    return rel[np.ix_(s, t)]


def _logs(x: np.ndarray, unit: float) -> np.ndarray:
    """log(x / unit) clipped to +-CLIP, CLIP where x is not finite (no such plan)."""
    got = np.isfinite(x)
    return np.where(got, np.clip(np.log(np.maximum(np.where(got, x, 1.0) / unit, 1e-30)), -CLIP, CLIP), CLIP)


class _Energy:
    """`two_stage`'s energy terms for the free devices `free` (docs/cost-model.md, "Energy and
    battery"): the participants' idle power over the window, the radio of the entry (both
    ends) and of the return to the source (both ends; inference)."""

    def __init__(self, env, qb, free):
        inst, cost = env.inst, env.inst.cost
        self.pstar = _consts(inst, qb)["pstar"]
        self.idle, self.dyn = np.asarray(qb.idle, dtype=float), np.asarray(qb.dyn_w, dtype=float)
        self.radio = np.asarray(cost.cluster.radio_j_per_byte, dtype=float)
        self.training, self.M = bool(inst.training), qb.M
        rr = cost.workload.request_rate
        self.req = 1.0 / rr if (rr and not inst.training) else 0.0
        self.part = set(env.used) | {inst.src}
        self.idle_part = float(sum(self.idle[x] for x in self.part))
        self.free, self.inst = free, inst
        p, src = env.p, inst.src
        nin = qb.m * float(qb.bnd[p]) * (qb.dirs if p > 0 else 1.0)              # the entry's bytes
        r_prev = float(np.mean([self.radio[x] for x in env.prev]))
        self.rin = qb.M * nin * (r_prev + self.radio[free]) * ~np.isin(free, env.prev)       # (F,)
        nret = 0.0 if inst.training else qb.m * float(qb.bnd[inst.B])              # the return's
        self.ret = qb.M * nret * (self.radio + self.radio[src]) * (np.arange(inst.n) != src)    # (n,)
        # relays: the idle power of the devices the entry (prev -> d), the boundary (d -> e) and
        # the return (e -> source) relay through that are not participants already
        n = inst.n
        self.avail = np.where(np.isin(np.arange(n), list(self.part | set(env.relays))), 0.0, self.idle)
        self.r_in = _relays(inst, list(env.prev), free).any(0)                          # (F, n)
        self.r_ret = (np.zeros((n, n), dtype=bool) if inst.training
                      else _relays(inst, np.arange(n), [src])[:, 0])                     # (n, n)

    def new_idle(self, ds) -> np.ndarray:
        return np.where(np.isin(ds, list(self.part)), 0.0, self.idle[ds])

    def of(self, latency, T, work, part=None) -> np.ndarray:
        """The energy: the window's idle power of the participants (the closed ones, d, and e
        when `part` names the rest's devices: arrays (F, E, R), else (F,)) plus `work` (the
        dynamic and radio energy)."""
        P = latency if self.training else np.maximum(self.req, self.M * T)
        idle = self.idle_part + self.new_idle(self.free)
        free, F = self.free, len(self.free)
        if part is None:
            idle = idle + (self.r_in | self.r_ret[free]) @ self.avail
        else:
            other = np.where(free[:, None] == part[None, :], 0.0, self.new_idle(part)[None, :])
            rel = self.r_in[:, None, :] | _relays(self.inst, free, part) | self.r_ret[part][None, :, :]
            rel[np.arange(F), :, free] = False                                  # d and e are counted
            rel[:, np.arange(len(part)), part] = False
            idle = (idle[:, None] + other + rel @ self.avail)[:, :, None]
        return idle * P + work


def _consts(inst, qb) -> dict:
    """What the observation needs of an instance that no step changes (built once per Instance)."""
    c = getattr(inst, "_stage_obs", None)
    if c is None:
        pstar = max(float(inst.act_w.mean()), 1e-9)           # energies over P* T* (P* = mean active power)
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
            "two_stage": two_stage(env, qb).astype(np.float32)}
