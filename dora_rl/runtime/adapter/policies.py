"""Adapters: each control interval, state (estimated bandwidth, battery) -> Decision.

Every adapter is reachable by name (`get_adapter(name, scenario, **options)`):

- `static`  the initial `dora` plan, forever;
- `replan`  re-runs the `dora` DP on the measured bandwidth every interval (MPC-style
            baseline; no composition; weights move on demand);
- `pareto`  the Pareto set computed once at nominal bandwidth (weights pre-staged at
            deployment), re-scored every interval on the current condition, composed
            with the LP of compose.py;
- `ppo`     the learned adapter (an AdaptEnv agent from trained_agents/), pluggable
            through `register_agent_loader`; raises AgentError when none is available;
- `oracle`  offline: knows the whole trace (`bind`), scores every interval on the TRUE
            bandwidth with no estimation lag, over the nominal Pareto set plus the DP's
            Pareto set at the true bandwidth, composed, switching for free; a bound.

The switching rule (all but `static` and `oracle`): plans are scored at the *planning
bandwidth* = estimate / (1 + recent overshoot) x (1 - safety). Switch when the current
plan (or mix) is not compliant there (QoE at risk), or when a compliant plan/mix is
cheaper by more than `margin` (relative power: hysteresis), is still compliant with
`headroom` less bandwidth (hysteresis on QoE), at least `min_dwell_s` passed since the
last switch, AND the power saved over `horizon_s` exceeds what the switch costs
(weights that must move / bandwidth + `drain_s`, during which nothing is saved, plus
the radio energy of moving them). A change of fractions inside the same set of plans
is a re-weighting, not a switch."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from dora_rl.cost import CostModel
from dora_rl.errors import AgentError, DoraError, NoFeasiblePlan, PlannerError
from dora_rl.plan import Plan
from dora_rl.scenario import Scenario
from dora_rl.runtime.adapter.compose import (Mix, Scored, battery_budgets, best_mix, block_params, conditions,
                                             lp_mix, make_mix, radio_joules, required_rate, rescore, score,
                                             shortfall, transfer_seconds, weights_to_move)

ADAPTERS: dict[str, type["Adapter"]] = {}


def register_adapter(cls):
    ADAPTERS[cls.name] = cls
    return cls


def adapter_names() -> list[str]:
    return list(ADAPTERS)


def get_adapter(name: str, scenario: Scenario, **options) -> "Adapter":
    """An adapter by name (static, replan, pareto, ppo, oracle) for `scenario`."""
    if name not in ADAPTERS:
        raise PlannerError(f"unknown adapter {name!r}; available: {', '.join(ADAPTERS)}")
    return ADAPTERS[name](scenario, **options)


@dataclass
class State:
    """What the adapter sees at time `t`: estimated Mbps per medium, battery levels,
    and per medium the estimate's recent overshoot (plans are scored at
    bandwidth / (1 + error) x (1 - safety); 0 when unknown)."""

    t: float
    bandwidth: dict[str, float]
    battery: dict[str, float] = field(default_factory=dict)
    error: dict[str, float] = field(default_factory=dict)


@dataclass
class Decision:
    """What to run from now on: plan ids (into `Adapter.plans`) and time fractions."""

    t: float
    pids: tuple[int, ...]
    fractions: tuple[float, ...]
    plans: list[Plan]
    switch: bool                  # the set of plans changed (weights may move, pipeline drains)
    reason: str                   # initial | qoe-risk | cheaper | keep | reweight | oracle | agent | guard
    predicted: dict               # on the planning condition: latency_ms, throughput, power_w, ok
    move_bytes: dict[str, float]  # weights each device must receive for this decision
    switch_s: float               # predicted switch time (transfer + drain), 0 when not switching
    decide_ms: float = 0.0
    mix: Mix | None = None

    @property
    def label(self) -> str:
        if len(self.pids) == 1:
            return f"#{self.pids[0]}"
        return "+".join(f"#{p}:{a:.2f}" for p, a in zip(self.pids, self.fractions))

    def to_dict(self) -> dict:
        return {"t": self.t, "pids": list(self.pids), "fractions": list(self.fractions), "switch": self.switch,
                "reason": self.reason, "predicted": self.predicted, "move_bytes": self.move_bytes,
                "switch_s": self.switch_s, "decide_ms": self.decide_ms,
                "plans": [p.to_dict() for p in self.plans]}


def _plan_key(p: Plan) -> str:
    return json.dumps(p.to_dict(), sort_keys=True)


# ------------------------------------------------------------------ DP cache
_DP_CACHE: dict = {}
BW_BIN = 0.01          # binned DP runs at the bandwidth rounded down to a 1% log-bin (cache key)


def _bin(v: float) -> float:
    step = math.log1p(BW_BIN)
    return math.exp(math.floor(math.log(max(v, 1e-6)) / step + 1e-9) * step)


def _scen_key(s: Scenario) -> str:
    return json.dumps({"w": s.workload.__dict__, "q": s.qoe.__dict__, "c": s.cluster.to_dict(),
                       "p": s.profile.name, "n": s.profile.n_blocks}, sort_keys=True, default=str)


def dp_pareto(scenario: Scenario, bandwidth: dict[str, float], battery: dict[str, float],
              exact: bool = False) -> tuple[list[Plan], float]:
    """Pareto set of the `dora` DP on a condition (bandwidth rounded down to a 1% bin
    unless `exact`, battery to 1%), cached per process. Returns (plans sorted by latency,
    seconds the DP took; 0 on a cache hit)."""
    from dora_rl.planners.dp import pareto

    bw = {m: (v if exact else _bin(v)) for m, v in sorted(bandwidth.items())}
    bt = {d: math.floor(v * 100) / 100 for d, v in sorted(battery.items())}
    key = (_scen_key(scenario), tuple(bw.items()), tuple(bt.items()))
    if key in _DP_CACHE:
        return _DP_CACHE[key], 0.0
    t0 = time.perf_counter()
    try:
        plans = [p for p, _ in pareto(conditions(scenario, bw, bt))]
    except (NoFeasiblePlan, PlannerError):
        plans = []
    dt = time.perf_counter() - t0
    _DP_CACHE[key] = plans
    return plans, dt


# ------------------------------------------------------------------ base adapter
class Adapter:
    """Base: keeps the plan table, weight holdings and the current mix; `decide`."""

    name = ""
    compose = True            # time-share plans with the LP
    free_switch = False       # the oracle's switches cost nothing (it is a bound)
    prestage = False          # ship the whole candidate set's weights before the run

    def __init__(self, scenario: Scenario, *, safety: float = 0.05, robust: bool = True, margin: float = 0.05,
                 headroom: float = 0.1, horizon_s: float = 10.0, drain_s: float = 0.1, min_dwell_s: float = 3.0,
                 candidates: list[Plan] | None = None, initial: Plan | None = None, prestage: bool | None = None,
                 **_ignored):
        self.scenario = scenario
        self.robust = bool(robust)
        self.headroom = float(headroom)
        self.safety, self.margin, self.horizon_s = float(safety), float(margin), float(horizon_s)
        self.drain_s, self.min_dwell_s = float(drain_s), float(min_dwell_s)
        self.source = scenario.workload.source
        self.params = block_params(scenario)
        self.plans: list[Plan] = []
        self._ids: dict[str, int] = {}
        self.current: Mix | None = None
        self.last_switch_t = -math.inf
        self.holdings: dict[str, set[int]] = {}
        self.stats: dict = {"dp_s": []}
        self._given = candidates
        self._initial = initial
        import scipy.optimize  # noqa: F401  (import once here, not inside the first decision)
        self.setup()
        if prestage if prestage is not None else self.prestage:
            self.stage_weights(self.plans)

    def stage_weights(self, plans: list[Plan]) -> dict[str, float]:
        """Record that every device holds the blocks `plans` give it (weights shipped at
        deployment, before the run). Returns the bytes that staging moves per device."""
        move = weights_to_move(plans, self.holdings, self.params, self.source)
        for p in plans:
            for st in p.stages:
                for d in st.devices:
                    self.holdings.setdefault(d, set()).update(range(st.start, st.end))
        return move

    # --- plan table -----------------------------------------------------------------
    def pid(self, plan: Plan) -> int:
        k = _plan_key(plan)
        if k not in self._ids:
            self._ids[k] = len(self.plans)
            self.plans.append(plan)
        return self._ids[k]

    def initial_plan(self) -> Plan:
        if self._initial is not None:
            return self._initial
        from dora_rl.planners.base import get_planner
        return get_planner("dora").plan(self.scenario)

    def nominal_pareto(self, levels=(1.0,)) -> list[Plan]:
        """The DP's Pareto set at nominal bandwidth, and (levels other than 1) at those
        fractions of the dynamic medium's nominal rate; union, in order, no duplicates."""
        if self._given is not None:
            return list(self._given)
        plans: list[Plan] = []
        medium = dynamic_medium(self.scenario)
        for f in levels:
            bw = {} if (f == 1.0 or medium is None) else {medium: self.scenario.cluster.media[medium].mbps * f}
            got, _ = dp_pareto(self.scenario, bw, {})
            plans.extend(got)
        return plans

    # --- hooks ------------------------------------------------------------------------
    def setup(self) -> None:
        """Build the candidate table (subclasses)."""

    def candidates(self, state: State, bandwidth: dict[str, float]) -> list[int]:
        """Plan ids to consider in this state at this planning bandwidth (the current
        ones are always added)."""
        return list(range(len(self.plans)))

    def planning_bandwidth(self, state: State) -> dict[str, float]:
        err = state.error or {}
        return {m: v / (1.0 + (err.get(m, 0.0) if self.robust else 0.0)) * (1.0 - self.safety)
                for m, v in state.bandwidth.items() if v is not None}

    def bind(self, trace, medium: str | None, interval_s: float) -> None:
        """The simulator tells the adapter the trace it replays (only the oracle looks)."""

    # --- the decision -------------------------------------------------------------------
    def decide(self, state: State) -> Decision:
        """The plan (or time-share) to run from `state.t` on. Call once per control
        interval; the adapter remembers what it chose (its `current`)."""
        t0 = time.perf_counter()
        # plan at the discounted bandwidth; when nothing complies there, fall back to the
        # raw estimate before settling for the least-bad plan (the margin is a preference)
        levels = [self.planning_bandwidth(state)]
        raw = {m: v for m, v in state.bandwidth.items() if v is not None}
        if raw != levels[0]:
            levels.append(raw)
        for bw in levels:
            cost = CostModel(conditions(self.scenario, bw, state.battery))
            pids = self.candidates(state, bw)
            if self.current is not None:
                pids = list(dict.fromkeys(list(pids) + list(self.current.pids)))
            scored = [score(cost, p, self.plans[p]) for p in pids]
            by = {s.pid: s for s in scored}
            best = best_mix(scored, cost, compose=self.compose)
            if best.ok:
                break
        self._plan_bw = bw
        new, reason = self._choose(state, cost, best, by)
        switch = self.current is None or set(new.pids) != set(self.current.pids)
        move = weights_to_move(new.plans, self.holdings, self.params, self.source) if switch else {}
        sw_s = 0.0
        if switch and not self.free_switch:
            sw_s = transfer_seconds(cost, move, self.source) + (self.drain_s if self.current is not None else 0.0)
        if switch:
            self.stage_weights(new.plans)
            if self.current is not None:
                self.last_switch_t = state.t
        self.current = new
        dec = Decision(state.t, new.pids, new.fractions, new.plans, switch, reason,
                       {"latency_ms": new.latency_ms, "throughput": new.cap, "power_w": new.power, "ok": new.ok},
                       move, sw_s, mix=new)
        dec.decide_ms = (time.perf_counter() - t0) * 1e3
        return dec

    def _choose(self, state: State, cost: CostModel, best: Mix, by: dict[int, Scored]) -> tuple[Mix, str]:
        if self.current is None:
            return best, "initial"
        cur = rescore(self.current, by, cost)
        if len(cur.parts) > 1:       # keep a time-share compliant by re-solving its fractions
            re = lp_mix([s for s, _ in cur.parts if s.lat_ok], required_rate(cost.scenario), battery_budgets(cost),
                        cost.qoe.latency_slo_ms)
            if re is not None and re.ok:
                cur = re
        if set(best.pids) == set(cur.pids):
            return best, ("keep" if best.fractions == self.current.fractions else "reweight")
        if not cur.ok:
            need, bud, slo = required_rate(cost.scenario), battery_budgets(cost), cost.qoe.latency_slo_ms
            if best.ok or _mix_shortfall(best, need, bud, slo) < _mix_shortfall(cur, need, bud, slo):
                return best, "qoe-risk"
            return cur, "keep"
        if not best.ok:
            return cur, "keep"
        if state.t - self.last_switch_t < self.min_dwell_s:
            return cur, "keep"
        if cost.qoe.objective == "latency":
            better = best.latency_ms < cur.latency_ms * (1 - self.margin)
            gain_w = max(cur.power - best.power, 0.0)
        else:
            better = best.power < cur.power * (1 - self.margin)
            gain_w = cur.power - best.power
        if not better:
            return cur, "keep"
        if self.headroom > 0:   # hysteresis on QoE: a voluntary switch must also hold at less bandwidth
            low = {m: v * (1 - self.headroom) for m, v in self._plan_bw.items()}
            lcost = CostModel(conditions(self.scenario, low, state.battery))
            if not rescore(best, {s.pid: score(lcost, s.pid, s.plan) for s, _ in best.parts}, lcost).ok:
                return cur, "keep"
        if cost.qoe.objective != "latency":
            move = weights_to_move(best.plans, self.holdings, self.params, self.source)
            sw_s = transfer_seconds(cost, move, self.source) + self.drain_s
            switch_j = radio_joules(cost, move, self.source) + gain_w * sw_s
            if gain_w * self.horizon_s <= switch_j:
                return cur, "keep"
        return best, "cheaper"


