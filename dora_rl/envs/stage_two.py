"""The observation's "two_stage" key (v5) and the promise it keeps: per close, the objective
of the plan that closes the stage and ends on one more device.

Why a module of its own: the estimate (latency by the QoE bound's formula, energy by the
cost model's window formula, the relays' idle power, the battery targets at each device's
duty) is a third of the observation's code, and StageEnv's transition reads it too (a close
whose two-stage plan beats every ending close promises its partner, `promised`). The rule
that reads the key is the policy's (dora_rl/learning/stage_lookahead.py:with_two_stage);
docs/learning.md, "Sessions 33-34"."""

from __future__ import annotations

from functools import cached_property

import numpy as np

from dora_rl.cost.qoe import preference
from dora_rl.errors import NoFeasiblePlan
from dora_rl.features import CLIP

TWO_STAGE_PARTNERS = 16    # the second stage's device is one of the 16 fastest free devices
TWO_STAGE_MARGIN = 0.2     # a two-stage plan's latency, period (energy) and battery life must meet the targets by 20 %


def pstar_of(inst) -> float:
    """P*, the unit of power of the observation's energies (the mean active power)."""
    return max(float(inst.act_w.mean()), 1e-9)


def route_relays(inst, a: int, b: int, nbytes: float) -> tuple[int, ...]:
    """The devices the route a -> b of a flow of `nbytes` relays through (`routes.Network.route`:
    a lone flow's route; the plan's routing may pick another under contention)."""
    return inst.cost.net.route(a, b, nbytes).relays if a != b else ()


def two_stage(env, qb) -> np.ndarray:
    """The "two_stage" key, (D, Bm): with no pending group (else CLIP everywhere: no
    estimate), per close (d, j) the log of the objective of
    the plan that closes [p, j + 1) on d and then ends on one other free device e with the
    rest [j + 1, B) - the least over the e, among the TWO_STAGE_PARTNERS fastest free and the
    source (no return flow: session 35, large 32 x 50 instance 6 ends on its source phone),
    that hold the rest in memory (`Instance.reach`) - and at the close that ends the plan (j = B -
    1) that plan's own; CLIP where there is none and at the closes the mask forbids (the
    rule reads no other; cached per state on the env). Latency
    (over T*) by the QoE bound's formula (dora_rl/envs/qoe_bound.py) with the rest on e:
    fill = F + f_in(d) + u_d + dirs (occ + lat)(d -> e) + u_e + out_fill(e), T = max(T
    closed, t_in(d), u_d, dirs occ, u_e, out_occ(e)), latency = fill + (M - 1) T (F, T: the
    closed stages'; d -> e a lone flow on the least route, `routes.Network.least`, a lower
    bound; the return to the source exact). Energy (over P* T*) by the cost model's window
    formula (docs/cost-model.md, "Energy and battery") for the plan's part from here: the
    idle power of every participant (the closed stages' devices, the source, d, e) over the
    window P (`_window`), d's and e's dynamic power over their busy time M u, the radio
    energy of the entry, the boundary d -> e and the return at both ends, and the idle
    power of the devices those flows relay through that are not participants yet
    (`_relays`; session 34: a relayed edge server made large 32 x 50 instance 4's
    three-stage plan 1.54 x the two-Orin plan it replaced); the closed stages' own dynamic
    and radio energy, the same for every entry, and the relays' radio are left out. An
    entry is CLIP where a battery target is missed by TWO_STAGE_MARGIN (d and e at their
    duty, busy time / P, and their own radio, the source's for the input it sends; the new
    relays at their idle power) or, under energy, where the latency or the period misses
    its cap by that margin (the least route and no medium contention make them
    optimistic). Why: the lookahead bounds a close's rest by spreading it over every free
    device, a bound too loose to act on (a bonus for closes whose bound beat the best ending
    close lost compliance on validation), so the network's greedy choice ended plans where a
    second stage would pipeline them: held-out instance 123 put the whole model on its
    source camera, 1.49 x the oracle's two-camera pipeline (docs/learning.md, "Session 33").
    A two-stage completion is a plan, not a bound: the policy's rule
    (`stage_lookahead.with_two_stage`) takes it when it is better than every allowed ending
    close."""
    key = (id(env.inst), env.p, len(env.stages), tuple(env.group))
    if env._two is None or env._two[0] != key:
        out, partner = _two_stage(env, qb)
        _verify(env, out, partner)
        env._two = (key, out, partner)
    return env._two[1]


