"""`PartitionEnv`: building one hybrid-parallel plan for one scenario, as an episode.

Why: the `ppo` planner learns QoE-aware cut points and device groups across many
synthetic topologies. The environment walks the model's blocks in order and, at each
step, decides what happens to the next block. Actions (`Discrete(1 + 2 * max_devices)`):

- `0`        **continue**: the next block joins the current stage (at the end: finish);
- `1 + d`    **add device d** to the current stage's group (only while the stage holds
             just its first block: that is how data parallelism inside a stage is built);
- `1 + D + d` **cut**: close the current stage and open a new one on device d, starting
             at the next block (the very first action is always a cut: "open on d").

Shares inside a group follow `proportional_shares` (speed, capped by memory), and the
number of micro-batches is the workload's (`workload.microbatches`, as for every
planner), so every plan the `dora` partitioner can produce is reachable - except, in
training, plans that fit in memory only because a stage near the end of the pipeline
keeps fewer than M micro-batches in flight (masks assume M, see below).

Masks (`action_masks()`) never allow a step after which no memory-feasible plan can be
finished: memory is checked with the worst case of in-flight activations (training:
stage s keeps min(M, S - s) <= M micro-batches of batch / M samples), and completion is
checked with a greedy (extend as far as memory allows, biggest free device next), which
is sound: if the greedy finishes, a plan exists. Devices already used are masked. (The
cluster is always connected - `Cluster` rejects anything else - so connectivity never
masks.)

Reward: 0 on every step but the last, where the finished plan is scored by the shared
cost model and the reward is `utility(...)`: the objective of a reference plan (the best
single-device plan) divided by the plan's objective, minus a penalty for each violated
QoE constraint (2 + the relative miss, capped at 1). `dora evaluate` reports the same
number.

Observations: a `Dict` of `Box`es padded to `max_devices` (see OBS_VERSION, DEVICE_FEATURES,
GLOBAL_FEATURES) with device features (speed, memory, power, battery, bandwidth from the
current stage's group, and "warm" costs of placing the rest on each device), the
current block, progress, QoE targets and the action mask. Everything is a log-ratio to
an ideal time T* (all work spread over all devices) so one network serves any model.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from dora_rl.cost import CostModel
from dora_rl.cost.qoe import preference, utility
from dora_rl.errors import DoraError, NoFeasiblePlan
from dora_rl.plan import Plan
from dora_rl.scenario import Scenario

OBS_VERSION = 1
DEFAULT_MAX_DEVICES = 8
CLIP = 10.0
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


def _lg(x: float) -> float:
    """Clipped natural log, safe for 0 and inf."""
    if x <= 0:
        return -CLIP
    if x == math.inf:
        return CLIP
    v = math.log(x)
    return CLIP if v > CLIP else (-CLIP if v < -CLIP else v)


def shares_for(cost: CostModel, devs: list[int], l: int, r: int, m: float, inflight: int = 1) -> list[float] | None:
    """`proportional_shares` (dora_rl/planners/base.py): rate-proportional shares capped
    by memory, realized in whole samples - the same shares every planner uses."""
    from dora_rl.planners.base import proportional_shares

    return proportional_shares(cost, devs, l, r, m, inflight)


def microbatch_options(batch: int) -> list[int]:
    return [k for k in range(1, batch + 1) if batch % k == 0]


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
        # reach[d, l]: largest r such that device d alone holds [l, r) (l if not even one block)
        upper = np.triu(np.ones((B + 1, B + 1), dtype=bool), 1)
        fits = (mem[:, None, None] - base[None] >= self.act[None]) & upper[None]
        self.reach = (np.arange(B + 1)[None, :] + fits.sum(axis=2)).astype(int)
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
        if len(devs) == 1:
            return self.reach_l[devs[0]][l]
        rates = self.rate[devs]
        w = rates / rates.sum()
        wr = np.array(self.cost.realized(self.m_int, [float(x) for x in w]))
        if self.m_int < len(devs) or (wr <= 0).any():
            return l
        ww = np.maximum(w, wr)
        ok = np.all(self.base[l][None, :] + ww[:, None] * self.act[l][None, :] <= self.mem[devs][:, None], axis=0)
        ok[: l + 1] = False
        return l + int(ok.sum())

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
            f[d, 1] = _lg(self.rate[d] / (self.total_rate / n))
            f[d, 2] = _lg(self.mem[d] / resident)
            f[d, 3] = _lg(act_w[d] / max(act_w.mean(), 1e-9))
            f[d, 4] = cost.idle_w[d] / max(act_w[d], 1e-9)
            bj = cost.battery_j[d]
            f[d, 5] = 0.0 if bj is None else 1.0
            f[d, 6] = 0.0 if bj is None else _lg(bj / max(act_w[d], 1e-9) / 3600.0) / 3.0
            f[d, 7] = 1.0 if d == self.src else 0.0
            f[d, 8] = 0.0 if d == self.src else _lg(t_in[d] / self.tstar) / 3.0
            f[d, 9] = 0.0 if d == self.src else _lg(t_out[d] / self.tstar) / 3.0
            f[d, 10] = 0.0 if d == self.src else _lg(self.lat[self.src, d] / self.tstar) / 3.0
            del dev
        self.static = f
        self.act_w = act_w
        q, wl = scenario.qoe, scenario.workload
        g = np.zeros(NG, dtype=np.float64)
        g[3] = n / DEFAULT_MAX_DEVICES
        if q.latency_slo_ms is not None:
            g[10], g[11] = _lg(q.latency_slo_ms / 1e3 / self.tstar) / 3.0, 1.0
        thr = q.min_throughput
        if thr:
            per = (self.batch / thr) if self.training else 1.0 / thr
            g[12], g[13] = _lg(per / self.tstar) / 3.0, 1.0
        if q.min_battery_hours is not None:
            g[14], g[15] = 1.0, _lg(q.min_battery_hours) / 3.0
        g[16] = 1.0 if q.objective == "energy" else 0.0
        g[17] = 1.0 if self.training else 0.0
        g[18] = math.log(self.batch) / math.log(64.0)
        if not self.training and wl.request_rate:
            g[22] = _lg(1.0 / wl.request_rate / self.tstar) / 3.0
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

    def _reference(self) -> float:
        """Objective of the best single-device plan (the normaliser of `utility`)."""
        best = math.inf
        for d in range(self.n):
            m = self.cost.evaluate_stages([(0, self.B, [d], [1.0])], 1)
            best = min(best, m.objective(self.objective))
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
            sc = random_scenario(rng, max_devices=self.gen_max, min_devices=self.min_devices, **self.gen_kwargs)
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


class PartitionEnv(gym.Env):
    """One episode = one plan for one scenario (see the module docstring).

    Args:
        scenario: a Scenario, a preset name or a YAML path; None = synthetic instances.
        max_devices: padding of the device axis (the policy's maximum).
        seed: synthetic generator seed (instances are `random_scenario(default_rng([seed, i]))`).
        pool_size: synthetic instances are drawn from indices [0, pool_size).
        min_devices / gen_max_devices: device counts of synthetic instances.
        gen_kwargs: passed to `random_scenario` (kind, objective, n_blocks, ...).
    """

    metadata = {"render_modes": ["ansi"]}

    def __init__(self, scenario=None, max_devices: int = DEFAULT_MAX_DEVICES, seed: int = 0,
                 pool_size: int = 100_000, min_devices: int = 2, gen_max_devices: int | None = None,
                 render_mode: str | None = None, gen_kwargs: dict | None = None):
        super().__init__()
        self.max_devices = D = int(max_devices)
        self.source = InstanceSource(scenario, D, seed, pool_size, min_devices, gen_max_devices,
                                     **(gen_kwargs or {}))
        self.render_mode = render_mode
        self.n_actions = 1 + 2 * D
        self.action_space = spaces.Discrete(self.n_actions)
        self.observation_space = spaces.Dict({
            "devices": spaces.Box(-CLIP, CLIP, (D, NF), np.float32),
            "device_mask": spaces.Box(0.0, 1.0, (D,), np.float32),
            "global": spaces.Box(-CLIP, CLIP, (NG,), np.float32),
            "action_mask": spaces.Box(0.0, 1.0, (self.n_actions,), np.float32),
        })
        self.inst: Instance | None = None
        self.result = None     # (plan, metrics, utility) of the last finished episode

    # ------------------------------------------------------------------
    def use_instance(self, inst: Instance) -> None:
        """Start the next episodes on a given Instance (the planner's entry point)."""
        self.source.fixed = inst

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if options and "scenario" in options:
            sc = options["scenario"]
            self.inst = Instance(sc, self.max_devices) if isinstance(sc, Scenario) else sc
        else:
            self.inst = self.source.draw(self.np_random)
        inst = self.inst
        self._dmask = np.zeros(self.max_devices, np.float32)
        self._dmask[:inst.n] = 1.0
        self.p = 0
        self.l = 0
        self.group: list[int] = []
        self.used: set[int] = set()
        self.stages: list[tuple[int, int, tuple[int, ...]]] = []
        self.g_reach = 0
        self.t_max_stage = 0.0
        self.t_transfers = 0.0
        self.done = False
        self.result = None
        self._mask = self._compute_mask()
        if not self._mask.any():
            raise NoFeasiblePlan(f"scenario {inst.scenario.name!r}: no plan fits in memory", constraint="memory")
        return self._obs(), {}

    def fork(self, into: "PartitionEnv | None" = None) -> "PartitionEnv":
        """A copy of the episode so far (sharing the read-only Instance) that can be
        advanced without touching this one: search tries an action and completes the
        plan on the copy. `into` re-uses an env of the same max_devices (no allocation)."""
        dst = into if into is not None else PartitionEnv(scenario=None, max_devices=self.max_devices, pool_size=1)
        if dst.max_devices != self.max_devices:
            raise DoraError(f"fork: max_devices {dst.max_devices} != {self.max_devices}")
        dst.inst, dst._dmask, dst._mask = self.inst, self._dmask, self._mask.copy()
        dst.p, dst.l, dst.g_reach, dst.done, dst.result = self.p, self.l, self.g_reach, self.done, self.result
        dst.group, dst.used, dst.stages = list(self.group), set(self.used), list(self.stages)
        dst.t_max_stage, dst.t_transfers = self.t_max_stage, self.t_transfers
        return dst

    # --- masks -------------------------------------------------------------------
    def _compute_mask(self) -> np.ndarray:
        inst, D, p, B = self.inst, self.max_devices, self.p, self.inst.B
        mask = np.zeros(self.n_actions, dtype=bool)
        used = self.used
        if self.group:
            mask[0] = p >= B or p + 1 <= self.g_reach
            if p == self.l + 1:
                for d in range(inst.n):
                    if d in used or inst.mem[d] < inst.base[self.l, p]:
                        continue
                    g2 = self.group + [d]
                    R = inst.group_reach(g2, self.l)
                    if R > self.l:
                        used.add(d)
                        ok = inst.greedy(R, used) >= B
                        used.discard(d)
                        mask[1 + d] = ok
        if p < B:
            reach = inst.reach_l
            for d in range(inst.n):
                if d in used or reach[d][p] <= p:
                    continue
                used.add(d)
                ok = inst.greedy(reach[d][p], used) >= B
                used.discard(d)
                mask[1 + D + d] = ok
        return mask

    def action_masks(self) -> np.ndarray:
        return self._mask.copy()

    # --- transition --------------------------------------------------------------
    def _close_stage(self) -> None:
        inst = self.inst
        rate = sum(inst.rate[d] for d in self.group)
        t = inst.back * inst.batch * (inst.fp[self.p] - inst.fp[self.l]) / rate
        self.t_max_stage = max(self.t_max_stage, t)
        self.stages.append((self.l, self.p, tuple(self.group)))

    def step(self, action):
        reward, terminated, info = self.advance(action)
        return self._obs(), reward, terminated, False, info

    def observe(self) -> dict:
        """The current observation (planning skips it on forced moves)."""
        return self._obs()

    def advance(self, action) -> tuple[float, bool, dict]:
        """`step` without building the observation: (reward, terminated, info)."""
        a = int(action)
        if self.done:
            raise DoraError("PartitionEnv.step called after the episode ended; call reset()")
        substituted = False
        if not (0 <= a < self.n_actions) or not self._mask[a]:
            # a masked action (a sampler that ignores action_masks()): take the first
            # allowed one instead - "continue" when possible - and say so in info
            a = int(np.flatnonzero(self._mask)[0])
            substituted = True
        inst, D = self.inst, self.max_devices
        if a == 0:
            if self.p >= inst.B:
                return self._end(substituted)
            self.p += 1
        elif a <= D:
            d = a - 1
            self.group.append(d)
            self.used.add(d)
            self.g_reach = inst.group_reach(self.group, self.l)
        else:
            d = a - 1 - D
            if self.group:
                self._close_stage()
                prev = self.group
                nbytes = inst.batch * inst.bnd_l[self.p]
                self.t_transfers += nbytes / min(inst.bw[g, d] for g in prev)
            self.l = self.p
            self.group = [d]
            self.used.add(d)
            self.g_reach = inst.reach_l[d][self.l]
            self.p += 1
        self._mask = self._compute_mask()
        if self.p >= inst.B and not self._mask[1:].any():
            return self._end(substituted)
        return 0.0, False, {"masked_action": substituted}

    def _end(self, substituted: bool = False):
        self._close_stage()
        self.done = True
        inst = self.inst
        M, st, m = inst.finish(self.stages)
        u = utility(inst.cost, m, inst.ref_obj)
        plan = inst.to_plan(st, M)
        self.result = (plan, m, u)
        self._mask = np.zeros(self.n_actions, dtype=bool)
        self._mask[0] = True     # keeps samplers happy after the end; step() refuses anyway
        info = {"plan": plan.to_dict(), "objective": m.objective(inst.objective), "qoe_ok": m.qoe_ok,
                "feasible": m.feasible, "utility": u, "microbatches": M, "masked_action": substituted}
        return u, True, info

    # --- observation -------------------------------------------------------------
    def _obs(self) -> dict:
        inst, D, n, p, B = self.inst, self.max_devices, self.inst.n, self.p, self.inst.B
        ts = inst.tstar
        dev = np.zeros((D, NF), dtype=np.float64)
        dev[:n] = inst.static
        used = np.zeros(n)
        for d in self.used:
            used[d] = 1.0
        dev[:n, 11] = used
        ing = np.zeros(n)
        for d in self.group:
            ing[d] = 1.0
        dev[:n, 12] = ing
        pc = min(p, B)
        nbytes = inst.batch * inst.bnd_l[pc]
        frm = self.group or [inst.src]
        bwg = inst.bw[frm].min(axis=0) if len(frm) > 1 else inst.bw[frm[0]]
        tcut = nbytes / bwg
        dev[:n, 13] = np.clip(np.log(np.maximum(tcut / ts, 1e-30)), -CLIP, CLIP) / 3.0
        rest = inst.back * inst.batch * (inst.fp[-1] - inst.fp[pc])
        trest = rest / inst.rate / ts
        dev[:n, 14] = np.clip(np.log(np.maximum(trest, 1e-30)), -CLIP, CLIP) / 3.0
        blk = inst.back * inst.batch * (inst.fp[min(pc + 1, B)] - inst.fp[pc])
        dev[:n, 15] = np.clip(np.log(np.maximum(blk / inst.rate / ts, 1e-30)), -CLIP, CLIP) / 3.0
        if p < B:
            dev[:n, 16] = (inst.reach[:, p] - p) / (B - p)
        dev[:n, 17] = self._mask[1:1 + n]
        dev[:n, 18] = self._mask[1 + D:1 + D + n]
        dev[:n, 19] = np.clip(np.log(np.maximum(trest * ts * inst.act_w / inst.ref_obj
                                                if inst.objective == "energy" else trest, 1e-30)), -CLIP, CLIP) / 3.0
        g = inst.gstatic.copy()
        g[0] = p / B
        g[1] = (p - self.l) / B if self.group else 0.0
        g[2] = len(self.group) / D
        g[4] = (inst.fp[-1] - inst.fp[pc]) / max(inst.fp[-1], 1e-30)
        if self.group:
            rate = sum(inst.rate[d] for d in self.group)
            g[5] = _lg(inst.back * inst.batch * (inst.fp[pc] - inst.fp[self.l]) / rate / ts) / 3.0
            g[6] = _lg(inst.back * inst.batch * (inst.fp[min(pc + 1, B)] - inst.fp[self.l]) / rate / ts) / 3.0
        else:
            g[5] = g[6] = -CLIP / 3.0
        g[7] = _lg(self.t_max_stage / ts) / 3.0
        g[8] = _lg(self.t_transfers / ts) / 3.0
        g[9] = _lg(inst.bnd_l[pc] / max(inst.bnd_l[0], 1.0)) / 3.0
        free_rate = sum(inst.rate[d] for d in range(n) if d not in self.used)
        g[19] = (n - len(self.used)) / D
        g[20] = free_rate / inst.total_rate
        g[21] = _lg(rest / free_rate / ts) / 3.0 if free_rate > 0 else CLIP / 3.0
        g[23] = 1.0 if p >= B else 0.0
        return {"devices": dev.astype(np.float32), "device_mask": self._dmask.copy(),
                "global": g.astype(np.float32), "action_mask": self._mask.astype(np.float32)}

    def render(self):
        if self.render_mode != "ansi":
            return None
        names = self.inst.cost.names
        parts = [f"[{l},{r}) on {'+'.join(names[d] for d in devs)}" for l, r, devs in self.stages]
        if self.group and not self.done:
            parts.append(f"[{self.l},{self.p}) on {'+'.join(names[d] for d in self.group)} (open)")
        return " | ".join(parts) or "(empty)"


def actions_for_plan(plan: Plan, scenario: Scenario, max_devices: int = DEFAULT_MAX_DEVICES) -> list[int]:
    """The action sequence that builds `plan` in a PartitionEnv (shares and micro-batches
    are not actions: they follow from the groups). Shows the action space expresses it."""
    idx = scenario.cluster.index
    D = max_devices
    acts = []
    for s in plan.stages:
        devs = [idx[d] for d in s.devices]
        acts.append(1 + D + devs[0])
        acts += [1 + d for d in devs[1:]]
        acts += [0] * (s.end - s.start - 1)
    acts.append(0)   # finish (ignored when the episode already ended)
    return acts
