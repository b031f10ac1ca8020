"""The learned adapter `ppo`: an AdaptEnv agent decides every interval; one hard safety rule may veto its pick.

Each control interval the adapter scores its options over the planning band (the same
scoring, candidates and weights bookkeeping as `pareto`), builds the observation with
the ONE builder AdaptEnv trains on (dora_rl/adapter/observation.py) and asks the agent for a
row: `keep` what runs, the composition LP's best plan or time-share, or one of the
single candidate plans (the DP's Pareto sets and the partition agent's plans). The
agent's row is deployed (reason `agent`) unless the veto applies:

    VETO (`veto:qoe`): the agent's pick is predicted to miss QoE over the planning band
    while at least one option (keep, the LP's mix or a candidate) is predicted to meet
    it. Then `pareto`'s rule decides if its choice complies, else the cheapest compliant
    option. Nothing else is vetoed: not a costlier pick, not a switch the rule would
    not make, not flapping.

`agent_decided` / `decisions` count the share the agent decided (simulate's summary
reports it as `agent_decided_frac`). The agent itself (a MaskablePPO network) lives with
the learning code: this module only asks for one (`load_agent_policy`)."""

from __future__ import annotations

import importlib
import math
from collections import deque
from pathlib import Path
from typing import Callable, NamedTuple, Protocol

import numpy as np

from dora_rl.adapter.base import register_adapter
from dora_rl.adapter.candidates import level_bandwidths
from dora_rl.adapter.compose import (
    Mix,
    battery_budgets,
    conditions,
    lp_slack,
    make_mix,
    rescore,
    score,
    weights_to_move,
)
from dora_rl.adapter.observation import DWELL_NORM_S, SLOTS, build_observation, history_row
from dora_rl.adapter.rules import ParetoAdapter
from dora_rl.adapter.scoring import Evaluation
from dora_rl.adapter.state import State
from dora_rl.cost import CostModel
from dora_rl.cost.qoe import required_rate
from dora_rl.errors import AgentError, DoraError, NoFeasiblePlan
from dora_rl.scenario import Scenario

VETO_QOE = "veto:qoe"


class AgentPolicy(Protocol):
    """What a learned adapter must provide: `act(obs)` -> the row to run (an int whose
    `obs["action_mask"]` entry is 1; adapter/observation.py describes the rows)."""

    def act(self, obs: dict) -> int: ...


AGENT_LOADERS: list[Callable[[Scenario, str | Path | None], AgentPolicy]] = []


def register_agent_loader(fn: Callable[[Scenario, str | Path | None], AgentPolicy]) -> Callable:
    """Add a loader: fn(scenario, agent_path_or_None) -> AgentPolicy, raising AgentError
    when it cannot provide one. Loaders are tried newest first, then the built-in one."""
    AGENT_LOADERS.insert(0, fn)
    return fn


def _learning(module: str):
    """A module of dora_rl.learning, imported by name when first needed: the learned
    agents live above this layer (as the `ppo` planner does for planners/), and importing
    the adapter must not import torch and SB3."""
    return importlib.import_module(f"dora_rl.learning.{module}")


def _load_agent(scenario: Scenario, path: str | Path | None) -> AgentPolicy:
    """The AdaptEnv agent shipped in trained_agents/: dora_rl__Adapt-<scenario>-v0, then
    dora_rl__Adapt-v0 (or the folder / zip `path`), loaded lazily by
    dora_rl.learning.adapter_agent.load_adapter_agent (no torch on importing the runtime)."""
    from dora_rl.resources import agents_dir

    root = agents_dir()
    if path is not None:
        folders = [Path(path)] if Path(path).exists() else [root / str(path)]
    else:
        folders = [root / f"dora_rl__Adapt-{scenario.name}-v0", root / "dora_rl__Adapt-v0"]
    found = [f for f in folders if (f / "model.zip").is_file() or (f.suffix == ".zip" and f.is_file())]
    if not found:
        raise AgentError(f"no AdaptEnv agent for scenario {scenario.name!r} (looked in "
                         f"{', '.join(str(f) for f in folders)}); train one with "
                         "`python -m dora_rl.learning.adapt_training`, or use --adapter pareto")
    return _learning("adapter_agent").load_adapter_agent(scenario, found[0])