def plan_preference(env, rest: list) -> tuple | None:
    """The planners' sort key (`cost.qoe.preference`: compliant first, then the objective)
    of the plan of env's closed stages and then `rest` (stage tuples), evaluated exactly on
    the cost model (`Instance.finish`); None where no micro-batch count fits it in memory."""
    try:
        _, _, m = env.inst.finish(list(env.stages) + rest)
    except NoFeasiblePlan:
        return None
    return preference(m, env.inst.objective)


def rule_choices(env, out: np.ndarray, partner: np.ndarray):
    """The two plans the two-stage rule chooses between, as the rest's stage tuples (None
    where there is none): the best allowed ending close, and the best allowed close that
    leaves a rest with its partner (where its entry is a plan, below CLIP); then their
    entries (inf where none)."""
    D, Bm, n, B, p = env.max_devices, env.max_blocks, env.inst.n, env.inst.B, env.p
    cm = env._mask[:D * Bm].reshape(D, Bm)[:n]
    ends = np.where(cm[:, B - 1], out[:n, B - 1], np.inf)
    rest = np.where(cm[:, :B - 1], out[:n, :B - 1], np.inf)
    e_min, r_min = float(ends.min()), float(rest.min()) if rest.size else np.inf
    one = [(p, B, (int(ends.argmin()),))] if np.isfinite(e_min) else None
    pair = None
    if r_min < CLIP - 1e-6:
        d, j = (int(x) for x in np.unravel_index(int(rest.argmin()), rest.shape))
        pair = [(p, j + 1, (d,)), (j + 1, B, (int(partner[d, j]),))]
    return one, pair, e_min, r_min


def _verify(env, out: np.ndarray, partner: np.ndarray) -> None:
    """Where the least allowed two-stage entry is below the least allowed ending close's
    (the two-stage rule would take it), both plans evaluated exactly: unless the two-stage
    plan is better, every entry of a close that leaves a rest becomes CLIP in place (the
    rule then takes none). Why: the estimate is optimistic (the least route, no medium
    contention), and the rule took closes whose plans it rated 0.2-0.5 % better than ending
    the plan, a last block split off to another device, that were 5-20 % worse (session
    35: card large 32 x 50 instance 1, 32 x 200 instance 2, 64 x 100 instance 8)."""
    one, pair, e_min, r_min = rule_choices(env, out, partner)
    if one is None or pair is None or not r_min < e_min - 1e-6:
        return
    two, end = plan_preference(env, pair), plan_preference(env, one)
    if two is None or (end is not None and not two < end):
        D, Bm, n, B = env.max_devices, env.max_blocks, env.inst.n, env.inst.B
        cm = env._mask[:D * Bm].reshape(D, Bm)[:n, :B - 1]
        out[:n, :B - 1] = np.where(cm, CLIP, out[:n, :B - 1])


def promised(env, d: int, j: int) -> int | None:
    """The device the plan should end on after the close (d, j) (a single device, not
    ending the plan) when that close's two-stage plan is better than every allowed ending
    close (or, with none allowed, is a plan at all) - the two-stage rule's condition,
    whoever took the close - else None. StageEnv
    keeps it (`_promise`), the next observation's "promise" key names it, and the rule then
    ends the plan on the best allowed ending close (`with_two_stage`): the partner the entry
    was computed with, or better. Why: after the rule's close the network's next choice was
    not always the promised stage (validation small s2 78: another device, on which the
    first device's battery, checked at the duty the promised partner gave it, missed its
    target; docs/learning.md, "Session 34")."""
    if j >= env.inst.B - 1:
        return None
    two = two_stage(env, env._bound())
    partner = env._two[2]
    if partner[d, j] < 0:
        return None
    bar = min(rule_choices(env, two, partner)[2], CLIP)
    return int(partner[d, j]) if two[d, j] < bar - 1e-6 else None


def promise(env) -> np.ndarray:
    """The "promise" key, (D,): 1 at the device the previous close promised the plan would
    end on (`promised`), else 0."""
    out = np.zeros(env.max_devices, np.float32)
    if env._promise is not None and not env.done:
        out[env._promise] = 1.0
    return out


