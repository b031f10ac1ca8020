"""The analytic cost model: what a hybrid-parallel plan costs on a cluster.

This is the single source of truth shared by planners, environments, benchmarks and
the runtime's predictions. Every formula is written out in docs/cost-model.md (same
symbols as the comments below) with a worked example that tests/test_cost_model.py
recomputes by hand. Prefix sums make a stage O(group size) whatever its block count.

Symbols: m = samples per micro-batch (whole samples, split by `sample_edges`),
M = micro-batches, S = stages,
c_s = forward compute time of stage s per micro-batch (slowest member),
o_k / x_k = occupancy / occupancy+latency of boundary k per micro-batch,
T = steady-state period per micro-batch (slowest stage, boundary or medium)."""

from __future__ import annotations

import math

import numpy as np

from dora_rl.cost import routing
from dora_rl.cost.metrics import Metrics
from dora_rl.cost.routes import Network
from dora_rl.cost.routing import flow_pairs
from dora_rl.plan import Plan, sample_edges
from dora_rl.scenario import OPTIMIZER_STATE, Scenario

EPS = 1e-12
ONE = [1.0]


class CostModel:
    """Precomputes per-scenario tables once; `evaluate(plan)` is then cheap."""

    def __init__(self, scenario: Scenario):
        self.scenario = scenario
        prof, cl, wl = scenario.profile, scenario.cluster, scenario.workload
        self.profile, self.cluster, self.workload, self.qoe = prof, cl, wl, scenario.qoe
        self.n_blocks = prof.n_blocks
        self.training = wl.training
        self.fp = prof.flops_prefix.tolist()
        self.pp = prof.param_prefix.tolist()
        self.ap = prof.act_prefix.tolist()
        # bytes per sample crossing cut k (k = 0: model input; k = B: model output)
        self.bnd = [float(prof.input_bytes)] + prof.out_bytes.tolist()
        # peak live activation of a block = its input + its output; range max over [l, r)
        live = np.array(self.bnd[:-1]) + np.array(self.bnd[1:])
        B = self.n_blocks
        peak = np.zeros((B + 1, B + 1))
        for l in range(B):
            peak[l, l + 1:] = np.maximum.accumulate(live[l:])
        self.peak = peak.tolist()
        self.src = cl.index[wl.source]
        self.n = cl.n
        self.names = cl.names
        self._known = frozenset(cl.names)    # for Plan.validate, built once
        self.rate = cl.rate_l
        self.bw = cl.bw_l
        self.lat = cl.lat_l
        self.hops = cl.hops
        net = getattr(cl, "_cost_network", None)      # routes depend on the cluster only: share them
        if net is None:
            net = cl._cost_network = Network(cl)
        self.net = net
        self.medium_bps = cl.medium_bps.tolist()
        self.media_names = cl.media_names
        self.mem = cl.mem.tolist()
        self.idle_w = cl.idle_w.tolist()
        self.active_w = cl.active_w.tolist()
        self.radio = cl.radio_j_per_byte.tolist()
        self.battery_j = [None if d.battery_wh is None else d.battery_wh * d.battery_level * 3600.0
                          for d in cl.devices]
        self.param_copies = 2 + OPTIMIZER_STATE[wl.optimizer]  # weights + grads + optimizer state
        self._realized: dict = {}
        self._placed: dict = {}   # concurrent flows -> their routings (`routing.Option`s)
        self._no_flow = routing.no_flow(len(self.medium_bps))
        # measured block times (docs/cost-model.md "Measured block times"): per device None, or
        # prefix sums (fixed_f, per_sample_f, fixed_b, per_sample_b) of forward / backward seconds
        self.timed = None
        if scenario.measured:
            self.timed = [None] * self.n
            for name, dp in scenario.measured.items():
                f = dp.fit("train_forward_s" if self.training else "forward_s")
                b = dp.fit("backward_s") if self.training else ([0.0] * B, [0.0] * B)
                self.timed[cl.index[name]] = tuple(np.concatenate([[0.0], np.cumsum(v)]).tolist()
                                                   for v in (*f, *b))

    # ------------------------------------------------------------------
    def stage_indices(self, plan: Plan) -> list[tuple[int, int, list[int], list[float]]]:
        idx = self.cluster.index
        return [(s.start, s.end, [idx[d] for d in s.devices], list(s.shares)) for s in plan.stages]

    def validate(self, plan: Plan) -> Plan:
        return plan.validate(self.n_blocks, self._known, self.workload.batch)

    def evaluate(self, plan: Plan, validate: bool = True) -> Metrics:
        """Metrics of `plan`. With validate=False the plan must already be valid
        (planners that build plans themselves skip the check in their inner loop)."""
        if validate:
            self.validate(plan)
        return self.evaluate_stages(self.stage_indices(plan), plan.microbatches)

    # --- building blocks (also used by planners) ---------------------------
    def realized(self, m: int, shares, devs=None) -> list[float]:
        """The shares a plan really gets: whole samples. A micro-batch of m samples is
        split by `plan.sample_edges` (the runtime's split) with the members' names
        (`devs`, device indices): the counts n_i are a function of the group as a set
        (`plan.sample_counts`: one sample each when m >= g, the rest by largest
        shortfall, ties by name), and member i's realized share is n_i / m (cached per
        (m, shares, devs))."""
        if len(shares) == 1:
            return ONE                    # one member takes the whole micro-batch (m >= 1)
        key = (m, tuple(shares), None if devs is None else tuple(devs))
        r = self._realized.get(key)
        if r is None:
            e = sample_edges(m, shares, None if devs is None else [self.names[d] for d in devs])
            r = self._realized[key] = [(e[i + 1] - e[i]) / m for i in range(len(shares))]
        return r

    def stage_compute(self, l: int, r: int, devs, shares, m: float) -> tuple[float, list[float]]:
        """Forward time of stage [l, r) per micro-batch of m samples with (realized)
        shares w: c_s = max_d c_sd, c_sd = w_d m F_s / g_d, or, for a device with measured
        block times, fixed_d[l, r) + n_d per_sample_d[l, r) (0 if it gets no sample)."""
        work = m * (self.fp[r] - self.fp[l])
        if self.timed is None:
            if len(devs) == 1:            # the common case, without the comprehension
                c = shares[0] * work / self.rate[devs[0]]
                return c, [c]
            per = [w * work / self.rate[d] for d, w in zip(devs, shares)]
            return max(per), per
        per = []
        for d, w in zip(devs, shares):
            t = self.timed[d]
            if t is None:
                per.append(w * work / self.rate[d])
            else:
                n = w * m
                per.append(t[0][r] - t[0][l] + n * (t[1][r] - t[1][l]) if n > 0 else 0.0)
        return max(per), per

    def stage_busy(self, l: int, r: int, devs, shares, m: float, per: list[float]) -> list[float]:
        """Training: forward + backward seconds per micro-batch of each member: 3 c_sd
        (backward = 2x forward), or the measured forward + backward times."""
        if self.timed is None:
            return [3.0 * per[0]] if len(per) == 1 else [3.0 * t for t in per]
        out = []
        for d, w, f in zip(devs, shares, per):
            t = self.timed[d]
            n = w * m
            out.append(3.0 * f if t is None else (f + t[2][r] - t[2][l] + n * (t[3][r] - t[3][l]) if n > 0 else 0.0))
        return out

    def device_times(self, d: int) -> dict:
        """Per-block prefix tables of device d's modelled seconds (what an emulating
        worker stretches its compute to): a stage [l, r) on n > 0 samples takes
        fwd_fixed[r] - fwd_fixed[l] + n (fwd_per[r] - fwd_per[l]) forward, likewise bwd."""
        t = self.timed[d] if self.timed is not None else None
        if t is None:
            zero = [0.0] * (self.n_blocks + 1)
            g = self.rate[d]
            return {"fwd_fixed": zero, "fwd_per": [f / g for f in self.fp], "bwd_fixed": zero,
                    "bwd_per": [2.0 * f / g for f in self.fp]}
        return {"fwd_fixed": t[0], "fwd_per": t[1], "bwd_fixed": t[2], "bwd_per": t[3]}

    def transfer(self, a_devs, a_sh, b_devs, b_sh, nbytes: float):
        """Move a micro-batch's activation (nbytes in total) from group A to group B on
        the transfer's own fastest routing (what planners compose; `evaluate` may pick
        another of `transfer_options` for the plan). Returns (occupancy o_k, latency,
        {medium: bytes carried}, [(u, v, bytes) per hop of every flow]; cached: read,
        do not modify)."""
        return self.transfer_options(a_devs, a_sh, b_devs, b_sh, nbytes)[0][:4]

    def transfer_options(self, a_devs, a_sh, b_devs, b_sh, nbytes: float):
        """The routings of one boundary's flows worth considering (`routing.options`).

        Samples are laid out as contiguous slices in share order, so device i of A sends
        to device j of B exactly the overlap of their slices (nothing when i == j, and
        nothing at all when nbytes is 0). Each routing is (occupancy o_k, latency,
        {medium: bytes}, hop flows, Option): o_k = max over resources (media, link
        directions, interface directions) of the bytes through it / its capacity, so
        concurrent flows share every capacity they cross (contention). Pareto-minimal
        over (x_k, o_k, bytes per medium), fastest first; cached: read, do not modify."""
        if nbytes <= 0:
            return self._no_flow
        if len(a_devs) == 1 and len(b_devs) == 1:
            hit = self._placed.get((a_devs[0], b_devs[0], nbytes))
            if hit is not None:
                return hit
        pairs = flow_pairs(a_devs, a_sh, b_devs, b_sh, nbytes)
        if not pairs:
            return self._no_flow
        key = pairs[0] if len(a_devs) == 1 and len(b_devs) == 1 else tuple(pairs)
        hit = self._placed.get(key)
        return self._place(key, pairs) if hit is None else hit

    def allreduce_options(self, devs, param_bytes: float):
        """Ring all-reduce of a stage's gradients over its group (in group order):
        2(g-1) steps, each sending P/g over every ring link at once, timed like a
        boundary (slowest flow's latency + busiest resource's load / capacity). The
        routings of one step (`transfer_options` format; cached)."""
        g = len(devs)
        if g < 2 or param_bytes <= 0:
            return self._no_flow
        chunk = param_bytes / g
        key = ("ar", tuple(devs), param_bytes)
        hit = self._placed.get(key)
        return self._place(key, [(devs[t], devs[(t + 1) % g], chunk) for t in range(g)]) if hit is None else hit

    def _place(self, key, pairs):
        """Route `pairs` (`routing.options`) and cache the result under `key`; the cache
        (boundaries and all-reduce steps alike) is emptied past 200k entries."""
        if len(self._placed) > 200_000:
            self._placed.clear()
        hit = self._placed[key] = routing.options(self.net, pairs)
        return hit

    def allreduce(self, devs, param_bytes: float, choice: int = 0):
        """(time, {medium: bytes}, bytes sent per device) of the ring all-reduce on its
        routing `choice` (0: the fastest step)."""
        g = len(devs)
        opts = self.allreduce_options(devs, param_bytes)
        if opts is self._no_flow:
            return 0.0, {}, 0.0
        occ, lat, media = opts[choice][:3]
        steps = 2 * (g - 1)
        return steps * (occ + lat), {x: b * steps for x, b in media.items()}, steps * param_bytes / g

    def ring_relays(self, devs, param_bytes: float, choice: int = 0) -> dict[int, float]:
        """Bytes each relay of a ring all-reduce's routes forwards (received + sent)."""
        g = len(devs)
        out: dict[int, float] = {}
        opts = self.allreduce_options(devs, param_bytes)
        if opts is self._no_flow:
            return out
        chunk = param_bytes / g
        steps = 2 * (g - 1)
        for r in opts[choice].routes:
            for d in r.relays:
                out[d] = out.get(d, 0.0) + 2 * steps * chunk
        return out

    # --- the whole plan ------------------------------------------------------
    def evaluate_stages(self, stages, M: int) -> Metrics:
        n, src, training = self.n, self.src, self.training
        m = self.workload.batch // M
        S = len(stages)
        busy = [0.0] * n
        mem = [0.0] * n
        part = {src}
        comp = []
        bname = ""
        T = 0.0                    # steady-state period per micro-batch
        fill = 0.0                 # one micro-batch's pass through every resource
        # compute + memory, per stage
        realized, compute, pp, ap, bnd, peak = self.realized, self.stage_compute, self.pp, self.ap, self.bnd, self.peak
        stages = [(l, r, devs, realized(m, sh, devs)) for (l, r, devs, sh) in stages]
        for s, (l, r, devs, sh) in enumerate(stages):
            c, per = compute(l, r, devs, sh, m)
            comp.append(c)
            if training:
                per = self.stage_busy(l, r, devs, sh, m, per)   # forward + backward per member
                u = max(per)
                act = (bnd[l] + ap[r] - ap[l]) * min(M, S - s)   # 1F1B in-flight
                base = (pp[r] - pp[l]) * self.param_copies
            else:
                u = c
                act = peak[l][r]
                base = pp[r] - pp[l]
            fill += u
            if u > T:
                T, bname = u, f"stage {s}"
            for d, w, t in zip(devs, sh, per):
                busy[d] += t * M
                mem[d] = base + w * m * act
                part.add(d)
        # communication, per boundary (k = 0: source -> stage 0; k = S: last stage -> source);
        # every boundary's routings, then one per boundary for the whole plan (`routing.choose`:
        # least latency per request / iteration, then least period)
        opts, bnd, one = self.transfer_options, self.bnd, [src]
        first, last = stages[0], stages[-1]
        trans = [opts(one, ONE, first[2], first[3], m * bnd[0])]
        trans += [opts(x[2], x[3], y[2], y[3], m * bnd[x[1]]) for x, y in zip(stages, stages[1:])]
        if training:
            dirs = [1.0] + [2.0] * (len(trans) - 1)   # activations forward, gradients back
        else:
            trans.append(opts(last[2], last[3], one, ONE, m * bnd[last[1]]))
            dirs = [1.0] * len(trans)
        res = self._boundaries(trans, dirs, None, fill, T, bname)
        if M > 1 and res[1] > T * (1 + 1e-12) and any(len(os) > 1 for os in trans):
            pick = routing.choose(trans, dirs, dirs, T, M - 1, self.medium_bps)
            if any(pick):
                res = self._boundaries(trans, dirs, pick, fill, T, bname)
        fill, T, bname, xs, sent, relays = res
        part |= relays
        radio_bytes = [b * M for b in sent]
        A = 0.0
        if training:
            A = self._allreduces(stages, radio_bytes, part)
        total = fill + (M - 1) * T + A    # fill + drain + steady state (+ all-reduce)
        if training:
            period = total
            throughput = self.workload.batch / total
        else:
            throughput = 1.0 / (M * T) if T > 0 else math.inf
            rate = self.workload.request_rate
            period = max(1.0 / rate, M * T) if rate else M * T
        if period <= 0:
            period = total if total > 0 else EPS
        energy = [0.0] * n
        for d in part:
            energy[d] = (self.active_w[d] * busy[d] + self.idle_w[d] * (period - busy[d])
                         + self.radio[d] * radio_bytes[d])
        return self._finish(stages, comp, xs, A, total, throughput, period, T, bname,
                            sorted(part), busy, mem, energy)

    def _boundaries(self, trans, dirs, pick, fill, T, bname):
        """The boundaries' transfers on routing `pick` (None: each one's fastest) added to
        fill and the period T: (fill, T, bottleneck, x_k, radio bytes per device per
        micro-batch, the devices on the routes)."""
        medium_load: dict[int, float] = {}
        xs = []
        sent = [0.0] * self.n
        part = set()
        for k, (os, d) in enumerate(zip(trans, dirs)):
            o = os[pick[k]] if pick else os[0]
            occ, x, load = o[0], o[0] + o[1], o[2]
            xs.append(x)
            fill += d * x
            if d * occ > T:
                T, bname = d * occ, f"boundary {k}"
            for mu, bts in load.items():
                medium_load[mu] = medium_load.get(mu, 0.0) + d * bts
            for i, j, bts in o[3]:           # per hop: a relay receives and sends
                sent[i] += d * bts
                sent[j] += d * bts
                part.add(j)                  # a relay (each hop's sender is the source, a member or a relay)
        for mu, bts in medium_load.items():
            t = bts / self.medium_bps[mu]
            if t > T:
                T, bname = t, f"medium {self.media_names[mu]}"
        return fill, T, bname, xs, sent, part

    def _allreduces(self, stages, radio_bytes, part) -> float:
        """A = max(max_s AR_s, max_μ Σ_s bytes_sμ / C_μ) on the rings' routings that
        minimise it (`routing.choose`); charges the rings' radio bytes and relays."""
        rings = [(devs, self.pp[r] - self.pp[l]) for (l, r, devs, _) in stages if len(devs) > 1]
        if not rings:
            return 0.0
        opts = [self.allreduce_options(devs, p) for devs, p in rings]
        pick = [0] * len(rings)
        if any(len(os) > 1 for os in opts):
            steps = [2.0 * (len(devs) - 1) for devs, _ in rings]
            as_period = [[o._replace(occ=o.x) for o in os] for os in opts]
            pick = routing.choose(as_period, [0.0] * len(rings), steps, 0.0, 1.0, self.medium_bps)
        A = 0.0
        ar_media: dict[int, float] = {}
        for (devs, p), c in zip(rings, pick):
            t, load, per_dev = self.allreduce(devs, p, c)
            A = max(A, t)
            for mu, bts in load.items():
                ar_media[mu] = ar_media.get(mu, 0.0) + bts
            for d in devs:
                radio_bytes[d] += 2 * per_dev   # sent + received (0 for a one-device group)
            if len(devs) > 1:
                for d, bts in self.ring_relays(devs, p, c).items():
                    radio_bytes[d] += bts
                    part.add(d)
        for mu, bts in ar_media.items():
            A = max(A, bts / self.medium_bps[mu])
        return A

    def _finish(self, stages, comp, xs, A, total, throughput, period, T, bname, part, busy, mem, energy) -> Metrics:
        q = self.qoe
        viol = []
        feasible = True
        for d in part:
            if mem[d] > self.mem[d]:
                feasible = False
                viol.append(f"memory: {self.names[d]} needs {mem[d] / 1e9:.3g} GB > {self.mem[d] / 1e9:.3g} GB")
        latency_ms = total * 1e3
        if q.latency_slo_ms is not None and latency_ms > q.latency_slo_ms * (1 + 1e-9):
            viol.append(f"latency: {latency_ms:.4g} ms > SLO {q.latency_slo_ms:.4g} ms")
        unit = "samples/s" if self.training else "req/s"
        if q.min_throughput is not None and throughput < q.min_throughput * (1 - 1e-9):
            viol.append(f"throughput: {throughput:.4g} {unit} < {q.min_throughput:.4g} {unit}")
        rate = self.workload.request_rate
        if not self.training and rate and throughput < rate * (1 - 1e-9):
            viol.append(f"throughput: capacity {throughput:.4g} req/s < offered request_rate {rate:.4g} req/s")
        hours = {}
        for d in part:
            bj = self.battery_j[d]
            if bj is None:
                continue
            pw = energy[d] / period
            hours[d] = bj / pw / 3600.0 if pw > 0 else math.inf
            if q.min_battery_hours is not None and hours[d] < q.min_battery_hours * (1 - 1e-9):
                viol.append(f"battery: {self.names[d]} lasts {hours[d]:.3g} h < {q.min_battery_hours:.3g} h")
        return Metrics(feasible=feasible, qoe_ok=feasible and not viol, violations=viol,
                       latency_ms=latency_ms, throughput=throughput, energy_j=sum(energy), period_s=period,
                       bottleneck_s=T, bottleneck=bname, device_names=self.names, participants=part,
                       busy_s=busy, memory_bytes=mem, energy_by_device=energy, battery_hours=hours,
                       stage_compute_s=comp, transfer_s=xs, allreduce_s=A, training=self.training)


def score(scenario: Scenario, plan: Plan) -> Metrics:
    """One-shot convenience: validate and evaluate `plan` on `scenario`."""
    return CostModel(scenario).evaluate(plan)
