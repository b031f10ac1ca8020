"""The stage policy's computed terms: the one-step lookahead of every close and add, the
head's columns of an observation, and the objective of the closes that end the plan.

Why a module of its own: these are exact formulas over the observation's lookahead columns
(dora_rl/envs/stage_obs.py), written once for numpy (`StageNumpyActor`, planning) and torch
(`StagePointerHead`, training) through `lib`, and tested against each other and against the
cost model; the learned parts that weigh them live in stage_policy.py."""

from __future__ import annotations

import numpy as np
import torch

from dora_rl.envs.instance import GLOBAL_FEATURES, NG
from dora_rl.envs.stage import BLK_LOOKAHEAD, BLOCK_FEATURES, DEV_LOOKAHEAD, DEVICE_FEATURES
from dora_rl.features import CLIP

NDL, NBL, NGL = len(DEV_LOOKAHEAD), len(BLK_LOOKAHEAD), 10    # lookahead columns: device, block, global
# the head's columns: the lookahead's, then a device's "free" flag (valid, unused, not in the
# pending group), a block's "candidate end" flag, the log rate of the pending group and the
# objective's flag (1 = energy)
NDX, NBX, NGX = NDL + 1, NBL + 1, NGL + 2
_G_OBJ_ENERGY = GLOBAL_FEATURES.index("obj_energy")
_IS_END = BLK_LOOKAHEAD.index(BLOCK_FEATURES.index("is_end"))
_USED, _IN_GROUP = DEVICE_FEATURES.index("used"), DEVICE_FEATURES.index("in_group")
_ON_BATT, _BATT_H = DEVICE_FEATURES.index("on_battery"), DEVICE_FEATURES.index("log_battery_h")
_G_HAS_BATT, _G_BATT_H = GLOBAL_FEATURES.index("has_battery"), GLOBAL_FEATURES.index("log_battery_h")
_IDLE = DEV_LOOKAHEAD.index(DEVICE_FEATURES.index("log_idle_w_new"))
_PAIRED = [DEV_LOOKAHEAD.index(DEVICE_FEATURES.index(k)) for k in ("log_dyn_w", "log_idle_w_new")]
_REST = [DEV_LOOKAHEAD.index(DEVICE_FEATURES.index(k)) for k in ("log_rate_rest", "log_rate_rest_fill")]
_G_GROUP_RATE = 7               # StageEnv global: log(group rate / mean rate), -CLIP without a group
PAIR_BUMPS = (8, 4, 4, 4, 4)    # tanh bumps per lookahead feature (log stage time, log bound, vs caps, energy)


def lookahead(xd, xb, xg, lib=np):
    """The one-step lookahead of every close (d, j), (..., D, Bm, 5), from the observation's
    lookahead columns (xd: `DEV_LOOKAHEAD` columns, xb: `BLK_LOOKAHEAD`, xg: StageEnv's global extras;
    dora_rl/envs/qoe_bound.py): log stage time / T*, log of the latency lower bound
    `fill + (M - 1) T` after the close (the rest spread over the remaining devices) / T*,
    that bound over the latency cap, the period bound over the period cap, and the log of an
    energy estimate (stage + rest at the most efficient free device + idle power over the
    period) over P* T* (P* = the mean active power). `lib` is
    numpy or torch (same formula for the actor in numpy and the policy in torch)."""
    def ex(x):      # ndarray.clip: np.clip's wrapper cost more, at ~30 calls per decision
        return lib.exp(x.clip(-3 * CLIP, 3 * CLIP) if lib is np else x.clamp(-3 * CLIP, 3 * CLIP))

    lrj, lrr, lfin, ltin, lout, ldyn, lidle, lrm = (xd[..., i][..., :, None] for i in range(NDL))
    lw, lwa, is_end = (xb[..., i][..., None, :] for i in range(NBL))
    g = [xg[..., i][..., None, None] for i in range(NGL)]
    x1 = lw - lrj
    u, rest = ex(x1 - g[2]), ex(lwa - lrr - g[2]) * (1.0 - is_end)
    out = ex(lout) * is_end
    fill = ex(g[0]) + ex(lfin) + u + ex(lwa - lrm - g[2]) * (1.0 - is_end) + out
    mx = lib.maximum
    T = mx(mx(mx(ex(g[1]), ex(ltin)), mx(u, rest)), out)
    lb = lib.log(fill + 64.0 * g[3] * T)
    lt = lib.log(T)
    # energy over P* T*: the stage's dynamic energy, the rest's at the most efficient free
    # device, and idle power of the participants over the period (inference: the request
    # period or M T; training: the latency bound)
    period = g[7] * (fill + 64.0 * g[3] * T) + (1.0 - g[7]) * mx(ex(g[6]), ex(g[2]) * T)
    e = ex(x1 + ldyn) + ex(lwa + g[8]) * (1.0 - is_end) + (ex(g[9]) + ex(lidle)) * period
    return lib.stack([x1, lb, lb - g[4], lt - g[5], lib.log(e)], -1)


