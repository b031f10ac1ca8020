"""The rule-based adapters: `static`, `replan`, `pareto` and the offline `oracle` bound.

- `static`  the initial `dora` plan, forever;
- `replan`  re-runs the `dora` DP on the measured bandwidth every interval (MPC-style
            baseline; no composition; weights move on demand);
- `pareto`  the Pareto sets computed once at 0.25x..2x nominal bandwidth plus the
            composition ingredients (weights pre-staged at deployment), re-scored every
            interval over the planning band, composed with the LP of compose.py;
- `oracle`  offline: knows the whole trace (`bind`), scores every interval on the TRUE
            bandwidth with no estimation lag, over the nominal Pareto set plus the DP's
            Pareto set at the true bandwidth, composed, switching for free; a bound.

All but `static` and `oracle` decide with the base class's switching rule (base.py)."""

from __future__ import annotations

import time

import numpy as np

from dora_rl.adapter.base import Adapter, register_adapter
from dora_rl.adapter.candidates import PARETO_LEVELS, dp_pareto, ingredient_plans
from dora_rl.adapter.compose import Mix, battery_budgets, conditions, make_mix, score
from dora_rl.adapter.scoring import Evaluation
from dora_rl.adapter.state import Decision, State
from dora_rl.cost import CostModel
from dora_rl.cost.qoe import required_rate
from dora_rl.scenario import Scenario


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
            cond = conditions(self.scenario, self.planning_bandwidth(state, self.discount(state)), state.battery)
            cost = CostModel(cond)
            s = score(cost, 0, self.plans[0])
            self.current = make_mix([(s, 1.0)], required_rate(cond), battery_budgets(cost), cond.qoe.latency_slo_ms)
        m = self.current
        dec = Decision(state.t, (0,), (1.0,), [self.plans[0]], first, "initial" if first else "keep",
                       {"latency_ms": m.latency_ms, "throughput": m.cap, "power_w": m.power, "ok": m.ok}, {}, 0.0,
                       mix=m)
        dec.decide_ms = (time.perf_counter() - t0) * 1e3
        return dec


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

    def __init__(self, scenario: Scenario, *, levels=PARETO_LEVELS, ingredients: bool = True, prewarm: bool = True,
                 **options):
        self.levels = tuple(float(x) for x in levels)
        self.ingredients = bool(ingredients)
        self.prewarm_cache = bool(prewarm)
        super().__init__(scenario, **options)

    def setup(self) -> None:
        self.pid(self.initial_plan())
        for p in self.nominal_pareto(self.levels):
            self.pid(p)
        if self.ingredients and self.compose and self._given is None:
            for p in ingredient_plans(self.scenario):
                self.pid(p)
        self.add_candidates()
        if self.prewarm_cache:
            self.scores.prewarm()

    def add_candidates(self) -> None:
        """More candidates before the cache is warmed (subclasses)."""


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
    band = False              # it knows the interval's true rate

    def __init__(self, scenario: Scenario, *, exact_dp: bool = False, **options):
        options.update(safety=0.0, margin=0.0, min_dwell_s=0.0, robust=False, headroom=0.0, cache=False,
                       slack=0.0)
        self.exact_dp = exact_dp
        self.trace = None
        self.medium = None
        self.interval_s = 1.0
        super().__init__(scenario, **options)

    def setup(self) -> None:
        self.pid(self.initial_plan())
        for p in self.nominal_pareto(PARETO_LEVELS):
            self.pid(p)
        if self._given is None:     # every candidate `pareto` may have: it is a bound
            for p in ingredient_plans(self.scenario):
                self.pid(p)

    def bind(self, trace, medium, interval_s) -> None:
        self.trace, self.medium, self.interval_s = trace, medium, float(interval_s)

    def planning_bandwidth(self, state: State, err: dict[str, float]) -> dict[str, float]:
        """The TRUE time-averaged bandwidth of the coming interval (no discount: `err` is unused)."""
        bw = dict(state.bandwidth)
        if self.trace is not None and self.medium is not None:
            bw[self.medium] = true_mbps(self.trace, state.t, self.interval_s)
        return bw

    def candidates(self, state: State, bandwidth: dict[str, float]) -> list[int]:
        plans, _ = dp_pareto(self.scenario, bandwidth, state.battery, exact=self.exact_dp)
        for p in plans:
            self.pid(p)
        return list(range(len(self.plans)))

    def _choose(self, state: State, ev: Evaluation) -> tuple[Mix, str]:
        return ev.best, ("initial" if self.current is None else "oracle")


def true_mbps(trace, t: float, interval_s: float, samples: int = 16) -> float:
    """Time-average of the trace over [t, t + interval) (the trace is a step function:
    sampled at `samples` evenly spaced points)."""
    pts = t + (np.arange(samples) + 0.5) * (interval_s / samples)
    return float(np.mean(trace.at(pts)))
