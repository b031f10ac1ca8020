"""Policies and agents for the learned planner (MaskablePPO, sb3-contrib).

Light on import: torch and SB3 load only when an attribute below is used.
- `DeviceSetExtractor`, `SetPointerPolicy` (dora_rl/policies/extractor.py);
- `load_agent`, `Agent`, `save_agent`, `default_agent_path` (dora_rl/policies/agents.py);
- `evaluate_agent` (dora_rl/policies/evaluation.py)."""

from __future__ import annotations

_LAZY = {
    "DeviceSetExtractor": "dora_rl.policies.extractor",
    "SetPointerPolicy": "dora_rl.policies.extractor",
    "PointerHead": "dora_rl.policies.extractor",
    "Agent": "dora_rl.policies.agents",
    "load_agent": "dora_rl.policies.agents",
    "save_agent": "dora_rl.policies.agents",
    "default_agent_path": "dora_rl.policies.agents",
    "resolve_agent_path": "dora_rl.policies.agents",
    "load_hyperparams": "dora_rl.policies.agents",
    "evaluate_agent": "dora_rl.policies.evaluation",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(name)


__all__ = sorted(_LAZY)