def lookahead_at(xd, xb, xg, at, lib=np):
    """`lookahead` at the closes `at` only, (P, 5): `at` = (leading indices..., device
    indices, block indices) of P closes, as np.nonzero / torch's nonzero(as_tuple=True) give
    them for a close mask (..., D, Bm). Why: only allowed closes need the term (the others
    are masked), and at 64 devices x 200 blocks about 5 % are allowed; the numpy actor plans
    and the fit trains with it."""
    lead, di, ji = tuple(at[:-2]), at[-2], at[-1]
    return lookahead(xd[lead + (di,)][:, None], xb[lead + (ji,)][:, None], xg[lead], lib)[:, 0, 0]


def bump_sum(x, fidx, scale, shift, amp, lib=np):
    """sum_k amp_k * tanh(x[..., fidx_k] * scale_k + shift_k): the learned function of the
    lookahead features (K tanh bumps, each on one feature) that the policy adds to a close's
    and to an add's logit; one spelling for the torch fit and the numpy actor."""
    return (lib.tanh(x[..., fidx] * scale + shift) * amp).sum(-1)


def head_columns(obs: dict, lib=np):
    """The columns the head reads from an observation (numpy or torch): (devices: the
    `DEV_LOOKAHEAD` columns + free flag, blocks: `BLK_LOOKAHEAD` + candidate flag, global:
    StageEnv's extras + log group rate + objective flag). The observation's `relay_w` (v4),
    when present, joins a device's new idle power: the energy estimate then counts the
    relays a close brings in (dora_rl/envs/stage_obs.py:relay_power)."""
    xd, dm, xb, bm, g = obs["devices"], obs["device_mask"], obs["blocks"], obs["block_mask"], obs["global"]
    free = dm * (1.0 - xd[..., _USED]) * (1.0 - xd[..., _IN_GROUP])
    cat = np.concatenate if lib is np else torch.cat
    cols = xd[..., list(DEV_LOOKAHEAD)]
    rw = obs.get("relay_w")
    if rw is not None:          # -CLIP: no relay (left exactly as it was)
        idle = lib.where(rw > -CLIP + 1e-3, lib.logaddexp(cols[..., _IDLE], rw), cols[..., _IDLE])
        cols = cat([cols[..., :_IDLE], idle[..., None], cols[..., _IDLE + 1:]], -1)
    return (cat([cols, free[..., None]], -1),
            cat([xb[..., list(BLK_LOOKAHEAD)], bm[..., None]], -1),
            cat([g[..., NG:NG + NGL], g[..., _G_GROUP_RATE:_G_GROUP_RATE + 1],
                 g[..., _G_OBJ_ENERGY:_G_OBJ_ENERGY + 1]], -1))


