"""The QoE limits the DP prunes with: latency, period and battery bounds on a label.

Every final figure is non-decreasing in every label component, so a partial label that
already breaks the latency SLO or the throughput target can never complete into a
compliant plan; battery energy is checked per device once it is complete. A battery
device that can relay (it is inside some candidate route) may still receive energy from
any later boundary, so its energy is carried to the end in its own column and checked
whenever it grows (fixed period) and at the end. With `constrained=False` (the
infeasibility diagnosis) nothing is bounded."""

from __future__ import annotations

import math

from dora_rl.cost import CostModel
from dora_rl.planners.dp.labels import ALLREDUCE, BATTERY, FILL, STEADY, layout

TOL = 1e-9             # the cost model's QoE tolerance
INF = math.inf


class Limits:
    """The scenario's QoE targets as bounds on label vectors (see `partial_ok`)."""

    def __init__(self, cost: CostModel, constrained: bool = True):
        wl, q = cost.workload, cost.qoe
        tr = cost.training
        self.cost = cost
        self.M = wl.microbatches
        self.training = tr
        self.caps = cost.medium_bps
        rate = wl.request_rate
        # period: fixed (1/rate) for compliant inference plans with a request rate
        self.fixed_period = constrained and (not tr) and bool(rate)
        self.period0 = 1.0 / rate if self.fixed_period else None
        self.period_bound = INF       # bound of the steady-state period candidate (throughput)
        self.latency_bound = INF      # bound of the latency, s (SLO; training throughput)
        pmax = [None] * cost.n        # per device: the highest average power its battery allows
        if constrained:
            if q.latency_slo_ms is not None:
                self.latency_bound = q.latency_slo_ms * 1e-3 * (1 + TOL)
            if tr:
                if q.min_throughput is not None:
                    self.latency_bound = min(self.latency_bound, wl.batch / (q.min_throughput * (1 - TOL)))
            else:
                need = max(q.min_throughput or 0.0, rate or 0.0)
                if need > 0:
                    self.period_bound = 1.0 / (self.M * need * (1 - TOL))
            if q.min_battery_hours is not None:
                for d in range(cost.n):
                    bj = cost.battery_j[d]
                    if bj is not None:
                        pmax[d] = bj / (3600.0 * q.min_battery_hours * (1 - TOL))
        self.pmax = pmax
        src = cost.src
        self.relay_mask = relay_capable(cost)            # devices inside some candidate route
        # battery devices that can relay: one column each (energy carried to the end)
        self.rb = [d for d in range(cost.n) if pmax[d] is not None and d != src and (self.relay_mask >> d) & 1]
        self.lay = lay = layout(len(cost.medium_bps), tr, len(self.rb))
        self.nmed, self.iL, self.iAR = lay.nmed, lay.loads, lay.ar_loads   # plain ints: read per label
        self.rbcol = {d: lay.rbat + i for i, d in enumerate(self.rb)}
        self.rb_mask = sum(1 << d for d in self.rb)
        # battery devices whose energy is complete once their stage's transfers are known
        self.fin = [pmax[d] is not None and d != src and d not in self.rbcol for d in range(cost.n)]
        self.room = [None if p is None else p - cost.idle_w[d] for d, p in enumerate(pmax)]
        self.mask_words = max(1, (cost.n + 63) // 64)   # uint64 words of a device mask (pruning)
        self.battery = any(p is not None for p in pmax)
        # a variable period with a battery target: dominance needs the demand bounds
        self.battery_variable = self.battery and not self.fixed_period
        self.demand_dev, self.demand_src = (battery_demands(cost, pmax, self.relay_mask) if self.battery_variable
                                            else ([], 0.0))

    def partial_ok(self, v) -> bool:
        """False when label vector `v` already breaks the throughput or latency target."""
        T = v[STEADY]
        caps = self.caps
        for mu in range(self.nmed):
            t = v[self.iL + mu] / caps[mu]
            if t > T:
                T = t
        if T > self.period_bound:
            return False
        if self.latency_bound < INF:
            A = v[ALLREDUCE]
            if self.training:
                for mu in range(self.nmed):
                    t = v[self.iAR + mu] / caps[mu]
                    if t > A:
                        A = t
            if v[FILL] + (self.M - 1) * T + A > self.latency_bound:
                return False
        return True

    def finalize_device(self, d: int, e: float, v: list) -> bool:
        """A non-source device's battery energy `e` is complete: check it (fixed period) or
        record the period it needs in v[BATTERY] (variable period). False = prune."""
        p = self.pmax[d]
        if p is None:
            return True
        room = p - self.cost.idle_w[d]
        if room <= 0:
            return False
        if self.fixed_period:
            return e <= room * self.period0 * (1 + 1e-12)
        need = e / room
        if need > v[BATTERY]:
            v[BATTERY] = need
        return True


    def relays_ok(self, v, part: int, check: int, period: float) -> bool:
        """Battery of the relay-capable battery devices in `check` (a mask) that take part
        (`part`): their energy so far (columns of `v`) fits the period. Energy only grows,
        so a failure now is a failure of every completion."""
        room, col = self.room, self.rbcol
        check &= part & self.rb_mask
        while check:
            low = check & -check
            d = low.bit_length() - 1
            check ^= low
            r = room[d]
            if r <= 0 or v[col[d]] > r * period * (1 + 1e-12):
                return False
        return True


def relay_capable(cost: CostModel) -> int:
    """Mask of the devices inside some candidate route (`routes.Network`): the only
    devices a plan's transfers can make relays."""
    mask = 0
    for row in cost.net.routes:
        for rs in row:
            for r in rs:
                for d in r.relays:
                    mask |= 1 << d
    return mask


def battery_demands(cost: CostModel, pmax: list, relay_mask: int = 0) -> tuple[list[tuple[int, float]], float]:
    """Upper bounds of any battery demand e_d / (P_max - idle) over every plan: per
    non-source battery device [(device index, bound)], and the source's bound. A device
    that can relay may forward, on top of its own transfers, every byte of every boundary
    (received and sent, both directions) and of every ring all-reduce."""
    back = 3.0 if cost.training else 1.0
    rdev, rsrc = [], 0.0
    F = cost.fp[-1]
    batch = cost.workload.batch
    bytes_ub = 8.0 * batch * max(cost.bnd) + 4.0 * cost.pp[-1]
    relay_ub = 4.0 * batch * (sum(cost.bnd) + cost.bnd[-1]) + 4.0 * cost.n * cost.pp[-1]
    for d in range(cost.n):
        p = pmax[d]
        if p is None:
            continue
        room = p - cost.idle_w[d]
        if room <= 0:
            continue
        b = bytes_ub + (relay_ub if (relay_mask >> d) & 1 else 0.0)
        e = (cost.active_w[d] - cost.idle_w[d]) * back * batch * F / cost.rate[d] + cost.radio[d] * b
        if d == cost.src:
            rsrc = e / room
        else:
            rdev.append((d, e / room))
    return rdev, rsrc
