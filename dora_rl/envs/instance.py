"""Planning instances for `PartitionEnv`: one scenario's cost model, its static
observation features, the greedy completion check behind the masks, and the source of
instances (one scenario, or the synthetic-topology generator).

Why a module of its own: the environment (partition.py), the learned planner's search and
imitation, and the evaluation all score plans on an `Instance`; keeping it apart from the
Gymnasium stepping logic keeps each under one concern. Feature layout: OBS_VERSION,
DEVICE_FEATURES, GLOBAL_FEATURES (docs/learning.md)."""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np

from dora_rl.cost import CostModel
from dora_rl.cost.qoe import preference
from dora_rl.errors import DoraError, NoFeasiblePlan
from dora_rl.features import CLIP, clip_log
from dora_rl.plan import Plan
from dora_rl.scenario import Scenario

OBS_VERSION = 1
DEFAULT_MAX_DEVICES = 8
DEVICE_FEATURES = (
    "valid", "log_rate", "log_mem", "log_active_w", "idle_over_active", "on_battery", "log_battery_h",
    "is_source", "log_t_input_from_source", "log_t_output_to_source", "log_lat_source",
    "used", "in_group", "log_t_cut_from_group", "log_t_rest_alone", "log_t_block", "reach_frac",
    "can_add", "can_cut", "log_e_rest_alone",
)
GLOBAL_FEATURES = (
    "progress", "stage_len", "group_size", "n_devices", "flops_left", "log_t_stage", "log_t_stage_ext",
    "log_t_max_stage", "log_t_transfers", "log_act_ratio", "log_slo", "has_slo", "log_thr_period",
    "has_thr", "has_battery", "log_battery_h", "obj_energy", "training", "log_batch", "free_devices",
    "free_rate_frac", "log_t_rest_free", "log_req_period", "at_end",
)
NF, NG = len(DEVICE_FEATURES), len(GLOBAL_FEATURES)
FINISHED = 256      # plans `Instance.finish_once` keeps


def shares_for(cost: CostModel, devs: list[int], l: int, r: int, m: float, inflight: int = 1) -> list[float] | None:
    """`proportional_shares` (dora_rl/planners/base.py): rate-proportional shares capped
    by memory, realized in whole samples - the same shares every planner uses."""
    from dora_rl.planners.base import proportional_shares

    return proportional_shares(cost, devs, l, r, m, inflight)


def microbatch_options(batch: int) -> list[int]:
    return [k for k in range(1, batch + 1) if batch % k == 0]


def single_reach(mem: np.ndarray, base: np.ndarray, act: np.ndarray) -> np.ndarray:
    """reach[d, l]: the largest r such that device d alone holds blocks [l, r), i.e. the last
    r > l with mem[d] - base[l, r] >= act[l, r] (l when not even block l fits).

    Why a binary search: for a fixed l, base[l, r] (parameter bytes) and act[l, r]
    (activation bytes: a prefix difference, or a running maximum) never decrease in r, and
    floating-point subtraction and comparison keep that order, so the blocks that fit are
    a prefix of r = l+1 .. B. Bisecting every (d, l) at once makes the same comparisons at
    about log2(B) points instead of all B: 2.0 ms instead of 8.2 (one start block at a
    time) at 64 devices x 200 blocks on session 21's machine, identical tables."""
    n, B = len(mem), base.shape[0] - 1
    L = np.broadcast_to(np.arange(B + 1), (n, B + 1))
    lo, hi = np.zeros((n, B + 1), dtype=int), B - L       # the count of blocks that fit lies in [lo, hi]
    while True:
        active = lo < hi
        if not active.any():
            return L + lo
        mid = (lo + hi + 1) // 2
        r = L + mid             # <= B: mid <= hi (a settled entry's mid is its lo; its answer is ignored)
        ok = mem[:, None] - base[L, r] >= act[L, r]
        lo = np.where(active & ok, mid, lo)
        hi = np.where(active & ~ok, mid - 1, hi)


