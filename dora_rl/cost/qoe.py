"""QoE rules shared by every layer above the cost model: the throughput a scenario
requires, the penalty for each violated target, the utility that environments reward
and evaluations report, and the order in which plans are preferred.

They live here, beside the metrics they judge, so that planners, environments,
learning, the runtime adapter and the benches all apply one definition."""

from __future__ import annotations

import math

from dora_rl.scenario import QoE, Workload

TOL = 1e-9


def required_rate(problem) -> float:
    """The throughput QoE needs: max(min_throughput, request_rate) for inference (a
    request stream must be served as fast as it arrives), min_throughput for training.
    0.0 when nothing is required. `problem` is anything with `.qoe` and `.workload`
    (a Scenario or a CostModel)."""
    qoe: QoE = problem.qoe
    workload: Workload = problem.workload
    need = qoe.min_throughput or 0.0
    if not workload.training and workload.request_rate:
        need = max(need, workload.request_rate)
    return need


def violation_penalty(cost, m) -> float:
    """2 + relative miss (capped at 1) per violated constraint; 4 if it does not fit.

    `cost` is the CostModel that scored `m` (its qoe and workload are read)."""
    q, pen = cost.qoe, 0.0
    if not m.feasible:
        pen += 4.0
    if q.latency_slo_ms is not None and m.latency_ms > q.latency_slo_ms * (1 + TOL):
        pen += 2.0 + min(1.0, m.latency_ms / q.latency_slo_ms - 1.0)
    need = required_rate(cost)
    if need and m.throughput < need * (1 - TOL):
        pen += 2.0 + min(1.0, need / max(m.throughput, 1e-12) - 1.0)
    if q.min_battery_hours is not None:
        for h in m.battery_hours.values():
            if h < q.min_battery_hours * (1 - TOL):
                pen += 2.0 + min(1.0, q.min_battery_hours / max(h, 1e-12) - 1.0)
                break
    return pen


def _ratio(cost, m, ref_obj: float) -> float:
    """ref / objective, capped at 4 (a zero objective counts as 4)."""
    obj = m.objective(cost.qoe.objective)
    return min(4.0, ref_obj / obj) if obj > 0 else 4.0


def utility(cost, m, ref_obj: float) -> float:
    """The reward and the evaluation's score: ref / objective (capped at 4) minus
    penalties for violated constraints (see `violation_penalty`)."""
    return float(_ratio(cost, m, ref_obj) - violation_penalty(cost, m))


LOG_RATIO_FLOOR = -3.0      # log(ref / objective) below this counts as this (a plan 20x the reference's)


def log_utility(cost, m, ref_obj: float) -> float:
    """`utility` with the ratio's log: log(ref / objective), capped at log 4 and floored
    at LOG_RATIO_FLOOR, minus the same penalties. Why (a training reward, not a score):
    the mean of log ratios is the log of the geo-mean the learned planner's targets are
    stated in, so every instance's relative gap weighs the same; the ratio's gradient
    weighs an instance by ref / objective, least where the plan is furthest behind."""
    ratio = _ratio(cost, m, ref_obj)
    return float(max(LOG_RATIO_FLOOR, math.log(ratio) if ratio > 0 else LOG_RATIO_FLOOR)
                 - violation_penalty(cost, m))


REWARDS = {"utility": utility, "log_utility": log_utility}


def preference(m, objective: str) -> tuple:
    """Sort key that orders scored plans as every planner prefers them: QoE-compliant
    first, then feasible, then by the objective (lower is better)."""
    return (not m.qoe_ok, not m.feasible, m.objective(objective))
