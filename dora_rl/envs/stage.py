"""`StageEnv`: building one hybrid-parallel plan a stage at a time (few, big decisions).

Why: `PartitionEnv` decides block by block, so a plan over 200 blocks takes ~200 network
calls, and one early "continue" can never be undone. Here each step places a whole
stage: which devices and where it ends. A plan of S stages on single devices is S
decisions; the network sees every candidate end block at once (blocks as a sequence)
and every device at once (devices as a set), so a cut is chosen against the whole rest
of the model, not one block ahead.

Actions (`Discrete(D * Bm + D)`, D = `max_devices`, Bm = `max_blocks`):

- `d * Bm + j`  **close**: the next stage is blocks [p, j + 1) on the pending group plus
  device d (the pending group is usually empty: a single-device stage);
- `D * Bm + d`  **add**: device d joins the pending group (data parallelism inside a
  stage); a later close names the group's last member and the stage's end.

Shares inside a group follow `proportional_shares`, the number of micro-batches is the
workload's: every plan the `dora` partitioner produces is reachable (`stage_actions_for_plan`,
tested), with PartitionEnv's caveat (training masks assume M micro-batches in flight) and
one more: a data-parallel group's members are among the `ADD_CANDIDATES` (16) fastest
free devices (so every plan is reachable up to 16 devices; the add masks stay cheap at 64).

Masks: a close (d, r) is allowed when the group holds [p, r) in memory and the rest
[r, B) can still be finished by the greedy completion of `Instance.completion_table`
(sound: if it finishes, a plan exists); an add when some other free device can close a
stage with the enlarged group. QoE masks (`qoe_masks=True`, dora_rl/envs/qoe_bound.py)
then keep only the closes after which a QoE-compliant completion may still exist by a
sound lower bound, falling back to the memory masks when none does (dora_rl/envs/stage_mask.py;
after a step the mask is computed when first read, and a single close can be checked
alone, `StageMasks.allows`). Reward: `utility` on
the last step (as PartitionEnv), or with `reward="log_utility"` its log-ratio form
(dora_rl/cost/qoe.py:log_utility; info["utility"] is `utility` either way).

Observation (`STAGE_OBS_VERSION`): `devices (D, NFD)`, `device_mask (D,)`, `blocks (Bm,
NFB)` (row j = "a stage that ends after block j"), `block_mask (Bm,)` (candidate ends),
`global (SNG,)`, `relay_w (D,)` (v4: the relays' idle power a close on each device
brings in, `stage_obs.relay_power`; read by the lookahead only), `two_stage (D, Bm)` (v5: per
close, the log latency / T* or energy / P* T* of the plan that ends on one more device
after it, `stage_two.two_stage`, at the closes that can be the least; read by the policy's
rule only), `promise (D,)` (v6: 1 at
the device the previous close's two-stage plan ends on, `stage_two.promised`; read by the
rule only), `group (D,)` (v7: the members still to add of the next stage of a data-parallel
group or balanced pipeline whose plan beats the two-stage rule's choices on the cost
model, marked 0.5 + 0.5 r / Bm with r the stage's end, `stage_group.group_key`; read by
the group rule only). Column
`DEV_LOG_RATE_JOIN` of a device and `BLK_LOG_WORK` of a block are raw logs whose
difference is the log of the stage's compute time over T* on the group plus that device;
with the other `DEV_LOOKAHEAD` / `BLK_LOOKAHEAD` columns and the global extras
(`STAGE_GLOBAL_EXTRA`: the QoE bound's state) the policy forms a one-step lookahead per
close itself (dora_rl/learning/stage_lookahead.py:lookahead).
"""

from __future__ import annotations

import copy

import numpy as np
from gymnasium import spaces

