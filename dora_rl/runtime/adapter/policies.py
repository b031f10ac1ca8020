"""Adapters: each control interval, state (estimated bandwidth, battery) -> Decision.

Every adapter is reachable by name (`get_adapter(name, scenario, **options)`):

- `static`  the initial `dora` plan, forever;
- `replan`  re-runs the `dora` DP on the measured bandwidth every interval (MPC-style
            baseline; no composition; weights move on demand);
- `pareto`  the Pareto sets computed once at 0.25x..2x nominal bandwidth plus the
            composition ingredients (weights pre-staged at deployment), re-scored every
            interval over the planning band, composed with the LP of compose.py;
- `ppo`     the learned adapter (an AdaptEnv agent from trained_agents/), pluggable
            through `register_agent_loader`; raises AgentError when none is available;
- `oracle`  offline: knows the whole trace (`bind`), scores every interval on the TRUE
            bandwidth with no estimation lag, over the nominal Pareto set plus the DP's
            Pareto set at the true bandwidth, composed, switching for free; a bound.

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
is a re-weighting, not a switch."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from dora_rl.cost import CostModel
from dora_rl.cost.qoe import required_rate
from dora_rl.errors import AgentError, DoraError, NoFeasiblePlan, PlannerError
from dora_rl.plan import Plan
from dora_rl.scenario import Scenario
from dora_rl.runtime.adapter.compose import (Mix, Scored, battery_budgets, best_mix, block_params, conditions,
                                             band_score, lp_slack, make_mix, radio_joules, rescore, score,
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


# ------------------------------------------------------------------ DP cache
_DP_CACHE: dict = {}
BW_BIN = 0.01          # binned DP runs at the bandwidth rounded down to a 1% log-bin (cache key)


SCORE_BIN = 0.02       # adapters score on the bandwidth rounded down to a 2% log-bin (cache key)


def _bin(v: float, width: float = BW_BIN) -> float:
    step = math.log1p(width)
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


def relaxed_for_composition(scenario: Scenario) -> Scenario:
    """The scenario with the QoE targets a time-share can meet on AVERAGE relaxed
    (min_throughput, request_rate, min_battery_hours); the latency SLO and memory stay
    (every plan in a time-share must meet them on its own)."""
    import dataclasses
    q = dataclasses.replace(scenario.qoe, min_throughput=None, min_battery_hours=None)
    wl = scenario.workload if scenario.workload.training else dataclasses.replace(scenario.workload, request_rate=None)
    return scenario.replace(qoe=q, workload=wl)


INGREDIENT_LEVELS = (2.0, 1.0, 0.75, 0.5, 0.35, 0.25)


def ingredient_plans(scenario: Scenario, levels=INGREDIENT_LEVELS) -> list[Plan]:
    """Composition ingredients: the DP's Pareto sets of `relaxed_for_composition` at
    `levels` x the dynamic medium's nominal rate. Such a plan may miss the throughput or
    a battery budget on its own (a Jetson alone a little under the frame rate, the
    laptop alone over its battery budget) yet, time-shared by the LP, meet both on
    average, at lower power and at lower bandwidth than any single compliant plan."""
    if scenario.workload.training:
        return []
    return pareto_over_levels(relaxed_for_composition(scenario), levels)


def level_bandwidths(scenario: Scenario, levels) -> list[dict[str, float]]:
    """Per level, the bandwidth override that puts the dynamic medium at that fraction
    of its nominal rate ({} at 1.0: the scenario as it is)."""
    medium = scenario.dynamic_medium()
    return [{} if (f == 1.0 or medium is None) else {medium: scenario.cluster.media[medium].mbps * f}
            for f in levels]


def pareto_over_levels(scenario: Scenario, levels) -> list[Plan]:
    """The union, in order, of the DP's Pareto sets with the dynamic medium at `levels`
    x its nominal rate (duplicates are merged by the adapter's plan table)."""
    return [p for bw in level_bandwidths(scenario, levels) for p in dp_pareto(scenario, bw, {})[0]]


# ------------------------------------------------------------------ base adapter
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
                 compose: bool | None = None, slack: float | None = None, **_ignored):
        if fallback not in ("robust", "raw"):
            raise PlannerError(f"adapter fallback must be 'robust' or 'raw', got {fallback!r}")
        if compose is not None:
            self.compose = bool(compose)    # e.g. the live loop, which runs one plan at a time
        if slack is not None:
            self.slack = float(slack)
        self.scenario = scenario
        self.fallback = fallback
        self.memory_s, self.prior_error = float(memory_s), float(prior_error)
        self._hist: list[tuple[float, dict, dict]] = []   # (t, overshoot, estimate) per decision
        self.cache_scores = bool(cache)
        self._score_cache: dict = {}
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
        import dataclasses

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
        first decision (nothing measured yet: the estimate is the nominal prior)."""
        if not self.robust:
            return {}
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

    def planning_bandwidth(self, state: State) -> dict[str, float]:
        err = self._disc if getattr(self, "_disc_t", None) == state.t else self.discount(state)
        self._disc, self._disc_t = err, state.t
        return {m: v / (1.0 + err.get(m, 0.0)) * (1.0 - self.safety)
                for m, v in state.bandwidth.items() if v is not None}

    def bind(self, trace, medium: str | None, interval_s: float) -> None:
        """The simulator tells the adapter the trace it replays (only the oracle looks)."""

    # --- scoring (cached per bandwidth bin) ------------------------------------------
    def _key(self, bandwidth, battery):
        if self.cache_scores:
            bandwidth = {m: _bin(v, SCORE_BIN) for m, v in bandwidth.items()}
            battery = {d: math.floor(v * 100) / 100 for d, v in battery.items()}
        return bandwidth, battery, (tuple(sorted(bandwidth.items())), tuple(sorted(battery.items())))

    def score_at(self, bandwidth: dict[str, float], battery: dict[str, float], pids: list[int]):
        """(cost model, {pid: Scored}) of `pids` on one condition. With the cache on, the
        bandwidth is rounded DOWN to a 2% log-bin and battery levels down to 1% (both
        conservative) and the result is kept: bandwidth revisits the same levels all the
        time, so scoring is mostly a dictionary lookup."""
        bandwidth, battery, k = self._key(bandwidth, battery)
        key = ("pt", k, tuple(pids))
        hit = self._score_cache.get(key) if self.cache_scores else None
        if hit is not None:
            return hit
        cost = CostModel(conditions(self.scenario, bandwidth, battery))
        out = (cost, {p: score(cost, p, self.plans[p]) for p in pids})
        self._remember(key, out)
        return out

    def prewarm(self, lo_frac: float = 0.2, hi_frac: float = 3.0) -> int:
        """Score every candidate on every bandwidth bin of the dynamic medium between
        lo_frac and hi_frac x nominal, at the initial battery levels, before the run (the
        candidate set is fixed: `pareto`, `ppo`), so that decisions seldom build a cost
        model online. Returns the number of conditions scored."""
        medium = self.scenario.dynamic_medium()
        if not self.cache_scores or medium is None:
            return 0
        nom = self.scenario.cluster.media[medium].mbps
        step = math.log1p(SCORE_BIN)
        lvl = {d.name: d.battery_level for d in self.scenario.cluster.devices if d.on_battery}
        others = {m: med.mbps for m, med in self.scenario.cluster.media.items() if m != medium}
        pids = list(range(len(self.plans)))
        k0, k1 = math.floor(math.log(nom * lo_frac) / step), math.ceil(math.log(nom * hi_frac) / step)
        for k in range(k0, k1 + 1):
            self.score_at({**others, medium: math.exp(k * step)}, lvl, pids)
        self.score_at({**others, medium: nom}, lvl, pids)
        return k1 - k0 + 2

    def _remember(self, key, out) -> None:
        if self.cache_scores:
            if len(self._score_cache) > 50000:
                self._score_cache.clear()
            self._score_cache[key] = out

    def evaluate(self, band: tuple[dict, dict, dict], battery: dict[str, float], pids: list[int]):
        """(cost model, {pid: band-scored plan}, best Mix) over the bandwidth band
        (lo, mid, hi): see compose.band_score. lo == mid == hi is a point."""
        lo, mid, hi = band
        keys = tuple(self._key(b, battery)[2] for b in band)
        key = ("band", keys, tuple(pids))
        hit = self._score_cache.get(key) if self.cache_scores else None
        if hit is not None:
            return hit
        cost, by_lo = self.score_at(lo, battery, pids)
        if keys[0] == keys[1] == keys[2]:
            by = by_lo
        else:
            by_mid = self.score_at(mid, battery, pids)[1]
            by_hi = self.score_at(hi, battery, pids)[1]
            by = {p: band_score(by_lo[p], by_mid[p], by_hi[p]) for p in pids}
        out = (cost, by, best_mix([by[p] for p in pids], cost, compose=self.compose, slack=self.slack))
        self._remember(key, out)
        return out

    def planning_band(self, state: State) -> tuple[dict, dict, dict]:
        """(lo, mid, hi) Mbps per medium: lo the discounted estimate (planning_bandwidth),
        mid the raw estimate (energy is ranked there), hi the raw estimate x (1 + recent
        overshoot) and at least the nominal rate (battery budgets must hold up there)."""
        lo = self.planning_bandwidth(state)
        if not self.band:
            return lo, lo, lo
        err = self._disc
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
        band = self.planning_band(state)
        lo, mid, hi = band
        raw = {m: v for m, v in state.bandwidth.items() if v is not None}
        pids = self.candidates(state, lo)
        if self.current is not None:
            pids = list(dict.fromkeys(list(pids) + list(self.current.pids)))
        cost, by, best = self.evaluate(band, state.battery, pids)
        if not best.ok and raw != lo:
            # nothing complies over the whole band: the discount is a preference, not a
            # requirement. `robust`: bisect (log scale) for the HIGHEST low end between the
            # discounted and the raw estimate at which some plan/mix still complies, i.e.
            # the most robust compliant option; `raw`: the cheapest option at the raw
            # estimate alone (tuned to exactly that rate: the first drop breaks it).
            top = (mid, mid, hi) if self.band else (raw, raw, raw)
            ev_top = self.evaluate(top, state.battery, pids)
            if not ev_top[2].ok and self.band:
                top = (mid, mid, mid)
                ev_top = self.evaluate(top, state.battery, pids)
            found = (top, *ev_top)
            if ev_top[2].ok and self.fallback == "robust":
                w_lo, w_hi = 0.0, 1.0    # log-interpolation weight from lo towards top's low end
                for _ in range(5):
                    w = (w_lo + w_hi) / 2
                    mbw = {m: v * (top[0][m] / v) ** w if v > 0 else top[0][m] for m, v in lo.items()}
                    b = (mbw, top[1], top[2])
                    ev = self.evaluate(b, state.battery, pids)
                    if ev[2].ok:
                        w_hi, found = w, (b, *ev)
                    else:
                        w_lo = w
            band, cost, by, best = found
        bw = band[0]
        self._band = band
        self._plan_bw = bw
        new, reason = self._choose(state, cost, best, by)
        switch = self.current is None or set(new.pids) != set(self.current.pids)
        move = weights_to_move(new.plans, self.holdings, self.params, self.source) if switch else {}
        sw_s = 0.0
        if switch and not self.free_switch:
            sw_s = transfer_seconds(cost, move, self.source) + (self.drain_s if self.current is not None else 0.0)
        if switch:
            self.stage_weights(new.plans)
            self.last_switch_t = state.t      # deployment too: no voluntary switch on 1-2 samples
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
        if not self.holds_with_headroom(state, best, by):
            return cur, "keep"
        if cost.qoe.objective != "latency":
            move = weights_to_move(best.plans, self.holdings, self.params, self.source)
            sw_s = transfer_seconds(cost, move, self.source) + self.drain_s
            switch_j = radio_joules(cost, move, self.source) + gain_w * sw_s
            if gain_w * self.horizon_s <= switch_j:
                return cur, "keep"
        return best, "cheaper"

    def holds_with_headroom(self, state: State, mix: Mix, by: dict[int, Scored]) -> bool:
        """Hysteresis on QoE: a voluntary switch must also hold with `headroom` less
        bandwidth at the band's low end, and (`robust`) at the lowest bandwidth estimated
        over the last `memory_s` seconds: a bursty link's next dip is likely as deep as
        its last one, and a switch to a less robust plan that the dip breaks costs a
        violation plus a switch back."""
        if self.headroom <= 0:
            return True
        lo, mid, hi = self._band
        low = {m: v * (1 - self.headroom) for m, v in lo.items()}
        if self.robust:
            seen = self.recent_low()
            low = {m: min(v, seen.get(m, v)) for m, v in low.items()}
        lcost, lby, _ = self.evaluate((low, mid, hi) if self.band else (low, low, low), state.battery, sorted(by))
        return rescore(mix, lby, lcost).ok


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
            self.prewarm()

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
    from dora_rl.resources import agents_dir
    return agents_dir()


def _builtin_loader(scenario: Scenario, agent: str | Path | None) -> AgentPolicy:
    """The AdaptEnv agent shipped in trained_agents/: dora_rl__Adapt-<scenario>-v0, then
    dora_rl__Adapt-v0, loaded by dora_rl.learning.adapter_agent.load_adapter_agent(scenario, path)."""
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
        from dora_rl.learning.adapter_agent import load_adapter_agent
    except ImportError as e:
        raise AgentError(f"agent {found[0]} found but the adapter agent module cannot be imported ({e})") from None
    return load_adapter_agent(scenario, found[0])


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
class PPOAdapter(ParetoAdapter):
    """The learned adapter: `pareto`'s candidates and composition, plus the partition
    agent's plan at each bandwidth level, with the AdaptEnv agent choosing among the
    single plans each interval. The agent decides whenever its pick is QoE-compliant over
    the planning band, costs at most `margin` more than the composition rule's choice
    (the LP's time-share, or keeping the current plan) and, where it differs from that
    choice, holds with `headroom` less bandwidth; a voluntary switch away from a
    compliant plan must save more than `margin`, hold with `headroom` less bandwidth and
    wait `min_dwell_s` (the rule's hysteresis: no flapping). Otherwise - a non-compliant pick, or
    a time-share clearly cheaper - `pareto`'s rule decides (reason 'guard' when it
    overrides the agent). `guard=False` follows the agent blindly (for studying it)."""

    name = "ppo"
    prestage = True

    def __init__(self, scenario: Scenario, *, agent: str | Path | None = None, policy: AgentPolicy | None = None,
                 guard: bool = True, partition_agent: str | Path | None | bool = None, **options):
        self.policy = policy if policy is not None else load_agent_policy(scenario, agent)
        self.guard = guard
        self.partition_agent = partition_agent
        super().__init__(scenario, **options)

    def add_candidates(self) -> None:
        """The partition agent's plan (rollout search) at every bandwidth level of the
        candidate set: the learned planner's proposals join the DP's."""
        if self.partition_agent is False or self._given is not None:
            return
        from dora_rl.learning.planner import cached_agent

        try:
            agent = cached_agent(None if self.partition_agent in (None, True) else self.partition_agent)
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

    def _choose(self, state, cost, best, by):
        options = [by[p] for p in sorted(by)]
        try:
            k = self.policy.choose(state, options, self.current, self.scenario)
        except DoraError:
            raise
        except Exception as e:  # an agent that does not fit this scenario
            raise AgentError(f"adapter agent failed on scenario {self.scenario.name!r}: {e}") from None
        if k is not None and not (isinstance(k, int) and 0 <= k < len(options)):
            raise AgentError(f"adapter agent chose option {k!r} but scenario {self.scenario.name!r} offers "
                             f"{len(options)} candidate plans; the agent was trained for another candidate set")
        need, bud, slo = required_rate(cost), battery_budgets(cost), cost.qoe.latency_slo_ms
        if k is None:                     # the agent keeps what runs
            if self.current is None:
                return best, "initial"
            if not self.guard:
                return rescore(self.current, by, cost), "keep"
            return super()._choose(state, cost, best, by)
        pick = make_mix([(options[k], 1.0)], need, bud, slo)
        if not self.guard:
            if self.current is None:
                return pick, "initial"
            return pick, ("keep" if set(self.current.pids) == set(pick.pids) else "agent")
        rule, why = super()._choose(state, cost, best, by)
        if not pick.ok:
            return rule, ("guard" if set(rule.pids) != set(pick.pids) else why)
        if rule.ok and self.at_cost(pick, cost) > self.at_cost(rule, cost) * (1 + self.margin):
            return rule, "guard"
        if rule.ok and set(rule.pids) != set(pick.pids) and not self.holds_with_headroom(state, pick, by):
            return rule, "guard"          # overruling the rule takes a pick as robust as its switches
        if self.current is None:
            return pick, "initial"
        if set(self.current.pids) == set(pick.pids):
            return pick, "keep"
        cur = rescore(self.current, by, cost)
        if not cur.ok:
            return pick, "qoe-risk"
        # a voluntary switch: after the dwell time, to a plan that saves more than
        # `margin` (a pick other than the rule's was checked for headroom above)
        saves = self.at_cost(pick, cost) < self.at_cost(cur, cost) * (1 - self.margin)
        if state.t - self.last_switch_t < self.min_dwell_s or not saves:
            return rule, why
        return pick, "agent"
