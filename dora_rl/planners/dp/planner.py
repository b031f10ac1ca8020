"""The registered `dora` planner: the DP's best QoE-compliant plan, or why there is none."""

from __future__ import annotations

from dora_rl.cost import CostModel
from dora_rl.plan import Plan
from dora_rl.planners.base import Planner, register
from dora_rl.planners.dp.diagnosis import explain_infeasible
from dora_rl.planners.dp.search import best_candidate, search, to_plan
from dora_rl.scenario import Scenario


@register
class Dora(Planner):
    """Exact Pareto DP over block prefixes x device groups (options: max_group, exact, budget)."""

    name = "dora"
    description = "heterogeneity-aware partitioner: exact DP keeping the Pareto set of QoE-compliant plans"

    def plan(self, scenario: Scenario, cost: CostModel | None = None) -> Plan:
        self.check_supported(scenario)
        cost = cost or CostModel(scenario)
        opts = {k: v for k, v in self.options.items() if k in ("max_group", "exact", "budget")}
        res = search(scenario, cost, **opts)
        self.last = res
        best = best_candidate(res.candidates, cost.qoe.objective)
        if best is None:
            raise explain_infeasible(self.name, scenario, cost, **opts)
        return to_plan(cost, best.stages)
