"""The DP engine: back-to-front dynamic programming over block suffixes with Pareto labels.

A label (`labels.Label`) is a suffix of stages starting at block l; it is kept in the
Pareto list `labels[l][(first group, id of its shares, j)]`. The engine seeds the last
stage [l, B) (inference: with the answer's return to the source), prepends stages
[l0, l) on groups disjoint from the suffix's devices (adding the stage and the boundary
transfer at l), and closes at l = 0 with the source's input transfer. Every final figure
(latency = FILL + (M-1) max(STEADY, media) + ALLREDUCE, energy = ENERGY + idle x
period, throughput, battery) is non-decreasing in every component, so a dominated label
can never complete into a better plan: the search is exact on its `Space`. Medium
contention is carried exactly (loads per medium in the vector). Relays are participants
(`pieces.py`): a label carries its participant set, adds a device's idle power the first
time it takes part, and carries the energy of battery devices that can relay to the end.
Routings: the cost model routes a complete plan (`routing.choose`), so a step is taken on
every routing of its boundary transfer and of its stage's ring all-reduce
(`Pieces.boundaries`, `Pieces.rings`), one label each; the plan's routing is among them."""

from __future__ import annotations

from itertools import product

from dora_rl.cost import CostModel
from dora_rl.planners.dp.labels import (
    ALLREDUCE,
    BATTERY,
    ENERGY,
    FILL,
    IDLE,
    SOURCE_J,
    STEADY,
    Candidate,
    Label,
    Node,
    Span,
)
from dora_rl.planners.dp.limits import TOL, Limits
from dora_rl.planners.dp.pieces import Pieces
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
        self.B = cost.n_blocks
        self.training = cost.training
        self.src = cost.src
        self.groups = space.groups()
        self.gmask = [sum(1 << d for d in g) for g in self.groups]
        self.claim = space.claims()
        self.jmax = max_inflight(cost, len(space.devices))
        self.limits = Limits(cost, constrained)
        self.lay = self.limits.lay
        self.pieces = Pieces(cost, self.groups, self.limits)
        self.stage = self.pieces.stage
        self.boundaries = self.pieces.boundaries

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
        B, src, tr, lay = self.B, self.src, self.training, self.lay
        nosrc = self.pieces.nosrc
        for l in cuts[:-1]:
            for gi, devs in enumerate(self.groups):
                st = self.stage(l, B, gi, 1)
                if st is None:
                    continue
                # inference: the answer's return to the source, on each of its routings
                bds = (None,) if tr else self.boundaries(list(devs), list(st.shares), [src], [1.0], B, 1.0)
                for rg in st.rings:       # training: the stage's ring on each of its routings
                    v = [0.0] * lay.dim
                    v[FILL] = st.busy
                    v[STEADY] = st.busy
                    v[ALLREDUCE] = rg.time
                    if tr:
                        for mu in range(lay.nmed):
                            v[lay.ar_loads + mu] = rg.loads[mu]
                    part0 = (self.gmask[gi] & nosrc) | rg.relays
                    energy0 = dict(zip(devs, st.energy))
                    for d, e in rg.relay_j.items():
                        energy0[d] = energy0.get(d, 0.0) + e
                    for bd in bds:
                        self._seed_one(labels, l, gi, devs, st, list(v), dict(energy0), part0, bd)

    def _seed_one(self, labels, l, gi, devs, st, v, energy, part, bd) -> None:
        """The seed label of stage [l, B) on group gi with the return transfer `bd` (None:
        training, which has none)."""
        lay, lim, B = self.lay, self.limits, self.B
        fixed, idle_of, accounts = lim.fixed_period, self.pieces.idle_of, self.pieces.accounts
        if bd is not None:
            v[FILL] += bd.fill
            if bd.occ > v[STEADY]:
                v[STEADY] = bd.occ
            for mu in range(lay.nmed):
                v[lay.loads + mu] += bd.loads[mu]
            for d, e in bd.radio.items():
                energy[d] = energy.get(d, 0.0) + e
            part |= bd.hops
        v[ENERGY] = sum(energy.values())
        if fixed:
            v[ENERGY] += idle_of(part) * lim.period0
        else:
            v[IDLE] = idle_of(part)
        src_j, cols, pend, touched = accounts(energy)
        v[SOURCE_J] = src_j
        for c, e in cols:
            v[c] += e
        if not lim.partial_ok(v):
            return
        if fixed and lim.rb_mask and not lim.relays_ok(v, part, lim.rb_mask, lim.period0):
            return
        pending = tuple(pend.get(d, 0.0) for d in devs)
        lab = Label(tuple(v), self.claim[gi], part, pending, Node(Span(l, B, devs, st.shares), None))
        labels[l].setdefault((gi, st.shid, 1), []).append(lab)

    def _prepend(self, labels: list, cuts: list[int], ci: int, bcache: dict) -> int:
        """Prepend a stage [l0, l) (l = cuts[ci]) to every label starting at l; returns the
        number of labels built."""
        l = cuts[ci]
        M, tr, lay, lim = self.M, self.training, self.lay, self.limits
        groups, gmask, claim = self.groups, self.gmask, self.claim
        fixed, fin, rb_mask = lim.fixed_period, lim.fin, lim.rb_mask
        partial_ok, finalize, relays_ok = lim.partial_ok, lim.finalize_device, lim.relays_ok
        idle_of, accounts, nosrc = self.pieces.idle_of, self.pieces.accounts, self.pieces.nosrc
        period0 = lim.period0
        width, exact = self.space.beam, self.space.order is None
        media, iL, iAR = range(lay.nmed), lay.loads, lay.ar_loads
        new = tuple.__new__
        n_labels = 0
        for (gi, shid, j), lst in labels[l].items():
            lst = beam(lst, width, M, 8)
            lst = prune(lst, gmask[gi], lim, exact)
            lst = beam(lst, width, M)
            if not lst:
                continue
            devs = groups[gi]
            sh = lst[0].stages.stage.shares          # every label of a key has the same first stage shares
            j0 = min(M, j + 1, self.jmax) if tr else 1
            claims = [o.claim for o in lst]
            umin = claims[0] if self.space.order is not None else gmask[gi]
            fin_devs = [(k, d) for k, d in enumerate(devs) if fin[d]]
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
                    bkey = (st.shid, gi, shid, l)
                    bds = bcache.get(bkey)
                    if bds is None:
                        bds = bcache[bkey] = self.boundaries(list(devs0), list(st.shares), list(devs), list(sh), l,
                                                             2.0 if tr else 1.0)
                    # the transfer at l on each of its routings, the stage's ring on each of its own
                    for bd, rg in product(bds, st.rings):
                        rad, lv, t_ar0, arv0 = bd.radio, bd.loads, rg.time, rg.loads
                        add_fill = st.busy + bd.fill
                        # this step's energy per device: the new stage, the transfer at l, the ring's relays
                        energy = dict(zip(devs0, st.energy))
                        for src_d in (rad, rg.relay_j):
                            for d, e in src_d.items():
                                energy[d] = energy.get(d, 0.0) + e
                        add_E = sum(energy.values())
                        es_add, cols, pend, touched = accounts(energy)
                        newp = (m0 & nosrc) | bd.hops | rg.relays        # who takes part from this step on
                        m0n = m0 & nosrc
                        idle0 = idle_of(m0n)
                        p0 = tuple(pend.get(d, 0.0) for d in devs0)       # the new first stage: incoming unknown
                        fin_in = [(k, pend.get(d, 0.0)) for k, d in fin_devs]   # the suffix's first stage: complete
                        tgt = labels[l0].setdefault((gi0, st.shid, j0), [])
                        span0 = None                          # the new stage, built with its first label
                        t = st.busy if st.busy > bd.occ else bd.occ
                        for vec, claim_o, part, pending, node in avail:
                            v = list(vec)
                            v[FILL] += add_fill
                            if t > v[STEADY]:
                                v[STEADY] = t
                            if t_ar0 > v[ALLREDUCE]:
                                v[ALLREDUCE] = t_ar0
                            joined = newp & ~part             # each participant's idle power counts once
                            idle = idle0 if joined == m0n else idle_of(joined)
                            if fixed:
                                v[ENERGY] += add_E + idle * period0
                            else:
                                v[ENERGY] += add_E
                                v[IDLE] += idle
                            v[SOURCE_J] += es_add
                            for mu in media:
                                v[iL + mu] += lv[mu]
                                if tr:
                                    v[iAR + mu] += arv0[mu]
                            for c, e in cols:
                                v[c] += e
                            if not partial_ok(v):
                                continue
                            part_new = part | newp
                            if fixed and rb_mask and (touched or joined & rb_mask) and \
                                    not relays_ok(v, part_new, touched | joined, period0):
                                continue
                            # the suffix's first stage now knows its incoming transfer: finalize
                            good = True
                            for k, e in fin_in:
                                if not finalize(devs[k], pending[k] + e, v):
                                    good = False
                                    break
                            if not good:
                                continue
                            n_labels += 1
                            if span0 is None:
                                span0 = new(Span, (l0, l, devs0, st.shares))
                            # tuple.__new__ builds the NamedTuples without their Python-level __new__ (hot loop)
                            tgt.append(new(Label, (tuple(v), claim_o | claim0, part_new, p0,
                                                   new(Node, (span0, node)))))
        return n_labels

    def _close(self, layer: dict) -> list[Candidate]:
        """Complete every label starting at block 0 with the source's input transfer; keep
        the compliant ones (every one when unconstrained) as candidates."""
        cost, M, src, tr, lay, lim = self.cost, self.M, self.src, self.training, self.lay, self.limits
        caps = cost.medium_bps
        q = cost.qoe
        media, iL, iAR = range(lay.nmed), lay.loads, lay.ar_loads
        idle_of = self.pieces.idle_of
        out = []
        for (gi, _shid, _j), lst in layer.items():
            lst = prune(lst, self.gmask[gi], lim, self.space.order is None)
            if not lst:
                continue
            devs = self.groups[gi]
            sh = lst[0].stages.stage.shares
            # the source's input transfer on each of its routings
            for bd in self.boundaries([src], [1.0], list(devs), list(sh), 0, 1.0):
                src_j, cols, pend, _ = self.pieces.accounts(bd.radio)
                add_E = sum(bd.radio.values())
                for o in lst:
                    v = list(o.vec)
                    v[FILL] += bd.fill
                    if bd.occ > v[STEADY]:
                        v[STEADY] = bd.occ
                    v[ENERGY] += add_E
                    for mu in media:
                        v[iL + mu] += bd.loads[mu]
                    for c, e in cols:
                        v[c] += e
                    part = o.part | bd.hops
                    idle = idle_of(part & ~o.part) + cost.idle_w[src]
                    T = v[STEADY]
                    for mu in media:
                        T = max(T, v[iL + mu] / caps[mu])
                    A = v[ALLREDUCE]
                    if tr:
                        for mu in media:
                            A = max(A, v[iAR + mu] / caps[mu])
                    L = v[FILL] + (M - 1) * T + A
                    es = v[SOURCE_J] + src_j
                    if tr:
                        period = L
                    else:
                        rate = cost.workload.request_rate
                        period = max(1.0 / rate, M * T) if rate else M * T
                    if period <= 0:
                        period = L if L > 0 else 1e-12
                    if lim.fixed_period:
                        E = v[ENERGY] + idle * lim.period0
                    else:
                        E = v[ENERGY] + (v[IDLE] + idle) * period
                    ok = True
                    for d, e in zip(devs, o.pending):
                        if lim.fin[d] and not lim.finalize_device(d, e + pend.get(d, 0.0), v):
                            ok = False
                            break
                    if not ok or not lim.partial_ok(v):
                        continue
                    if self.constrained:
                        if not lim.fixed_period and lim.battery and v[BATTERY] > period * (1 + 1e-12):
                            continue
                        if lim.rb_mask and not lim.relays_ok(v, part, lim.rb_mask, period):
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
