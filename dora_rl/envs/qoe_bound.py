"""QoE bounds behind StageEnv's masks: a sound, cheap test that a partial plan can still end QoE-compliant.

Why: memory masks alone let the policy close a stage after which no completion can meet
the latency SLO, the required throughput or the battery target (typically: the whole
model on the fastest device when only a pipeline meets the SLO). Such a step can never
be part of a compliant plan, so masking it is free for the planner and removes the most
common miss of greedy decoding. The test is a lower bound, never an estimate: a step it
masks has no compliant completion (tested against the oracle's plans and by enumerating
every plan of small instances), a step it keeps may still have none.

The bound (docs/learning.md, "QoE-aware masks"), with M micro-batches of m samples,
`back` = 3 for training (forward + backward) and 1 for inference. The cost model's
latency is `total = fill + (M - 1) T + A` (dora_rl/cost/model.py), fill = the stages'
times u_s plus the boundaries' `dirs (occupancy + latency)`, T >= every u_s, every
`dirs occupancy` and every shared medium's bytes / capacity, A >= 0. Lower bounds:

- a stage [l, r) on a group computes on whole samples: u >= back (F_r - F_l) t, t the
  least over the splits of its m samples of the slowest member's samples / rate
  (dora_rl/envs/qoe_samples.py; exact on one device: m / g);
- a boundary between two single devices: exactly `cost.transfer`; from one device into a
  group (or a group into one device): its interface's occupancy and, every member having a
  sample, the slowest member's least latency (qoe_rest.py);
- the rest [r, B) on the devices that can serve it (memory for the lightest block left, a
  battery that lasts at one sample of the lightest block; `serve`): T >= its work over
  their total rate, fill >= its work per sample x their least whole-sample split (every
  device serves one stage, a stage's members need a sample each), plus the least return
  of its last stage to the source (qoe_rest.py);
- shared media: a device all of whose links are on one medium puts every byte it sends
  or receives on it; the committed boundaries' bytes, the new stage's entry and exit and
  the return to the source are summed per medium (the cost model's medium term of T).

Training adds the data-parallel all-reduce: the cost model's `A` is the largest ring
all-reduce over the stages (`CostModel._allreduces`), 2 (g - 1) steps of chunk = P / g
bytes (P = the stage's parameter bytes, g its members; nothing when P = 0); a step lasts
at least, for every member x, the least `lat(x, e) + chunk kappa(x, e)` over the other
members e (`routes.Network.least`): `A_lb = 2 (g - 1) max_x min_e (lat + chunk kappa)`. A
closed stage commits the cost model's own time on its fastest routing
(`CostModel.allreduce`, choice 0); every later bound adds `max(committed, the new stage's
A_lb)`. An add is tested with a lookahead over every end r and every member that may
close the stage (qoe_add.py). An add none of whose ends passes is masked.

A step is masked when `fill + (M - 1) T (+ A)` exceeds the latency cap (the SLO; for training
also batch / min_throughput), or T exceeds 1 / (M x required rate) for inference, or a
battery device of the new stage cannot last the target hours: a compliant plan's period
is at most 1 / request_rate (inference with a request stream), 1 / required rate
(inference), or the latency cap (training), so the device's power is at least
idle + (active - idle) busy / that period (a member of a group: busy >= one sample).
Scenarios with measured block times (`cost.timed`) get no QoE masks (their stage times
follow no rate formula)."""

from __future__ import annotations

import math

import numpy as np

from dora_rl.cost import routing
from dora_rl.cost.qoe import required_rate
from dora_rl.envs.qoe_add import AddLookahead
from dora_rl.envs.qoe_rest import RestTerms
from dora_rl.envs.qoe_samples import least_split_rows

SLACK = 1e-6          # relative: a step is masked only when its bound misses by more than this


