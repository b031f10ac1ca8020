"""The adapter base class (plan table, weight holdings, scoring over the planning band, the switching rule) and
the adapter registry.

Every adapter is reachable by name (`get_adapter(name, scenario, **options)`); the
adapters themselves are in rules.py (`static`, `replan`, `pareto`, `oracle`) and
learned.py (`ppo`).

The switching rule (all but `static` and `oracle`): plans are scored over the *planning
band* (compose.band_score): low end = estimate / (1 + overshoot) x (1 - safety), the
overshoot being the largest seen over the last `memory_s`; energy ranked at the raw
estimate; battery budgets checked up to the raw estimate x (1 + overshoot), at least
nominal. When nothing complies over the band, the most robust compliant option (the
highest low end between the discounted and the raw estimate at which something
complies; `fallback="robust"`). Switch when the current
plan (or mix) is not compliant there (QoE at risk), or when a compliant plan/mix is
cheaper by more than `margin` (relative power: hysteresis), is still compliant with
`headroom` less bandwidth (hysteresis on QoE), at least `min_dwell_s` passed since the
last switch, AND the power saved over `horizon_s` exceeds what the switch costs
(weights that must move / bandwidth + `drain_s`, during which nothing is saved, plus
the radio energy of moving them). A change of fractions inside the same set of plans
is a re-weighting, not a switch.

Time constants (`drain_s`, `min_dwell_s`, `horizon_s`, `memory_s`) are seconds of device
time. On a time-dilated scenario (`Scenario.dilated(X)`: the live loop, and its simulated
twin) the adapter's clock (`State.t`) runs in dilated seconds, so `__init__` multiplies
them by the scenario's `dilation`, once: a drain at dilation 100 lasts 100x longer in run
time, exactly as the requests it waits for do."""

from __future__ import annotations

import dataclasses
import importlib
import math
import time

from dora_rl.adapter.candidates import pareto_over_levels, relaxed_for_composition
from dora_rl.adapter.compose import (
    Mix,
    battery_budgets,
    block_params,
    lp_slack,
    radio_joules,
    rescore,
    shortfall,
    transfer_seconds,
    weights_to_move,
)
from dora_rl.adapter.scoring import Band, Evaluation, ScoreCache
from dora_rl.adapter.state import Decision, State
from dora_rl.cost import CostModel
from dora_rl.cost.qoe import required_rate
from dora_rl.errors import NoFeasiblePlan, PlannerError
from dora_rl.plan import Plan
from dora_rl.scenario import Scenario

ADAPTERS: dict[str, type[Adapter]] = {}


def register_adapter(cls):
    ADAPTERS[cls.name] = cls
    return cls


def adapter_names() -> list[str]:
    return list(ADAPTERS)


def get_adapter(name: str, scenario: Scenario, **options) -> Adapter:
    """An adapter by name (static, replan, pareto, ppo, oracle) for `scenario`."""
    if name not in ADAPTERS:
        raise PlannerError(f"unknown adapter {name!r}; available: {', '.join(ADAPTERS)}")
    return ADAPTERS[name](scenario, **options)