def _two_stage(env, qb) -> tuple[np.ndarray, np.ndarray]:
    """`two_stage`'s entries and, per close, its partner e (-1 where none)."""
    inst, D, Bm, n, B, p = env.inst, env.max_devices, env.max_blocks, env.inst.n, env.inst.B, env.p
    out = np.full((D, Bm), CLIP)
    partner = np.full((D, Bm), -1, dtype=np.int64)
    cm = env._mask[:D * Bm].reshape(D, Bm)
    if inst.objective not in ("latency", "energy") or env.group or p >= B:
        return out, partner
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
    E = _Energy(env, qb, free)
    P_end = _window(inst, end, T_end)
    batt = E.battery_end(M * ud[:, -1], P_end)
    if energy:
        end = np.where(qb._ok(fill_end, T_end), E.of(end, T_end, E.dyn[free] * M * ud[:, -1]
                                                      + E.rin + E.ret[free]), np.inf)
    unit = inst.tstar * (E.pstar if energy else 1.0)
    out[free, B - 1] = _logs(np.where(batt, end, np.inf), unit)
    part = sorted(free, key=lambda e: -rate[e])[:TWO_STAGE_PARTNERS]
    if inst.src in free and inst.src not in part:      # ending on the source: no return flow
        part.append(inst.src)
    part = np.array(part, dtype=np.int64)
    live = cm[free, p:B - 1].any(axis=1)                      # the devices with a close that leaves a rest
    if not live.all():
        free, ud, fd, td = free[live], ud[live], fd[live], td[live]
        E = _Energy(env, qb, free)
    cols = np.flatnonzero(cm[free, p:B - 1].any(axis=0))       # the allowed closes that leave a rest (the rule
    if len(part) == 0 or len(cols) == 0:                        # reads no other entry)
        return out, partner
    c0, c1 = int(cols[0]), int(cols[-1]) + 1
    r2 = r[c0:c1]                                                            # their ends
    ue = qb.back * qb.m * (fp[B] - fp[r2])[None, :] / rate[part, None]      # (E, R - 1)
    fits = np.asarray(inst.reach)[part][:, r2] >= B                          # e holds [r, B)
    L, K = inst.cost.net.least
    nb = qb.m * np.asarray(qb.bnd, dtype=float)[r2]                          # (R - 1,)
    Lde, Kde = L[np.ix_(free, part)], K[np.ix_(free, part)]                 # (F, E)
    with np.errstate(invalid="ignore"):
        occ = qb.dirs * Kde[:, :, None] * nb[None, None, :]
        lat = qb.dirs * np.where(nb[None, None, :] > 0, Lde[:, :, None], 0.0)
    u1 = ud[:, None, c0:c1]
    fill = fd[:, :, None] + u1 + occ + lat + ue[None] + of[part][None, :, None]
    T = np.maximum(np.maximum(np.maximum(td[:, :, None], u1), occ), np.maximum(ue[None], oo[part][None, :, None]))
    tot = fill + M1 * T
    P = _window(inst, tot, T)
    ok = (fits[None] & (free[:, None] != part[None, :])[:, :, None] & np.isfinite(tot)
          & E.battery_pairs(part, M * u1, M * ue[None], qb.dirs * M * nb[None, None, :], P))
    if energy:
        work = (E.dyn[free][:, None, None] * M * u1 + E.dyn[part][None, :, None] * M * ue[None] + E.rin[:, None, None]
                + qb.dirs * M * (E.radio[free][:, None, None] + E.radio[part][None, :, None]) * nb[None, None, :]
                + E.ret[part][None, :, None])
        tot = E.of(tot, T, work, part)
        ok &= qb._ok(fill * (1 + TWO_STAGE_MARGIN), T * (1 + TWO_STAGE_MARGIN))
    cand = np.where(ok, tot, np.inf)
    best, arg = cand.min(axis=1), cand.argmin(axis=1)                        # (F, R - 1)
    allowed = cm[free, p + c0:p + c1]
    rows = out[free]
    rows[:, p + c0:p + c1] = np.where(allowed, _logs(best, unit), CLIP)
    out[free] = rows
    prow = partner[free]
    prow[:, p + c0:p + c1] = np.where(np.isfinite(best) & allowed, part[arg], -1)
    partner[free] = prow
    return out, partner


def entry_relays(inst, prev, ds, nb: float) -> np.ndarray:
    """(len(ds), n) bool: x relays a route from one of `prev` (the previous stage's devices)
    to d, a lone flow of `nb` bytes (the entry at the current cut; `route_relays`), kept on
    the Instance per (a, d, bytes): the "relay_w" key and `two_stage` ask for the same."""
    memo = inst.__dict__.setdefault("_entry_relays", {})
    rel = np.zeros((len(ds), inst.n), dtype=bool)
    for i, d in enumerate(ds):
        for a in prev:
            k = (int(a), int(d), nb)
            if k not in memo:
                memo[k] = list(route_relays(inst, int(a), int(d), nb))
            rel[i, memo[k]] = True
    return rel


