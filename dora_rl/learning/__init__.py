"""The learning layer: everything learned - policies, training, imitation, search, evaluation, agents.

Why one home: the learned planner and the learned adapter are built from the same pieces
(SB3 agents, the shared cost model, the environments below in dora_rl/envs/); the layers
below (planners/, envs/, cost/) never import this package - the `ppo` planner and the
adapter agent are named by string and loaded the first time they are needed.
Light on import: torch and SB3 load only when an attribute below is used.
- `DeviceSetExtractor`, `SetPointerPolicy` (dora_rl/learning/extractor.py);
- `load_agent`, `PartitionAgent`, `save_agent`, `default_agent_path` (dora_rl/learning/agents.py);
- `PPOPlanner` (dora_rl/learning/planner.py), the `ppo` planner;
- `load_adapter_agent`, `AdapterAgent` (dora_rl/learning/adapter_agent.py), the `ppo` adapter's agent;
- `StagePolicy` (stage_policy.py), `StageAgent` (stage_agent.py), `train_stage` (stage_run.py):
  the size-free stage policy, its agents and its bounded training run;
- `load_hyperparams` (dora_rl/learning/hyperparams.py);
- `evaluate_agent` (dora_rl/learning/evaluation.py)."""

from __future__ import annotations

# how a learned planner decodes a plan (dora_rl/learning/stage_search.py); the last three:
# stage agents only. Here, light, so the CLI's choices and the agents share one list.
SEARCHES = ("greedy", "polish", "rollout", "sample", "beam", "restart")

_LAZY = {
    "DeviceSetExtractor": "dora_rl.learning.extractor",
    "SetPointerPolicy": "dora_rl.learning.extractor",
    "PointerHead": "dora_rl.learning.extractor",
    "PartitionAgent": "dora_rl.learning.agents",
    "load_agent": "dora_rl.learning.agents",
    "save_agent": "dora_rl.learning.agents",
    "default_agent_path": "dora_rl.learning.agents",
    "resolve_agent_path": "dora_rl.learning.agents",
    "load_hyperparams": "dora_rl.learning.hyperparams",
    "evaluate_agent": "dora_rl.learning.evaluation",
    "PPOPlanner": "dora_rl.learning.planner",
    "StagePolicy": "dora_rl.learning.stage_policy",
    "StageAgent": "dora_rl.learning.stage_agent",
    "train_stage": "dora_rl.learning.stage_run",
    "AdapterAgent": "dora_rl.learning.adapter_agent",
    "load_adapter_agent": "dora_rl.learning.adapter_agent",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(name)


__all__ = sorted(_LAZY) + ["SEARCHES"]
