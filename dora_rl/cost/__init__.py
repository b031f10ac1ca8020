"""Analytic cost model (docs/cost-model.md). Nothing here imports planners, envs,
runtime or the CLI."""

from dora_rl.cost.metrics import Metrics
from dora_rl.cost.model import CostModel, score

__all__ = ["CostModel", "Metrics", "score"]
