"""Where the package's assets live: scenario presets, shipped agents, hyperparameters, model profiles.

Why one module: the presets (`envs/*.yaml`), the shipped agents (`trained_agents/`) and the
hyperparameters (`policies/`) are top-level folders of the repository (the product card fixes
them, the way rl-baselines3-zoo keeps `hyperparams/` beside its code), while the model profiles
ship inside the package (`dora_rl/data/profiles/`). From a checkout (or an editable install)
the folders are found beside the package; a wheel (`pip install .`, not editable) carries them
as package data under `dora_rl/_assets/<folder>/` (pyproject.toml maps `dora_rl._assets.envs`
to `envs/`, and so on). Nothing else in the package computes a path from `__file__`.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
ASSET_FOLDERS = ("envs", "policies", "trained_agents")


def asset_dir(folder: str) -> Path:
    """The top-level asset folder `folder` (one of ASSET_FOLDERS): the wheel's packaged
    copy if there is one, else the checkout's folder beside the package (which may not
    exist: callers treat a missing folder as empty)."""
    if folder not in ASSET_FOLDERS:
        raise ValueError(f"unknown asset folder {folder!r}; known: {', '.join(ASSET_FOLDERS)}")
    packaged = PACKAGE_DIR / "_assets" / folder
    if packaged.is_dir():
        return packaged
    return PACKAGE_DIR.parent / folder


def presets_dir() -> Path:
    """Scenario presets: `<name>.yaml` files (envs/)."""
    return asset_dir("envs")


def agents_dir() -> Path:
    """Shipped agents: one folder per environment id, `/` written `__` (trained_agents/)."""
    return asset_dir("trained_agents")


def hyperparams_dir() -> Path:
    """Hyperparameter files (policies/): ppo.yml (rl-zoo loadable) and dora_train.yml."""
    return asset_dir("policies")


def hyperparams_file(name: str = "ppo.yml") -> Path:
    return hyperparams_dir() / name


def profiles_dir() -> Path:
    """Shipped model profiles (dora_rl/data/profiles/, package data in every install)."""
    return PACKAGE_DIR / "data" / "profiles"


def import_root() -> Path:
    """The folder that holds the `dora_rl` package (what a worker process needs on its
    PYTHONPATH to import this same copy of the package)."""
    return PACKAGE_DIR.parent


def default_traces_root() -> Path:
    """The bandwidth traces' default folder when $DORA_TRACES is unset: the Pensieve traces
    in the `shared/data/traces/pensieve` folder beside the checkout (not shipped)."""
    return PACKAGE_DIR.parent.parent / "shared" / "data" / "traces" / "pensieve"


def preset_names() -> list[str]:
    """The file stems of the presets (sorted)."""
    d = presets_dir()
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


__all__ = ["ASSET_FOLDERS", "asset_dir", "presets_dir", "agents_dir", "hyperparams_dir", "hyperparams_file",
           "profiles_dir", "import_root", "default_traces_root", "preset_names"]
