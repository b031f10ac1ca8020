"""Planners: the Dora partitioner (exact DP over a Pareto set), the exact oracle, and
the published baselines, all behind one registry (`get_planner`, `run_planner`)."""

from dora_rl.planners import baselines as _baselines  # noqa: F401  registers the baselines
from dora_rl.planners import dp as _dp  # noqa: F401  registers "dora"
from dora_rl.planners import oracle as _oracle  # noqa: F401  registers "oracle"
from dora_rl.planners.base import (
                                   PLANNERS,
                                   Planner,
                                   PlanResult,
                                   get_planner,
                                   planner_names,
                                   proportional_shares,
                                   register,
                                   run_planner,
)
from dora_rl.planners.bounds import lower_bounds
from dora_rl.planners.dp import pareto

__all__ = ["PLANNERS", "PlanResult", "Planner", "get_planner", "planner_names", "proportional_shares",
           "register", "run_planner", "pareto", "lower_bounds"]