def battery_risk(obs: dict):
    """Per device, (..., D) bool: on battery, under a battery target, and lasting less than the
    target at its active power (the observation's `log_battery_h` against the target's; numpy
    or torch). Such a device may still comply at a lower duty, but its whole-model close is
    where the objective term most often chose a plan that missed the target (energy: the
    efficient device is the battery one; session 31), so `end_objective` never ranks it
    above the others."""
    xd, g = obs["devices"], obs["global"]
    return ((xd[..., _ON_BATT] > 0.5) & (g[..., _G_HAS_BATT] > 0.5)[..., None]
            & (xd[..., _BATT_H] < g[..., _G_BATT_H][..., None]))


def objective_column(x, xg):
    """The lookahead's column of the instance's objective, (...): the log latency bound
    (`x[..., 1]`) or, when the objective's flag in `xg` is set, the log energy estimate
    (`x[..., 4]`); `x` is a `lookahead` / `add_lookahead` table (..., *, 5) whose leading
    dimensions are xg's."""
    e = xg[..., NGL + 1].reshape(xg.shape[:-1] + (1,) * (x.ndim - xg.ndim))
    return (1.0 - e) * x[..., 1] + e * x[..., 4]


def end_objective(xd, xb, xg, lib=np, allowed=None, risky=None):
    """Per device d, (..., D): the lookahead's own objective column (log latency bound, or
    log energy when the objective is energy) of the close that ends the plan on d, minus the
    least of it over the free devices whose ending close `allowed` (the closes' mask, (...,
    D, Bm)) and that are not `risky` (`battery_risk`, (..., D)); when no such device is
    left, over the allowed ones, and when no ending close is allowed, over every free
    device; 0 where no such close exists, and at least 0 on a risky device. Why: a masked
    close cannot be chosen, and a risky one may miss the battery target, so neither may set
    the bar the others are measured against (nor a risky one earn a bonus): with them as
    the bar, fixed weights above (0, 4) lost compliance on validation; without them (32, 32)
    lost 1 of 485 validation instances (a relay's battery) and planned every set cheaper
    (docs/learning.md, "Sessions 30-31"). A close that ends the plan leaves no rest to
    bound, so there the latency column is the plan's latency (the difference of two
    whole-model closes is the log of their latency ratio to 1e-4 on random instances,
    tested); the energy column is an estimate (that difference within 0.03 of the true log
    ratio at the median, 0.5 at the 90th percentile).
    (xd, xb, xg: `head_columns`.)"""
    return _ending(xd, xb, xg, lib, allowed, risky)[0]


def _end_row(xb):
    """(..., Bm) float: 1 at the candidate block whose close ends the plan (at most one)."""
    return ((xb[..., _IS_END] > 0.5) & (xb[..., NBL] > 0.5)) * 1.0


def _ending(xd, xb, xg, lib, allowed, risky):
    """(`end_objective`, the bar it measures against, (..., 1): 1e30 where there is none, and
    the device whose ending close sets it, (...))."""
    end = _end_row(xb)                                                          # (..., Bm)
    xe = (xb * end[..., None]).sum(-2)[..., None, :]                            # (..., 1, NBX): its row
    x = lookahead(xd, xe, xg, lib)[..., 0, :]                                   # (..., D, 5)
    col = objective_column(x, xg)
    ok = (xd[..., NDL] > 0.5) & (end.sum(-1) > 0.5)[..., None]
    def some(pick, other):      # pick where it names a device, else other
        return lib.where((pick.sum(-1) > 0)[..., None], pick, other)

    base = ok
    if allowed is not None:
        base = some(ok & ((_closes(allowed, xd, xb) & (end > 0.5)[..., None, :]).sum(-1) > 0), ok)
    if risky is not None:
        base = some(base & ~risky, base)
    barred = lib.where(base, col, 1e30)
    least = lib.amin(barred, -1)[..., None]
    out = lib.where(ok, col - lib.where(ok, least, 0.0), 0.0)
    return (out if risky is None else lib.where(risky, out.clip(min=0.0), out)), least, lib.argmin(barred, -1)


def _closes(allowed, xd, xb):
    """The closes' part of an action mask, (..., D, Bm) bool."""
    D, Bm = xd.shape[-2], xb.shape[-2]
    return allowed[..., :D * Bm].reshape(allowed.shape[:-1] + (D, Bm)) > 0


