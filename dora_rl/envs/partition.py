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

import numpy as np
from gymnasium import spaces

from dora_rl.cost.qoe import utility
from dora_rl.envs.build import BuildEnv
from dora_rl.envs.instance import DEFAULT_MAX_DEVICES, NF, NG, Instance, InstanceSource
from dora_rl.errors import DoraError, NoFeasiblePlan
from dora_rl.features import CLIP, clip_log
from dora_rl.plan import Plan
from dora_rl.scenario import Scenario


class PartitionEnv(BuildEnv):
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

    # --- transition --------------------------------------------------------------
    def _close_stage(self) -> None:
        inst = self.inst
        rate = sum(inst.rate[d] for d in self.group)
        t = inst.back * inst.batch * (inst.fp[self.p] - inst.fp[self.l]) / rate
        self.t_max_stage = max(self.t_max_stage, t)
        self.stages.append((self.l, self.p, tuple(self.group)))

    def advance(self, action) -> tuple[float, bool, dict]:
        """`step` without building the observation: (reward, terminated, info)."""
        # a masked action (a sampler that ignores action_masks()): the first allowed one
        # instead - "continue" when possible - and said so in info
        a, substituted = self._allowed(action)
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
            g[5] = clip_log(inst.back * inst.batch * (inst.fp[pc] - inst.fp[self.l]) / rate / ts) / 3.0
            g[6] = clip_log(inst.back * inst.batch * (inst.fp[min(pc + 1, B)] - inst.fp[self.l]) / rate / ts) / 3.0
        else:
            g[5] = g[6] = -CLIP / 3.0
        g[7] = clip_log(self.t_max_stage / ts) / 3.0
        g[8] = clip_log(self.t_transfers / ts) / 3.0
        g[9] = clip_log(inst.bnd_l[pc] / max(inst.bnd_l[0], 1.0)) / 3.0
        free_rate = sum(inst.rate[d] for d in range(n) if d not in self.used)
        g[19] = (n - len(self.used)) / D
        g[20] = free_rate / inst.total_rate
        g[21] = clip_log(rest / free_rate / ts) / 3.0 if free_rate > 0 else CLIP / 3.0
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
