"""`dora`: the heterogeneity-aware partitioner (exact DP over a Pareto set) and `pareto`.

Plan space (shared with `oracle`, see docs/planners.md): an ordered list of stages, each
a contiguous block range on a *group* of devices (device indices in ascending order,
at most `max_group` of them) with `proportional_shares` (speed-proportional, capped by
memory; training stages use the 1F1B in-flight count min(M, S - s)); a device serves
at most one stage; M = workload.microbatches.

The DP runs back to front over block suffixes. A label describes a suffix of stages
that starts at block l with a first stage on group G (shares sh):

    key   = (l, G, sh, j)      j = min(M, stages in the suffix)   (training only)
    label = (vec, U, pend, node)

`U` is the set of devices the suffix uses (a smaller set dominates: anything that
completes the larger one completes the smaller). `vec` holds monotone cost components
so that dominance pruning is exact:

    F   fill: sum of stage times and boundary transfers (+ latency)   additive
    T   steady-state period candidate: max over stages / boundaries    max
    A   training all-reduce time (dedicated links)                     max
    E   energy that does not depend on the period (+ idle/rate when
        the period is fixed)                                           additive
    I   idle watts of participants (period varies)                     additive
    R   battery: period a battery device needs (period varies)         max
    ES  the source's battery energy (it is on several boundaries)      additive
    per-medium bytes of the pipeline (and of the all-reduces)           additive

`pend` holds the battery energy of the first stage's devices whose incoming
transfer is not yet known. Every final figure (latency = F + (M-1) max(T, media) +
A, energy = E + idle x period, throughput, battery) is non-decreasing in every
component, so a dominated label can never complete into a better plan: the search is
exact. Medium contention is carried exactly (loads per medium in `vec`).

Global constraints prune early: the latency SLO (partial latency only grows), the
throughput target (T bound), memory (per stage), battery (per device once its
energy is complete, when the period is fixed by the request rate).

Past the exact regime (too many candidate transitions for about a second in CPython)
the planner switches to the chain approximation (docs/planners.md): groups are runs of
consecutive devices in a speed order used in that order, candidate cuts are thinned, and
each Pareto list keeps a beam of labels. It never hangs."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np

from dora_rl.cost import CostModel, Metrics
from dora_rl.errors import NoFeasiblePlan
from dora_rl.plan import Plan
from dora_rl.planners.base import Planner, no_fit, proportional_shares, register
from dora_rl.scenario import Scenario

TOL = 1e-9             # the cost model's QoE tolerance
INF = math.inf

# Exact-regime budget: estimated transitions (key pairs x block pairs). Above it the
# planner narrows the search. Chosen so the exact DP stays around a second in CPython.
EXACT_BUDGET = 100_000
APPROX_GROUP = 3       # past the exact regime: at most this many devices per stage
APPROX_BEAM = 12       # past the exact regime: labels kept per DP key
APPROX_CUTS = 24       # past the exact regime: candidate cut positions (fewer if needed)
APPROX_BUDGET = 30_000  # past the exact regime: transitions (cut pairs x group pairs x j)


# ----------------------------------------------------------------------------- space
@dataclass
class Space:
    """The candidate plan space.

    exact (order is None): every group of <= `max_group` of `devices`, any order of
    stages, disjoint groups.
    chain (order given): groups are runs of <= `max_group` consecutive devices of
    `order`, and stages use them in that order (devices may be skipped)."""

    devices: list[int]
    max_group: int
    beam: int | None = None            # labels kept per key (None: exact)
    exact: bool = True
    note: str = ""
    order: list[int] | None = None
    cuts: list[int] | None = None      # allowed stage boundaries (None: every block boundary)

    def groups(self) -> list[tuple[int, ...]]:
        out = []
        if self.order is None:
            devs = sorted(self.devices)
            for k in range(1, min(self.max_group, len(devs)) + 1):
                out.extend(combinations(devs, k))
            return out
        o = self.order
        for a in range(len(o)):
            for k in range(1, self.max_group + 1):
                if a + k <= len(o):
                    out.append(tuple(sorted(o[a:a + k])))
        return out

    def claims(self) -> list[int]:
        """Per group: the device mask a suffix starting with it claims (exact: the group;
        chain: the group and everything after it in `order`)."""
        if self.order is None:
            return [sum(1 << d for d in g) for g in self.groups()]
        o = self.order
        out = []
        for a in range(len(o)):
            for k in range(1, self.max_group + 1):
                if a + k <= len(o):
                    out.append(sum(1 << d for d in o[a:]))
        return out


def estimate_work(n_dev: int, max_group: int, n_blocks: int, jmax: int) -> float:
    """Transitions the exact DP examines: (ordered disjoint group pairs) x (block pairs) x j x
    an allowance for the Pareto labels carrying different device sets (~ 2^n)."""
    g = sum(math.comb(n_dev, k) for k in range(1, min(max_group, n_dev) + 1))
    pairs = 0
    for a in range(1, min(max_group, n_dev) + 1):
        for b in range(1, min(max_group, n_dev - a) + 1):
            pairs += math.comb(n_dev, a) * math.comb(n_dev - a, b)
    blocks = n_blocks * (n_blocks + 1) / 2
    return (pairs + g) * blocks * jmax * 2 ** max(n_dev - 3, 0)


def candidate_cuts(cost: CostModel, k: int) -> list[int]:
    """At most k interior cut positions (+ 0 and B): half spread evenly by FLOPs, half at
    the boundaries with the smallest activations (cheap to cross)."""
    B = cost.n_blocks
    if B - 1 <= k:
        return list(range(B + 1))
    fp = cost.fp
    tot = fp[-1] or 1.0
    chosen = set()
    half = k // 2
    for i in range(1, half + 1):
        target = tot * i / (half + 1)
        best = min(range(1, B), key=lambda c: (abs(fp[c] - target), c))
        chosen.add(best)
    for c in sorted(range(1, B), key=lambda c: (cost.bnd[c], c)):
        if len(chosen) >= k:
            break
        chosen.add(c)
    return [0] + sorted(chosen) + [B]


def memory_binds(cost: CostModel) -> bool:
    """False when every device could hold the whole model with all M micro-batches in
    flight (then shares never hit a memory cap and the 1F1B count cannot matter)."""
    B, M = cost.n_blocks, cost.workload.microbatches
    m = cost.workload.batch / M
    if cost.training:
        need_act = max((cost.bnd[l] + cost.ap[r] - cost.ap[l]) for l in range(B) for r in (B,))
        need = cost.pp[B] * cost.param_copies + m * need_act * M
    else:
        need = cost.pp[B] + m * cost.peak[0][B]
    return any(need > mem for mem in cost.mem)


def speed_order(cost: CostModel, source_first: bool = True) -> list[int]:
    order = sorted(range(cost.n), key=lambda d: (-cost.rate[d], -cost.mem[d], d))
    if source_first:
        order = [cost.src] + [d for d in order if d != cost.src]
    return order


def choose_spaces(cost: CostModel, max_group: int | None = None, exact: bool | None = None,
                  budget: float = EXACT_BUDGET) -> list[Space]:
    """The exact space (every device, groups up to `max_group`) when its estimated work fits
    `budget` (or `exact=True`); otherwise the chain approximation, run for two device
    orders (source first then fastest first; fastest first) with a beam."""
    n, B = cost.n, cost.n_blocks
    jmax = min(cost.workload.microbatches, n) if cost.training and memory_binds(cost) else 1
    mg = n if max_group is None else max(1, int(max_group))
    heavy = 2.0 if cost.training else 1.0      # training labels carry more components
    if exact or (exact is None and heavy * estimate_work(n, mg, B, jmax) <= budget):
        return [Space(list(range(n)), mg, None, True, "exact")]
    g = min(mg, APPROX_GROUP)
    k = APPROX_CUTS

    def approx_work(g, k):
        ng = sum(max(n - a, 0) for a in range(g))
        return (k + 2) * (k + 1) / 2 * ng * ng / 2 * jmax * (3.0 if cost.training else 1.0)

    while approx_work(g, k) > APPROX_BUDGET and k > 8:
        k -= 4
    while approx_work(g, k) > APPROX_BUDGET and g > 1:
        g -= 1
    cuts = candidate_cuts(cost, k)
    out = []
    for sf in (True, False):
        order = speed_order(cost, sf)
        out.append(Space(list(range(n)), g, APPROX_BEAM, False,
                         f"chain approximation: stages on runs of <= {g} consecutive devices of the order "
                         f"{'source, then fastest first' if sf else 'fastest first'}; "
                         f"{len(cuts) - 2} candidate cuts of {B - 1}; beam {APPROX_BEAM}", order, cuts))
    if out[0].order == out[1].order:
        out = out[:1]
    return out


# ----------------------------------------------------------------------------- result
@dataclass
class Candidate:
    stages: list                       # [(l, r, [dev idx], [shares])]
    latency_s: float
    energy_j: float
    plan: Plan | None = None
    metrics: Metrics | None = None


@dataclass
class SearchResult:
    candidates: list[Candidate]        # QoE-compliant (by the DP's arithmetic), Pareto over (latency, energy)
    space: Space
    labels: int = 0
    seconds: float = 0.0
    stats: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- the DP
class _DP:
    def __init__(self, cost: CostModel, space: Space, constrained: bool = True):
        self.cost = cost
        self.space = space
        self.constrained = constrained
        wl, q = cost.workload, cost.qoe
        self.M = M = wl.microbatches
        self.m = wl.batch / M
        self.B = cost.n_blocks
        self.training = tr = cost.training
        self.back = 3.0 if tr else 1.0
        self.src = cost.src
        self.nmed = len(cost.medium_bps)
        self.caps = cost.medium_bps
        self.groups = space.groups()
        self.gmask = [sum(1 << d for d in g) for g in self.groups]
        self.claim = space.claims()
        self.jmax = min(M, len(space.devices)) if tr else 1
        if tr and not memory_binds(cost):
            self.jmax = 1       # exact: in-flight counts only matter when memory can bind
        rate = wl.request_rate
        # period: fixed (1/rate) for compliant inference plans with a request rate
        self.fixed_period = constrained and (not tr) and bool(rate)
        self.period0 = 1.0 / rate if self.fixed_period else None
        # bounds from QoE (only when constrained)
        self.Tbound = INF
        self.Lbound = INF
        pmax = [None] * cost.n
        if constrained:
            if q.latency_slo_ms is not None:
                self.Lbound = q.latency_slo_ms * 1e-3 * (1 + TOL)
            if tr:
                if q.min_throughput is not None:
                    self.Lbound = min(self.Lbound, wl.batch / (q.min_throughput * (1 - TOL)))
            else:
                need = max(q.min_throughput or 0.0, rate or 0.0)
                if need > 0:
                    self.Tbound = 1.0 / (M * need * (1 - TOL))
            if q.min_battery_hours is not None:
                for d in range(cost.n):
                    bj = cost.battery_j[d]
                    if bj is not None:
                        pmax[d] = bj / (3600.0 * q.min_battery_hours * (1 - TOL))
        self.pmax = pmax
        self.battery = any(p is not None for p in pmax)
        # vector layout
        self.iF, self.iT, self.iA, self.iE, self.iI, self.iR, self.iES = range(7)
        self.iL = 7
        self.iAR = 7 + self.nmed
        self.dim = 7 + self.nmed * (2 if tr else 1)
        self.battery_variable = self.battery and not self.fixed_period
        self.pcols = [self.iF, self.iT, self.iA] + list(range(self.iL, self.dim))
        self.rcap = self._battery_cap() if self.battery_variable else 0.0
        self._stage_cache: dict = {}
        self._shid: dict = {}
        self.n_labels = 0

    # --- building blocks ---------------------------------------------------
    def stage(self, l, r, gi, inflight):
        key = (l, r, gi, inflight)
        c = self._stage_cache.get(key)
        if c is not None or key in self._stage_cache:
            return c
        cost = self.cost
        devs = self.groups[gi]
        res = None
        sh = proportional_shares(cost, list(devs), l, r, self.m, inflight)
        if sh is not None:
            params = cost.pp[r] - cost.pp[l]
            if self.training:
                act = (cost.bnd[l] + cost.ap[r] - cost.ap[l]) * inflight
                base = params * cost.param_copies
            else:
                act = cost.peak[l][r]
                base = params
            ok = all(base + w * self.m * act <= cost.mem[d] for d, w in zip(devs, sh))
            if ok:
                work = self.m * (cost.fp[r] - cost.fp[l])
                per = [w * work / cost.rate[d] for d, w in zip(devs, sh)]
                cmax = max(per)
                edev = [(cost.active_w[d] - cost.idle_w[d]) * self.back * t * self.M for d, t in zip(devs, per)]
                t_ar, ar_load = 0.0, {}
                if self.training:
                    t_ar, ar_load, per_dev = cost.allreduce(list(devs), params)
                    if len(devs) > 1:
                        edev = [e + cost.radio[d] * 2 * per_dev for e, d in zip(edev, devs)]
                idle = sum(cost.idle_w[d] for d in devs if d != self.src)
                shid = self._shid.setdefault((gi, tuple(sh)), len(self._shid))
                arv = [0.0] * self.nmed
                for mu, b in ar_load.items():
                    arv[mu] += b
                res = (tuple(sh), shid, self.back * cmax, edev, idle, t_ar, arv)
        self._stage_cache[key] = res
        return res

    def boundary(self, adevs, ash, bdevs, bsh, k, dirs):
        """(x contribution to F, T candidate, loads, {dev: radio J})."""
        cost = self.cost
        nbytes = self.m * cost.bnd[k]
        occ, lat, load, flows = cost.transfer(adevs, ash, bdevs, bsh, nbytes)
        lv = [0.0] * self.nmed
        for mu, b in load.items():
            lv[mu] += dirs * b
        rad: dict[int, float] = {}
        for i, j, b in flows:
            e = dirs * b * self.M
            rad[i] = rad.get(i, 0.0) + cost.radio[i] * e
            rad[j] = rad.get(j, 0.0) + cost.radio[j] * e
        return dirs * (occ + lat), dirs * occ, lv, rad

    def _partial_ok(self, v):
        """Prune on monotone QoE bounds (latency / throughput)."""
        T = v[1]
        caps = self.caps
        for mu in range(self.nmed):
            t = v[self.iL + mu] / caps[mu]
            if t > T:
                T = t
        if T > self.Tbound:
            return False
        if self.Lbound < INF:
            A = v[2]
            if self.training:
                for mu in range(self.nmed):
                    t = v[self.iAR + mu] / caps[mu]
                    if t > A:
                        A = t
            if v[0] + (self.M - 1) * T + A > self.Lbound:
                return False
        return True

    def _finalize_dev(self, d, e, v):
        """A non-source device's battery energy is complete: check or record. False = prune."""
        p = self.pmax[d]
        if p is None:
            return True
        room = p - self.cost.idle_w[d]
        if room <= 0:
            return False
        if self.fixed_period:
            return e <= room * self.period0 * (1 + 1e-12)
        need = e / room
        if need > v[self.iR]:
            v[self.iR] = need
        return True

    # --- Pareto lists ------------------------------------------------------
    def _prune(self, lst, gi: int | None = None):
        """Keep the labels no other label dominates (vec and pend <=, device set subset).
        Vectorised: sorted by a scaled sum (a dominator always sorts first), then checked
        chunk by chunk against the survivors so far.

        Battery with a variable period (training, or inference without a request rate): a
        longer period lowers average power, so a faster label may fail a battery target its
        slower rival meets. Then a label dominates only a rival with the same
        period-determining components, unless its own period lower bound already exceeds
        every battery demand any plan can have (`rcap`): dominance stays exact."""
        k = len(lst)
        if k <= 1:
            return lst
        X = np.array([o[0] + o[2] for o in lst], dtype=float)
        U = np.array([o[1] for o in lst], dtype=np.int64)
        scale = np.abs(X).max(axis=0)
        scale[scale == 0] = 1.0
        key = (X / scale).sum(axis=1)
        pop = np.array([bin(u).count("1") for u in U.tolist()])
        order = np.lexsort((pop, key))
        X, U = X[order], U[order]
        bv = self.battery_variable
        if bv:
            P = X[:, self.pcols]
            # battery demands still possible: devices outside U (and the source), or R itself
            need = np.maximum(X[:, self.iR], self.rsrc)
            first = self.gmask[gi] if gi is not None else -1     # pending devices: not final yet
            for bit, rd in self.rdev:
                need = np.where(((U & bit) == 0) | ((first & bit) != 0), np.maximum(need, rd), need)
            safe = self._period_lb(X) >= need
        keptX = np.empty((0, X.shape[1]))
        keptU = np.empty(0, dtype=np.int64)
        keptP = np.empty((0, len(self.pcols)))
        keptS = np.empty(0, dtype=bool)
        keep_idx = []
        CH = 128
        for c0 in range(0, k, CH):
            cx, cu = X[c0:c0 + CH], U[c0:c0 + CH]
            alive = np.ones(len(cx), dtype=bool)
            if len(keptX):
                dom = (keptX[:, None, :] <= cx[None, :, :]).all(axis=2) & ((keptU[:, None] & ~cu[None, :]) == 0)
                if bv:
                    cp = P[c0:c0 + CH]
                    dom &= keptS[:, None] | (keptP[:, None, :] == cp[None, :, :]).all(axis=2)
                alive &= ~dom.any(axis=0)
            # inside the chunk: an earlier label (in sorted order) may dominate a later one
            le = (cx[:, None, :] <= cx[None, :, :]).all(axis=2) & ((cu[:, None] & ~cu[None, :]) == 0)
            if bv:
                cp, cs = P[c0:c0 + CH], safe[c0:c0 + CH]
                le &= cs[:, None] | (cp[:, None, :] == cp[None, :, :]).all(axis=2)
            np.fill_diagonal(le, False)
            le &= np.tri(len(cx), dtype=bool, k=-1).T    # a (row) before b (column)
            alive &= ~le.any(axis=0)
            idx = np.nonzero(alive)[0]
            if len(idx):
                keptX = np.vstack([keptX, cx[idx]])
                keptU = np.concatenate([keptU, cu[idx]])
                if bv:
                    keptP = np.vstack([keptP, P[c0:c0 + CH][idx]])
                    keptS = np.concatenate([keptS, safe[c0:c0 + CH][idx]])
                keep_idx.extend((order[c0 + i] for i in idx.tolist()))
        return [lst[i] for i in keep_idx]

    def _period_lb(self, X):
        """Lower bound of the final period of any completion of labels X (rows)."""
        T = X[:, self.iT].copy()
        A = X[:, self.iA].copy()
        for mu in range(self.nmed):
            T = np.maximum(T, X[:, self.iL + mu] / self.caps[mu])
            if self.training:
                A = np.maximum(A, X[:, self.iAR + mu] / self.caps[mu])
        if self.training:
            return X[:, self.iF] + (self.M - 1) * T + A
        return self.M * T

    def _battery_cap(self) -> float:
        """Upper bound of any battery demand e_d / (P_max - idle) over every plan; also sets
        `rdev` [(device bit, bound)] and `rsrc` (the source's bound)."""
        cost = self.cost
        self.rdev, self.rsrc = [], 0.0
        F = cost.fp[-1]
        batch = cost.workload.batch
        bytes_ub = 8.0 * batch * max(cost.bnd) + 4.0 * cost.pp[-1]
        cap = 0.0
        for d in range(cost.n):
            p = self.pmax[d]
            if p is None:
                continue
            room = p - cost.idle_w[d]
            if room <= 0:
                continue
            e = (cost.active_w[d] - cost.idle_w[d]) * self.back * batch * F / cost.rate[d] + cost.radio[d] * bytes_ub
            cap = max(cap, e / room)
            if d == self.src:
                self.rsrc = e / room
            else:
                self.rdev.append((1 << d, e / room))
        return cap

    def _beam(self, lst, factor: int = 1):
        K = self.space.beam
        if K is None or len(lst) <= K * factor:
            return
        K *= factor
        if K is None or len(lst) <= K:
            return
        M = self.M
        byl = sorted(lst, key=lambda o: o[0][0] + (M - 1) * o[0][1] + o[0][2])
        bye = sorted(lst, key=lambda o: o[0][3] + o[0][4] * (o[0][0] + M * o[0][1]))
        out, seen = [], set()
        for a, b in zip(byl, bye):
            for o in (a, b):
                if id(o) not in seen and len(out) < K:
                    seen.add(id(o))
                    out.append(o)
        lst[:] = out

    # --- the search --------------------------------------------------------
    def run(self) -> list[Candidate]:
        cost, B, M = self.cost, self.B, self.M
        groups, gmask = self.groups, self.gmask
        ng = len(groups)
        src = self.src
        tr = self.training
        dim = self.dim
        fixed = self.fixed_period
        # labels[l][(gi, shid, j)] = list of labels
        labels: list[dict] = [dict() for _ in range(B + 1)]
        cuts = self.space.cuts or list(range(B + 1))
        # initial: last stage [l, B) (+ return to the source for inference)
        for l in cuts[:-1]:
            for gi in range(ng):
                st = self.stage(l, B, gi, 1)
                if st is None:
                    continue
                sh, shid, u, edev, idle, t_ar, arv = st
                devs = groups[gi]
                v = [0.0] * dim
                v[0] = u
                v[1] = u
                v[2] = t_ar
                v[3] = sum(edev)
                if fixed:
                    v[3] += idle * self.period0
                else:
                    v[4] = idle
                if tr:
                    for mu in range(self.nmed):
                        v[self.iAR + mu] = arv[mu]
                pend = dict(zip(devs, edev))
                if not tr:
                    x, tocc, lv, rad = self.boundary(list(devs), list(sh), [src], [1.0], B, 1.0)
                    v[0] += x
                    if tocc > v[1]:
                        v[1] = tocc
                    for mu in range(self.nmed):
                        v[self.iL + mu] += lv[mu]
                    for d, e in rad.items():
                        v[3] += e
                        if d in pend:
                            pend[d] += e
                        elif d == src:
                            v[self.iES] += e
                if src in pend:
                    v[self.iES] += pend.pop(src)
                if not self._partial_ok(v):
                    continue
                ptuple = tuple(pend.get(d, 0.0) if self.pmax[d] is not None else 0.0 for d in devs)
                lab = (tuple(v), self.claim[gi], ptuple, ((l, B, devs, sh), None))
                labels[l].setdefault((gi, shid, 1), []).append(lab)
        # prepend stages, back to front
        bcache: dict = {}
        for ci in range(len(cuts) - 2, 0, -1):
            l = cuts[ci]
            layer = labels[l]
            for (gi, shid, j), lst in layer.items():
                self._beam(lst, 8)
                lst[:] = self._prune(lst, gi)
                self._beam(lst)
                if not lst:
                    continue
                devs = groups[gi]
                sh = lst[0][3][0][3]
                j0 = min(M, j + 1, self.jmax) if tr else 1
                umin = lst[0][1] if self.space.order is not None else gmask[gi]
                for gi0 in range(ng):
                    if gmask[gi0] & umin:
                        continue
                    m0 = gmask[gi0]
                    claim0 = self.claim[gi0]
                    avail = [o for o in lst if not (o[1] & m0)]
                    if not avail:
                        continue
                    devs0 = groups[gi0]
                    for l0 in cuts[ci - 1::-1]:
                        st = self.stage(l0, l, gi0, j0 if tr else 1)
                        if st is None:
                            break       # a longer range on the same group cannot fit either
                        sh0, shid0, u0, edev0, idle0, t_ar0, arv0 = st
                        bkey = (shid0, gi, shid, l)
                        bd = bcache.get(bkey)
                        if bd is None:
                            bd = bcache[bkey] = self.boundary(list(devs0), list(sh0), list(devs), list(sh), l,
                                                              2.0 if tr else 1.0)
                        x, tocc, lv, rad = bd
                        radsum = sum(rad.values())
                        base_add_E = sum(edev0) + radsum + (idle0 * self.period0 if fixed else 0.0)
                        pend0 = dict(zip(devs0, edev0))
                        for d in devs0:
                            if d in rad:
                                pend0[d] += rad[d]
                        es_add = pend0.pop(src, 0.0)          # the source's share goes to ES
                        if src in devs:
                            es_add += rad.get(src, 0.0)
                        tgt = labels[l0].setdefault((gi0, shid0, j0), [])
                        p0 = tuple(pend0.get(d, 0.0) if self.pmax[d] is not None else 0.0 for d in devs0)
                        for o in avail:
                            ov = o[0]
                            v = list(ov)
                            v[0] += u0 + x
                            t = u0 if u0 > tocc else tocc
                            if t > v[1]:
                                v[1] = t
                            if t_ar0 > v[2]:
                                v[2] = t_ar0
                            v[3] += base_add_E
                            if not fixed:
                                v[4] += idle0
                            v[6] += es_add
                            for mu in range(self.nmed):
                                v[self.iL + mu] += lv[mu]
                                if tr:
                                    v[self.iAR + mu] += arv0[mu]
                            if not self._partial_ok(v):
                                continue
                            # the suffix's first stage now knows its incoming transfer: finalize
                            good = True
                            for d, e in zip(devs, o[2]):
                                if d == src or self.pmax[d] is None:
                                    continue
                                if not self._finalize_dev(d, e + rad.get(d, 0.0), v):
                                    good = False
                                    break
                            if not good:
                                continue
                            self.n_labels += 1
                            tgt.append((tuple(v), o[1] | claim0, p0, ((l0, l, devs0, sh0), o[3])))
            labels[l] = None  # free
        # close: the source feeds stage 0
        return self._close(labels[0])

    def _close(self, layer) -> list[Candidate]:
        cost, M, src, tr = self.cost, self.M, self.src, self.training
        groups = self.groups
        q = cost.qoe
        out = []
        for (gi, shid, j), lst in layer.items():
            lst = self._prune(lst, gi)
            if not lst:
                continue
            devs = groups[gi]
            sh = lst[0][3][0][3]
            x, tocc, lv, rad = self.boundary([src], [1.0], list(devs), list(sh), 0, 1.0)
            for o in lst:
                v = list(o[0])
                v[0] += x
                if tocc > v[1]:
                    v[1] = tocc
                v[3] += sum(rad.values())
                for mu in range(self.nmed):
                    v[self.iL + mu] += lv[mu]
                T = v[1]
                for mu in range(self.nmed):
                    T = max(T, v[self.iL + mu] / self.caps[mu])
                A = v[2]
                if tr:
                    for mu in range(self.nmed):
                        A = max(A, v[self.iAR + mu] / self.caps[mu])
                L = v[0] + (M - 1) * T + A
                es = v[6] + rad.get(src, 0.0)
                if tr:
                    period = L
                else:
                    rate = cost.workload.request_rate
                    period = max(1.0 / rate, M * T) if rate else M * T
                if period <= 0:
                    period = L if L > 0 else 1e-12
                if self.fixed_period:
                    E = v[3] + cost.idle_w[src] * self.period0
                else:
                    E = v[3] + (v[4] + cost.idle_w[src]) * period
                ok = True
                for d, e in zip(devs, o[2]):
                    if d == src or self.pmax[d] is None:
                        continue
                    if not self._finalize_dev(d, e + rad.get(d, 0.0), v):
                        ok = False
                        break
                if not ok or not self._partial_ok(v):
                    continue
                if self.constrained:
                    if not self.fixed_period and self.battery and v[self.iR] > period * (1 + 1e-12):
                        continue
                    p = self.pmax[src]
                    if p is not None:
                        room = p - cost.idle_w[src]
                        if room <= 0 or es > room * period * (1 + 1e-12):
                            continue
                    if q.latency_slo_ms is not None and L * 1e3 > q.latency_slo_ms * (1 + TOL):
                        continue
                stages = []
                node = ((0, o[3][0][1], o[3][0][2], o[3][0][3]), o[3][1])
                while node is not None:
                    (l, r, dv, s), node = node
                    stages.append((l, r, list(dv), list(s)))
                out.append(Candidate(stages, L, E))
        return out