def _take(x, i, lib):
    """x[..., i] per leading index: `i` (...,) indexes x's last axis (numpy or torch)."""
    return (np.take_along_axis(x, i[..., None], -1) if lib is np else x.gather(-1, i[..., None]))[..., 0]


def _put(x, i, v, lib):
    """A copy of x with x[..., i] = v per leading index (`i`, `v`: (...,))."""
    if lib is np:
        out = x.copy()
        np.put_along_axis(out, i[..., None], v[..., None], -1)
        return out
    return x.scatter(-1, i[..., None], v[..., None].to(x.dtype))


def with_objective_term(close, xd, xb, xg, w, lib=np, allowed=None, risky=None, col=None):
    """The close logits `close` (..., D, Bm) with the objective term: the close that ends the
    plan on d gets `-w_obj * end_objective(d)`, `w` = (latency weight, energy weight), the
    one the objective's flag names applies (`allowed`, the action mask, and `risky`:
    `end_objective`'s). With `col` (..., D, Bm), the objective column of the closes'
    lookahead (`objective_column`; only the allowed closes' are read), the bar's own ending
    close is then raised just above every allowed close that does not end the plan and whose
    lookahead is already worse than the bar (`dominated`; where w_obj > 0): the policy ends
    the plan now rather than take a close that cannot lead to a better one - the latency
    column is a lower bound there (the rest at its bound), the energy column an optimistic
    estimate (the rest at the most efficient free device). Why raise the bar rather than push
    the dominated closes down: pushed down, they handed the decision to the next close, often
    one whose bound is loose only because its stage is short, and 2 of 485 validation
    instances lost compliance (session 32); raised, none did, and the plans were 0.3-1.9 %
    cheaper on the four validation sets (small seed 1 1.018 -> 1.012 of the oracle). With
    `risky`, the bar (when it is not at risk itself) is raised above the ending closes on
    devices at battery risk too: such a device may last at its real duty, but ending on it
    was where the network alone missed battery targets (validation: 6 more instances
    compliant, none lost, the common plans 0-0.4 % dearer; session 32)."""
    e = xg[..., NGL + 1]
    w_obj = (1.0 - e) * w[0] + e * w[1]
    rel, bar, dbar = _ending(xd, xb, xg, lib, allowed, risky)
    is_end = xb[..., _IS_END] > 0.5
    close = close - w_obj[..., None, None] * rel[..., :, None] * is_end[..., None, :]
    if col is None:
        return close
    dominated = (col > bar[..., None] + 1e-6) & ~is_end[..., None, :]
    if risky is not None:       # an ending close at battery risk, when the bar is not
        safe = ~_take(risky, dbar, lib)[..., None]
        dominated = dominated | (risky[..., :, None] & is_end[..., None, :] & safe[..., None])
    if allowed is not None:
        dominated = dominated & _closes(allowed, xd, xb)
    shape, Bm = close.shape, close.shape[-1]
    flat = close.reshape(shape[:-2] + (-1,))
    top = lib.amax(lib.where(dominated.reshape(flat.shape), flat, -1e30), -1)
    k = dbar * Bm + lib.argmax(_end_row(xb), -1)
    cur = _take(flat, k, lib)
    on = (bar[..., 0] < 1e29) & (w_obj > 0) & (top >= cur)
    if allowed is not None:     # only a bar that can be chosen (an allowed ending close)
        on = on & (_take(allowed, k, lib) > 0)
    return _put(flat, k, lib.where(on, top + 1e-3, cur), lib).reshape(shape)


SWITCH_MARGIN = 0.05     # the two-stage rule's switch between ending closes: 5 % in log objective


