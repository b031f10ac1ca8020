"""The DP engine: back-to-front dynamic programming over block suffixes with Pareto labels.

A label (`labels.Label`) is a suffix of stages starting at block l; it is kept in the
Pareto list `labels[l][(first group, id of its shares, j)]`. The engine seeds the last
stage [l, B) (inference: with the answer's return to the source), prepends stages
[l0, l) on groups disjoint from the suffix's devices (adding the stage and the boundary
transfer at l), and closes at l = 0 with the source's input transfer. Every final figure
(latency = FILL + (M-1) max(STEADY, media) + ALLREDUCE, energy = ENERGY + idle x
period, throughput, battery) is non-decreasing in every component, so a dominated label
can never complete into a better plan: the search is exact on its `Space`. Medium
contention is carried exactly (loads per medium in the vector)."""

from __future__ import annotations

from dora_rl.cost import CostModel
from dora_rl.planners.base import proportional_shares
from dora_rl.planners.dp.labels import (
    ALLREDUCE,
    BATTERY,
    ENERGY,
    FILL,
    IDLE,
    SOURCE_J,
    STEADY,
    Boundary,
    Candidate,
    Label,
    Node,
    Span,
    StageCost,
    layout,
)
from dora_rl.planners.dp.limits import TOL, Limits
from dora_rl.planners.dp.pruning import beam, prune
from dora_rl.planners.dp.space import Space, max_inflight


