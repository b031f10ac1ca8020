"""QoE bounds behind StageEnv's masks: a sound, cheap test that a partial plan can still end QoE-compliant.

Why: memory masks alone let the policy close a stage after which no completion can meet
the latency SLO, the required throughput or the battery target (typically: the whole
model on the fastest device when only a pipeline meets the SLO). Such a step can never
be part of a compliant plan, so masking it is free for the planner and removes the most
common miss of greedy decoding. The test is a lower bound, never an estimate: a step it
masks has no compliant completion (tested against the oracle's plans), a step it keeps
may still have none.

The bound (docs/learning.md, "QoE-aware masks"), with M micro-batches of m samples,
`back` = 3 for training (forward + backward) and 1 for inference. The cost model's
latency is `total = fill + (M - 1) T + A` (dora_rl/cost/model.py), fill = the stages'
times u_s plus the boundaries' `dirs (occupancy + latency)`, T >= every u_s and every
`dirs occupancy`, A >= 0. Lower bounds:

- a stage [l, r) on a group of total rate R: u >= back m (F_r - F_l) / R (exact on one
  device, whose realized share is 1; on a group, the slowest member's share time is at
  least the even split over the group's rate);
- a boundary between two single devices: exactly `cost.transfer` (others: >= 0);
- the rest [r, B) on the free devices (total rate R_free): every device serves at most
  one stage, so T is at least back m (F_B - F_r) / R_free; and a stage's group computes
  with at most m members (each member of a group needs a whole sample of the
  micro-batch to contribute), so the rest adds at least back m (F_B - F_r) / R_m to fill,
  R_m = the total rate of the m fastest free devices (for m = 1: the fastest one alone -
  the stages run one after the other).

Training adds the data-parallel all-reduce: the cost model's `A` is the largest ring
all-reduce over the stages (`CostModel._allreduces`), 2 (g - 1) steps of chunk = P / g
bytes (P = the stage's parameter bytes, g its members; nothing when P = 0); a step sends a
chunk from every member to its ring successor and lasts at least the slowest flow alone on
its fastest route. So a ring step is at least, for every member x, the least
`lat(x, e) + chunk kappa(x, e)` over the other members e (`lat`, `kappa` = the least
latency and the least seconds per byte of any candidate route x -> e, `routes.Network`):
`A_lb = 2 (g - 1) max_x min_e (lat + chunk kappa)`. A closed stage commits the cost model's
own time on its fastest routing (`CostModel.allreduce`, choice 0; the plan's routing is
never faster), and every later bound adds `max(committed, the new stage's A_lb)`. An add
is tested with a lookahead over every end r: the stage computes at most at the rate of
its members plus the fastest devices that may still join (at most m members), the rest
as above, and its all-reduce has at least g = members + 1 (the bound grows with g) over
partners among all free devices. An add none of whose ends passes is masked.

A step is masked when `fill + (M - 1) T (+ A)` exceeds the latency cap (the SLO; for training
also batch / min_throughput), or T exceeds 1 / (M x required rate) for inference, or a
battery device of the new stage cannot last the target hours: a compliant plan's period
is at most 1 / request_rate (inference with a request stream), 1 / required rate
(inference), or the latency cap (training), so the device's power is at least
idle + (active - idle) busy / that period. Scenarios with measured block times
(`cost.timed`) get no QoE masks (their stage times follow no rate formula)."""

from __future__ import annotations

import math

import numpy as np

from dora_rl.cost import routing
from dora_rl.cost.qoe import required_rate

SLACK = 1e-6          # relative: a step is masked only when its bound misses by more than this