class QoEBound(RestTerms, AddLookahead):
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
        net, cl = cost.net, cost.cluster
        self.send_cap = np.asarray(net.cap[net.iface0:net.iface0 + 2 * inst.n:2], dtype=float)
        self.exit_lat = np.full(inst.n, np.inf)
        if len(cl.link_lat):
            np.minimum.at(self.exit_lat, cl.link_ends[:, 0], cl.link_lat)
            np.minimum.at(self.exit_lat, cl.link_ends[:, 1], cl.link_lat)
        self.bnd = np.asarray(cost.bnd, dtype=float)
        # media: forced[d, mu] = 1 when every link of d is on the shared medium mu (every flow
        # from or to d then crosses mu: its first or last hop)
        self.mcap = np.asarray(net.cap[:net.n_media], dtype=float)
        self.forced = np.zeros((inst.n, net.n_media))
        if net.n_media and len(cl.link_lat):
            ends = cl.link_ends.T.ravel()
            mus = np.tile(np.where(cl.link_medium < 0, net.n_media, cl.link_medium), 2)
            cnt = np.zeros((inst.n, net.n_media + 1))          # links per device and medium (last: none)
            np.add.at(cnt, (ends, mus), 1.0)
            deg = cnt.sum(axis=1, keepdims=True)
            self.forced = ((cnt[:, :-1] == deg) & (deg > 0)).astype(float)
        # last stage -> source (inference only): exact for a single device (`_xfer` reads the above)
        self.out = [(0.0, 0.0)] * inst.n if self.training else self._lones(np.arange(inst.n), self.src, self.B, True)
        self._rest: dict = {}        # rest_rates per pool (a decision asks for the same pool several times)
        self._restb: dict = {}       # rest_bound per pool of serving devices
        self.mi = max(1, int(inst.m_int))
        self.serve = self._serving()

    def _serving(self) -> np.ndarray:
        """serve[d, r]: may device d compute some stage inside [r, B)? (column B: False). A
        stage holds at least one block's parameters (x the optimizer's copies; replicated on
        every member of a group) and computes at least one sample of it, so d needs the
        memory for the lightest block from r on, and a battery that lasts the target at the
        power of that least busy time (`M back f_min / g_d` per period, f_min the least
        FLOPs of one block from r on): a device that cannot serve the least piece serves none."""
        inst, B = self.inst, self.B
        fb = np.diff(self.fp)
        pb = np.diagonal(inst.base, offset=1).astype(float)          # one block's parameters (x copies)
        fmin = np.minimum.accumulate(fb[::-1])[::-1]
        pmin = np.minimum.accumulate(pb[::-1])[::-1]
        out = np.zeros((inst.n, B + 1), dtype=bool)
        out[:, :B] = np.asarray(inst.mem, dtype=float)[:, None] >= pmin[None, :]
        if self.min_h is not None:
            out[:, :B] &= self._busy_ok(np.arange(inst.n), fmin)
        return out

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

    def _lones(self, ds: np.ndarray, other: int, k: int, to_other: bool) -> list[tuple[float, float]]:
        """`_xfer` of boundary k between each single device of `ds` and the device `other`
        (from ds to it if `to_other`, else from it), for all of them at once (`routing.lones`)."""
        nbytes = self.m * self.cost.bnd[k]
        if nbytes <= 0:
            return [(0.0, 0.0)] * len(ds)
        ends = np.full(len(ds), other)
        occ, lat = routing.lones(self.cost.net, *((ds, ends) if to_other else (ends, ds)), nbytes)
        return list(zip(occ.tolist(), lat.tolist()))

    def _in(self, prev: list, devs: list, p: int) -> tuple[float, float]:
        """(fill, T) lower bounds of the boundary into a stage starting at block p."""
        occ, lat = self._xfer(prev, devs, p)
        dirs = self.dirs if p > 0 else 1.0
        return dirs * (occ + lat), dirs * occ

    def inputs(self, prev: list, group: list, p: int, devices) -> tuple[np.ndarray, np.ndarray]:
        """Per device d (others 0): (fill, T) lower bounds of the boundary into the stage
        [p, .) on group + [d] (non-zero only from a single device, `_xfer`)."""
        f, t = np.zeros(self.inst.n), np.zeros(self.inst.n)
        if len(prev) == 1 and not group:        # single devices: every lone flow at once
            ds = np.asarray(list(devices), dtype=np.int64)
            dirs = self.dirs if p > 0 else 1.0
            for d, (occ, lat) in zip(ds.tolist(), self._lones(ds, prev[0], p, False)):
                f[d], t[d] = dirs * (occ + lat), dirs * occ
        elif len(prev) == 1:
            for d in devices:
                f[d], t[d] = self._in(prev, list(group) + [int(d)], p)
        return f, t

    def _battery_ok(self, ds: np.ndarray, busy) -> np.ndarray:
        """Per device of `ds` (rows): can it last min_h hours with `busy` compute-seconds per
        period (a scalar, or an array with one row per device)? Devices off battery: True."""
        frac = busy / self.period_cap if math.isfinite(self.period_cap) else 0.0
        return self.battery_ok_at(np.asarray(ds)[:, None], frac)

    def battery_ok_at(self, ds, frac, extra_w=0.0, margin: float = 1.0) -> np.ndarray:
        """Elementwise over the broadcast of `ds` (device indices), `frac` (each one's
        compute-busy share of the period) and `extra_w` (other power, e.g. radio): does it
        last margin x min_h hours at idle + dynamic power x frac + extra_w? Devices off
        battery, or no battery target: True."""
        bj = self.bj[ds]
        if self.min_h is None:
            return np.ones(np.broadcast(bj, frac, extra_w).shape, dtype=bool)
        power = self.idle[ds] + self.dyn_w[ds] * frac + extra_w
        with np.errstate(invalid="ignore"):
            hours = bj / np.maximum(power, 1e-30) / 3600.0
            return ~np.isfinite(bj) | (hours >= margin * self.min_h * (1 - 1e-9) * (1 - SLACK))

    def max_duty(self, ds) -> np.ndarray:
        """Per device of `ds`: the largest compute-busy share of the period (0 .. 1) at which
        its battery lasts the target (`battery_ok_at`'s power solved for frac); 1 off
        battery or without a target, 0 where even idle drains it too soon."""
        bj = self.bj[ds]
        if self.min_h is None:
            return np.ones(np.shape(bj))
        with np.errstate(invalid="ignore", divide="ignore"):
            watts = bj / (3600.0 * self.min_h * (1 - 1e-9) * (1 - SLACK))
            frac = (watts - self.idle[ds]) / self.dyn_w[ds]
        return np.where(np.isfinite(bj), np.clip(np.nan_to_num(frac, nan=1.0, posinf=1.0, neginf=0.0), 0.0, 1.0), 1.0)

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

    def _group_t(self, group: list, ds) -> np.ndarray:
        """Per device d of `ds`: the least per-sample-FLOP time of the group + [d] on whole
        samples (`qoe_samples`): at least the even split m / R, every member's one sample
        (1 / g), and the least split of the m samples over the members."""
        rate = self.inst.rate
        ds = np.asarray(ds, dtype=np.int64)
        g = rate[ds]
        if not group:
            return self.m / np.maximum(g, 1e-30)
        G = rate[np.asarray(group, dtype=np.int64)]
        t = np.maximum(self.m / (G.sum() + g), np.maximum(1.0 / G.min(), 1.0 / np.maximum(g, 1e-30)))
        return np.maximum(t, least_split_rows(G, g, self.mi))

    def _busy_ok(self, devs, dF: np.ndarray) -> np.ndarray:
        """Per device of `devs` (rows) and stage FLOPs dF (columns): does its battery last with
        one sample of the stage per micro-batch (the least a member computes)?"""
        devs = np.asarray(devs, dtype=np.int64)
        busy = self.M * self.back * dF[None, :] / np.maximum(self.inst.rate[devs], 1e-30)[:, None]
        return self._battery_ok(devs, busy)

    def global_ok(self, F: float, T: float, p: int, pool_rate: float, pool_t: float, A: float = 0.0,
                  Mq: np.ndarray | None = None) -> bool:
        """Some completion from block p on serving devices of total rate `pool_rate` and least
        whole-sample split `pool_t` (`rest_bound`) may comply (A: the all-reduce committed,
        Mq: the media bytes committed)."""
        if Mq is not None and len(Mq):
            T = max(T, float((Mq / self.mcap).max()))
        if p >= self.B:
            return bool(self._ok(F, T, A))
        dF = self.fp[-1] - self.fp[p]
        t = pool_t if math.isfinite(pool_t) else 1e30
        return bool(self._ok(F + self.back * dF * t, max(T, self.back * self.m * dF / max(pool_rate, 1e-30)), A))

    def close_ok(self, F: float, T: float, f_in: np.ndarray, t_in: np.ndarray, group: list, ds: np.ndarray,
                 p: int, r: np.ndarray, rest_rate: np.ndarray, rest_t: np.ndarray, rest_ret: np.ndarray,
                 A: float = 0.0, prev: list = (), Mq: np.ndarray | None = None) -> np.ndarray:
        """For devices ds (rows) and ends r (columns, p < r <= B): may the stage [p, r) on
        group + [d] (entered at fill / T cost f_in[i] / t_in[i], `inputs`; on whole samples,
        `_group_t`), then the rest on serving devices of total rate `rest_rate[i]`, least
        split `rest_t[i]` and return `rest_ret[i]` (`rest_bound`), still comply? (fill F,
        period T and all-reduce A so far; one entry per row of ds)."""
        ds = np.asarray(ds, dtype=np.int64)
        dF = self.fp[r] - self.fp[p]
        u = self.back * dF[None, :] * self._group_t(group, ds)[:, None]
        rest, rest_f = self._rest_terms(r, rest_rate, rest_t, rest_ret)
        f_in, t_in = np.asarray(f_in, dtype=float), np.asarray(t_in, dtype=float)
        if group:          # into and out of a group: every member's flow (`_flows_in`, `_flows_out`)
            o_occ = np.array([0.0 if self.training else self._xfer(list(group) + [int(d)], [self.src], self.B)[0]
                              for d in ds]).reshape(len(ds), 1)
            o_fill = self._flows_out(group, ds, False)[:, None]
            f_in = np.maximum(f_in, self._flows_in(list(prev), group, ds, p))
        else:
            o = np.array([self.out[d] for d in ds], dtype=float).reshape(len(ds), 2)
            o_occ, o_fill = o[:, :1], o[:, :1] + o[:, 1:]
        end = (r >= self.B)[None, :]
        x_occ, x_lat = self._exit(group, ds, r)
        fill = F + f_in[:, None] + u + rest_f + np.where(end, o_fill, 0.0) + x_occ + x_lat
        t0 = np.maximum(T, t_in)[:, None]
        TT = np.maximum(np.maximum(np.maximum(t0, u), rest), np.maximum(np.where(end, o_occ, 0.0), x_occ))
        if Mq is not None and len(Mq):
            # media: the entry, the exit of a single-device stage (its bytes leave through its
            # links), the return to the source (arriving through the source's links)
            xb = np.where(r < self.B, self.dirs * self.m * self.bnd[r], 0.0)
            cols = (0.0 if group else xb[None, :, None] * self.forced[ds][:, None, :])
            if not self.training:
                away = (ds != self.src)[:, None] & (self.src not in group)       # the source not in the stage
                f_ret = away * (self.forced[self.src][None, :] if group else
                                np.maximum(self.forced[self.src][None, :], self.forced[ds]))
                cols = cols + np.where(end[..., None], self.m * self.bnd[self.B] * f_ret[:, None, :], 0.0)
            TT = np.maximum(TT, self._media_T(Mq, self.media_in(list(prev), group, ds, p),
                                              np.broadcast_to(cols, (len(ds), len(r), len(Mq)))))
        ok = self._ok(fill, TT, np.maximum(A, self.close_allreduce(group, ds, p, r)))
        if self.min_h is not None:
            if group:          # members' shares are not known yet: each computes at least one sample
                ok = ok & self._busy_ok(ds, dF) & self._busy_ok(group, dF).all(axis=0)[None, :]
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
        """(fill, T) lower bounds once the stage [p, r) on `devs` is closed (on whole samples)."""
        t = float(self._group_t(list(devs[:-1]), [devs[-1]])[0])
        u = self.back * (self.fp[r] - self.fp[p]) * t
        f_in, t_in = self._in(prev, list(devs), p)
        return F + f_in + u, max(T, t_in, u)

    def after_close_media(self, Mq: np.ndarray, prev: list, devs: list, p: int) -> np.ndarray:
        """The media bytes committed once the stage on `devs` starting at p is closed (its
        entry boundary, `media_in`; a new array)."""
        return Mq + self.media_in(prev, list(devs[:-1]), [devs[-1]], p)[0]

    def after_close_allreduce(self, A: float, devs: list, p: int, r: int) -> float:
        """The all-reduce committed once the stage [p, r) on `devs` (in ring order) is closed:
        the cost model's own ring time on its fastest routing (the plan's is never less)."""
        if not self.training or len(devs) < 2:
            return A
        return max(A, float(self.cost.allreduce(list(devs), float(self.pp[r] - self.pp[p]), 0)[0]))
