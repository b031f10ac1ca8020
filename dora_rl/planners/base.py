"""One planner interface and one registry.

A planner maps a scenario to a `Plan`, or raises `NoFeasiblePlan` naming the
constraint it could not meet and the best figure it reached. Baselines that ignore
QoE return their plan anyway (the comparison shows the violation); every planner
raises when nothing it can express fits in memory."""

from __future__ import annotations

import time
from dataclasses import dataclass

from dora_rl.cost import CostModel, Metrics
from dora_rl.errors import NoFeasiblePlan, PlannerError
from dora_rl.plan import Plan
from dora_rl.scenario import Scenario

PLANNERS: dict[str, type["Planner"]] = {}


class Planner:
    """Subclass, set `name` (and `workloads` if it cannot do both), implement `plan`."""

    name: str = ""
    workloads: tuple[str, ...] = ("inference", "training")
    description: str = ""
    # True unless the plan is guaranteed optimal over the documented plan space
    # (docs/planners.md "Exact or approximate"); a planner may set it per call in `plan`
    approximate: bool = True
    max_devices: int | None = None      # the most devices this planner accepts (None: no limit)

    def __init__(self, **options):
        self.options = options

    def plan(self, scenario: Scenario, cost: CostModel | None = None) -> Plan:
        raise NotImplementedError

    def check_supported(self, scenario: Scenario) -> None:
        n = scenario.cluster.n
        if self.max_devices is not None and n > self.max_devices:
            raise PlannerError(f"planner {self.name!r} supports at most {self.max_devices} devices, this scenario has "
                               f"{n}; use planner 'dora' (no device limit)")
        if scenario.workload.kind not in self.workloads:
            raise PlannerError(f"planner {self.name!r} does not support {scenario.workload.kind} workloads "
                               f"(it supports: {', '.join(self.workloads)})")


def register(cls: type[Planner]) -> type[Planner]:
    if not cls.name:
        raise ValueError("planner class needs a name")
    PLANNERS[cls.name] = cls
    return cls


# planners named by "module:Class", imported the first time they are asked for: their module
# is heavy (torch, SB3) or sits in a higher layer (dora_rl.learning), which planners/ never imports
LAZY_PLANNERS = {"ppo": "dora_rl.learning.planner:PPOPlanner"}


def _load_lazy(name: str) -> None:
    """Import the lazily named planner `name` and register its class."""
    import importlib

    module, _, cls_name = LAZY_PLANNERS[name].partition(":")
    try:
        cls = getattr(importlib.import_module(module), cls_name)
    except (ModuleNotFoundError, AttributeError) as e:
        raise PlannerError(f"planner {name!r} is not available in this installation ({e})") from None
    PLANNERS.setdefault(name, cls)


def get_planner(name: str, **options) -> Planner:
    _load_builtin()
    if name not in PLANNERS and name in LAZY_PLANNERS:
        _load_lazy(name)
    if name not in PLANNERS:
        raise PlannerError(f"unknown planner {name!r}; available: {', '.join(planner_names())}")
    return PLANNERS[name](**options)


def planner_names() -> list[str]:
    _load_builtin()
    return list(PLANNERS) + [n for n in LAZY_PLANNERS if n not in PLANNERS]


def _load_builtin() -> None:
    import dora_rl.planners  # noqa: F401  (registers every built-in planner)


@dataclass
class PlanResult:
    """A planner's plan, its metrics and planning time, and whether it is exact:
    `approximate` is True unless the plan is guaranteed optimal over the documented plan
    space; then `lower_bound` is a lower bound of the objective (`lower_bounds`) and `gap`
    = objective / lower_bound - 1 bounds how far from optimal the plan can be."""

    planner: str
    plan: Plan
    metrics: Metrics
    seconds: float
    approximate: bool = True
    lower_bound: float | None = None
    gap: float | None = None

    def exactness(self) -> dict:
        """{approximate, lower_bound, gap} for JSON output."""
        return {"approximate": self.approximate, "lower_bound": self.lower_bound, "gap": self.gap}


