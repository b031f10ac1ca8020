"""Hyperparameters for `dora train`: the rl-zoo block of policies/ppo.yml plus dora's own keys.

Why two files: policies/ppo.yml is in rl-baselines3-zoo's format, so the zoo can train plain PPO
with it as it is; the keys only `dora train` knows (its set-based MaskablePPO policy, imitation,
expert iteration, fine-tuning, evaluation) live in the sibling policies/dora_train.yml and are
applied on top, key by key. Both files are found through dora_rl/resources.py.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from dora_rl.resources import hyperparams_file

# What a saved agent is loaded with instead of its pickled schedules, so that loading does not
# depend on pickled lambdas surviving a version change (the agent is only used to predict).
CUSTOM_OBJECTS = {"learning_rate": 0.0, "lr_schedule": lambda _: 0.0, "clip_range": lambda _: 0.2,
                  "clip_range_vf": None}

ZOO_FILE = "ppo.yml"
TRAIN_FILE = "dora_train.yml"


def _block(path: Path, env_id: str) -> dict:
    """The block for `env_id` in the YAML file `path`, else its `default` block ({} without either)."""
    data = (yaml.safe_load(path.read_text()) if path.is_file() else None) or {}
    return dict(data.get(env_id) or data.get("default") or {})


def load_hyperparams(env_id: str, zoo_path: Path | None = None, train_path: Path | None = None) -> dict:
    """The hyperparameters `dora train` uses for `env_id`: the zoo block (policies/ppo.yml),
    then dora's block (policies/dora_train.yml) replacing or adding keys; keys keep the zoo
    file's order, dora's new keys follow."""
    zoo = _block(zoo_path or hyperparams_file(ZOO_FILE), env_id)
    own = _block(train_path or hyperparams_file(TRAIN_FILE), env_id)
    return {**zoo, **own}


__all__ = ["ZOO_FILE", "TRAIN_FILE", "load_hyperparams"]
