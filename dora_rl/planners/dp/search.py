"""The DP's search driver: run the engine over the chosen spaces, keep the Pareto set.

`search` returns the QoE-compliant candidates (by the DP's arithmetic), Pareto over
(latency, energy) as the full cost model re-scores them (`_front`: a label on a routing
the cost model does not take has figures that are not its plan's); `best_candidate` picks by
the objective, `pareto` gives the non-dominated plans the runtime adapter switches
between, and `to_plan` turns a candidate's index stages into a `Plan`."""

from __future__ import annotations

import math
import time

from dora_rl.cost import CostModel, Metrics
from dora_rl.plan import Plan
from dora_rl.planners.dp.engine import DPEngine
from dora_rl.planners.dp.labels import Candidate, SearchResult
from dora_rl.planners.dp.space import EXACT_BUDGET, choose_spaces
from dora_rl.scenario import Scenario

INF = math.inf


def _pareto_2d(cands: list[Candidate], fig) -> list[Candidate]:
    """The candidates no other beats on (latency, energy) = fig(candidate)."""
    cs = sorted(cands, key=fig)
    out, best_e = [], INF
    for c in cs:
        e = fig(c)[1]
        if e < best_e * (1 - 1e-12) or (not out):
            out.append(c)
            best_e = min(best_e, e)
    return out


def _front(cands: list[Candidate], cost: CostModel) -> list[Candidate]:
    """The Pareto front over (latency, energy) of the candidates, each re-scored with the
    cost model, then the re-scored ones found non-compliant. A label may be on a routing
    that the cost model, routing the complete plan (`routing.choose`), does not take: its
    DP figures are then not its plan's (latency no lower, energy possibly lower: fewer
    relays), and it must not push a truly better plan off the front. So the front is
    taken on the DP's figures, re-scored, and taken again on the re-scored figures of
    the candidates seen so far, until re-scoring makes no front member worse (usually
    once: the figures agree)."""
    M = cost.workload.microbatches
    scored: dict = {}

    def fig(c):
        m = c.metrics
        return (c.latency_s, c.energy_j) if m is None else (m.latency_ms * 1e-3, m.energy_j)

    bad: list[Candidate] = []
    while True:
        front = _pareto_2d(cands, fig)
        stale = False
        for c in front:
            if c.metrics is not None:
                continue
            k = tuple((l, r, tuple(d)) for l, r, d, _ in c.stages)
            m = scored.get(k)
            if m is None:
                m = scored[k] = cost.evaluate_stages(c.stages, M)
            c.metrics = m
            if not m.qoe_ok or m.latency_ms * 1e-3 > c.latency_s * (1 + 1e-9) or \
                    m.energy_j > c.energy_j * (1 + 1e-9):
                stale = True
        if not stale:
            return front + bad
        bad += [c for c in front if not c.metrics.qoe_ok]
        cands = [c for c in cands if c.metrics is None or c.metrics.qoe_ok]


def search(scenario: Scenario, cost: CostModel | None = None, *, max_group: int | None = None,
           exact: bool | None = None, constrained: bool = True, budget: float = EXACT_BUDGET) -> SearchResult:
    """Run the DP; return QoE-compliant candidates (DP arithmetic), Pareto over (latency, energy).
    Each candidate is re-scored with the full cost model (`metrics`)."""
    cost = cost or CostModel(scenario)
    t0 = time.perf_counter()
    spaces = choose_spaces(cost, max_group, exact, budget)
    cands, nlab = [], 0
    for space in spaces:
        found, n = DPEngine(cost, space, constrained).run()
        cands.extend(found)
        nlab += n
    M = cost.workload.microbatches
    if constrained:
        cands = _front(cands, cost)
    seen, uniq = set(), []
    for c in cands:
        k = tuple((l, r, tuple(d)) for l, r, d, _ in c.stages)
        if k not in seen:
            seen.add(k)
            uniq.append(c)
    for c in uniq:
        if c.metrics is None:
            c.metrics = cost.evaluate_stages(c.stages, M)
    return SearchResult(uniq, spaces[0], nlab, time.perf_counter() - t0)


def to_plan(cost: CostModel, stages) -> Plan:
    """Index stages [(l, r, [device index], [shares])] -> a `Plan` with device names."""
    names = cost.names
    return Plan.make([(l, r, [names[d] for d in devs], sh) for l, r, devs, sh in stages],
                     cost.workload.microbatches)


def pareto(scenario: Scenario, cost: CostModel | None = None, **options) -> list[tuple[Plan, Metrics]]:
    """The non-dominated set over (latency_ms, energy_j) of QoE-compliant plans, sorted by
    latency (what the runtime adapter switches between). Empty if none is compliant."""
    cost = cost or CostModel(scenario)
    res = search(scenario, cost, **options)
    good = [c for c in res.candidates if c.metrics.qoe_ok]
    good.sort(key=lambda c: (c.metrics.latency_ms, c.metrics.energy_j))
    out, best_e = [], INF
    for c in good:
        if c.metrics.energy_j < best_e:
            out.append((to_plan(cost, c.stages), c.metrics))
            best_e = c.metrics.energy_j
    return out


def best_candidate(cands: list[Candidate], objective: str) -> Candidate | None:
    """The QoE-compliant candidate (by the full cost model) best by `objective`
    ('latency': latency then energy; else energy then latency); None if none complies."""
    good = [c for c in cands if c.metrics.qoe_ok]
    if not good:
        return None
    if objective == "latency":
        return min(good, key=lambda c: (c.metrics.latency_ms, c.metrics.energy_j))
    return min(good, key=lambda c: (c.metrics.energy_j, c.metrics.latency_ms))