def run_planner(name: str, scenario: Scenario, cost: CostModel | None = None, **options) -> PlanResult:
    """Plan with `name`, score the plan with the shared cost model, time the planning;
    an approximate result carries the objective's lower bound and the implied gap."""
    from dora_rl.planners.bounds import lower_bounds

    planner = get_planner(name, **options)
    planner.check_supported(scenario)
    cost = cost or CostModel(scenario)
    t0 = time.perf_counter()
    plan = planner.plan(scenario, cost)
    dt = time.perf_counter() - t0
    m = cost.evaluate(plan)
    res = PlanResult(name, plan, m, dt, bool(planner.approximate))
    if res.approximate:
        obj = cost.qoe.objective
        res.lower_bound = lower_bounds(scenario, cost)["latency_ms" if obj == "latency" else "energy_j"]
        if res.lower_bound > 0:
            res.gap = m.objective(obj) / res.lower_bound - 1.0
    return res


# --- helpers every planner shares ----------------------------------------------

def proportional_shares(cost: CostModel, devs: list[int], l: int, r: int, m: float,
                        inflight: int = 1) -> list[float] | None:
    """Heterogeneity-aware shares of a micro-batch for a stage [l, r) on `devs`:
    proportional to compute rate (so every member finishes together), capped by each
    device's memory (water-filling the excess onto the others), then realized in whole
    samples (`CostModel.realized`). None if the group cannot hold the stage (parameters
    alone overflow a member, the caps sum < 1, or a member would get no sample).
    `inflight` = micro-batches whose activations a training stage keeps (1F1B: min(M, S - s))."""
    training = cost.training
    params = cost.pp[r] - cost.pp[l]
    if training:
        act = (cost.bnd[l] + cost.ap[r] - cost.ap[l]) * inflight
        base = params * cost.param_copies
    else:
        act = cost.peak[l][r]
        base = params
    caps = []
    for d in devs:
        free = cost.mem[d] - base
        if free <= 0:  # no room for any share: this member cannot take part
            return None
        caps.append(free / (m * act) if act > 0 else float("inf"))
    rates = [cost.rate[d] for d in devs]
    shares = [0.0] * len(devs)
    remaining = 1.0
    active = list(range(len(devs)))
    while active:
        tot = sum(rates[i] for i in active)
        over = [i for i in active if remaining * rates[i] / tot > caps[i] + 1e-15]
        if not over:
            for i in active:
                shares[i] = remaining * rates[i] / tot
            break
        for i in over:
            shares[i] = caps[i]
            remaining -= caps[i]
            active.remove(i)
        if remaining <= 1e-12:
            break
    if abs(sum(shares) - 1.0) >= 1e-9:
        return None
    # whole samples: every member must get at least one and still fit once rounded
    m = int(round(m))
    real = cost.realized(m, shares, devs)
    for d, w in zip(devs, real):
        if w <= 0 or base + w * m * act > cost.mem[d]:
            return None
    return real


def best_of(cost: CostModel, plans, objective: str | None = None) -> tuple[Plan, Metrics] | None:
    """The best plan by the scenario's objective: QoE-compliant first, then feasible."""
    objective = objective or cost.qoe.objective
    best = None
    for p in plans:
        m = cost.evaluate(p, validate=False)
        key = (not m.qoe_ok, not m.feasible, m.objective(objective))
        if best is None or key < best[0]:
            best = (key, p, m)
    return None if best is None else (best[1], best[2])


def no_fit(name: str, scenario: Scenario, detail: str = "") -> NoFeasiblePlan:
    """The memory NoFeasiblePlan; `best` = the model's parameter GB, `required` = the
    largest device's GB (what one device would have to hold vs what there is)."""
    total = scenario.profile.total_params / 1e9
    biggest = max(d.memory_gb for d in scenario.cluster.devices)
    return NoFeasiblePlan(f"{name}: no plan fits in memory ({detail or 'every candidate overflows a device'}); "
                          f"the model has {total:.3g} GB of parameters and the largest device {biggest:.3g} GB",
                          constraint="memory", best=total, required=biggest)