def _relays(inst, s, t, kind: str = "boundary") -> np.ndarray:
    """(len(s), len(t), n) bool: x relays the route s -> t (`route_relays`, a lone flow's).
    `kind` "boundary": a flow of the model's median boundary bytes; "return": of its output;
    both filled pair by pair as asked for and kept on the Instance (its routes never
    change)."""
    n = inst.n
    s, t = np.asarray(s, dtype=np.int64), np.asarray(t, dtype=np.int64)
    cache = inst.__dict__.setdefault("_relay_masks", {})
    if kind not in cache:
        nb = inst.batch * float(np.median(inst.bnd_l[1:inst.B]) if kind == "boundary" else inst.bnd_l[inst.B])
        cache[kind] = (np.zeros((n, n, n), dtype=bool), np.zeros((n, n), dtype=bool), nb)
    rel, done, nb = cache[kind]
    for a, b in np.argwhere(~done[np.ix_(s, t)]):
        x, y = int(s[a]), int(t[b])
        rel[x, y, list(route_relays(inst, x, y, nb))] = True
        done[x, y] = True
    return rel[np.ix_(s, t)]


def _window(inst, latency, T):
    """The energy window of a plan of this latency and period T per micro-batch
    (docs/cost-model.md, "Energy and battery"): training the latency, inference max(1 /
    request rate, M T)."""
    if inst.training:
        return latency
    rr = inst.cost.workload.request_rate
    return np.maximum(1.0 / rr if rr else 0.0, inst.M * T)


def _logs(x: np.ndarray, unit: float) -> np.ndarray:
    """log(x / unit) clipped to +-CLIP, CLIP where x is not finite (no such plan)."""
    got = np.isfinite(x)
    return np.where(got, np.clip(np.log(np.maximum(np.where(got, x, 1.0) / unit, 1e-30)), -CLIP, CLIP), CLIP)