def _mix_shortfall(m: Mix, need, budgets, slo) -> tuple:
    worst = max((shortfall(s, need, budgets, slo) for s, _ in m.parts), key=lambda x: (x[0], x[1]))
    if len(m.parts) > 1 and need:
        lat_miss = max(0.0, m.latency_ms / slo - 1.0) if slo else 0.0
        worst = (worst[0], max(0.0, need / max(m.cap, 1e-12) - 1.0) + lat_miss, m.power)
    return worst[:2]


# ------------------------------------------------------------------ the adapters
@register_adapter
class StaticAdapter(Adapter):
    """The initial `dora` plan (at nominal bandwidth), forever."""

    name = "static"
    compose = False
    prestage = True

    def setup(self) -> None:
        self.pid(self.initial_plan())

    def decide(self, state: State) -> Decision:
        t0 = time.perf_counter()
        first = self.current is None
        if first:
            cond = conditions(self.scenario, self.planning_bandwidth(state), state.battery)
            cost = CostModel(cond)
            s = score(cost, 0, self.plans[0])
            self.current = make_mix([(s, 1.0)], required_rate(cond), battery_budgets(cost), cond.qoe.latency_slo_ms)
        m = self.current
        dec = Decision(state.t, (0,), (1.0,), [self.plans[0]], first, "initial" if first else "keep",
                       {"latency_ms": m.latency_ms, "throughput": m.cap, "power_w": m.power, "ok": m.ok}, {}, 0.0,
                       mix=m)
        dec.decide_ms = (time.perf_counter() - t0) * 1e3
        return dec