class QoEBound:
    """Per-Instance constants of the bound; `close_ok` tests candidate closes, `after_close`
    updates the (fill, T) lower bounds of the closed stages."""

    def __init__(self, inst):
        cost, q, wl = inst.cost, inst.cost.qoe, inst.cost.workload
        self.inst, self.cost = inst, cost
        self.M = int(inst.M)
        self.m = wl.batch // self.M
        self.back = float(inst.back)
        self.training = bool(inst.training)
        self.dirs = 2.0 if self.training else 1.0
        need = required_rate(cost)
        lat_cap = q.latency_slo_ms / 1e3 if q.latency_slo_ms is not None else math.inf
        if self.training and need:
            lat_cap = min(lat_cap, wl.batch / need)
        self.lat_cap = lat_cap * (1 + SLACK)
        self.T_cap = (1.0 / (self.M * need)) * (1 + SLACK) if (need and not self.training) else math.inf
        if self.training:
            period = lat_cap
        elif wl.request_rate:
            period = 1.0 / wl.request_rate
        else:
            period = 1.0 / need if need else math.inf
        self.period_cap = period * (1 + SLACK)
        self.min_h = q.min_battery_hours
        self.bj = np.array([np.nan if b is None else b for b in cost.battery_j], dtype=float)
        self.idle = np.array(cost.idle_w, dtype=float)
        self.dyn_w = np.maximum(np.array(cost.active_w, dtype=float) - self.idle, 0.0)
        has_batt = self.min_h is not None and bool(np.isfinite(self.bj).any())
        self.on = cost.timed is None and (math.isfinite(self.lat_cap) or math.isfinite(self.T_cap) or has_batt)
        self.fp = np.asarray(cost.fp, dtype=float)
        self.src, self.B = inst.src, inst.B
        self.pp = np.asarray(cost.pp, dtype=float)
        # the exit of a single-device stage: every byte leaves through its send interface, every
        # route starts with one of its links
        net, idx = cost.net, cost.cluster.index
        self.send_cap = np.array([net.cap[net.iface0 + 2 * d] for d in range(inst.n)], dtype=float)
        self.exit_lat = np.full(inst.n, np.inf)
        links = cost.cluster.links
        if links:
            lat = np.array([ln.latency_ms for ln in links], dtype=float) / 1e3
            np.minimum.at(self.exit_lat, [idx[ln.a] for ln in links], lat)
            np.minimum.at(self.exit_lat, [idx[ln.b] for ln in links], lat)
        self.bnd = np.asarray(cost.bnd, dtype=float)
        # last stage -> source (inference only): exact for a single device (`_xfer` reads the above)
        self.out = [(0.0, 0.0)] * inst.n if self.training else [self._xfer([d], [self.src], self.B)
                                                                for d in range(inst.n)]
        self._rest: dict = {}        # rest_rates per pool (a decision asks for the same pool several times)

    def _xfer(self, a: list, b: list, k: int) -> tuple[float, float]:
        """(occupancy, latency) of boundary k from group a to group b: exact for single
        devices (the cost model's own transfer); from one device to a group it does not
        belong to (or from a group to one device outside it), every byte leaves through
        the one's send interface (arrives through its receive interface, of the same
        capacity) and some flow takes at least the least latency of any pair; 0
        otherwise (lower bounds)."""
        nbytes = self.m * self.cost.bnd[k]
        if nbytes <= 0 or (len(a) != 1 and len(b) != 1):     # (no flow: 0, as cost.transfer)
            return 0.0, 0.0
        if len(a) == 1 and len(b) == 1:
            if a[0] == b[0]:
                return 0.0, 0.0
            occ, lat = routing.lone(self.cost.net, a[0], b[0], nbytes)      # = cost.transfer's, without its cache
            return float(occ), float(lat)
        one, many = (a[0], b) if len(a) == 1 else (b[0], a)
        if one in many:
            return 0.0, 0.0
        L = self.cost.net.least[0]
        lat = min(float(L[one, j] if len(a) == 1 else L[j, one]) for j in many)   # (a member may get no sample)
        return float(nbytes / self.send_cap[one]), (lat if math.isfinite(lat) else 0.0)

    def _in(self, prev: list, devs: list, p: int) -> tuple[float, float]:
        """(fill, T) lower bounds of the boundary into a stage starting at block p."""
        occ, lat = self._xfer(prev, devs, p)
        dirs = self.dirs if p > 0 else 1.0
        return dirs * (occ + lat), dirs * occ

    def inputs(self, prev: list, group: list, p: int, devices) -> tuple[np.ndarray, np.ndarray]:
        """Per device d (others 0): (fill, T) lower bounds of the boundary into the stage
        [p, .) on group + [d] (non-zero only from a single device, `_xfer`)."""
        f, t = np.zeros(self.inst.n), np.zeros(self.inst.n)
        if len(prev) == 1:
            for d in devices:
                f[d], t[d] = self._in(prev, list(group) + [int(d)], p)
        return f, t

    def _battery_ok(self, ds: np.ndarray, busy) -> np.ndarray:
        """Per device of `ds` (rows): can it last min_h hours with `busy` compute-seconds per
        period (a scalar, or an array with one row per device)? Devices off battery: True."""
        ds = np.asarray(ds)
        bj = self.bj[ds][:, None]
        frac = busy / self.period_cap if math.isfinite(self.period_cap) else 0.0
        power = self.idle[ds][:, None] + self.dyn_w[ds][:, None] * frac
        with np.errstate(invalid="ignore"):
            hours = bj / np.maximum(power, 1e-30) / 3600.0
            return ~np.isfinite(bj) | (hours >= self.min_h * (1 - 1e-9) * (1 - SLACK))

    def _ok(self, fill, T, A=0.0):
        return (fill + (self.M - 1) * T + A <= self.lat_cap) & (T <= self.T_cap)

    # --- the data-parallel all-reduce (training) ---------------------------------
    def _member_steps(self, xs, partners, chunk: np.ndarray) -> np.ndarray:
        """Per member x of `xs` and chunk size: the least lone time of a flow from x to one of
        `partners` (x itself excluded), (len(xs), len(chunk))."""
        L, K = self.cost.net.least
        xs, ps = np.asarray(xs, dtype=np.int64), np.asarray(partners, dtype=np.int64)
        if not len(ps):
            return np.full((len(xs), len(chunk)), np.inf)
        t = L[xs][:, ps, None] + K[xs][:, ps, None] * chunk[None, None, :]
        return t.min(axis=1)

    def _ar(self, g: int, P: np.ndarray, step: np.ndarray) -> np.ndarray:
        """2 (g - 1) x the ring step's lower bound, 0 where the stage has no parameters."""
        return np.where(P > 0, 2.0 * (g - 1) * np.where(np.isfinite(step), step, 0.0), 0.0)

    def close_allreduce(self, group: list, ds: np.ndarray, p: int, r: np.ndarray) -> np.ndarray:
        """Lower bound of the all-reduce of the stage [p, r) on group + [d] (rows: ds, columns:
        r); 0 without a group or outside training."""
        if not self.training or not group:
            return np.zeros((len(ds), len(r)))
        g = len(group) + 1
        P = self.pp[r] - self.pp[p]
        c = P / g
        L, K = self.cost.net.least
        G = np.asarray(group, dtype=np.int64)
        ds = np.asarray(ds, dtype=np.int64)
        # a group member x: its best partner among the other members, or the new device d
        own = self._member_steps(G, G, c)                                         # (k, R)
        to_d = L[G][:, ds].T[:, :, None] + K[G][:, ds].T[:, :, None] * c[None, None, :]    # (rows, k, R)
        step = np.minimum(own[None], to_d).max(axis=1)
        step = np.maximum(step, self._member_steps(ds, G, c))    # d: its best partner among the members
        return self._ar(g, P[None, :], step)

    def add_ok(self, F: float, T: float, A: float, group: list, pool: list, p: int, cands) -> np.ndarray:
        """Per candidate add `a` of `cands`: may some stage [p, r) on group + [a] + the devices
        that may still join, then the rest, still comply? (a lookahead over every end r; the
        stage's rate at most group + a + the fastest of the pool, the rest on pool - a, the
        all-reduce over g = len(group) + 2 members at least, partners among group + pool)."""
        cands = np.asarray(cands, dtype=np.int64)
        if not len(cands) or p >= self.B:
            return np.zeros(len(cands), dtype=bool)
        rate = self.inst.rate
        r = np.arange(p + 1, self.B + 1)
        k = len(group)
        # members beyond group + a: at most m - k - 1 (a group computes with at most m members)
        extra, _ = self._fastest(pool, max(1, self.inst.m_int - k - 1))
        R = float(sum(rate[x] for x in group)) + rate[cands] + extra[cands]
        u = self.back * self.m * (self.fp[r] - self.fp[p])[None, :] / R[:, None]
        R_T, R_m, _, _ = self.rest_rates(pool)
        work = np.where(r < self.B, self.back * self.m * (self.fp[-1] - self.fp[r]), 0.0)[None, :]
        rest = work / np.maximum(R_T[cands], 1e-30)[:, None]
        rest_f = work / np.maximum(R_m[cands], 1e-30)[:, None]
        fill = F + u + rest_f
        TT = np.maximum(np.maximum(T, u), rest)
        AA = np.full_like(u, A)
        if self.training:
            g = k + 2
            P = self.pp[r] - self.pp[p]
            # each member's least latency plus chunk x its least s/B to any partner (min of sums >=
            # sum of mins: looser than the close's bound, and O(members x partners + members x R))
            L, K = self.cost.net.least
            ps = np.asarray(list(group) + list(pool), dtype=np.int64)
            c = P / g

            def steps(xs):
                xs = np.asarray(xs, dtype=np.int64)
                lp = L[xs][:, ps]                           # inf on x itself and where no route exists
                kp = np.where(np.isfinite(lp), K[xs][:, ps], np.inf).min(axis=1)
                kp = np.where(np.isfinite(kp), kp, 0.0)
                return lp.min(axis=1)[:, None] + kp[:, None] * c[None, :]

            step = steps(cands)                                                          # (rows, R)
            if group:
                step = np.maximum(step, steps(group).max(axis=0)[None, :])
            AA = np.maximum(AA, self._ar(g, P[None, :], step))
        return self._ok(fill, TT, AA).any(axis=1)

    def rest_rates(self, pool: list) -> tuple[np.ndarray, np.ndarray, float, float]:
        """Rates left for the rest once device d takes a stage, per device d (array over all
        devices; d outside `pool` leaves the whole pool): (total rate, rate of the m fastest),
        then the same two for the whole pool. Memoised per pool: read, do not modify."""
        key = tuple(pool)
        hit = self._rest.get(key)
        if hit is not None:
            return hit
        if len(self._rest) > 64:
            self._rest.clear()
        rate = self.inst.rate
        tot = float(sum(rate[d] for d in pool))
        R_T = np.full(self.inst.n, tot)
        for d in pool:
            R_T[d] = tot - rate[d]
        R_m, top = self._fastest(pool, max(1, self.m))
        hit = self._rest[key] = (R_T, R_m, tot, top)
        return hit

    def _fastest(self, pool: list, k: int) -> tuple[np.ndarray, float]:
        """Per device d (array over all devices): the total rate of the k fastest devices of
        `pool` other than d; then that of the pool's k fastest."""
        rate = self.inst.rate
        order = sorted(pool, key=lambda d: -rate[d])
        top = float(sum(rate[d] for d in order[:k]))
        nxt = float(rate[order[k]]) if len(order) > k else 0.0
        out = np.full(self.inst.n, top)
        for d in order[:k]:
            out[d] = top - rate[d] + nxt
        return out, top

    def global_ok(self, F: float, T: float, p: int, pool_rate: float, pool_top: float, A: float = 0.0) -> bool:
        """Some completion from block p on a pool of devices (total rate `pool_rate`, its m
        fastest `pool_top`) may comply (A: the all-reduce committed so far)."""
        if p >= self.B:
            return bool(self._ok(F, T, A))
        work = self.back * self.m * (self.fp[-1] - self.fp[p])
        return bool(self._ok(F + work / max(pool_top, 1e-30), max(T, work / max(pool_rate, 1e-30)), A))

    def close_ok(self, F: float, T: float, f_in: np.ndarray, t_in: np.ndarray, group: list, ds: np.ndarray,
                 p: int, r: np.ndarray, rest_rate: np.ndarray, rest_top: np.ndarray, A: float = 0.0) -> np.ndarray:
        """For devices ds (rows) and ends r (columns, p < r <= B): may the stage [p, r) on
        group + [d] (entered at fill / T cost f_in[i] / t_in[i], `inputs`), then the rest on
        devices of total rate `rest_rate[i]` (the m fastest: `rest_top[i]`), still comply?
        (fill F, period T and all-reduce A so far; f_in, t_in, rest_rate, rest_top: one entry
        per row of ds)."""
        ds = np.asarray(ds, dtype=np.int64)
        grate = sum(self.inst.rate[x] for x in group)
        rate = (grate + self.inst.rate[ds])[:, None]
        u = self.back * self.m * (self.fp[r] - self.fp[p])[None, :] / rate
        work = np.where(r < self.B, self.back * self.m * (self.fp[-1] - self.fp[r]), 0.0)[None, :]
        rest = work / np.maximum(np.asarray(rest_rate, dtype=float), 1e-30)[:, None]
        rest_f = work / np.maximum(np.asarray(rest_top, dtype=float), 1e-30)[:, None]
        if group:
            o_occ = o_lat = np.zeros((len(ds), 1))
        else:
            o = np.array([self.out[d] for d in ds], dtype=float).reshape(len(ds), 2)
            o_occ, o_lat = o[:, :1], o[:, 1:]
        end = (r >= self.B)[None, :]
        x_occ, x_lat = self._exit(group, ds, r)
        f_in, t_in = np.asarray(f_in, dtype=float), np.asarray(t_in, dtype=float)
        fill = F + f_in[:, None] + u + rest_f + np.where(end, o_occ + o_lat, 0.0) + x_occ + x_lat
        t0 = np.maximum(T, t_in)[:, None]
        TT = np.maximum(np.maximum(np.maximum(t0, u), rest), np.maximum(np.where(end, o_occ, 0.0), x_occ))
        ok = self._ok(fill, TT, np.maximum(A, self.close_allreduce(group, ds, p, r)))
        if self.min_h is not None:
            if group:          # members' shares are not known yet: each at least idles
                ok = ok & self._battery_ok(ds, 0.0) & bool(self._battery_ok(np.array(group), 0.0).all())
            else:
                ok = ok & self._battery_ok(ds, u * self.M)
        return ok

    def _lat(self, devs) -> np.ndarray:
        """The least latency of any link of each device (0 for a device without links)."""
        lat = self.exit_lat[devs]
        return np.where(np.isfinite(lat), lat, 0.0)

    def _exit(self, group: list, ds: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Lower bounds (occupancy, latency; x dirs) of the boundary out of a single-device
        stage [p, r) on d (rows ds, columns r; 0 at r = B and for a group): its bytes leave
        through d's send interface, and every route starts with one of d's links."""
        if group:
            return np.zeros((1, 1)), np.zeros((1, 1))
        xb = np.where(r < self.B, self.m * self.bnd[r], 0.0)[None, :]
        return self.dirs * xb / self.send_cap[ds][:, None], np.where(xb > 0, self.dirs * self._lat(ds)[:, None], 0.0)

    def after_close(self, F: float, T: float, prev: list, devs: list, p: int, r: int) -> tuple[float, float]:
        """(fill, T) lower bounds once the stage [p, r) on `devs` is closed."""
        rate = float(sum(self.inst.rate[x] for x in devs))
        u = self.back * self.m * (self.fp[r] - self.fp[p]) / rate
        f_in, t_in = self._in(prev, list(devs), p)
        return F + f_in + u, max(T, t_in, u)

    def after_close_allreduce(self, A: float, devs: list, p: int, r: int) -> float:
        """The all-reduce committed once the stage [p, r) on `devs` (in ring order) is closed:
        the cost model's own ring time on its fastest routing (the plan's is never less)."""
        if not self.training or len(devs) < 2:
            return A
        return max(A, float(self.cost.allreduce(list(devs), float(self.pp[r] - self.pp[p]), 0)[0]))
