"""`AdaptEnv`: the runtime adapter's decision as an environment.

Why: bandwidth moves every second and batteries run down, so the plan that was best at
deploy time stops being best. An episode is a span of time (`horizon` steps of `dt`
seconds). Bandwidth on the scenario's shared medium follows its `dynamics.bandwidth`
trace (or a Gilbert-Elliott `markov_trace` when it has none), started at a random
offset; battery devices drain by the cost model's average power of the plan in use
(times `battery_speedup`, so that minutes of simulated time show hours of drain).

Candidates: the Pareto set (`pareto(scenario)`: QoE-compliant, latency x energy) at the
nominal bandwidth, plus the Pareto set at `low_bw` x nominal, plus "everything on the
source" as the fallback; at most `max_candidates`, computed once per scenario and
cached, re-scored on the current bandwidth each step (cost models cached per
bandwidth level on a 5% log grid, so a step is a dict look-up most of the time).

Action `k` (`Discrete(max_candidates)`, masked to real candidates): run candidate k for
the next `dt` seconds (choosing the current one keeps it). Reward per step:
`+1` if every QoE target holds (latency, throughput, battery hours with the *current*
charge) else `-1`, minus `w_energy` x energy per request / the least energy of any
candidate at nominal bandwidth, minus `w_switch` x the fraction of the model's weights
that must move to devices that did not hold them. A masked action (a padded slot, from a
sampler that ignores `action_masks()`, e.g. plain PPO) keeps the current plan and sets
`info["masked_action"]`. The observation is built by dora_rl/envs/adapt_obs.py, which the
deployed adapter agent (dora_rl/learning/adapter_agent.py) uses too."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from dora_rl.cost.qoe import required_rate
from dora_rl.envs.adapt_obs import CLIP, NC, NGA, AdaptSituation, CandidateView, build_observation, moved_fraction
from dora_rl.errors import DoraError
from dora_rl.plan import Plan
from dora_rl.scenario import Scenario

_CANDIDATES: dict[int, tuple] = {}


def candidate_plans(scenario: Scenario, max_candidates: int = 8, low_bw: float = 0.3) -> list[Plan]:
    """Pareto plans at nominal and at low bandwidth, plus the local plan (cached per scenario object)."""
    key = id(scenario)
    if key in _CANDIDATES and _CANDIDATES[key][0] is scenario:
        return _CANDIDATES[key][1]
    from dora_rl.planners import pareto

    plans: list[Plan] = []
    seen = set()

    def add(p: Plan):
        k = p.key()
        if k not in seen:
            seen.add(k)
            plans.append(p)

    for p, _ in pareto(scenario):
        add(p)
    medium = scenario.dynamic_medium()
    if medium is not None and low_bw:
        low = scenario.replace(cluster=scenario.cluster.with_medium_mbps(
            medium, scenario.cluster.media[medium].mbps * low_bw))
        for p, _ in pareto(low):
            add(p)
    B = scenario.profile.n_blocks
    add(Plan.make([(0, B, [scenario.workload.source], [1.0])], scenario.workload.microbatches))
    if len(plans) > max_candidates:   # keep the local fallback and an even spread of the rest
        rest = plans[:-1]
        idx = np.linspace(0, len(rest) - 1, max_candidates - 1).round().astype(int)
        plans = [rest[i] for i in sorted(set(idx.tolist()))] + [plans[-1]]
    _CANDIDATES[key] = (scenario, plans)
    return plans


class _Dynamic:
    """Per-scenario tables shared by episodes: candidates, moved-weight matrix, the
    trace, and cost-model scores per bandwidth level."""

    GRID = math.log(1.05)

    def __init__(self, scenario: Scenario, max_candidates: int, low_bw: float, trace_seed: int = 0):
        from dora_rl.cost import CostModel

        self.scenario = scenario
        self.plans = candidate_plans(scenario, max_candidates, low_bw)
        self.K = len(self.plans)
        self.medium = scenario.dynamic_medium()
        cl = scenario.cluster
        self.nominal = cl.media[self.medium].mbps if self.medium else None
        self.trace = None
        if self.medium is not None:
            from dora_rl.cluster.traces import markov_trace, resolve_trace
            spec = (scenario.dynamics or {}).get("bandwidth")
            tr = None
            if spec:
                try:
                    tr = resolve_trace(spec, self.nominal)
                except DoraError:
                    tr = None   # a missing trace file: fall back to the synthetic generator
            self.trace = tr or markov_trace(np.random.default_rng(trace_seed), self.nominal, 600.0)
        base = CostModel(scenario)
        self.cost0 = base
        self.names = base.names
        self.n = base.n
        self.batt0 = [0.0 if j is None else j for j in base.battery_j]
        self.on_batt = [j is not None for j in base.battery_j]
        self.idle_w = list(base.idle_w)
        self.stages = [base.stage_indices(p) for p in self.plans]
        moved = np.zeros((self.K, self.K))
        for a in range(self.K):
            for b in range(self.K):
                moved[a, b] = moved_fraction(base.pp, self.stages[a], self.stages[b])
        self.moved = moved
        self.scores: dict[int, list] = {}
        ref = self.score(0)
        self.e_ref = max(min(m.energy_j for m in ref), 1e-12)
        self.lat_ref = max(min(m.latency_ms for m in ref), 1e-12)

    def level(self, mbps: float | None) -> int:
        if mbps is None or self.nominal is None:
            return 0
        return int(round(math.log(mbps / self.nominal) / self.GRID))

    def score(self, level: int) -> list:
        """Metrics of every candidate at bandwidth nominal x 1.05**level (cached)."""
        if level in self.scores:
            return self.scores[level]
        from dora_rl.cost import CostModel

        sc = self.scenario
        if level != 0 and self.medium is not None:
            sc = sc.replace(cluster=sc.cluster.with_medium_mbps(self.medium, self.nominal * math.exp(level * self.GRID)))
        cost = self.cost0 if level == 0 else CostModel(sc)
        ms = [cost.evaluate_stages(st, p.microbatches) for st, p in zip(self.stages, self.plans)]
        if len(self.scores) > 256:
            self.scores.pop(next(iter(self.scores)))
        self.scores[level] = ms
        return ms


class AdaptEnv(gym.Env):
    """Keep or switch plans as bandwidth moves and batteries drain (module docstring).

    Args:
        scenario: a Scenario, a preset name or a YAML path; None = small synthetic
            scenarios (`random_scenario(..., max_devices=4, n_blocks<=12, dynamics=True)`,
            drawn from a pool of `pool_size` seeded instances).
        horizon: steps per episode; dt: seconds per step; battery_speedup: drain factor.
        w_energy, w_switch: reward weights; max_candidates: action-space size.
    """

    metadata = {"render_modes": ["ansi"]}

    def __init__(self, scenario=None, horizon: int = 60, dt: float = 5.0, battery_speedup: float = 60.0,
                 w_energy: float = 0.2, w_switch: float = 0.5, max_candidates: int = 8, low_bw: float = 0.3,
                 seed: int = 0, pool_size: int = 16, render_mode: str | None = None):
        super().__init__()
        if scenario is not None and not isinstance(scenario, Scenario):
            from dora_rl.scenario import load_scenario
            scenario = load_scenario(scenario)
        self.scenario = scenario
        self.horizon, self.dt, self.speedup = int(horizon), float(dt), float(battery_speedup)
        self.w_energy, self.w_switch = float(w_energy), float(w_switch)
        self.K = int(max_candidates)
        self.low_bw = float(low_bw)
        self.seed_, self.pool_size = int(seed), int(pool_size)
        self.render_mode = render_mode
        self._pool: dict[int, _Dynamic] = {}
        self.action_space = spaces.Discrete(self.K)
        self.observation_space = spaces.Dict({
            "candidates": spaces.Box(-CLIP, CLIP, (self.K, NC), np.float32),
            "global": spaces.Box(-CLIP, CLIP, (NGA,), np.float32),
            "action_mask": spaces.Box(0.0, 1.0, (self.K,), np.float32),
        })
        self.dyn: _Dynamic | None = None

    def _draw(self) -> _Dynamic:
        if self.scenario is not None:
            if -1 not in self._pool:
                self._pool[-1] = _Dynamic(self.scenario, self.K, self.low_bw, self.seed_)
            return self._pool[-1]
        i = int(self.np_random.integers(self.pool_size))
        if i not in self._pool:
            from dora_rl.synthetic import random_scenario
            k = 0
            while True:
                rng = np.random.default_rng([self.seed_, i, k])
                sc = random_scenario(rng, max_devices=4, n_blocks=int(rng.integers(4, 13)), dynamics=True)
                try:
                    dyn = _Dynamic(sc, self.K, self.low_bw, self.seed_ + i)
                    break
                except DoraError:
                    k += 1
            self._pool[i] = dyn
        return self._pool[i]

    # ------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.dyn = dyn = self._draw()
        self.t = 0
        self.t0 = float(self.np_random.uniform(0, dyn.trace.duration)) if dyn.trace is not None else 0.0
        self.energy = list(dyn.batt0)
        ms = dyn.score(self._level())
        ok = [self._ok(m) for m in ms]
        # start on the best compliant candidate at the start (what a planner would deploy)
        order = sorted(range(dyn.K), key=lambda k: (not ok[k], ms[k].objective(dyn.cost0.qoe.objective)))
        self.current = order[0]
        self.bw_prev = self._mbps()
        return self._obs(), {}

    def _mbps(self) -> float | None:
        dyn = self.dyn
        return None if dyn.trace is None else float(dyn.trace.at(self.t0 + self.t * self.dt))

    def _level(self) -> int:
        return self.dyn.level(self._mbps())

    def _battery_hours(self, m) -> float:
        dyn, worst = self.dyn, math.inf
        pw = m.avg_power_w
        for d in m.participants:
            if dyn.on_batt[d] and pw[d] > 0:
                worst = min(worst, self.energy[d] / pw[d] / 3600.0)
        return worst

    def _ok(self, m) -> bool:
        q, cost = self.dyn.cost0.qoe, self.dyn.cost0
        if not m.feasible:
            return False
        if q.latency_slo_ms is not None and m.latency_ms > q.latency_slo_ms * (1 + 1e-9):
            return False
        need = required_rate(cost)
        if need and m.throughput < need * (1 - 1e-9):
            return False
        if q.min_battery_hours is not None and self._battery_hours(m) < q.min_battery_hours * (1 - 1e-9):
            return False
        return True

    def action_masks(self) -> np.ndarray:
        mask = np.zeros(self.K, dtype=bool)
        mask[: self.dyn.K] = True
        return mask

    def step(self, action):
        dyn = self.dyn
        a = int(action)
        masked = not (0 <= a < dyn.K)
        if masked:
            a = self.current   # a padded (masked) slot: keep the current plan, flagged in info
        ms = dyn.score(self._level())
        m = ms[a]
        ok = self._ok(m)
        switch = float(dyn.moved[self.current, a]) if a != self.current else 0.0
        reward = (1.0 if ok else -1.0) - self.w_energy * m.energy_j / dyn.e_ref - self.w_switch * switch
        # drain batteries for dt (x speedup) under the chosen plan
        pw = m.avg_power_w
        part = set(m.participants)
        for d in range(dyn.n):
            if dyn.on_batt[d]:
                p = pw[d] if d in part else dyn.idle_w[d]
                self.energy[d] = max(0.0, self.energy[d] - p * self.dt * self.speedup)
        info = {"qoe_ok": ok, "energy_j": m.energy_j, "latency_ms": m.latency_ms, "switched": a != self.current,
                "moved_frac": switch, "mbps": self._mbps(), "plan_index": a, "masked_action": masked}
        self.current = a
        self.bw_prev = self._mbps()
        self.t += 1
        truncated = self.t >= self.horizon
        return self._obs(), float(reward), False, truncated, info

    def _obs(self) -> dict:
        """The observation (dora_rl/envs/adapt_obs.py) of the candidates at the current bandwidth."""
        dyn = self.dyn
        ms = dyn.score(self._level())
        views = [CandidateView(m, self._battery_hours(m), k == self.current, dyn.moved[self.current, k], self._ok(m))
                 for k, m in enumerate(ms)]
        fr = [self.energy[d] / dyn.batt0[d] for d in range(dyn.n) if dyn.on_batt[d] and dyn.batt0[d] > 0]
        situation = AdaptSituation(qoe=dyn.cost0.qoe, need=required_rate(dyn.cost0), lat_ref=dyn.lat_ref,
                                   e_ref=dyn.e_ref, mbps=self._mbps(), mbps_prev=self.bw_prev, nominal=dyn.nominal,
                                   progress=self.t / self.horizon, min_battery=min(fr) if fr else 1.0)
        return build_observation(situation, views, self.K)

    def render(self):
        if self.render_mode != "ansi":
            return None
        return f"t={self.t} bw={self._mbps()} plan={self.current} {self.dyn.plans[self.current].to_dict()}"