# ----------------------------------------------------------------------------- API
def _pareto_2d(cands: list[Candidate]) -> list[Candidate]:
    cs = sorted(cands, key=lambda c: (c.latency_s, c.energy_j))
    out, best_e = [], INF
    for c in cs:
        if c.energy_j < best_e * (1 - 1e-12) or (not out):
            out.append(c)
            best_e = min(best_e, c.energy_j)
    return out


def search(scenario: Scenario, cost: CostModel | None = None, *, max_group: int | None = None,
           exact: bool | None = None, constrained: bool = True, budget: float = EXACT_BUDGET) -> SearchResult:
    """Run the DP; return QoE-compliant candidates (DP arithmetic), Pareto over (latency, energy).
    Each candidate is re-scored with the full cost model (`metrics`)."""
    cost = cost or CostModel(scenario)
    t0 = time.perf_counter()
    spaces = choose_spaces(cost, max_group, exact, budget)
    cands, nlab = [], 0
    for space in spaces:
        dp = _DP(cost, space, constrained)
        cands.extend(dp.run())
        nlab += dp.n_labels
    M = cost.workload.microbatches
    if constrained:
        cands = _pareto_2d(cands)
    seen, uniq = set(), []
    for c in cands:
        k = tuple((l, r, tuple(d)) for l, r, d, _ in c.stages)
        if k not in seen:
            seen.add(k)
            uniq.append(c)
    for c in uniq:
        c.metrics = cost.evaluate_stages(c.stages, M)
    return SearchResult(uniq, spaces[0], nlab, time.perf_counter() - t0)