PARETO_LEVELS = (2.0, 1.5, 1.25, 1.0, 0.85, 0.75, 0.5, 0.35, 0.25)


def dynamic_medium(scenario: Scenario) -> str | None:
    """The medium whose bandwidth moves: dynamics.bandwidth.medium, else the first one."""
    bw = (scenario.dynamics or {}).get("bandwidth") or {}
    if bw.get("medium") in scenario.cluster.media:
        return bw["medium"]
    return next(iter(scenario.cluster.media), None)


@register_adapter
class ParetoAdapter(Adapter):
    """Composition over a Pareto set computed once, before the run: the union of the
    DP's Pareto sets at `levels` x the dynamic medium's nominal rate (default
    PARETO_LEVELS, 0.25x to 2x; `levels=(1.0,)` is the nominal set alone). A (latency,
    energy) front at nominal bandwidth alone drops the plans adaptation needs: the
    robust ones (more capacity when bandwidth falls) and the frugal ones that only
    comply when bandwidth is above nominal."""

    name = "pareto"
    prestage = True

    def __init__(self, scenario: Scenario, *, levels=PARETO_LEVELS, **options):
        self.levels = tuple(float(x) for x in levels)
        super().__init__(scenario, **options)

    def setup(self) -> None:
        self.pid(self.initial_plan())
        for p in self.nominal_pareto(self.levels):
            self.pid(p)


