"""Heuristic baselines from the literature, each a registered `Planner`.

Every baseline here is the published *rule*, re-expressed on this project's cost model
(docs/cost-model.md) so that the comparison with `dora`, `oracle` and `ppo` is fair:
the same stage times, transfer times, memory model and metrics for everyone. What each
rule ignores (QoE targets, energy, contention, data parallelism) it keeps ignoring: a
baseline returns its plan even when that plan violates QoE, and raises `NoFeasiblePlan`
(via `no_fit`) only when nothing it can express fits in memory. docs/baselines.md has
one section per baseline (rule, source, what it ignores).

Registered names, in this order: `local`, `offload`, `neurosurgeon` (module `single`),
`even`, `proportional` (`splits`), `pipeedge` (`pipeedge`), `data_parallel`, `random`
(`splits`); the helpers they share are in `common`.

Conventions shared by all of them:
- micro-batches: `Plan.microbatches = scenario.workload.microbatches` (m = batch / M
  samples per micro-batch);
- device order for the fixed-order splitters (`even`, `proportional`): the source
  device first (its stage needs no input transfer), then the others by decreasing
  compute rate, ties by their order in the scenario (`device_order`).
"""

from dora_rl.planners.base import register
from dora_rl.planners.baselines.common import device_order
from dora_rl.planners.baselines.pipeedge import PipeEdge, pipeedge_search
from dora_rl.planners.baselines.single import Local, Neurosurgeon, Offload
from dora_rl.planners.baselines.splits import DataParallel, Even, Proportional, RandomPlanner, proportional_cuts

# registered here, in one place, so the registry's (and the CLI's) order stays this one
for _cls in (Local, Offload, Neurosurgeon, Even, Proportional, PipeEdge, DataParallel, RandomPlanner):
    register(_cls)
del _cls

__all__ = ["Local", "Offload", "Neurosurgeon", "Even", "Proportional", "PipeEdge", "DataParallel",
           "RandomPlanner", "device_order", "pipeedge_search", "proportional_cuts"]