class DPEngine:
    """One DP run over `space` (`run`): the QoE-compliant candidates (all complete plans
    when `constrained` is False) and the number of labels built."""

    def __init__(self, cost: CostModel, space: Space, constrained: bool = True):
        self.cost = cost
        self.space = space
        self.constrained = constrained
        wl = cost.workload
        self.M = wl.microbatches
        self.m = wl.batch / self.M
        self.B = cost.n_blocks
        self.training = cost.training
        self.back = 3.0 if cost.training else 1.0
        self.src = cost.src
        self.groups = space.groups()
        self.gmask = [sum(1 << d for d in g) for g in self.groups]
        self.claim = space.claims()
        self.jmax = max_inflight(cost, len(space.devices))
        self.lay = layout(len(cost.medium_bps), cost.training)
        self.limits = Limits(cost, self.lay, constrained)
        self._stage_cache: dict = {}
        self._shid: dict = {}

    # --- building blocks ---------------------------------------------------
    def stage(self, l: int, r: int, gi: int, inflight: int) -> StageCost | None:
        """Blocks [l, r) on group `gi` with `inflight` micro-batches kept (training), or
        None when the group cannot hold it (cached)."""
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
                # the cost model's per-member compute (measured block times where a device has them)
                u, per = cost.stage_compute(l, r, devs, sh, self.m)
                if self.training:
                    per = cost.stage_busy(l, r, devs, sh, self.m, per)
                    u = max(per)
                edev = [(cost.active_w[d] - cost.idle_w[d]) * t * self.M for d, t in zip(devs, per)]
                t_ar, ar_load = 0.0, {}
                if self.training:
                    t_ar, ar_load, per_dev = cost.allreduce(list(devs), params)
                    if len(devs) > 1:
                        edev = [e + cost.radio[d] * 2 * per_dev for e, d in zip(edev, devs)]
                idle = sum(cost.idle_w[d] for d in devs if d != self.src)
                shid = self._shid.setdefault((gi, tuple(sh)), len(self._shid))
                arv = [0.0] * self.lay.nmed
                for mu, b in ar_load.items():
                    arv[mu] += b
                res = StageCost(tuple(sh), shid, u, edev, idle, t_ar, arv)
        self._stage_cache[key] = res
        return res

    def boundary(self, adevs, ash, bdevs, bsh, k: int, dirs: float) -> Boundary:
        """The transfer at block boundary k from group adevs (shares ash) to bdevs (bsh),
        `dirs` times (2 for training: activations forward, gradients back)."""
        cost = self.cost
        nbytes = self.m * cost.bnd[k]
        occ, lat, load, flows = cost.transfer(adevs, ash, bdevs, bsh, nbytes)
        lv = [0.0] * self.lay.nmed
        for mu, b in load.items():
            lv[mu] += dirs * b
        rad: dict[int, float] = {}
        for i, j, b in flows:
            e = dirs * b * self.M
            rad[i] = rad.get(i, 0.0) + cost.radio[i] * e
            rad[j] = rad.get(j, 0.0) + cost.radio[j] * e
        return Boundary(dirs * (occ + lat), dirs * occ, lv, rad)

    # --- the search --------------------------------------------------------
    def run(self) -> tuple[list[Candidate], int]:
        """The candidates of this space and the number of labels prepended."""
        cuts = self.space.cuts or list(range(self.B + 1))
        labels: list[dict | None] = [dict() for _ in range(self.B + 1)]
        self._seed(labels, cuts)
        n_labels = 0
        bcache: dict = {}            # boundary costs by (first stage shares id, next group, its shares id, cut)
        for ci in range(len(cuts) - 2, 0, -1):
            n_labels += self._prepend(labels, cuts, ci, bcache)
            labels[cuts[ci]] = None  # free
        return self._close(labels[0]), n_labels

    def _seed(self, labels: list, cuts: list[int]) -> None:
        """The last stage [l, B) of every suffix (+ the answer's return for inference)."""
        B, src, tr, lay, lim = self.B, self.src, self.training, self.lay, self.limits
        fixed = lim.fixed_period
        for l in cuts[:-1]:
            for gi, devs in enumerate(self.groups):
                st = self.stage(l, B, gi, 1)
                if st is None:
                    continue
                v = [0.0] * lay.dim
                v[FILL] = st.busy
                v[STEADY] = st.busy
                v[ALLREDUCE] = st.allreduce_s
                v[ENERGY] = sum(st.energy)
                if fixed:
                    v[ENERGY] += st.idle_w * lim.period0
                else:
                    v[IDLE] = st.idle_w
                if tr:
                    for mu in range(lay.nmed):
                        v[lay.ar_loads + mu] = st.ar_loads[mu]
                pend = dict(zip(devs, st.energy))
                if not tr:
                    bd = self.boundary(list(devs), list(st.shares), [src], [1.0], B, 1.0)
                    v[FILL] += bd.fill
                    if bd.occ > v[STEADY]:
                        v[STEADY] = bd.occ
                    for mu in range(lay.nmed):
                        v[lay.loads + mu] += bd.loads[mu]
                    for d, e in bd.radio.items():
                        v[ENERGY] += e
                        if d in pend:
                            pend[d] += e
                        elif d == src:
                            v[SOURCE_J] += e
                if src in pend:
                    v[SOURCE_J] += pend.pop(src)
                if not lim.partial_ok(v):
                    continue
                pending = tuple(pend.get(d, 0.0) if lim.pmax[d] is not None else 0.0 for d in devs)
                lab = Label(tuple(v), self.claim[gi], pending, Node(Span(l, B, devs, st.shares), None))
                labels[l].setdefault((gi, st.shid, 1), []).append(lab)

    def _prepend(self, labels: list, cuts: list[int], ci: int, bcache: dict) -> int:
        """Prepend a stage [l0, l) (l = cuts[ci]) to every label starting at l; returns the
        number of labels built."""
        l = cuts[ci]
        M, src, tr, lay, lim = self.M, self.src, self.training, self.lay, self.limits
        groups, gmask, claim = self.groups, self.gmask, self.claim
        fixed, pmax = lim.fixed_period, lim.pmax
        partial_ok, finalize = lim.partial_ok, lim.finalize_device
        width = self.space.beam
        media, iL, iAR = range(lay.nmed), lay.loads, lay.ar_loads
        new = tuple.__new__
        n_labels = 0
        for (gi, shid, j), lst in labels[l].items():
            lst = beam(lst, width, M, 8)
            lst = prune(lst, gmask[gi], lim)
            lst = beam(lst, width, M)
            if not lst:
                continue
            devs = groups[gi]
            sh = lst[0].stages.stage.shares          # every label of a key has the same first stage shares
            j0 = min(M, j + 1, self.jmax) if tr else 1
            claims = [o.claim for o in lst]
            umin = claims[0] if self.space.order is not None else gmask[gi]
            for gi0 in range(len(groups)):
                if gmask[gi0] & umin:
                    continue
                m0 = gmask[gi0]
                claim0 = claim[gi0]
                avail = [o for o, u in zip(lst, claims) if not (u & m0)]
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
                    add_fill = u0 + x
                    add_E = sum(edev0) + sum(rad.values()) + (idle0 * lim.period0 if fixed else 0.0)
                    pend0 = dict(zip(devs0, edev0))
                    for d in devs0:
                        if d in rad:
                            pend0[d] += rad[d]
                    es_add = pend0.pop(src, 0.0)          # the source's share goes to SOURCE_J
                    if src in devs:
                        es_add += rad.get(src, 0.0)
                    tgt = labels[l0].setdefault((gi0, shid0, j0), [])
                    p0 = tuple(pend0.get(d, 0.0) if pmax[d] is not None else 0.0 for d in devs0)
                    span0 = None                          # the new stage, built with its first label
                    t = u0 if u0 > tocc else tocc
                    for vec, claim_o, pending, node in avail:
                        v = list(vec)
                        v[FILL] += add_fill
                        if t > v[STEADY]:
                            v[STEADY] = t
                        if t_ar0 > v[ALLREDUCE]:
                            v[ALLREDUCE] = t_ar0
                        v[ENERGY] += add_E
                        if not fixed:
                            v[IDLE] += idle0
                        v[SOURCE_J] += es_add
                        for mu in media:
                            v[iL + mu] += lv[mu]
                            if tr:
                                v[iAR + mu] += arv0[mu]
                        if not partial_ok(v):
                            continue
                        # the suffix's first stage now knows its incoming transfer: finalize
                        good = True
                        for d, e in zip(devs, pending):
                            if d == src or pmax[d] is None:
                                continue
                            if not finalize(d, e + rad.get(d, 0.0), v):
                                good = False
                                break
                        if not good:
                            continue
                        n_labels += 1
                        if span0 is None:
                            span0 = new(Span, (l0, l, devs0, sh0))
                        # tuple.__new__ builds the NamedTuples without their Python-level __new__ (hot loop)
                        tgt.append(new(Label, (tuple(v), claim_o | claim0, p0, new(Node, (span0, node)))))
        return n_labels

    def _close(self, layer: dict) -> list[Candidate]:
        """Complete every label starting at block 0 with the source's input transfer; keep
        the compliant ones (every one when unconstrained) as candidates."""
        cost, M, src, tr, lay, lim = self.cost, self.M, self.src, self.training, self.lay, self.limits
        caps = cost.medium_bps
        q = cost.qoe
        media, iL, iAR = range(lay.nmed), lay.loads, lay.ar_loads
        out = []
        for (gi, _shid, _j), lst in layer.items():
            lst = prune(lst, self.gmask[gi], lim)
            if not lst:
                continue
            devs = self.groups[gi]
            sh = lst[0].stages.stage.shares
            x, tocc, lv, rad = self.boundary([src], [1.0], list(devs), list(sh), 0, 1.0)
            for o in lst:
                v = list(o.vec)
                v[FILL] += x
                if tocc > v[STEADY]:
                    v[STEADY] = tocc
                v[ENERGY] += sum(rad.values())
                for mu in media:
                    v[iL + mu] += lv[mu]
                T = v[STEADY]
                for mu in media:
                    T = max(T, v[iL + mu] / caps[mu])
                A = v[ALLREDUCE]
                if tr:
                    for mu in media:
                        A = max(A, v[iAR + mu] / caps[mu])
                L = v[FILL] + (M - 1) * T + A
                es = v[SOURCE_J] + rad.get(src, 0.0)
                if tr:
                    period = L
                else:
                    rate = cost.workload.request_rate
                    period = max(1.0 / rate, M * T) if rate else M * T
                if period <= 0:
                    period = L if L > 0 else 1e-12
                if lim.fixed_period:
                    E = v[ENERGY] + cost.idle_w[src] * lim.period0
                else:
                    E = v[ENERGY] + (v[IDLE] + cost.idle_w[src]) * period
                ok = True
                for d, e in zip(devs, o.pending):
                    if d == src or lim.pmax[d] is None:
                        continue
                    if not lim.finalize_device(d, e + rad.get(d, 0.0), v):
                        ok = False
                        break
                if not ok or not lim.partial_ok(v):
                    continue
                if self.constrained:
                    if not lim.fixed_period and lim.battery and v[BATTERY] > period * (1 + 1e-12):
                        continue
                    p = lim.pmax[src]
                    if p is not None:
                        room = p - cost.idle_w[src]
                        if room <= 0 or es > room * period * (1 + 1e-12):
                            continue
                    if q.latency_slo_ms is not None and L * 1e3 > q.latency_slo_ms * (1 + TOL):
                        continue
                first = o.stages.stage
                stages = [(0, first.end, list(first.devs), list(first.shares))]
                node = o.stages.rest
                while node is not None:
                    s = node.stage
                    stages.append((s.start, s.end, list(s.devs), list(s.shares)))
                    node = node.rest
                out.append(Candidate(stages, L, E))
        return out