@register_adapter
class ReplanAdapter(Adapter):
    """Re-run the `dora` DP on the planning bandwidth every interval (MPC-style)."""

    name = "replan"
    compose = False

    def setup(self) -> None:
        self.pid(self.initial_plan())
        self._last: list[int] = [0]

    def candidates(self, state: State, bandwidth: dict[str, float]) -> list[int]:
        plans, dt = dp_pareto(self.scenario, bandwidth, state.battery)
        if dt:
            self.stats["dp_s"].append(dt)
        if plans:
            self._last = [self.pid(p) for p in plans]
        # the DP's Pareto set (its cheapest compliant plan is the DP's `dora` choice);
        # when the DP finds nothing compliant, the plans it produced last time
        return self._last


@register_adapter
class OracleAdapter(Adapter):
    """Offline bound: true bandwidth of each coming interval, free switching, every
    plan of the nominal Pareto set and of the DP's Pareto set at the true bandwidth
    (`exact_dp=False`: at the true bandwidth rounded down to 1%, for speed), composed
    with the LP."""

    name = "oracle"
    free_switch = True

    def __init__(self, scenario: Scenario, *, exact_dp: bool = False, **options):
        options.update(safety=0.0, margin=0.0, min_dwell_s=0.0, robust=False, headroom=0.0)
        self.exact_dp = exact_dp
        self.trace = None
        self.medium = None
        self.interval_s = 1.0
        super().__init__(scenario, **options)

    def setup(self) -> None:
        self.pid(self.initial_plan())
        for p in self.nominal_pareto(PARETO_LEVELS):
            self.pid(p)

    def bind(self, trace, medium, interval_s) -> None:
        self.trace, self.medium, self.interval_s = trace, medium, float(interval_s)

    def planning_bandwidth(self, state: State) -> dict[str, float]:
        bw = dict(state.bandwidth)
        if self.trace is not None and self.medium is not None:
            bw[self.medium] = true_mbps(self.trace, state.t, self.interval_s)
        return bw

    def candidates(self, state: State, bandwidth: dict[str, float]) -> list[int]:
        plans, _ = dp_pareto(self.scenario, bandwidth, state.battery, exact=self.exact_dp)
        for p in plans:
            self.pid(p)
        return list(range(len(self.plans)))

    def _choose(self, state, cost, best, by):
        return best, ("initial" if self.current is None else "oracle")