class Instance:
    """Per-scenario tables, computed once and shared by every episode on the scenario."""

    def __init__(self, scenario: Scenario, max_devices: int, cost: CostModel | None = None):
        cost = cost if cost is not None and cost.scenario is scenario else CostModel(scenario)
        n, B = cost.n, cost.n_blocks
        if n > max_devices:
            raise DoraError(f"scenario {scenario.name!r} has {n} devices, more than this environment's "
                            f"max_devices={max_devices}")
        self.scenario, self.cost, self.n, self.B = scenario, cost, n, B
        wl = scenario.workload
        self.training = cost.training
        self.batch = wl.batch
        self.back = 3.0 if self.training else 1.0
        self.objective = scenario.qoe.objective
        fp = np.array(cost.fp)
        pp = np.array(cost.pp)
        ap = np.array(cost.ap)
        bnd = np.array(cost.bnd)
        self.fp, self.bnd_l = cost.fp, cost.bnd
        copies = cost.param_copies if self.training else 1
        # memory tables for M = 1 (the worst case): base[l, r] and act[l, r]
        base = (pp[None, :] - pp[:, None]) * copies
        if self.training:
            act = bnd[:, None] + ap[None, :] - ap[:, None]
        else:
            act = np.array(cost.peak)
        # the plan's micro-batch count is the workload's (as for every planner); memory
        # is checked for the worst case of in-flight micro-batches (training: M)
        self.M = wl.microbatches
        self.m = self.batch / self.M
        self.m_int = int(round(self.m))
        self.base, self.act = base, act * self.m * (self.M if self.training else 1)
        mem = np.array(cost.mem)
        self.mem = mem
        self.mem_med = max(float(np.median(mem)), 1.0)
        # reach[d, l]: largest r such that device d alone holds [l, r) (l if not even one block)
        self.reach = single_reach(mem, base, self.act)
        self.reach_l = self.reach.tolist()
        self.mem_order = sorted(range(n), key=lambda d: -cost.mem[d])
        rate = np.array(cost.rate)
        self.rate = rate
        self.total_rate = float(rate.sum())
        work = self.back * self.batch * fp[-1]
        self.tstar = max(work / self.total_rate, 1e-9)       # ideal time: all work over all devices
        self.src = cost.src
        bw = np.array(cost.bw)
        np.fill_diagonal(bw, np.inf)
        self.bw = bw
        self.lat = np.array(cost.lat)
        self.Ms = [self.M]
        self._finished: dict = {}
        self.completable = self.greedy(0, set()) >= B
        self._static_features(scenario)
        self.ref_obj = self._reference()

    # --- memory / completion helpers -----------------------------------------
    def group_reach(self, devs, l: int) -> int:
        """Largest r such that the group surely holds [l, r) with the shares the plan will
        get (memory is monotone in r). A single device: the precomputed reach. A group:
        rate-proportional shares, realized in whole samples (every member needs at least
        one sample of the micro-batch), must fit both before and after rounding - then
        `proportional_shares` returns exactly those shares for any in-flight count <= the
        worst case, so the final plan fits."""
        return int(self.group_reach_rows([list(devs)], l)[0])

    def group_reach_rows(self, rows: list[list[int]], l: int) -> np.ndarray:
        """`group_reach` of several groups of one size at once (one numpy comparison over
        groups x members x blocks instead of one per group; the same values)."""
        k = len(rows[0]) if rows else 0
        out = np.full(len(rows), l, dtype=np.int64)
        if k == 1:
            return np.array([self.reach_l[g[0]][l] for g in rows], dtype=np.int64)
        if not rows or self.m_int < k:
            return out
        idx = np.array(rows)
        rates = self.rate[idx]
        w = rates / rates.sum(axis=1, keepdims=True)
        base, act = self.base[l, l + 1:], self.act[l, l + 1:]      # ends r > l only
        mem = self.mem[idx][:, :, None]

        def fits(W, sel):          # blocks r > l that every member of the rows `sel` holds with shares W
            return np.all(base[None, None, :] + W[:, :, None] * act[None, None, :] <= mem[sel], axis=1).sum(axis=1)

        # the realized shares W = max(w, n / m) lie in [w, max(w, (floor(w m) + 1) / m)]: with m >= k
        # every member gets n >= 1 samples, and `plan.sample_counts` gives a member a sample beyond
        # max(1, floor(w m)) only while it has fewer than w m. The memory test is monotone in W
        # (act >= 0; rounding is monotone): where a group fits as far with the upper end as with
        # W = w, that is its reach, without the sample split
        every = slice(None)
        lo = fits(np.maximum(w, np.minimum(1.0, np.maximum(1.0, np.floor(w * self.m_int) + 1.0) / self.m_int)), every)
        todo = np.flatnonzero(lo != fits(w, every)) if (act >= 0).all() else np.arange(len(rows))
        out[:] = l + lo
        if len(todo):
            wr = np.array([self.cost.realized(self.m_int, w[i].tolist(), list(rows[i])) for i in todo])
            out[todo] = l + fits(np.maximum(w[todo], wr), todo)
        return out

    def greedy(self, R: int, used) -> int:
        """How far the greedy gets from block R with the devices not in `used`."""
        B, reach = self.B, self.reach_l
        for d in self.mem_order:
            if R >= B:
                break
            if d in used:
                continue
            r = reach[d][R]
            if r > R:
                R = r
        return R

    def completion_table(self, taken, rows) -> np.ndarray:
        """G[i, r]: how far the greedy (`greedy`) gets from block r without the devices in
        `taken` and without device rows[i] - all rows and starts at once (numpy), stopping
        as soon as every row reaches the end (usually after a device or two)."""
        B = self.B
        R = np.tile(np.arange(B + 1), (len(rows), 1))
        rows_arr = np.asarray(rows)
        for e in self.mem_order:
            if e in taken:
                continue
            nr = self.reach[e][R]
            nr[rows_arr == e] = R[rows_arr == e]
            np.maximum(R, nr, out=R)
            if R[:, -1].min() >= B and R.min() >= B:
                break
        return R

    def block_table(self, NFB: int) -> np.ndarray:
        """Static per-block rows (NFB columns) of StageEnv's `blocks` observation (row j: a
        stage ending after block j): see `dora_rl.envs.stage.BLOCK_FEATURES`."""
        cost, B = self.cost, self.B
        fp, pp, bnd = np.asarray(cost.fp), np.asarray(cost.pp), np.asarray(cost.bnd)
        fl, pa = np.diff(fp), np.diff(pp)
        bw = self.bw[np.isfinite(self.bw)]
        bw_med = float(np.median(bw)) if len(bw) else 1e9
        t = np.zeros((B, NFB))
        t[:, 0] = 1.0
        t[:, 2] = np.clip(np.log(np.maximum(fl / max(fl.mean(), 1e-30), 1e-30)), -CLIP, CLIP)
        t[:, 3] = np.clip(np.log(np.maximum(pa / max(pa.mean(), 1e-30), 1e-30)), -CLIP, CLIP)
        t[:, 4] = np.clip(np.log(np.maximum(bnd[1:] / max(bnd.max(), 1e-30), 1e-30)), -CLIP, CLIP) / 3.0
        t[:, 6] = (fp[-1] - fp[1:]) / max(fp[-1], 1e-30)
        t[:, 7] = np.clip(np.log(np.maximum(self.batch * bnd[1:] / bw_med / self.tstar, 1e-30)), -CLIP, CLIP) / 3.0
        t[-1, 8] = 1.0
        t[:, 10] = np.arange(1, B + 1) / B
        peak = np.diag(self.act[:B, 1:B + 1]) if self.act.ndim == 2 else np.zeros(B)
        t[:, 12] = np.clip(np.log(np.maximum(peak / self.mem_med, 1e-30)), -CLIP, CLIP) / 3.0
        if NFB > 13:      # log of the work after block j, over the mean work per device (log_work's scale)
            t[:, 13] = np.clip(np.log(np.maximum(t[:, 6] * self.n, 1e-30)), -CLIP, CLIP)
        return t

    def block_static(self, n_features: int) -> np.ndarray:
        """`block_table`, computed once per instance."""
        if getattr(self, "_block_static", None) is None:
            self._block_static = self.block_table(n_features)
        return self._block_static

    # --- features ------------------------------------------------------------
    def _static_features(self, scenario: Scenario) -> None:
        cl, cost, n = scenario.cluster, self.cost, self.n
        f = np.zeros((n, NF), dtype=np.float64)
        act_w = np.array(cost.active_w)
        resident = max(self.base[0, self.B] + self.act[0, self.B], 1.0)
        t_in = self.batch * self.bnd_l[0] / self.bw[self.src]
        t_out = self.batch * self.bnd_l[-1] / self.bw[:, self.src]
        for d in range(n):
            dev = cl.devices[d]
            f[d, 0] = 1.0
            f[d, 1] = clip_log(self.rate[d] / (self.total_rate / n))
            f[d, 2] = clip_log(self.mem[d] / resident)
            f[d, 3] = clip_log(act_w[d] / max(act_w.mean(), 1e-9))
            f[d, 4] = cost.idle_w[d] / max(act_w[d], 1e-9)
            bj = cost.battery_j[d]
            f[d, 5] = 0.0 if bj is None else 1.0
            f[d, 6] = 0.0 if bj is None else clip_log(bj / max(act_w[d], 1e-9) / 3600.0) / 3.0
            f[d, 7] = 1.0 if d == self.src else 0.0
            f[d, 8] = 0.0 if d == self.src else clip_log(t_in[d] / self.tstar) / 3.0
            f[d, 9] = 0.0 if d == self.src else clip_log(t_out[d] / self.tstar) / 3.0
            f[d, 10] = 0.0 if d == self.src else clip_log(self.lat[self.src, d] / self.tstar) / 3.0
            del dev
        self.static = f
        self.act_w = act_w
        q, wl = scenario.qoe, scenario.workload
        g = np.zeros(NG, dtype=np.float64)
        g[3] = n / DEFAULT_MAX_DEVICES
        if q.latency_slo_ms is not None:
            g[10], g[11] = clip_log(q.latency_slo_ms / 1e3 / self.tstar) / 3.0, 1.0
        thr = q.min_throughput
        if thr:
            per = (self.batch / thr) if self.training else 1.0 / thr
            g[12], g[13] = clip_log(per / self.tstar) / 3.0, 1.0
        if q.min_battery_hours is not None:
            g[14], g[15] = 1.0, clip_log(q.min_battery_hours) / 3.0
        g[16] = 1.0 if q.objective == "energy" else 0.0
        g[17] = 1.0 if self.training else 0.0
        g[18] = math.log(self.batch) / math.log(64.0)
        if not self.training and wl.request_rate:
            g[22] = clip_log(1.0 / wl.request_rate / self.tstar) / 3.0
        self.gstatic = g

    # --- scoring ---------------------------------------------------------------
    def build(self, stages, M: int):
        """[(l, r, devs)] + M -> cost-model stage tuples with proportional shares, or None."""
        m = self.batch / M
        S = len(stages)
        out = []
        for s, (l, r, devs) in enumerate(stages):
            sh = shares_for(self.cost, list(devs), l, r, m, min(M, S - s))
            if sh is None:
                return None
            out.append((l, r, list(devs), sh))
        return out

    def finish(self, stages):
        """Best (by `cost.qoe.preference`) micro-batch count for `stages`: (M, stage tuples, Metrics)."""
        best = None
        for M in self.Ms:
            st = self.build(stages, M)
            if st is None:
                continue
            m = self.cost.evaluate_stages(st, M)
            k = preference(m, self.objective)
            if best is None or k < best[0]:
                best = (k, M, st, m)
        if best is None:
            raise NoFeasiblePlan("partition: the plan fits no micro-batch count", constraint="memory")
        return best[1], best[2], best[3]

    def finish_once(self, stages):
        """`finish`, remembered per Instance by the stages (read the result, do not modify
        it): a StageEnv episode scores some plans more than once - the group key's candidates
        and the two-stage rule's choices at a state (`stage_two.plan_preference`), and at the
        end the plan it followed (`StageEnv._end`): 13 of 95 evaluations of a 64 x 200
        greedy decision on validation. Searches call `finish`. At most FINISHED plans are
        kept (then the memo starts again)."""
        key = tuple((l, r, tuple(d)) for l, r, d in stages)
        if key not in self._finished:
            if len(self._finished) >= FINISHED:
                self._finished.clear()
            try:
                self._finished[key] = self.finish(stages)
            except NoFeasiblePlan:
                self._finished[key] = None
        got = self._finished[key]
        if got is None:
            raise NoFeasiblePlan("partition: the plan fits no micro-batch count", constraint="memory")
        return got

    def _reference(self) -> float:
        """Objective of the best single-device plan (the normaliser of `utility`). For latency
        the devices are tried in order of their compute time for the whole model (a lower
        bound of that plan's latency: the pass adds transfers to it), stopping at the first
        whose bound is no better than the best found: the same minimum, from a few
        evaluations instead of one per device (at 64 devices the loop was ~20 % of planning)."""
        cost, B, m = self.cost, self.B, self.cost.workload.batch
        order, bound = range(self.n), None
        if self.objective == "latency":
            bound = []
            for d in range(self.n):
                c, per = cost.stage_compute(0, B, [d], [1.0], m)
                bound.append(1e3 * (max(cost.stage_busy(0, B, [d], [1.0], m, per)) if cost.training else c))
            order = sorted(order, key=bound.__getitem__)
        best = math.inf
        for d in order:
            if bound is not None and bound[d] >= best:
                break
            best = min(best, cost.evaluate_stages([(0, B, [d], [1.0])], 1).objective(self.objective))
        return best if best > 0 and math.isfinite(best) else 1.0

    def to_plan(self, stages, M: int) -> Plan:
        names = self.cost.names
        return Plan.make([(l, r, [names[d] for d in devs], sh) for (l, r, devs, sh) in stages], M)


