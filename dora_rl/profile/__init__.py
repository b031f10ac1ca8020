"""Model profiles: the zoo (plain-torch models as chains of blocks), the profiler that
measures per-block FLOPs / parameter bytes / activation bytes, and `ModelProfile`, the
only view of a model that the cost model and planners use.

The zoo and profiler import torch (~1 s), so they load lazily on first use: importing
`ModelProfile` (as the cost model and scenario loader do) stays torch-free.
"""

from __future__ import annotations

import importlib

from dora_rl.profile.model_profile import Block, ModelProfile

_LAZY = {"profile_module": "dora_rl.profile.profiler", "get_profile": "dora_rl.profile.store",
         "build_model": "dora_rl.profile.zoo", "model_names": "dora_rl.profile.zoo", "MODELS": "dora_rl.profile.zoo"}

__all__ = ["Block", "ModelProfile", "profile_module", "get_profile", "build_model", "model_names", "MODELS"]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dora_rl.profile' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