def with_two_stage(logits, two, xb, xg, w, lib=np, allowed=None, promise=None):
    """The logits (..., D * Bm + D) with the two-stage rule, where the objective's weight in
    `w` (latency, energy; the objective's flag in `xg` names it) is > 0. `two` (..., D, Bm)
    is the observation's "two_stage" key (dora_rl/envs/stage_two.py): a close's entry is the
    objective of a real plan (the close, then the rest on one more device), an ending
    close's the plan's own, with the battery targets checked at each device's duty. (1)
    When the least entry of the allowed closes that do not end the plan is below the least
    of the allowed ending closes, that close's logit is raised just above (+1e-3) every
    allowed action's; with no ending close allowed (no device holds the rest), when that
    entry is a plan (below CLIP) and the network's choice is a close, not a group's add
    (session 35: large 16 x 50 instance 0 took three stages from a 2-block close on its
    source phone, 1.55 x the two-Orin plan; overriding adds lost the data-parallel plans of
    validation large s2 39, 56, 58). Else the least allowed ending close is raised (2) when `promise`
    (..., D), the observation's "promise" key, names a device whose ending close is allowed
    (the previous close was a two-stage close: the plan ends as promised, or better) and the
    network's choice is a close, not a group's add; or (3) when the network's choice is an
    ending close whose entry is more than SWITCH_MARGIN (log) above it. Why a rule: the
    trained network prefers ending closes (held-out instance 123: 8.9 against -3.9 for the
    two-camera pipeline the oracle finds at 0.67 x the latency), a bonus from the one-step
    lookahead's bound instead lost compliance on validation (docs/learning.md, "Session
    33"), after the rule's close the network did not always end the plan as promised, and
    it ranks ending closes on battery devices by a battery risk at active power that the
    entries check at the device's duty ("Session 34"). With the shipped weights (32, 32) it
    applies under both objectives; with the training recipe's (0, 4) under energy only."""
    e = xg[..., NGL + 1]
    live = (1.0 - e) * w[0] + e * w[1] > 0
    D, Bm = two.shape[-2], two.shape[-1]
    lead, flat, inf = two.shape[:-2], two.shape[:-2] + (D * Bm,), 1e30
    cl = (two == two) if allowed is None else (allowed[..., :D * Bm] > 0).reshape(lead + (D, Bm))
    is_end = (_end_row(xb) > 0.5)[..., None, :]                                  # (..., 1, Bm)
    ends = lib.where(cl & is_end, two, inf).reshape(flat)
    bar, k_end = lib.amin(ends, -1), lib.argmin(ends, -1)
    cand = lib.where(cl & ~is_end, two, inf).reshape(flat)
    best, k = lib.amin(cand, -1), lib.argmin(cand, -1)
    masked = logits if allowed is None else lib.where(allowed > 0, logits, -inf)
    top, pick = lib.amax(masked, -1), lib.argmax(masked, -1)
    closes = pick < D * Bm
    on = live & (best < bar.clip(max=CLIP) - 1e-6) & ((bar < inf) | closes)        # (1)
    pe = lib.where(closes, _take(ends, lib.where(closes, pick, 0), lib), inf)
    kept = live & ~on & (pe < inf) & (pe > bar + SWITCH_MARGIN)                   # (3)
    if promise is not None:                                                       # (2)
        due = (((promise > 0.5)[..., :, None] & cl & is_end).reshape(flat).sum(-1)) > 0
        kept = kept | (live & ~on & (bar < inf) & due & closes)
    k = lib.where(kept, k_end, k)
    return _put(logits, k, lib.where(on | kept, top + 1e-3, _take(logits, k, lib)), lib)


