"""What every baseline shares: set-up, device order, index stages -> `Plan`, small helpers."""

from __future__ import annotations

from dora_rl.cost import CostModel, Metrics
from dora_rl.plan import Plan
from dora_rl.scenario import Scenario


def setup(scenario: Scenario, cost: CostModel | None) -> tuple[CostModel, int, float]:
    """(cost model, M micro-batches, m = batch / M samples per micro-batch)."""
    cost = cost or CostModel(scenario)
    M = scenario.workload.microbatches
    return cost, M, scenario.workload.batch / M


def device_order(cost: CostModel) -> list[int]:
    """Source first, then the other devices by decreasing compute rate (ties: scenario order)."""
    others = sorted((d for d in range(cost.n) if d != cost.src), key=lambda d: (-cost.rate[d], d))
    return [cost.src] + others


def make_plan(cost: CostModel, stages, M: int) -> Plan:
    """Index stages [(l, r, [dev idx], shares)] -> Plan with device names."""
    names = cost.names
    return Plan.make([(l, r, [names[d] for d in devs], sh) for (l, r, devs, sh) in stages], M)


def memory_detail(cost: CostModel, m: Metrics) -> str:
    """The metrics' memory violations, for a `no_fit` message."""
    return "; ".join(v for v in m.violations if v.startswith("memory")) or "a device overflows"


def single(cost: CostModel, d: int) -> list:
    """The one-stage plan [0, B) on device d (index stages)."""
    return [(0, cost.n_blocks, [d], [1.0])]


def clean(devs: list[int], shares: list[float]) -> tuple[list[int], list[float]]:
    """Drop zero shares (a member whose memory cap is 0) and renormalise to sum 1."""
    keep = [(d, s) for d, s in zip(devs, shares) if s > 1e-12]
    tot = sum(s for _, s in keep)
    return [d for d, _ in keep], [s / tot for _, s in keep]


def balanced_counts(B: int, S: int) -> list[int]:
    """B blocks over S stages as evenly as possible; the first B % S stages get one more."""
    q, r = divmod(B, S)
    return [q + (1 if s < r else 0) for s in range(S)]