from dora_rl.cost.qoe import REWARDS, utility
from dora_rl.envs.build import BuildEnv
from dora_rl.envs.instance import Instance, InstanceSource
from dora_rl.envs.stage_energy import route_relays
from dora_rl.envs.stage_group import current_group
from dora_rl.envs.stage_mask import ADD_CANDIDATES, StageMasks
from dora_rl.envs.stage_obs import (
    BLK_LOG_WORK,
    BLK_LOOKAHEAD,
    BLOCK_FEATURES,
    DEV_LOG_RATE_JOIN,
    DEV_LOOKAHEAD,
    DEVICE_FEATURES,
    NFB,
    NFD,
    SNG,
    STAGE_GLOBAL_EXTRA,
    STAGE_OBS_VERSION,
    observation,
)
from dora_rl.envs.stage_two import promised
from dora_rl.errors import DoraError, NoFeasiblePlan
from dora_rl.features import CLIP
from dora_rl.plan import Plan
from dora_rl.scenario import Scenario

# the observation's layout lives in stage_obs.py; its names are StageEnv's API, as before
__all__ = ["ADD_CANDIDATES", "BLK_LOG_WORK", "BLK_LOOKAHEAD", "BLOCK_FEATURES", "DEV_LOG_RATE_JOIN", "DEV_LOOKAHEAD",
           "DEVICE_FEATURES", "HARD_MAX_DEVICES", "NFB", "NFD", "SNG", "STAGE_GLOBAL_EXTRA", "STAGE_OBS_VERSION",
           "StageEnv", "stage_actions_for_plan"]
HARD_MAX_DEVICES = 256          # the documented hard limit of the set policy (>= 128)