class Adapter:
    """Base: keeps the plan table, weight holdings and the current mix; `decide`."""

    name = ""
    compose = True            # time-share plans with the LP
    free_switch = False       # the oracle's switches cost nothing (it is a bound)
    prestage = False          # ship the whole candidate set's weights before the run
    band = True               # score over a bandwidth band (lo, mid, hi), not one point
    slack = 0.03              # time-shares keep 3% capacity in hand (a single plan's usual margin)

    def __init__(self, scenario: Scenario, *, safety: float = 0.05, robust: bool = True, margin: float = 0.05,
                 headroom: float = 0.1, horizon_s: float = 10.0, drain_s: float = 0.1, min_dwell_s: float = 3.0,
                 candidates: list[Plan] | None = None, initial: Plan | None = None, prestage: bool | None = None,
                 fallback: str = "robust", cache: bool = True, memory_s: float = 10.0, prior_error: float = 0.25,
                 compose: bool | None = None, slack: float | None = None, **unknown):
        if unknown:
            raise PlannerError(f"adapter {self.name!r}: unknown option(s) {', '.join(sorted(unknown))}; "
                               "see docs/adapter.md for each adapter's options")
        if fallback not in ("robust", "raw"):
            raise PlannerError(f"adapter fallback must be 'robust' or 'raw', got {fallback!r}")
        if compose is not None:
            self.compose = bool(compose)    # e.g. the live loop, which runs one plan at a time
        if slack is not None:
            self.slack = float(slack)
        self.scenario = scenario
        self.fallback = fallback
        # the time constants are seconds of device time; the adapter runs on the scenario's
        # clock (a dilated scenario's run seconds, `Scenario.dilated`): converted here, once
        self.dilation = float(getattr(scenario, "dilation", 1.0))
        self.memory_s, self.prior_error = self.dilation * float(memory_s), float(prior_error)
        self._hist: list[tuple[float, dict, dict]] = []   # (t, overshoot, estimate) per decision
        self.robust = bool(robust)
        self.headroom = float(headroom)
        self.safety, self.margin, self.horizon_s = float(safety), float(margin), self.dilation * float(horizon_s)
        self.drain_s, self.min_dwell_s = self.dilation * float(drain_s), self.dilation * float(min_dwell_s)
        self.source = scenario.workload.source
        self.params = block_params(scenario)
        self.plans: list[Plan] = []
        self.scores = ScoreCache(scenario, self.plans, compose=self.compose, slack=self.slack, enabled=bool(cache))
        self._ids: dict[str, int] = {}
        self.current: Mix | None = None
        self.last_switch_t = -math.inf
        self.holdings: dict[str, set[int]] = {}
        self.stats: dict = {"dp_s": []}
        self._given = candidates
        self._initial = initial
        importlib.import_module("scipy.optimize")    # import once here, not inside the first decision
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
        k = plan.key()
        if k not in self._ids:
            self._ids[k] = len(self.plans)
            self.plans.append(plan)
        return self._ids[k]

    def initial_plan(self) -> Plan:
        """The `dora` plan; when no plan meets every QoE target (e.g. the survivors of
        a fault), the DP's plan with the average-able targets relaxed, then with none:
        the deployment goes on with the least-bad plan and the adapter takes over."""
        if self._initial is not None:
            return self._initial
        from dora_rl.planners.base import get_planner
        dora = get_planner("dora")
        relaxed = relaxed_for_composition(self.scenario)
        no_slo = relaxed.replace(qoe=dataclasses.replace(relaxed.qoe, latency_slo_ms=None))
        for scen in (self.scenario, relaxed, no_slo):
            try:
                return dora.plan(scen)
            except NoFeasiblePlan as e:
                last = e
        raise last

    def nominal_pareto(self, levels=(1.0,)) -> list[Plan]:
        """The DP's Pareto set at nominal bandwidth, and (levels other than 1) at those
        fractions of the dynamic medium's nominal rate; union, in order (`pid` merges duplicates)."""
        if self._given is not None:
            return list(self._given)
        return pareto_over_levels(self.scenario, levels)

    def at_cost(self, mix: Mix, cost: CostModel) -> float:
        """What the objective ranks a plan/mix by: latency, or power for energy."""
        return mix.latency_ms if cost.qoe.objective == "latency" else mix.power

    # --- hooks ------------------------------------------------------------------------
    def setup(self) -> None:
        """Build the candidate table (subclasses)."""

    def candidates(self, state: State, bandwidth: dict[str, float]) -> list[int]:
        """Plan ids to consider in this state at this planning bandwidth (the current
        ones are always added)."""
        return list(range(len(self.plans)))

    def discount(self, state: State) -> dict[str, float]:
        """Per medium, the overshoot to plan against: the largest `state.error` seen over
        the last `memory_s` seconds (the monitor's own window is a few intervals; a bursty
        link's deep drops come back after longer than that), and `prior_error` before the
        first decision (nothing measured yet: the estimate is the nominal prior). The
        history holds one entry per decision time: asked again at the same `state.t`, it
        answers from the history as it stands."""
        if not self.robust:
            return {}
        if not (self._hist and self._hist[-1][0] == state.t):
            err = dict(state.error or {})
            if self.current is None and not self._hist:
                err = {m: max(err.get(m, 0.0), self.prior_error) for m in state.bandwidth}
            self._hist = [(t, e, b) for t, e, b in self._hist if state.t - t < self.memory_s and t <= state.t]
            self._hist.append((state.t, err, dict(state.bandwidth)))
        out: dict[str, float] = {}
        for _, e, _ in self._hist:
            for m, v in e.items():
                out[m] = max(out.get(m, 0.0), v)
        return out

    def recent_low(self) -> dict[str, float]:
        """Per medium, the lowest bandwidth estimate of the last `memory_s` seconds."""
        out: dict[str, float] = {}
        for _, _, bw in self._hist:
            for m, v in bw.items():
                if v is not None:
                    out[m] = min(out.get(m, math.inf), v)
        return out

    def planning_bandwidth(self, state: State, err: dict[str, float]) -> dict[str, float]:
        """The band's low end: the estimate discounted by `err` (per medium, see
        `discount`) and by `safety`."""
        return {m: v / (1.0 + err.get(m, 0.0)) * (1.0 - self.safety)
                for m, v in state.bandwidth.items() if v is not None}

    def bind(self, trace, medium: str | None, interval_s: float) -> None:
        """The simulator tells the adapter the trace it replays (only the oracle looks)."""

    def planning_band(self, state: State) -> Band:
        """(lo, mid, hi) Mbps per medium: lo the discounted estimate (planning_bandwidth),
        mid the raw estimate (energy is ranked there), hi the raw estimate x (1 + recent
        overshoot) and at least the nominal rate (battery budgets must hold up there)."""
        err = self.discount(state)
        lo = self.planning_bandwidth(state, err)
        if not self.band:
            return lo, lo, lo
        mid = {m: v for m, v in state.bandwidth.items() if v is not None and m in lo}
        nominal = {m: med.mbps for m, med in self.scenario.cluster.media.items()}
        hi = {m: max(v * (1.0 + (err.get(m, 0.0) if self.robust else 0.0)), nominal.get(m, v)) for m, v in mid.items()}
        mid = {m: max(v, lo[m]) for m, v in mid.items()}
        return lo, mid, hi

    # --- the decision -------------------------------------------------------------------
    def decide(self, state: State) -> Decision:
        """The plan (or time-share) to run from `state.t` on. Call once per control
        interval; the adapter remembers what it chose (its `current`)."""
        t0 = time.perf_counter()
        ev = self.evaluate_state(state)
        new, reason = self._choose(state, ev)
        switch = self.current is None or set(new.pids) != set(self.current.pids)
        move = weights_to_move(new.plans, self.holdings, self.params, self.source) if switch else {}
        sw_s = 0.0
        if switch and not self.free_switch:
            sw_s = transfer_seconds(ev.cost, move, self.source) + (self.drain_s if self.current is not None else 0.0)
        if switch:
            self.stage_weights(new.plans)
            self.last_switch_t = state.t      # deployment too: no voluntary switch on 1-2 samples
        self.current = new
        dec = Decision(state.t, new.pids, new.fractions, new.plans, switch, reason,
                       {"latency_ms": new.latency_ms, "throughput": new.cap, "power_w": new.power, "ok": new.ok},
                       move, sw_s, mix=new)
        dec.decide_ms = (time.perf_counter() - t0) * 1e3
        return dec

    def evaluate_state(self, state: State) -> Evaluation:
        """The candidates (and what runs) scored over the planning band; when nothing
        complies there, over the fallback band (below)."""
        band = self.planning_band(state)
        lo, mid, hi = band
        raw = {m: v for m, v in state.bandwidth.items() if v is not None}
        pids = self.candidates(state, lo)
        if self.current is not None:
            pids = list(dict.fromkeys(list(pids) + list(self.current.pids)))
        ev = self.scores.band(band, state.battery, pids)
        if not ev.best.ok and raw != lo:
            # nothing complies over the whole band: the discount is a preference, not a
            # requirement. `robust`: bisect (log scale) for the HIGHEST low end between the
            # discounted and the raw estimate at which some plan/mix still complies, i.e.
            # the most robust compliant option; `raw`: the cheapest option at the raw
            # estimate alone (tuned to exactly that rate: the first drop breaks it).
            top = (mid, mid, hi) if self.band else (raw, raw, raw)
            found = self.scores.band(top, state.battery, pids)
            if not found.best.ok and self.band:
                found = self.scores.band((mid, mid, mid), state.battery, pids)
            if found.best.ok and self.fallback == "robust":
                top = found.band
                w_lo, w_hi = 0.0, 1.0    # log-interpolation weight from lo towards top's low end
                for _ in range(5):
                    w = (w_lo + w_hi) / 2
                    mbw = {m: v * (top[0][m] / v) ** w if v > 0 else top[0][m] for m, v in lo.items()}
                    b = self.scores.band((mbw, top[1], top[2]), state.battery, pids)
                    if b.best.ok:
                        w_hi, found = w, b
                    else:
                        w_lo = w
            ev = found
        return ev

    def _choose(self, state: State, ev: Evaluation) -> tuple[Mix, str]:
        """The switching rule: (plan/mix to run, reason) given the options `ev`."""
        cost, best, by = ev.cost, ev.best, ev.by
        if self.current is None:
            return best, "initial"
        cur = rescore(self.current, by, cost)
        if len(cur.parts) > 1:       # keep a time-share compliant by re-solving its fractions
            re = lp_slack([s for s, _ in cur.parts if s.lat_ok], required_rate(cost), battery_budgets(cost),
                        cost.qoe.latency_slo_ms)
            if re is not None and re.ok:
                cur = re
        if set(best.pids) == set(cur.pids):
            return best, ("keep" if best.fractions == self.current.fractions else "reweight")
        if not cur.ok:
            need, bud, slo = required_rate(cost), battery_budgets(cost), cost.qoe.latency_slo_ms
            if best.ok or _mix_shortfall(best, need, bud, slo) < _mix_shortfall(cur, need, bud, slo):
                return best, "qoe-risk"
            return cur, "keep"
        if not best.ok:
            return cur, "keep"
        if state.t - self.last_switch_t < self.min_dwell_s:
            return cur, "keep"
        better = self.at_cost(best, cost) < self.at_cost(cur, cost) * (1 - self.margin)
        gain_w = cur.power - best.power if cost.qoe.objective != "latency" else max(cur.power - best.power, 0.0)
        if not better:
            return cur, "keep"
        if not self.holds_with_headroom(state, best, ev):
            return cur, "keep"
        if cost.qoe.objective != "latency":
            move = weights_to_move(best.plans, self.holdings, self.params, self.source)
            sw_s = transfer_seconds(cost, move, self.source) + self.drain_s
            switch_j = radio_joules(cost, move, self.source) + gain_w * sw_s
            if gain_w * self.horizon_s <= switch_j:
                return cur, "keep"
        return best, "cheaper"

    def holds_with_headroom(self, state: State, mix: Mix, ev: Evaluation) -> bool:
        """Hysteresis on QoE: a voluntary switch must also hold with `headroom` less
        bandwidth at the band's low end, and (`robust`) at the lowest bandwidth estimated
        over the last `memory_s` seconds: a bursty link's next dip is likely as deep as
        its last one, and a switch to a less robust plan that the dip breaks costs a
        violation plus a switch back."""
        if self.headroom <= 0:
            return True
        lo, mid, hi = ev.band
        low = {m: v * (1 - self.headroom) for m, v in lo.items()}
        if self.robust:
            seen = self.recent_low()
            low = {m: min(v, seen.get(m, v)) for m, v in low.items()}
        lev = self.scores.band((low, mid, hi) if self.band else (low, low, low), state.battery, sorted(ev.by))
        return rescore(mix, lev.by, lev.cost).ok


def _mix_shortfall(m: Mix, need, budgets, slo) -> tuple:
    worst = max((shortfall(s, need, budgets, slo) for s, _ in m.parts), key=lambda x: (x[0], x[1]))
    if len(m.parts) > 1 and need:
        lat_miss = max(0.0, m.latency_ms / slo - 1.0) if slo else 0.0
        worst = (worst[0], max(0.0, need / max(m.cap, 1e-12) - 1.0) + lat_miss, m.power)
    return worst[:2]