class _Energy:
    """`two_stage`'s energy and battery terms for the free devices `free` (docs/cost-model.md,
    "Energy and battery"): the participants' idle power over the window, the radio of the
    entry (both ends) and of the return to the source (both ends; inference), the idle power
    of the new relays, and the battery checks at each device's duty."""

    def __init__(self, env, qb, free):
        inst, cost = env.inst, env.inst.cost
        self.pstar = pstar_of(inst)
        self.idle, self.dyn = np.asarray(qb.idle, dtype=float), np.asarray(qb.dyn_w, dtype=float)
        self.radio = np.asarray(cost.cluster.radio_j_per_byte, dtype=float)
        self.part = set(env.used) | {inst.src}
        self.idle_part = float(sum(self.idle[x] for x in self.part))
        self.free, self.inst = free, inst
        p, src = env.p, inst.src
        nin = qb.m * float(qb.bnd[p]) * (qb.dirs if p > 0 else 1.0)              # the entry's bytes
        r_prev = float(np.mean([self.radio[x] for x in env.prev]))
        self.rin_own = qb.M * nin * self.radio[free] * ~np.isin(free, env.prev)    # (F,): d's end of the entry
        self.rin = self.rin_own + qb.M * nin * r_prev * ~np.isin(free, env.prev)
        nret = 0.0 if inst.training else qb.m * float(qb.bnd[inst.B])              # the return's
        self.ret_own = qb.M * nret * self.radio * (np.arange(inst.n) != src)      # (n,): e's end of it
        self.ret = self.ret_own + qb.M * nret * self.radio[src] * (np.arange(inst.n) != src)
        # the source's own radio for the input it sends (when the first stage is not on it),
        # for its battery when it is d or e: sends[x] as d, sende[x] as e
        send = qb.M * qb.m * float(qb.bnd[0]) * self.radio[src]
        first_off = p > 0 and src not in env.stages[0][2]
        self.send_d = np.where(free == src, send if first_off else 0.0, 0.0)           # (F,)
        self.send_e = np.where(np.arange(inst.n) == src, send if (p == 0 or first_off) else 0.0, 0.0)   # (n,)
        # relays: the idle power of the devices the entry (prev -> d), the boundary (d -> e) and
        # the return (e -> source) relay through that are not participants already
        n = inst.n
        self.qb, self.env = qb, env
        self.targets = qb.min_h is not None and bool(np.isfinite(qb.bj).any())       # any battery target
        self.avail = np.where(np.isin(np.arange(n), list(self.part | set(env.relays))), 0.0, self.idle)
        self.relay_ok = qb.battery_ok_at(np.arange(n), 0.0, 0.0, 1 + TWO_STAGE_MARGIN)  # a relay's idle alone
        self._pairs = None

    @cached_property
    def r_in(self) -> np.ndarray:
        """(F, n): the devices the entry (prev -> d, its bytes) relays through."""
        env, inst = self.env, self.inst
        return entry_relays(inst, env.prev, self.free, inst.batch * inst.bnd_l[env.p])

    @cached_property
    def r_ret(self) -> np.ndarray:
        """(n, n): the devices the return (e -> source) relays through (none in training)."""
        n = self.inst.n
        if self.inst.training:
            return np.zeros((n, n), dtype=bool)
        return _relays(self.inst, np.arange(n), [self.inst.src], "return")[:, 0]

    def new_idle(self, ds) -> np.ndarray:
        return np.where(np.isin(ds, list(self.part)), 0.0, self.idle[ds])

    def of(self, latency, T, work, part=None) -> np.ndarray:
        """The energy: the window's idle power of the participants (the closed ones, d, and e
        when `part` names the rest's devices: arrays (F, E, R), else (F,)) plus `work` (the
        dynamic and radio energy)."""
        P = _window(self.inst, latency, T)
        idle = self.idle_part + self.new_idle(self.free)
        free = self.free
        if part is None:
            idle = idle + self.rel_end() @ self.avail
        else:
            other = np.where(free[:, None] == part[None, :], 0.0, self.new_idle(part)[None, :])
            idle = (idle[:, None] + other + self.rel_pairs(part) @ self.avail)[:, :, None]
        return idle * P + work

    def battery_end(self, busy, P):
        """(F,) bool: d lasts its battery target with the plan ending on it (`two_stage`)."""
        if not self.targets:
            return True
        ok = self.qb.battery_ok_at(self.free, busy / P, (self.rin_own + self.ret_own[self.free] + self.send_d) / P)
        return ok if self.relay_ok.all() else ok & ~(self.rel_end() & ~self.relay_ok).any(-1)

    def battery_pairs(self, part, busy_d, busy_e, nbd, P):
        """(F, E, R) bool: d and e at their duty (busy / P) and radio (the entry, the boundary
        of `nbd` bytes, the return, the source's input) and the new relays at their idle power
        last their battery targets by TWO_STAGE_MARGIN."""
        if not self.targets:
            return True
        mg, free, qb = 1 + TWO_STAGE_MARGIN, self.free, self.qb
        ok = np.ones(P.shape, dtype=bool)
        f = np.isfinite(qb.bj[free])                         # only devices on battery can miss
        if f.any():
            radio = (self.rin_own + self.send_d)[f][:, None, None] + nbd * self.radio[free[f]][:, None, None]
            ok[f] &= qb.battery_ok_at(free[f][:, None, None], busy_d[f] / P[f], radio / P[f], mg)
        e = np.isfinite(qb.bj[part])
        if e.any():
            radio = nbd * self.radio[part[e]][None, :, None] + (self.ret_own + self.send_e)[part[e]][None, :, None]
            ok[:, e] &= qb.battery_ok_at(part[e][None, :, None], busy_e[:, e] / P[:, e], radio / P[:, e], mg)
        if not self.relay_ok.all():                           # a relay whose idle power alone misses its target
            ok &= ~(self.rel_pairs(part) & ~self.relay_ok).any(-1)[:, :, None]
        return ok

    def rel_end(self) -> np.ndarray:
        """(F, n): the devices the entry to d and d's return relay through."""
        return self.r_in | self.r_ret[self.free]

    def rel_pairs(self, part) -> np.ndarray:
        """(F, E, n): the devices the entry to d, the boundary d -> e and e's return relay
        through, d and e themselves aside (counted as stage devices)."""
        if self._pairs is None:
            free, F = self.free, len(self.free)
            rel = self.r_in[:, None, :] | _relays(self.inst, free, part) | self.r_ret[part][None, :, :]
            rel[np.arange(F), :, free] = False
            rel[:, np.arange(len(part)), part] = False
            self._pairs = rel
        return self._pairs


