"""`ScheduleEnv` (`dora_rl/Schedule-v0`): the network scheduler's decisions as an episode,
so a learned planner chooses them too (issue 16 item 6; docs/learning.md, "ScheduleEnv").

Why: the partition environments decide where blocks run; how the plan then uses the
network (Dora's mechanism (ii)) is decided by `dora_rl.sim.scheduler`'s coordinate
search. Here an agent, given one plan on one scenario, makes those decisions one step
at a time: the number of micro-batches, the per-medium priority rule, the all-reduce
start and buckets (training with a data-parallel stage), the extra 1F1B warm-up
(training). A phase with one admissible choice is skipped. The episode's only reward,
at its end, comes from the simulator: ln(objective under FIFO / objective under the
chosen schedule) minus the QoE targets it misses beyond FIFO's (`scheduler.violations`),
so 0 is "as good as FIFO". Masks allow only admissible choices: micro-batch counts
that divide the batch, priority rules that exist for the plan, and warm-ups that fit in
memory (`scheduler.fits`). Instances: `contention_instance` (six devices on one WiFi
channel, a 4-stage plan with a data-parallel stage; half inference, half training),
or the (cost model, plan) pairs given."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from gymnasium import spaces

from dora_rl.envs.build import BuildEnv
from dora_rl.schedule import FIFO, Schedule
from dora_rl.sim import simulate
from dora_rl.sim.scheduler import (
    BUCKETS,
    MAX_M,
    WARMUP,
    fits,
    microbatch_counts,
    objective,
    priority_orders,
    violations,
)

PHASES = ("microbatches", "priorities", "allreduce", "warmup")
ALLREDUCE = tuple((start, b) for start in ("drain", "backward") for b in BUCKETS)
N_ACTIONS = max(MAX_M, 4, len(ALLREDUCE), len(WARMUP))
N_OBS = len(PHASES) + 7 + MAX_M + 4 + len(ALLREDUCE)
KINDS = ("jetson_orin_nano", "jetson_orin_nano", "jetson_nano", "rpi5", "laptop", "jetson_agx_orin")


def contention_instance(seed: int):
    """Six devices on one WiFi channel of 150-600 Mbps (each link 60-100 % of it), a
    random 16-block model, a 4-stage plan whose second stage is data-parallel on two
    devices; even seeds infer (batch 4, M 2), odd seeds train (batch 8, M 4, sgd).
    Returns (scenario, cost model, plan)."""
    from dora_rl.cluster.model import Cluster, Link, Medium, device_preset
    from dora_rl.cost import CostModel
    from dora_rl.plan import Plan
    from dora_rl.scenario import QoE, Scenario, Workload
    from dora_rl.synthetic import random_profile

    rng = np.random.default_rng(1000 + seed)
    devs = [device_preset(k, f"d{i}", gflops=float(rng.uniform(100, 1500))) for i, k in enumerate(KINDS)]
    wifi = float(rng.uniform(150, 600))
    links = [Link(a.name, b.name, wifi * float(rng.uniform(0.6, 1.0)), float(rng.uniform(1, 4)), "wifi")
             for i, a in enumerate(devs) for b in devs[i + 1:]]
    cl = Cluster(devs, links, {"wifi": Medium("wifi", wifi)})
    prof = random_profile(rng, n_blocks=16)
    training = seed % 2 == 1
    wl = Workload("training", 8, 4, None, "d0", "sgd") if training else Workload("inference", 4, 2, None, "d0")
    scen = Scenario(f"wifi{seed}", {"profile": "synthetic"}, prof, cl, wl, QoE(None, None, None, "latency"))
    cuts = sorted(rng.choice(np.arange(1, 16), 3, replace=False).tolist())
    b = [0, *cuts, 16]
    order = rng.permutation([d.name for d in devs]).tolist()
    groups = [[order[0]], order[1:3], [order[3]], [order[4]]]
    plan = Plan.make([(b[i], b[i + 1], g) for i, g in enumerate(groups)], wl.microbatches)
    return scen, CostModel(scen), plan


class _Instance:
    """One (cost model, plan) and what every episode on it reuses: the FIFO simulation,
    the analytic figures and the candidate lists."""

    def __init__(self, cm, plan):
        self.cm, self.plan = cm, dataclasses.replace(plan, schedule=None)
        self.fifo = simulate(cm, self.plan, FIFO, validate=False)
        self.fifo_obj, self.fifo_viol = objective(cm, self.fifo), violations(cm, self.fifo)
        self.ms = sorted(microbatch_counts(cm, plan.microbatches))
        self.orders = priority_orders(cm, self.plan)
        self.dp = cm.training and any(len(s.devices) > 1 for s in plan.stages)
        a = cm.evaluate(self.plan, validate=False)
        L = max(a.latency_ms / 1e3, 1e-12)
        M = plan.microbatches
        self.features = [float(cm.training), len(plan.stages) / 8.0, sum(len(s.devices) > 1 for s in plan.stages)
                         / len(plan.stages), math.log2(M) / 6.0, a.allreduce_s / L,
                         (M - 1) * a.bottleneck_s / L, float(a.bottleneck.startswith(("medium", "boundary")))]


class ScheduleEnv(BuildEnv):
    """Observation (float32): the phase (one-hot), seven instance features (training,
    stages / 8, data-parallel fraction, log2 M / 6, and the analytic model's all-reduce
    share, steady-state share and whether the network is its bottleneck), log2(M_i / M)
    of each micro-batch candidate (0 where none), the chosen priority rule and all-reduce
    option (one-hot). Action: an index into the current phase's choices (`N_ACTIONS`)."""

    metadata = {"render_modes": []}

    def __init__(self, instances=None, n_instances: int = 16, seed: int = 0):
        pairs = instances if instances is not None else [contention_instance(seed + i)[1:] for i in range(n_instances)]
        self.instances = [_Instance(cm, plan) for cm, plan in pairs]
        self.n_actions = N_ACTIONS
        self.action_space = spaces.Discrete(N_ACTIONS)
        self.observation_space = spaces.Box(-8.0, 8.0, (N_OBS,), np.float32)
        self.done = True
        self._mask = np.zeros(N_ACTIONS, dtype=bool)
        self.inst = self.instances[0]

    # -- choices per phase ---------------------------------------------------------------
    def _choices(self, phase: str) -> list:
        i = self.inst
        if phase == "microbatches":
            return list(i.ms)
        if phase == "priorities":
            return [()] + list(i.orders)
        if phase == "allreduce":
            return list(ALLREDUCE) if i.dp else [ALLREDUCE[0]]
        return [w for w in WARMUP if fits(i.cm, self._plan(), w)] if i.cm.training else [0]

    def _plan(self):
        return dataclasses.replace(self.inst.plan, microbatches=self.m)

    def chosen_plan(self):
        """The instance's plan with the micro-batches and schedule chosen so far (after the
        episode: the agent's; `result` is the simulator on it, FIFO's if nothing was chosen)."""
        return dataclasses.replace(self._plan(), schedule=self.sched)

    def _enter(self, k: int) -> None:
        """Move to phase k or the next with two or more choices; end the episode if none."""
        while k < len(PHASES):
            ch = self._choices(PHASES[k])
            if len(ch) > 1:
                self.phase, self.current = k, ch
                self._mask = np.zeros(N_ACTIONS, dtype=bool)
                self._mask[:len(ch)] = True
                return
            self._apply(PHASES[k], ch[0])
            k += 1
        self.phase, self.done = len(PHASES), True
        self._mask = np.zeros(N_ACTIONS, dtype=bool)

    def _apply(self, phase: str, choice) -> None:
        if phase == "microbatches":
            self.m = choice
        elif phase == "priorities":
            self.sched = dataclasses.replace(self.sched, priorities=choice)
            self.prio = self.current.index(choice) if choice else 0
        elif phase == "allreduce":
            self.sched = dataclasses.replace(self.sched, allreduce_start=choice[0], buckets=choice[1])
            self.ar = ALLREDUCE.index(choice)
        else:
            self.sched = dataclasses.replace(self.sched, extra_warmup=choice)

    # -- gymnasium -----------------------------------------------------------------------
    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        idx = (options or {}).get("instance")
        self.inst = self.instances[int(self.np_random.integers(len(self.instances))) if idx is None else idx]
        self.m, self.sched, self.prio, self.ar, self.done = self.inst.plan.microbatches, Schedule(), 0, 0, False
        self.current, self.result = [], self.inst.fifo
        self._enter(0)
        return self._obs(), {}

    def advance(self, action):
        a, substituted = self._allowed(action)
        self._apply(PHASES[self.phase], self.current[a])
        self._enter(self.phase + 1)
        info = {"substituted": substituted} if substituted else {}
        if not self.done:
            return 0.0, False, info
        plan = self._plan()
        r = self.result = simulate(self.inst.cm, plan, self.sched, validate=False)
        gain = math.log(max(self.inst.fifo_obj, 1e-12) / max(objective(self.inst.cm, r), 1e-12))
        reward = gain - max(0, violations(self.inst.cm, r) - self.inst.fifo_viol)
        info.update(schedule=self.sched.to_dict(), microbatches=plan.microbatches, sim=r.to_dict(),
                    fifo_objective=self.inst.fifo_obj)
        return float(reward), True, info

    def _obs(self) -> np.ndarray:
        i = self.inst
        o = np.zeros(N_OBS, dtype=np.float32)
        if self.phase < len(PHASES):
            o[self.phase] = 1.0
        k = len(PHASES)
        o[k:k + 7] = i.features
        k += 7
        for j, m in enumerate(i.ms):
            o[k + j] = math.log2(m / i.plan.microbatches)
        k += MAX_M
        o[k + min(self.prio, 3)] = 1.0
        k += 4
        o[k + self.ar] = 1.0
        return o