def true_mbps(trace, t: float, interval_s: float, samples: int = 16) -> float:
    """Time-average of the trace over [t, t + interval) (the trace is a step function:
    sampled at `samples` evenly spaced points)."""
    import numpy as np
    pts = t + (np.arange(samples) + 0.5) * (interval_s / samples)
    return float(np.mean(trace.at(pts)))


# ------------------------------------------------------------------ learned adapter
class AgentPolicy(Protocol):
    """What a learned adapter must provide. `choose` sees the state, the candidate plans
    scored on the planning condition (sorted by plan id) and the current mix, and returns
    the index of the candidate to run, or None to keep the current plan/mix."""

    def choose(self, state: State, options: list[Scored], current: Mix | None, scenario: Scenario) -> int | None: ...


AGENT_LOADERS: list[Callable[[Scenario, str | Path | None], AgentPolicy]] = []


def register_agent_loader(fn: Callable[[Scenario, str | Path | None], AgentPolicy]) -> Callable:
    """Add a loader: fn(scenario, agent_path_or_None) -> AgentPolicy, raising AgentError
    when it cannot provide one. Loaders are tried newest first, then the built-in one."""
    AGENT_LOADERS.insert(0, fn)
    return fn


def _agents_dir() -> Path:
    try:
        from dora_rl.policies.agents import AGENTS_DIR
        return Path(AGENTS_DIR)
    except ImportError:
        return Path(__file__).resolve().parents[3] / "trained_agents"


