"""Why nothing is QoE-compliant: `explain_infeasible` names the target the best plans miss.

In the exact regime it reruns the DP without QoE bounds and compares the best reachable latency, throughput
and battery life with the scenario's targets, so `NoFeasiblePlan` says which target to
relax and by how much (`dora` and `oracle` raise it). Past the exact regime `dora`
passes the plans its approximation and local search scored (`scored`) instead: the
verdict is then about the best plans found, and the message says so."""

from __future__ import annotations

import math

from dora_rl.cost import CostModel
from dora_rl.errors import NoFeasiblePlan
from dora_rl.planners.base import no_fit
from dora_rl.planners.dp.limits import TOL
from dora_rl.planners.dp.search import search
from dora_rl.planners.local import miss
from dora_rl.scenario import Scenario

INF = math.inf


def explain_infeasible(name: str, scenario: Scenario, cost: CostModel, closest=None, scored=None,
                       **options) -> NoFeasiblePlan:
    """Why nothing is QoE-compliant: relax QoE, see which target the best plans miss.
    `closest` = the local search's best (rank, stages, Metrics), also considered.
    `scored` (Metrics list): judge these plans instead of re-running the DP (approximate:
    the message says so)."""
    if scored is None:
        res = search(scenario, cost, constrained=False, **options)
        ms, exact = [c.metrics for c in res.candidates if c.metrics.feasible], res.space.exact
    else:
        ms, exact = [m for m in scored if m.feasible], False
    q, wl = cost.qoe, cost.workload
    if closest is not None and closest[2].feasible:
        ms.append(closest[2])
    if not ms:
        return no_fit(name, scenario)
    if not exact:
        name = f"{name} (approximate search: the best plans it found)"
    best_lat = min(m.latency_ms for m in ms)
    if q.latency_slo_ms is not None and best_lat > q.latency_slo_ms * (1 + TOL):
        return NoFeasiblePlan(f"{name}: no plan meets the latency SLO: the fastest plan takes {best_lat:.4g} ms "
                              f"> SLO {q.latency_slo_ms:.4g} ms; relax qoe.latency_slo_ms or add faster devices",
                              constraint="latency", best=best_lat, required=q.latency_slo_ms)
    best_tp = max(m.throughput for m in ms)
    need = q.min_throughput or 0.0
    what = "qoe.min_throughput"
    if not cost.training and wl.request_rate and wl.request_rate > need:
        need, what = wl.request_rate, "workload.request_rate"
    if need and best_tp < need * (1 - TOL):
        unit = "samples/s" if cost.training else "req/s"
        return NoFeasiblePlan(f"{name}: no plan reaches the required throughput: the best plan sustains "
                              f"{best_tp:.4g} {unit} < {need:.4g} {unit} ({what}); lower it or add devices",
                              constraint="throughput", best=best_tp, required=need)
    if q.min_battery_hours is not None:
        def worst_hours(m):
            return min(m.battery_hours.values()) if m.battery_hours else INF
        best_h = max(worst_hours(m) for m in ms)
        if best_h < q.min_battery_hours * (1 - TOL):
            return NoFeasiblePlan(f"{name}: no plan keeps every battery device alive long enough: the best plan "
                                  f"lasts {best_h:.3g} h < {q.min_battery_hours:.3g} h (qoe.min_battery_hours)",
                                  constraint="battery", best=best_h, required=q.min_battery_hours)
    near = min(ms, key=lambda m: miss(cost, m))
    missed = "; ".join(near.violations) or "a target within tolerance"
    first = near.violations[0].split(":")[0] if near.violations else "combined"
    return NoFeasiblePlan(f"{name}: each QoE target is reachable alone but no plan meets them all together; "
                          f"the closest plan misses {missed}; relax {first} or another target",
                          constraint=first)
