"""The registered `dora` planner: the DP's best QoE-compliant plan, or why there is none.

Exact space (`Space.exact`): the DP's answer is optimal over the documented plan space
(`approximate = False`). Past the exact budget the chain approximation runs, then the
multi-start local search of `planners/local.py` from the fastest device, the
k-fastest pipeline and the approximation's three best plans; the better plan wins and
the result is marked `approximate = True`. "No plan" is reported only when neither finds a
compliant plan (the error then names the targets the closest plan misses, judged on
every plan the approximation and the local search scored: no second DP run).

With `schedule=True` (Dora's partitioner -> scheduler), the best `SCHEDULED` compliant
candidates are each refined by the network scheduler on the simulator
(`dora_rl.sim.schedule_plan`: micro-batches, priorities, all-reduce buckets, warm-up) and
the best by the simulated QoE and objective is returned with its schedule."""

from __future__ import annotations

from dora_rl.cost import CostModel
from dora_rl.errors import NoFeasiblePlan
from dora_rl.plan import Plan
from dora_rl.planners.base import Planner, register
from dora_rl.planners.dp.diagnosis import explain_infeasible
from dora_rl.planners.dp.search import search, to_plan
from dora_rl.planners.local import local_search, rank
from dora_rl.scenario import Scenario
from dora_rl.sim.scheduler import key as sim_key
from dora_rl.sim.scheduler import schedule_plan

STARTS = 3      # approximate candidates the local search also starts from
SCHEDULED = 3   # compliant candidates the scheduler refines (schedule=True)


@register
class Dora(Planner):
    """Exact Pareto DP over block prefixes x device groups (options: max_group, exact, budget,
    schedule; explain=False skips the diagnosis of an infeasible scenario - the NoFeasiblePlan
    then names no target - for callers that only need to know, e.g. the learned planner's
    teacher, where it took about 40 % of the small family's time)."""

    name = "dora"
    description = "heterogeneity-aware partitioner: exact DP keeping the Pareto set of QoE-compliant plans"

    def plan(self, scenario: Scenario, cost: CostModel | None = None) -> Plan:
        self.check_supported(scenario)
        cost = cost or CostModel(scenario)
        opts = {k: v for k, v in self.options.items() if k in ("max_group", "exact", "budget")}
        res = search(scenario, cost, **opts)
        self.last = res
        self.approximate = not res.space.exact
        good = sorted((c for c in res.candidates if c.metrics.qoe_ok), key=lambda c: rank(cost, c.metrics))
        best = (rank(cost, good[0].metrics), good[0].stages) if good else None
        closest, scored = None, None
        if self.approximate:
            scored = [c.metrics for c in res.candidates]
            ls = local_search(cost, [c.stages for c in good[:STARTS]], max_group=opts.get("max_group"),
                              scored=scored)
            if ls is not None and ls[2].qoe_ok and (best is None or ls[0] < best[0]):
                best = (ls[0], ls[1])
            closest = ls
        if best is None:
            if not self.options.get("explain", True):
                raise NoFeasiblePlan(f"{self.name}: no QoE-compliant plan (not diagnosed: explain=False)")
            raise explain_infeasible(self.name, scenario, cost, closest=closest, scored=scored, **opts)
        if not self.options.get("schedule"):
            return to_plan(cost, best[1])
        layouts = [best[1]] + [c.stages for c in good[:SCHEDULED] if c.stages is not best[1]]
        refined = [schedule_plan(cost, to_plan(cost, st)) for st in layouts[:SCHEDULED]]
        return min(refined, key=lambda s: sim_key(cost, s.result)).plan