class InstanceSource:
    """Where episodes get their scenario: one fixed scenario, or the seeded synthetic
    generator (instance i is `random_scenario(default_rng([seed, i]), ...)`, cached)."""

    def __init__(self, scenario: Scenario | str | None, max_devices: int, seed: int = 0,
                 pool_size: int = 100_000, min_devices: int = 2, gen_max_devices: int | None = None,
                 cache: int = 4096, **gen_kwargs):
        self.max_devices = max_devices
        self.fixed = None
        if scenario is not None:
            if not isinstance(scenario, Scenario):
                from dora_rl.scenario import load_scenario
                scenario = load_scenario(scenario)
            self.fixed = Instance(scenario, max_devices)
            if not self.fixed.completable:
                raise NoFeasiblePlan(f"scenario {scenario.name!r}: no plan fits in memory "
                                     "(even the greedy that uses every device runs out)", constraint="memory")
        self.seed, self.pool_size, self.min_devices = int(seed), int(pool_size), int(min_devices)
        self.gen_max = min(gen_max_devices or max_devices, max_devices)
        self.gen_kwargs = gen_kwargs
        self.cache: OrderedDict[int, Instance] = OrderedDict()
        self.cache_size = cache

    def instance(self, i: int) -> Instance:
        if i in self.cache:
            self.cache.move_to_end(i)
            return self.cache[i]
        from dora_rl.synthetic import random_scenario
        k = 0
        while True:   # a memory-infeasible draw is replaced by the next sub-seed
            rng = np.random.default_rng([self.seed, i, k])
            kw = dict(self.gen_kwargs)
            lo, hi = kw.pop("min_blocks", None), kw.pop("max_blocks", None)
            if kw.get("n_blocks") is None and (lo is not None or (hi is not None and hi != 24)):
                kw["n_blocks"] = int(rng.integers(lo or 4, (hi or 24) + 1))
            sc = random_scenario(rng, max_devices=self.gen_max, min_devices=self.min_devices, **kw)
            inst = Instance(sc, self.max_devices)
            if inst.completable:
                break
            k += 1
        self.cache[i] = inst
        if len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        return inst

    def draw(self, rng: np.random.Generator) -> Instance:
        if self.fixed is not None:
            return self.fixed
        return self.instance(int(rng.integers(self.pool_size)))
