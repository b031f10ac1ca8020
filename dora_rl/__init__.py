"""dora_rl: QoE-aware hybrid parallelism for distributed edge AI.

Plans and runs DNNs over heterogeneous edge devices with data + pipeline parallelism,
with classical planners (exact DP, oracle, published baselines) and learned PPO
policies; see DESIGN.md and docs/."""

from dora_rl import envs as _envs  # noqa: F401  registers the Gymnasium environments (entry-point strings only)
from dora_rl.errors import DoraError, NoFeasiblePlan

__version__ = "0.1.0"
__all__ = ["DoraError", "NoFeasiblePlan", "__version__"]
