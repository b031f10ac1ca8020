"""Profiles of the zoo models, shipped as JSON in dora_rl/data/profiles/ so that loading
a scenario does not import torch (about 1 s). tests/test_profile_store.py checks that
every shipped file equals a fresh profile; `python -m dora_rl.profile.store` rewrites them."""

from __future__ import annotations

import logging
from pathlib import Path

from dora_rl.profile.model_profile import ModelProfile
from dora_rl.resources import profiles_dir

STORE = profiles_dir()


def get_profile(name_or_path: str | Path) -> ModelProfile:
    """A zoo model name or a path to a profile JSON; returns a fresh ModelProfile."""
    cached = STORE / f"{name_or_path}.json"
    if isinstance(name_or_path, str) and "/" not in name_or_path and cached.is_file():
        return ModelProfile.load(cached)
    from dora_rl.profile.profiler import get_profile as live

    return live(name_or_path)


def rebuild() -> list[str]:
    from dora_rl.profile.profiler import get_profile as live
    from dora_rl.profile.zoo import model_names

    STORE.mkdir(parents=True, exist_ok=True)
    for name in model_names():
        live(name).save(STORE / f"{name}.json")
    return model_names()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger(__name__).info("wrote %s", ", ".join(rebuild()))
