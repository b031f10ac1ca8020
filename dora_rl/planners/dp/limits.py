"""The QoE limits the DP prunes with: latency, period and battery bounds on a label.

Every final figure is non-decreasing in every label component, so a partial label that
already breaks the latency SLO or the throughput target can never complete into a
compliant plan; battery energy is checked per device once it is complete. With
`constrained=False` (the infeasibility diagnosis) nothing is bounded."""

from __future__ import annotations

import math

from dora_rl.cost import CostModel
from dora_rl.planners.dp.labels import ALLREDUCE, BATTERY, FILL, STEADY, Layout

TOL = 1e-9             # the cost model's QoE tolerance
INF = math.inf


class Limits:
    """The scenario's QoE targets as bounds on label vectors (see `partial_ok`)."""

    def __init__(self, cost: CostModel, lay: Layout, constrained: bool = True):
        wl, q = cost.workload, cost.qoe
        tr = cost.training
        self.cost = cost
        self.lay = lay
        self.nmed, self.iL, self.iAR = lay.nmed, lay.loads, lay.ar_loads   # plain ints: read per label
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
        self.mask_words = max(1, (cost.n + 63) // 64)   # uint64 words of a device mask (pruning)
        self.battery = any(p is not None for p in pmax)
        # a variable period with a battery target: dominance needs the demand bounds
        self.battery_variable = self.battery and not self.fixed_period
        self.demand_dev, self.demand_src = battery_demands(cost, pmax) if self.battery_variable else ([], 0.0)

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


def battery_demands(cost: CostModel, pmax: list) -> tuple[list[tuple[int, float]], float]:
    """Upper bounds of any battery demand e_d / (P_max - idle) over every plan: per
    non-source battery device [(device index, bound)], and the source's bound."""
    back = 3.0 if cost.training else 1.0
    rdev, rsrc = [], 0.0
    F = cost.fp[-1]
    batch = cost.workload.batch
    bytes_ub = 8.0 * batch * max(cost.bnd) + 4.0 * cost.pp[-1]
    for d in range(cost.n):
        p = pmax[d]
        if p is None:
            continue
        room = p - cost.idle_w[d]
        if room <= 0:
            continue
        e = (cost.active_w[d] - cost.idle_w[d]) * back * batch * F / cost.rate[d] + cost.radio[d] * bytes_ub
        if d == cost.src:
            rsrc = e / room
        else:
            rdev.append((d, e / room))
    return rdev, rsrc