def with_group(logits, group, xg, w, lib=np, allowed=None):
    """The logits (..., D * Bm + D) with the group rule, where the objective's weight in `w`
    is > 0 (as `with_two_stage`, after which it applies). `group` (..., D) is the
    observation's "group" key (dora_rl/envs/stage_group.py): the members, still to add, of
    the next stage of a data-parallel group or balanced pipeline that ends the plan better,
    on the cost model, than both plans the two-stage rule would take, marked 0.5 + 0.5 r / Bm
    (r: the stage's end). With two or more marked, the allowed marked add the network ranks
    highest is raised just above (+1e-3) every allowed action's; with one marked, its close
    at r (the stage: the pending group and it). Nothing is raised where that action is
    masked. Why: the trained network ends large plans on one device where a group of the
    fastest devices is up to 2.2 x faster, and cuts pipelines unevenly where balanced ones
    are up to 1.3 x faster (docs/learning.md, "Session 35", "Session 36")."""
    e = xg[..., NGL + 1]
    live = (1.0 - e) * w[0] + e * w[1] > 0
    D, inf = group.shape[-1], 1e30
    Bm = (logits.shape[-1] - D) // D
    masked = logits if allowed is None else lib.where(allowed > 0, logits, -inf)
    top = lib.amax(masked, -1)
    marked = group > 0.5
    k = marked.sum(-1)
    adds = lib.where(marked, masked[..., D * Bm:], -inf)
    a_k, a_v = lib.argmax(adds, -1), lib.amax(adds, -1)
    row = ((lib.amax(group, -1) - 0.5) * (2 * Bm)).round() - 1          # the stage's last block
    row = row.astype(int) if lib is np else row.long()
    c_k = lib.argmax(marked * 1.0, -1) * Bm + row.clip(0, Bm - 1)
    tgt = lib.where(k >= 2, D * Bm + a_k, c_k)
    ok = live & (((k >= 2) & (a_v > -inf / 2)) | ((k == 1) & (_take(masked, c_k, lib) > -inf / 2)))
    return _put(logits, tgt, lib.where(ok, top + 1e-3, _take(logits, tgt, lib)), lib)


def add_lookahead(xd, xb, xg, lib=np):
    """The one-step lookahead of every add d, (..., D, 5): the best over candidate ends j of
    `lookahead` for closing (partner, j) on the pending group + d + partner, the partner
    being the fastest other free device (its columns, with the joint rate: group + d +
    partner; symmetric in d and the partner: the transfers in and out the slower of the
    two, the rest's rates the lower, the dynamic and new idle power the two together, as a
    group's energy is its work over the joint rate times the members' summed power under
    proportional shares; the pending group's own members' power is left out, as in a
    close's lookahead). Why: an add's value shows only after the close that follows it, so without
    this the add logit had no computed term, and the network kept whole-model plans where
    data parallelism on two devices halved the latency (held-out, session 11)."""
    D = xd.shape[-2]
    if D < 2:                   # no partner: no add is allowed anyway
        return np.zeros(xd.shape[:-1] + (5,)) if lib is np else xd.new_zeros(xd.shape[:-1] + (5,))
    lrj, free = xd[..., 0], xd[..., NDL] > 0.5
    if lib is np:       # the partner's row: the only step numpy and torch spell differently
        i12 = np.argsort(-np.where(free, lrj, -1e30), -1, kind="stable")[..., :2]
        part = np.where(np.arange(D) == i12[..., :1], i12[..., 1:2], i12[..., :1])          # (..., D)
        xp = np.take_along_axis(xd, part[..., None], -2)
    else:
        i12 = lrj.masked_fill(~free, -1e30).topk(2, -1).indices
        part = torch.where(torch.arange(D) == i12[..., :1], i12[..., 1:2], i12[..., :1])
        xp = torch.gather(xd, -2, part[..., None].expand(*part.shape, xd.shape[-1]))
    joint = lib.exp(lrj) + lib.exp(xp[..., 0]) - lib.exp(xg[..., NGL])[..., None]
    cols = lib.maximum(xd[..., :NDL], xp[..., :NDL])
    cols[..., 0] = lib.log(joint.clip(min=1e-30))
    cols[..., _REST] = lib.minimum(xd[..., _REST], xp[..., _REST])
    cols[..., _PAIRED] = lib.logaddexp(xd[..., _PAIRED], xp[..., _PAIRED])
    L = lib.where((xb[..., NBL] > 0.5)[..., None, :, None], lookahead(cols, xb, xg, lib), 1e30)
    return lib.amin(L, -2).clip(-6 * CLIP, 6 * CLIP)