def _to_plan(cost: CostModel, stages) -> Plan:
    names = cost.names
    return Plan.make([(l, r, [names[d] for d in devs], sh) for l, r, devs, sh in stages],
                     cost.workload.microbatches)


def pareto(scenario: Scenario, cost: CostModel | None = None, **options) -> list[tuple[Plan, Metrics]]:
    """The non-dominated set over (latency_ms, energy_j) of QoE-compliant plans, sorted by
    latency (what the runtime adapter switches between). Empty if none is compliant."""
    cost = cost or CostModel(scenario)
    res = search(scenario, cost, **options)
    good = [c for c in res.candidates if c.metrics.qoe_ok]
    good.sort(key=lambda c: (c.metrics.latency_ms, c.metrics.energy_j))
    out, best_e = [], INF
    for c in good:
        if c.metrics.energy_j < best_e:
            out.append((_to_plan(cost, c.stages), c.metrics))
            best_e = c.metrics.energy_j
    return out


def explain_infeasible(name: str, scenario: Scenario, cost: CostModel, **options) -> NoFeasiblePlan:
    """Why nothing is QoE-compliant: relax QoE, see which target the best plans miss."""
    res = search(scenario, cost, constrained=False, **options)
    if not res.candidates:
        return no_fit(name, scenario)
    q, wl = cost.qoe, cost.workload
    ms = [c.metrics for c in res.candidates if c.metrics.feasible]
    if not ms:
        return no_fit(name, scenario)
    best_lat = min(m.latency_ms for m in ms)
    if q.latency_slo_ms is not None and best_lat > q.latency_slo_ms * (1 + TOL):
        return NoFeasiblePlan(f"{name}: no plan meets the latency SLO: the fastest plan takes {best_lat:.4g} ms "
                              f"> SLO {q.latency_slo_ms:.4g} ms; relax qoe.latency_slo_ms or add faster devices",
                              constraint="latency", best=best_lat, required=q.latency_slo_ms)
    best_tp = max(m.throughput for m in ms)
    need = q.min_throughput or 0.0
    what = "qoe.min_throughput"
    if not cost.training and wl.request_rate and wl.request_rate > need:
        need, what = wl.request_rate, "workload.request_rate"
    if need and best_tp < need * (1 - TOL):
        unit = "samples/s" if cost.training else "req/s"
        return NoFeasiblePlan(f"{name}: no plan reaches the required throughput: the best plan sustains "
                              f"{best_tp:.4g} {unit} < {need:.4g} {unit} ({what}); lower it or add devices",
                              constraint="throughput", best=best_tp, required=need)
    if q.min_battery_hours is not None:
        def worst_hours(m):
            return min(m.battery_hours.values()) if m.battery_hours else INF
        best_h = max(worst_hours(m) for m in ms)
        if best_h < q.min_battery_hours * (1 - TOL):
            return NoFeasiblePlan(f"{name}: no plan keeps every battery device alive long enough: the best plan "
                                  f"lasts {best_h:.3g} h < {q.min_battery_hours:.3g} h (qoe.min_battery_hours)",
                                  constraint="battery", best=best_h, required=q.min_battery_hours)
    return NoFeasiblePlan(f"{name}: each QoE target is reachable alone but no plan meets them all together "
                          f"(fastest {best_lat:.4g} ms, best throughput {best_tp:.4g}); relax one of them",
                          constraint="combined")


def best_candidate(cands: list[Candidate], objective: str):
    good = [c for c in cands if c.metrics.qoe_ok]
    if not good:
        return None
    if objective == "latency":
        key = lambda c: (c.metrics.latency_ms, c.metrics.energy_j)  # noqa: E731
    else:
        key = lambda c: (c.metrics.energy_j, c.metrics.latency_ms)  # noqa: E731
    return min(good, key=key)


@register
class Dora(Planner):
    """Exact Pareto DP over block prefixes x device groups (options: max_group, exact, budget)."""

    name = "dora"
    description = "heterogeneity-aware partitioner: exact DP keeping the Pareto set of QoE-compliant plans"

    def plan(self, scenario: Scenario, cost: CostModel | None = None) -> Plan:
        self.check_supported(scenario)
        cost = cost or CostModel(scenario)
        opts = {k: v for k, v in self.options.items() if k in ("max_group", "exact", "budget")}
        res = search(scenario, cost, **opts)
        self.last = res
        best = best_candidate(res.candidates, cost.qoe.objective)
        if best is None:
            raise explain_infeasible(self.name, scenario, cost, **opts)
        return _to_plan(cost, best.stages)
