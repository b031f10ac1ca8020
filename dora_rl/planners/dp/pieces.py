"""What one DP step adds: the cost of a stage, of a boundary transfer, and who pays for it.

Why a module of its own: the engine (`engine.py`) only combines these pieces into labels;
the pieces must say exactly what the cost model (docs/cost-model.md) charges, relays
included. A route's intermediate devices are participants: they pay radio energy on
every byte they forward, idle power over the window (once per device, not at all when
they also serve a stage) and their battery is checked. So a stage reports, for each
routing of its ring all-reduce (`Pieces.rings`), the ring's relays, and a boundary
reports every device on its flows' routes (`Boundary.hops`), on each of its routings;
`Pieces.accounts` splits a step's energy between the source's battery account, the
columns of battery devices that can relay, and the pending energy of battery members
(`limits.Limits`)."""

from __future__ import annotations

from dora_rl.cost import CostModel
from dora_rl.planners.base import proportional_shares
from dora_rl.planners.dp.labels import Boundary, Ring, StageCost
from dora_rl.planners.dp.limits import Limits


class Pieces:
    """Stage and boundary costs of one DP run (cached), and the idle watts of a device set."""

    def __init__(self, cost: CostModel, groups: list[tuple[int, ...]], limits: Limits):
        self.cost = cost
        self.groups = groups
        self.limits = limits
        wl = cost.workload
        self.M = wl.microbatches
        self.m = wl.batch / self.M
        self.training = cost.training
        self.nosrc = ~(1 << cost.src)
        self._stage: dict = {}
        self._shid: dict = {}
        self._idle: dict = {0: 0.0}
        self._no_ring = (Ring(0.0, [0.0] * limits.nmed, 0, {}),)

    def idle_of(self, mask: int) -> float:
        """Idle watts of the devices in `mask` (cached)."""
        w = self._idle.get(mask)
        if w is None:
            idle = self.cost.idle_w
            w, rest = 0.0, mask
            while rest:
                low = rest & -rest
                w += idle[low.bit_length() - 1]
                rest ^= low
            self._idle[mask] = w
        return w

    def stage(self, l: int, r: int, gi: int, inflight: int) -> StageCost | None:
        """Blocks [l, r) on group `gi` with `inflight` micro-batches kept (training), or
        None when the group cannot hold it (cached)."""
        key = (l, r, gi, inflight)
        c = self._stage.get(key)
        if c is not None or key in self._stage:
            return c
        cost, m = self.cost, self.m
        devs = self.groups[gi]
        res = None
        sh = proportional_shares(cost, list(devs), l, r, m, inflight)
        if sh is not None:
            params = cost.pp[r] - cost.pp[l]
            if self.training:
                act = (cost.bnd[l] + cost.ap[r] - cost.ap[l]) * inflight
                base = params * cost.param_copies
            else:
                act = cost.peak[l][r]
                base = params
            if all(base + w * m * act <= cost.mem[d] for d, w in zip(devs, sh)):
                res = self._stage_cost(l, r, gi, devs, sh, params)
        self._stage[key] = res
        return res

    def _stage_cost(self, l, r, gi, devs, sh, params) -> StageCost:
        cost, m = self.cost, self.m
        # the cost model's per-member compute (measured block times where a device has them)
        u, per = cost.stage_compute(l, r, devs, sh, m)
        if self.training:
            per = cost.stage_busy(l, r, devs, sh, m, per)
            u = max(per)
        edev = [(cost.active_w[d] - cost.idle_w[d]) * t * self.M for d, t in zip(devs, per)]
        rings = self._no_ring
        if self.training and len(devs) > 1:
            per_dev = cost.allreduce(list(devs), params)[2]      # sent by each member, on every routing
            edev = [e + cost.radio[d] * 2 * per_dev for e, d in zip(edev, devs)]
            rings = self.rings(list(devs), params)
        shid = self._shid.setdefault((gi, tuple(sh)), len(self._shid))
        return StageCost(tuple(sh), shid, u, edev, rings)

    def rings(self, devs: list[int], params: float) -> tuple[Ring, ...]:
        """The ring all-reduce of `params` bytes over `devs` on each routing the cost model
        may give it. `CostModel._allreduces` routes a plan's rings jointly, for the least
        A = max(max_s AR_s, max_mu sum_s bytes_s,mu / C_mu) (`routing.choose`), so a ring
        sharing a medium with another may take a slower routing that stays off it; the
        engine extends a label by each. Only the routings Pareto-minimal over (step time,
        bytes per medium) are kept (the first of equal ones, as `choose` keeps): the choice
        never takes another (its occupancy does not enter A), so without a medium the
        fastest is the only one."""
        cost = self.cost
        opts = cost.allreduce_options(devs, params)
        keep = [c for c, o in enumerate(opts)
                if not any(p.x <= o.x and all(a <= b for a, b in zip(p.media, o.media))
                           and (k < c or p.x < o.x or p.media != o.media)
                           for k, p in enumerate(opts) if k != c)]
        out = []
        for c in keep:
            t, load, _ = cost.allreduce(devs, params, c)
            arv = [0.0] * self.limits.nmed
            for mu, b in load.items():
                arv[mu] += b
            relays, relay_j = 0, {}
            if any(r.relays for r in opts[c].routes):
                for d, b in cost.ring_relays(devs, params, c).items():
                    relay_j[d] = cost.radio[d] * b
                    relays |= 1 << d
            out.append(Ring(t, arv, relays & self.nosrc, relay_j))
        return tuple(out)

    def boundaries(self, adevs, ash, bdevs, bsh, k: int, dirs: float) -> tuple[Boundary, ...]:
        """The transfer at block boundary k from group adevs (shares ash) to bdevs (bsh),
        `dirs` times (2 for training: activations forward, gradients back), on each of its
        routings (`CostModel.transfer_options`, fastest first). The cost model picks one
        routing per plan (`routing.choose`), which need not be each boundary's fastest (a
        slower one may have less occupancy: a shorter period); the engine extends a label
        by every routing, so the plan's best is among its labels."""
        cost = self.cost
        out = []
        for occ, lat, load, flows, *_ in cost.transfer_options(adevs, ash, bdevs, bsh, self.m * cost.bnd[k]):
            lv = [0.0] * self.limits.nmed
            for mu, b in load.items():
                lv[mu] += dirs * b
            rad: dict[int, float] = {}
            hops = 0
            for i, j, b in flows:          # per hop: both ends (relays too) send / receive it
                e = dirs * b * self.M
                rad[i] = rad.get(i, 0.0) + cost.radio[i] * e
                rad[j] = rad.get(j, 0.0) + cost.radio[j] * e
                hops |= (1 << i) | (1 << j)
            out.append(Boundary(dirs * (occ + lat), dirs * occ, lv, rad, hops & self.nosrc))
        return tuple(out)

    def accounts(self, energy: dict[int, float]) -> tuple[float, tuple, dict[int, float], int]:
        """Split a step's energy per device (J not depending on the period) into: the
        source's share, ((column, J) of battery devices that can relay), {battery device
        whose energy completes with its stage: J}, and the mask of the relay-capable
        battery devices it touches."""
        lim = self.limits
        src = self.cost.src
        col, fin = lim.rbcol, lim.fin
        src_j, cols, pend, touched = 0.0, [], {}, 0
        for d, e in energy.items():
            if d == src:
                src_j += e
            elif d in col:
                cols.append((col[d], e))
                touched |= 1 << d
            elif fin[d]:
                pend[d] = e
        return src_j, tuple(cols), pend, touched