def _builtin_loader(scenario: Scenario, agent: str | Path | None) -> AgentPolicy:
    """The AdaptEnv agent shipped in trained_agents/: dora_rl__Adapt-<scenario>-v0, then
    dora_rl__Adapt-v0. The env module must expose `adapter_policy(scenario, path)`."""
    root = _agents_dir()
    if agent is not None:
        folders = [Path(agent)] if Path(agent).exists() else [root / str(agent)]
    else:
        folders = [root / f"dora_rl__Adapt-{scenario.name}-v0", root / "dora_rl__Adapt-v0"]
    found = [f for f in folders if (f / "model.zip").is_file() or (f.suffix == ".zip" and f.is_file())]
    if not found:
        raise AgentError(f"no AdaptEnv agent for scenario {scenario.name!r} (looked in "
                         f"{', '.join(str(f) for f in folders)}); train one with `dora train dora_rl/Adapt-v0`, "
                         "or use --adapter pareto")
    try:
        from dora_rl.envs import adapt as adapt_mod
    except ImportError as e:
        raise AgentError(f"agent {found[0]} found but the AdaptEnv module cannot be imported ({e})") from None
    fn = getattr(adapt_mod, "adapter_policy", None)
    if fn is None:
        raise AgentError(f"agent {found[0]} found but dora_rl.envs.adapt exposes no adapter_policy(scenario, path); "
                         "register a loader with dora_rl.runtime.adapter.register_agent_loader")
    return fn(scenario, found[0])


def load_agent_policy(scenario: Scenario, agent: str | Path | None = None) -> AgentPolicy:
    """The first loader that yields a policy for `scenario`, else AgentError (all reasons)."""
    errors = []
    for fn in AGENT_LOADERS + [_builtin_loader]:
        try:
            return fn(scenario, agent)
        except AgentError as e:
            errors.append(str(e))
    raise AgentError("; ".join(dict.fromkeys(errors)))


@register_adapter
class PPOAdapter(Adapter):
    """The learned adapter: the agent picks among the nominal Pareto set (each interval,
    scored on the planning condition); the QoE guard still applies: an agent choice that
    is not compliant while a compliant option exists is overridden (reason 'guard')."""

    name = "ppo"
    compose = False
    prestage = True

    def __init__(self, scenario: Scenario, *, agent: str | Path | None = None, policy: AgentPolicy | None = None,
                 guard: bool = True, **options):
        self.policy = policy if policy is not None else load_agent_policy(scenario, agent)
        self.guard = guard
        self.levels = tuple(float(x) for x in options.pop("levels", PARETO_LEVELS))
        super().__init__(scenario, **options)

    def setup(self) -> None:
        self.pid(self.initial_plan())
        for p in self.nominal_pareto(self.levels):
            self.pid(p)

    def _choose(self, state, cost, best, by):
        options = [by[p] for p in sorted(by)]
        try:
            k = self.policy.choose(state, options, self.current, self.scenario)
        except DoraError:
            raise
        except Exception as e:  # an agent that does not fit this scenario
            raise AgentError(f"adapter agent failed on scenario {self.scenario.name!r}: {e}") from None
        need, bud, slo = required_rate(cost.scenario), battery_budgets(cost), cost.qoe.latency_slo_ms
        if k is None:
            if self.current is None:
                return best, "initial"
            return rescore(self.current, by, cost), "keep"
        if not (isinstance(k, int) and 0 <= k < len(options)):
            raise AgentError(f"adapter agent chose option {k!r} but scenario {self.scenario.name!r} offers "
                             f"{len(options)} candidate plans; the agent was trained for another candidate set")
        pick = make_mix([(options[k], 1.0)], need, bud, slo)
        if self.guard and not pick.ok and best.ok:
            return best, "guard"
        if self.current is None:
            return pick, "initial"
        if set(self.current.pids) == set(pick.pids):
            return pick, "keep"
        return pick, ("qoe-risk" if not rescore(self.current, by, cost).ok else "agent")