def load_agent_policy(scenario: Scenario, agent: str | Path | None = None) -> AgentPolicy:
    """The first loader that yields a policy for `scenario`, else AgentError (all reasons)."""
    errors = []
    for fn in AGENT_LOADERS + [_load_agent]:
        try:
            return fn(scenario, agent)
        except AgentError as e:
            errors.append(str(e))
    raise AgentError("; ".join(dict.fromkeys(errors)))


class Context(NamedTuple):
    """One interval's observation and what each row would deploy."""

    t: float
    obs: dict
    rows: list            # Mix or None per row (adapter/observation.py: keep, lp, candidates)
    rule: Mix             # `pareto`'s choice
    rule_why: str


@register_adapter
class PPOAdapter(ParetoAdapter):
    """The learned adapter (module docstring): the agent's row is deployed unless the
    QoE veto applies. `veto=False` deploys every pick (for studying the agent)."""

    name = "ppo"
    prestage = True

    def __init__(self, scenario: Scenario, *, agent: str | Path | None = None, policy: AgentPolicy | None = None,
                 veto: bool = True, partition_agent: str | Path | None | bool = None, **options):
        self.policy = policy if policy is not None else load_agent_policy(scenario, agent)
        self.veto = bool(veto)
        self.partition_agent = partition_agent
        super().__init__(scenario, **options)
        cost0 = CostModel(scenario)
        s0 = score(cost0, 0, self.plans[0])
        self.p_ref = max(s0.power, 1e-9)
        self.lat_ref = max(s0.metrics.latency_ms, 1e-9)
        self.medium = scenario.dynamic_medium()
        self.nominal = scenario.cluster.media[self.medium].mbps if self.medium else None
        self.capacity_j = {d.name: d.battery_wh * 3600.0 for d in scenario.cluster.devices if d.on_battery}
        self.total_params = max(sum(self.params), 1e-12)
        self.reset_run()

    def reset_run(self) -> None:
        """Forget the run (a new episode): what runs, holdings (re-staged), histories, counts."""
        self.current = None
        self.last_switch_t = -math.inf
        self.holdings = {}
        self._hist = []
        self.stage_weights(self.plans)
        self.history: deque = deque(maxlen=8)
        self.levels_seen: deque = deque()
        self._ctx: Context | None = None
        self.agent_decided = 0
        self.decisions = 0
        self.last_action: int | None = None

    def add_candidates(self) -> None:
        """The partition agent's plan (rollout search) at every bandwidth level of the
        candidate set: the learned planner's proposals join the DP's."""
        if self.partition_agent is False or self._given is not None:
            return
        try:
            which = None if self.partition_agent in (None, True) else self.partition_agent
            agent = _learning("planner").cached_agent(which)
        except AgentError:
            if self.partition_agent not in (None, True):
                raise
            return          # no partition agent shipped: the DP's candidates only
        if self.scenario.cluster.n > agent.max_devices:
            return
        for bw in level_bandwidths(self.scenario, self.levels):
            try:
                plan, _ = agent.plan(conditions(self.scenario, bw, {}), search="rollout")
            except NoFeasiblePlan:
                continue
            self.pid(plan)

    # --- the observation ------------------------------------------------------------
    def _draw_vs_budget(self, state: State, budgets: dict[str, float]) -> float:
        """The battery devices' draw averaged over the last 60 s (from the levels seen),
        over their budgets: the largest ratio (0 without battery targets or history)."""
        if not budgets or len(self.levels_seen) < 2:
            return 0.0
        (t0, lv0), (t1, lv1) = self.levels_seen[0], self.levels_seen[-1]
        if t1 <= t0:
            return 0.0
        worst = 0.0
        for d, b in budgets.items():
            if d in lv0 and d in lv1 and b > 0:
                w = (lv0[d] - lv1[d]) * self.capacity_j.get(d, 0.0) / (t1 - t0)
                worst = max(worst, w / b)
        return worst

    def _moved(self, mix: Mix) -> float:
        return sum(weights_to_move(mix.plans, self.holdings, self.params, self.source).values()) / self.total_params

    def context(self, state: State, ev: Evaluation) -> Context:
        """The observation at `state` (computed once per decision time)."""
        if self._ctx is not None and self._ctx.t == state.t:
            return self._ctx
        cost, by = ev.cost, ev.by
        need, bud, slo = required_rate(cost), battery_budgets(cost), cost.qoe.latency_slo_ms
        self.levels_seen.append((state.t, dict(state.battery or {})))
        while len(self.levels_seen) > 1 and state.t - self.levels_seen[0][0] > 60.0 + 1e-9:
            self.levels_seen.popleft()
        lv = [v for d, v in (state.battery or {}).items() if d in self.capacity_j]
        mb = (state.bandwidth or {}).get(self.medium) if self.medium else None
        err = (state.error or {}).get(self.medium, 0.0) if self.medium else 0.0
        self.history.append(history_row(mb, self.nominal, err, min(lv) if lv else 1.0,
                                        self._draw_vs_budget(state, bud)))
        rule, why = ParetoAdapter._choose(self, state, ev)
        keep = None
        if self.current is not None:
            keep = rescore(self.current, by, cost)
            if len(keep.parts) > 1:
                re = lp_slack([s for s, _ in keep.parts if s.lat_ok], need, bud, slo)
                if re is not None and re.ok:
                    keep = re
        singles = [make_mix([(by[p], 1.0)], need, bud, slo) for p in sorted(by)]
        cur = set(self.current.pids) if self.current is not None else set()
        if len(singles) > SLOTS - 2:     # the current plans first, then compliant, then cheapest
            singles.sort(key=lambda m: (m.pids[0] not in cur, not m.ok, self.at_cost(m, cost)))
            singles = sorted(singles[:SLOTS - 2], key=lambda m: m.pids[0])
        rows = [keep, ev.best] + singles
        flags = [(k == 0, k == 1, m is not None and set(m.pids) == cur, m is not None and set(m.pids) == set(rule.pids))
                 for k, m in enumerate(rows)]
        moved = [0.0 if m is None else self._moved(m) for m in rows]
        q = cost.qoe
        dwell = 1.0 if self.current is None else min(state.t - self.last_switch_t, DWELL_NORM_S) / DWELL_NORM_S
        tail = [1.0 if keep is not None and keep.ok else 0.0, dwell, 1.0 if q.objective == "energy" else 0.0,
                1.0 if q.min_battery_hours is not None else 0.0, 1.0 if need else 0.0,
                1.0 if self.current is None else 0.0]
        obs = build_observation(rows, flags, moved, list(self.history), tail, q, need, self.lat_ref, self.p_ref)
        self._ctx = Context(state.t, obs, rows, rule, why)
        return self._ctx

    # --- the decision -------------------------------------------------------------------
    def _choose(self, state: State, ev: Evaluation) -> tuple[Mix, str]:
        ctx = self.context(state, ev)
        try:
            a = self.policy.act(ctx.obs)
        except DoraError:
            raise
        except Exception as e:  # an agent that does not fit this scenario
            raise AgentError(f"adapter agent failed on scenario {self.scenario.name!r}: "
                             f"{type(e).__name__}: {e}") from None
        if isinstance(a, np.integer):
            a = int(a)
        if not (isinstance(a, int) and 0 <= a < len(ctx.rows) and ctx.rows[a] is not None):
            raise AgentError(f"adapter agent chose row {a!r} but scenario {self.scenario.name!r} offers rows "
                             f"{[k for k, m in enumerate(ctx.rows) if m is not None]} (masked ones excluded); "
                             "the agent was trained for another observation layout")
        self.last_action = a
        self.decisions += 1
        pick = ctx.rows[a]
        if self.veto and not pick.ok:
            compliant = [m for m in ctx.rows if m is not None and m.ok]
            if compliant:
                safe = ctx.rule if ctx.rule.ok else min(compliant, key=lambda m: self.at_cost(m, ev.cost))
                return safe, VETO_QOE
        self.agent_decided += 1
        return pick, "agent"

    @property
    def agent_decided_frac(self) -> float | None:
        return self.agent_decided / self.decisions if self.decisions else None
