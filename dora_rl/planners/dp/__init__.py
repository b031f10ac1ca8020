"""`dora`: the heterogeneity-aware partitioner (exact DP over a Pareto set) and `pareto`.

Plan space (shared with `oracle`, see docs/planners.md): an ordered list of stages, each
a contiguous block range on a *group* of devices (device indices in ascending order,
at most `max_group` of them) with `proportional_shares` (speed-proportional, capped by
memory; training stages use the 1F1B in-flight count min(M, S - s)); a device serves
at most one stage; M = workload.microbatches.

The DP runs back to front over block suffixes with Pareto labels whose components are
all monotone, so dominance pruning is exact; global QoE constraints prune early. Past
the exact regime (too many candidate transitions for about a second in CPython) the
planner switches to the chain approximation (docs/planners.md). It never hangs.

Modules, one concern each:
- `space`: the search space (`Space`, `choose_spaces`, candidate cuts, speed order,
  the work estimate);
- `labels`: the named records (label vector layout, `Label`, `StageCost`, `Candidate`...);
- `limits`: the QoE bounds a label is pruned with;
- `pieces`: what one DP step adds (stage and boundary costs, relays and who pays);
- `pruning`: Pareto dominance and the approximation's beam;
- `engine`: the DP itself (`DPEngine`);
- `search`: `search`, `pareto`, `best_candidate`, `to_plan`;
- `diagnosis`: `explain_infeasible`;
- `planner`: the registered `Dora` planner."""

from dora_rl.planners.dp.diagnosis import explain_infeasible
from dora_rl.planners.dp.engine import DPEngine
from dora_rl.planners.dp.labels import Candidate, SearchResult
from dora_rl.planners.dp.limits import TOL
from dora_rl.planners.dp.planner import Dora
from dora_rl.planners.dp.search import best_candidate, pareto, search, to_plan
from dora_rl.planners.dp.space import (
                                       APPROX_BEAM,
                                       APPROX_BUDGET,
                                       APPROX_CUTS,
                                       APPROX_GROUP,
                                       EXACT_BUDGET,
                                       Space,
                                       candidate_cuts,
                                       choose_spaces,
                                       estimate_work,
                                       memory_binds,
                                       speed_order,
)

__all__ = ["APPROX_BEAM", "APPROX_BUDGET", "APPROX_CUTS", "APPROX_GROUP", "EXACT_BUDGET", "TOL", "Candidate",
           "DPEngine", "Dora", "SearchResult", "Space", "best_candidate", "candidate_cuts", "choose_spaces",
           "estimate_work", "explain_infeasible", "memory_binds", "pareto", "search", "speed_order", "to_plan"]