class StageEnv(StageMasks, BuildEnv):
    """One episode = one plan, one stage per step (see the module docstring). Arguments as
    `PartitionEnv`, plus `max_blocks` (the padding of the block axis)."""

    metadata = {"render_modes": ["ansi"]}

    def __init__(self, scenario=None, max_devices: int = 8, max_blocks: int = 32, seed: int = 0,
                 pool_size: int = 100_000, min_devices: int = 2, gen_max_devices: int | None = None,
                 render_mode: str | None = None, gen_kwargs: dict | None = None, qoe_masks: bool = True,
                 reward: str = "utility"):
        super().__init__()
        if reward not in REWARDS:
            raise DoraError(f"StageEnv: reward must be one of {', '.join(REWARDS)}, got {reward!r}")
        self.reward = reward
        self.qoe_masks = bool(qoe_masks)
        self.qoe_masked = False
        self.max_devices = D = int(max_devices)
        self.max_blocks = Bm = int(max_blocks)
        if not 1 <= D <= HARD_MAX_DEVICES:
            raise DoraError(f"StageEnv: max_devices must be in [1, {HARD_MAX_DEVICES}], got {D}")
        gk = dict(gen_kwargs or {})
        gk.setdefault("max_blocks", min(Bm, 24))
        self.source = InstanceSource(scenario, D, seed, pool_size, min_devices, gen_max_devices, **gk)
        self.render_mode = render_mode
        self.n_actions = D * Bm + D
        self.action_space = spaces.Discrete(self.n_actions)
        self.observation_space = spaces.Dict({
            "devices": spaces.Box(-CLIP, CLIP, (D, NFD), np.float32),
            "device_mask": spaces.Box(0.0, 1.0, (D,), np.float32),
            "blocks": spaces.Box(-CLIP, CLIP, (Bm, NFB), np.float32),
            "block_mask": spaces.Box(0.0, 1.0, (Bm,), np.float32),
            "global": spaces.Box(-CLIP, CLIP, (SNG,), np.float32),
            "relay_w": spaces.Box(-CLIP, CLIP, (D,), np.float32),
            "two_stage": spaces.Box(-CLIP, CLIP, (D, Bm), np.float32),
            "promise": spaces.Box(0.0, 1.0, (D,), np.float32),
            "group": spaces.Box(0.0, 1.0, (D,), np.float32),
        })
        self.inst: Instance | None = None
        self.result = None
        self.done = True

    # ------------------------------------------------------------------
    def _check(self, inst: Instance) -> Instance:
        if inst.n > self.max_devices:
            raise DoraError(f"scenario {inst.scenario.name!r} has {inst.n} devices, more than this environment's "
                            f"max_devices={self.max_devices}")
        if inst.B > self.max_blocks:
            raise DoraError(f"scenario {inst.scenario.name!r} has {inst.B} blocks, more than this environment's "
                            f"max_blocks={self.max_blocks}")
        return inst

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if options and "scenario" in options:
            sc = options["scenario"]
            inst = Instance(sc, self.max_devices) if isinstance(sc, Scenario) else sc
        else:
            inst = self.source.draw(self.np_random)
        self._start(inst)
        return self._obs(), {}

    @classmethod
    def planning(cls, inst: Instance, qoe_masks: bool = True) -> StageEnv:
        """An env sized to `inst` at its first decision, for planning (the learned planner's
        `env_for`): the state `reset` gives, without seeding a generator or building the
        first observation (the decoder asks for it), on a copy of a template env of this
        shape (its gym spaces are built once and shared: a planning env is never sampled)."""
        env = _blank(inst.n, inst.B)
        env.qoe_masks = bool(qoe_masks)
        env._start(inst)
        return env

    def _start(self, inst: Instance) -> None:
        """The episode's first state on `inst` (reset without the gym parts)."""
        self.inst = self._check(inst)
        self._dmask = np.zeros(self.max_devices, np.float32)
        self._dmask[:inst.n] = 1.0
        self.p = 0
        self.group: list[int] = []
        self.used: set[int] = set()
        self.stages: list[tuple[int, int, tuple[int, ...]]] = []
        self.prev: list[int] = [inst.src]
        self.relays: frozenset[int] = frozenset()     # devices the closed stages' entries relay through
        self.t_max_stage = 0.0
        self.t_transfers = 0.0
        self._qF = self._qT = 0.0           # QoE bound: fill and period lower bounds of the closed stages
        self._qA = 0.0                      # ... and the all-reduce they commit (training)
        self._qM = np.zeros(self._bound().forced.shape[1])     # ... and their bytes on each shared medium
        self.done = False
        self.result = None
        self._promise: int | None = None    # the device the plan should end on (stage_two.promised)
        self._two = None                    # the current state's two_stage entries (stage_two.two_stage)
        self._grp = None                    # the current state's group plan (stage_group.group_plan)
        self._gplan: tuple[int, ...] | None = None      # the group being formed (stage_group.group_key)
        self._pending, self._alone = False, None
        self._compute_mask()
        if not self._mask.any():
            raise NoFeasiblePlan(f"scenario {inst.scenario.name!r}: no plan fits in memory", constraint="memory")

    def fork(self, into: StageEnv | None = None) -> StageEnv:
        """A copy of the episode so far sharing the read-only Instance (search tries an
        action on the copy). `into` re-uses an env of the same shape."""
        dst = into if into is not None else _blank(self.max_devices, self.max_blocks)
        if (dst.max_devices, dst.max_blocks) != (self.max_devices, self.max_blocks):
            raise DoraError("fork: environments of different shapes")
        dst.qoe_masks = self.qoe_masks
        mask = self._mask.copy()                # (brings a pending mask up to date)
        dst._pending, dst._alone = False, None
        dst.inst, dst._dmask, dst._mask = self.inst, self._dmask, mask
        dst._rmin, dst._rmax, dst._qin = self._rmin, self._rmax, self._qin
        dst.p, dst.done, dst.result = self.p, self.done, self.result
        dst.group, dst.used, dst.stages, dst.prev = list(self.group), set(self.used), list(self.stages), self.prev
        dst.relays = self.relays            # (a frozenset, replaced at each close)
        dst.t_max_stage, dst.t_transfers = self.t_max_stage, self.t_transfers
        dst._qF, dst._qT, dst._qA, dst.qoe_masked = self._qF, self._qT, self._qA, self.qoe_masked
        dst._qM = self._qM                  # (replaced, never modified in place)
        dst._adds_mem = self._adds_mem
        dst._promise, dst._two = self._promise, self._two      # (replaced, never modified in place)
        dst._grp, dst._gplan = self._grp, self._gplan
        return dst

    # --- transition --------------------------------------------------------------
    def advance(self, action) -> tuple[float, bool, dict]:
        """`step` without building the observation: (reward, terminated, info). The next
        state's mask is left pending (`_Masked`): computed when first read."""
        a, substituted = self._allowed(action)
        self._pending, self._alone = False, None
        inst, D, Bm = self.inst, self.max_devices, self.max_blocks
        if a >= D * Bm:
            d = a - D * Bm
            plan = current_group(self)
            self._gplan = plan if plan and d in plan[0][2] else None
            self.group.append(d)
        else:
            d, r = divmod(a, Bm)
            r += 1
            devs = self.group + [d]
            plan = current_group(self)
            follow = plan[1:] if plan and plan[0][1] == r and set(plan[0][2]) == set(devs) and len(plan) > 1 else None
            # a followed plan's rule sets the next stages (`stage_lookahead.with_group`): no promise
            promise = promised(self, d, r - 1) if not self.group and follow is None else None
            rate = sum(inst.rate[x] for x in devs)
            self.t_max_stage = max(self.t_max_stage, inst.back * inst.batch * (inst.fp[r] - inst.fp[self.p]) / rate)
            if self.stages:
                self.t_transfers += inst.batch * inst.bnd_l[self.p] / min(inst.bw[g, d] for g in self.prev)
            self._qF, self._qT = self._bound().after_close(self._qF, self._qT, self.prev, devs, self.p, r)
            self._qA = self._bound().after_close_allreduce(self._qA, devs, self.p, r)
            self._qM = self._bound().after_close_media(self._qM, self.prev, devs, self.p)
            nb = inst.batch * inst.bnd_l[self.p]
            self.relays = self.relays.union(*(route_relays(inst, g, x, nb) for g in self.prev for x in devs))
            self.stages.append((self.p, r, tuple(devs)))
            self.used.update(devs)
            self.prev, self.group, self.p, self._promise, self._gplan = devs, [], r, promise, follow
            if r >= inst.B:
                return self._end(substituted)
        self._pending = True
        return 0.0, False, {"masked_action": substituted}

    def _end(self, substituted: bool):
        self.done = True
        inst = self.inst
        M, st, m = inst.finish_once(self.stages)
        u = utility(inst.cost, m, inst.ref_obj)
        r = u if self.reward == "utility" else REWARDS[self.reward](inst.cost, m, inst.ref_obj)
        plan = inst.to_plan(st, M)
        self.result = (plan, m, u)
        self._mask = np.zeros(self.n_actions, dtype=bool)
        self._mask[np.flatnonzero(self._mask == 0)[0]] = True    # keeps samplers happy; step() refuses anyway
        info = {"plan": plan.to_dict(), "objective": m.objective(inst.objective), "qoe_ok": m.qoe_ok,
                "feasible": m.feasible, "utility": u, "microbatches": M, "masked_action": substituted}
        return r, True, info

    # --- observation -------------------------------------------------------------
    def _obs(self) -> dict:
        return observation(self)

    def render(self):
        if self.render_mode != "ansi":
            return None
        names = self.inst.cost.names
        parts = [f"[{l},{r}) on {'+'.join(names[d] for d in devs)}" for l, r, devs in self.stages]
        if self.group:
            parts.append(f"pending group {'+'.join(names[d] for d in self.group)}")
        return " | ".join(parts) or "(empty)"


_TEMPLATES: dict[tuple[int, int], StageEnv] = {}


def _blank(D: int, Bm: int) -> StageEnv:
    """A fresh env of shape (D, Bm) without an episode: a shallow copy of the shape's
    template (built once; ~100x cheaper than building the gym spaces per env)."""
    t = _TEMPLATES.get((D, Bm))
    if t is None:
        t = _TEMPLATES[(D, Bm)] = StageEnv(scenario=None, max_devices=D, max_blocks=Bm, pool_size=1)
    return copy.copy(t)


def stage_actions_for_plan(plan: Plan, scenario: Scenario, max_devices: int, max_blocks: int) -> list[int]:
    """The StageEnv action sequence that builds `plan`: per stage, an add for every member
    but the last, then a close on the last member at the stage's end."""
    idx = scenario.cluster.index
    D, Bm = max_devices, max_blocks
    acts = []
    for s in plan.stages:
        devs = [idx[d] for d in s.devices]
        acts += [D * Bm + d for d in devs[:-1]]
        acts.append(devs[-1] * Bm + s.end - 1)
    return acts
