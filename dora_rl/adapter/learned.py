"""The learned adapter `ppo`: an AdaptEnv agent decides every interval; one hard safety rule may veto its pick.

Each control interval the adapter scores its options over the planning band (the same
scoring, candidates and weights bookkeeping as `pareto`), builds the observation with
the ONE builder AdaptEnv trains on (dora_rl/adapter/observation.py) and asks the agent for a
row: `keep` what runs, the composition LP's best plan or time-share, or one of the
single candidate plans (the DP's Pareto sets and the partition agent's plans); every
option is scored over the planning band and at the current estimate (the band's mid point).
The agent's row is deployed (reason `agent`) unless the veto applies:

    VETO (`veto:qoe`): the agent's pick is predicted to miss QoE at the current estimate
    while at least one option (keep, an LP's mix or a candidate) is predicted to meet it
    there. Then the LP's choice over the planning band is deployed if it complies there,
    else the cheapest option that complies at the estimate. Nothing else is vetoed: not a
    costlier pick, not a pick that keeps no margin below the estimate, not a switch
    `pareto`'s rule would not make, not a cheap pick when nothing complies at the estimate.

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
from dora_rl.adapter.candidates import level_bandwidths, subset_plans
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
from dora_rl.adapter.observation import (
    DWELL_NORM_S,
    FIXED_ROWS,
    SLOTS,
    TREND_WINDOW,
    build_observation,
    history_row,
    trend_features,
)
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


class Option(NamedTuple):
    """One row: the plan or time-share scored over the planning band and at the current estimate."""

    band: Mix             # what is deployed when the row is picked
    est: Mix              # the same plans and fractions at the estimate
    min_bw: float | None  # a single plan's lowest compliant bandwidth / the estimate (None: a time-share)

    @property
    def ok(self) -> bool:
        return self.band.ok


class Context(NamedTuple):
    """One interval's observation and what each row would deploy."""

    t: float
    obs: dict
    rows: list            # Option or None per row (adapter/observation.py: keep, lp, lp_est, candidates)


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
        self.min_ok = self.scores.min_ok_mbps()
        self.reset_run()

    def reset_run(self) -> None:
        """Forget the run (a new episode): what runs, holdings (re-staged), histories, counts."""
        self.current = None
        self.last_switch_t = -math.inf
        self.holdings = {}
        self._hist = []
        self.stage_weights(self.plans)
        self.history: deque = deque(maxlen=8)
        self.log_bw: deque = deque(maxlen=TREND_WINDOW)
        self.levels_seen: deque = deque()
        self._ctx: Context | None = None
        self.agent_decided = 0
        self.decisions = 0
        self.last_action: int | None = None

    def add_candidates(self) -> None:
        """The DP's plans on every subset of the devices (candidates.subset_plans) and the
        partition agent's plan (rollout search) at every bandwidth level of the candidate set:
        the learned planner's proposals join the DP's."""
        if self._given is not None:
            return
        for p in subset_plans(self.scenario):
            self.pid(p)
        if self.partition_agent is False:
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
        if mb and self.nominal:
            self.log_bw.append(math.log(mb / self.nominal))
        lo, mid, hi = ev.band
        est = self.scores.band((mid, mid, hi), state.battery, sorted(by))
        seen = self.recent_low()
        low = {m: min(v * (1 - self.headroom), seen.get(m, v)) for m, v in lo.items()}
        safe = self.scores.band((low, mid, hi), state.battery, sorted(by))
        est_mbps = mid.get(self.medium) if self.medium else None

        def option(m: Mix, at_est: bool = False) -> Option:
            band, e = (rescore(m, by, cost), m) if at_est else (m, rescore(m, est.by, est.cost))
            thr = None
            if len(m.parts) == 1 and est_mbps:
                thr = min(self.min_ok.get(m.pids[0], math.inf), 4.0 * self.nominal) / est_mbps
            return Option(band, e, thr)

        keep = None
        if self.current is not None:
            k = rescore(self.current, by, cost)
            if len(k.parts) > 1:     # a time-share re-solved for the required rate (as `pareto` keeps it)
                re = lp_slack([s for s, _ in k.parts if s.lat_ok], need, bud, slo)
                if re is not None and re.ok:
                    k = re
            if set(ev.best.pids) == set(k.pids):    # the LP's best runs the same plans: its fractions (slack)
                k = ev.best
            keep = option(k)
        singles = [make_mix([(by[p], 1.0)], need, bud, slo) for p in sorted(by)]
        cur = set(self.current.pids) if self.current is not None else set()
        room = SLOTS - FIXED_ROWS
        if len(singles) > room:     # the current plans first, then compliant, then cheapest
            singles.sort(key=lambda m: (m.pids[0] not in cur, not m.ok, self.at_cost(m, cost)))
            singles = sorted(singles[:room], key=lambda m: m.pids[0])
        rows = [keep, option(ev.best), option(est.best, at_est=True), option(rescore(safe.best, by, cost))]
        rows += [option(m) for m in singles]
        flags = [(k == 0, k == 1, k == 2, k == 3, m is not None and set(m.band.pids) == cur)
                 for k, m in enumerate(rows)]
        moved = [0.0 if m is None else self._moved(m.band) for m in rows]
        q = cost.qoe
        dwell_s = (state.t - self.last_switch_t) / self.dilation      # device seconds since the last switch
        dwell = 1.0 if self.current is None else min(dwell_s, DWELL_NORM_S) / DWELL_NORM_S
        tail = [1.0 if keep is not None and keep.ok else 0.0, dwell, 1.0 if q.objective == "energy" else 0.0,
                1.0 if q.min_battery_hours is not None else 0.0, 1.0 if need else 0.0,
                1.0 if self.current is None else 0.0]
        obs = build_observation(rows, flags, moved, list(self.history), trend_features(self.log_bw), tail, q, need,
                                self.lat_ref, self.p_ref)
        self._ctx = Context(state.t, obs, rows)
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
        if self.veto:
            safe = self.veto_choice(ctx.rows, pick, ev.cost)
            if safe is not None:
                return safe, VETO_QOE
        self.agent_decided += 1
        return pick.band, "agent"

    def veto_choice(self, rows: list, pick: Option, cost: CostModel) -> Mix | None:
        """The veto (module docstring): None when `pick` stands, else what is deployed instead."""
        if pick.est.ok:
            return None
        fine = [o for o in rows if o is not None and o.est.ok]
        if not fine:
            return None
        lp = rows[1]
        if lp.band.ok:
            return lp.band
        return min(fine, key=lambda o: self.at_cost(o.est, cost)).band

    @property
    def agent_decided_frac(self) -> float | None:
        return self.agent_decided / self.decisions if self.decisions else None
