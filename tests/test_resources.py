"""Resources: presets, shipped agents, hyperparameters and profiles are found from the package
(dora_rl/resources.py), whatever the working folder, and the wheel carries them (pyproject.toml)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import dora_rl
from dora_rl import resources

REPO = Path(__file__).resolve().parents[1]


def _files(folder: Path, pattern: str) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.glob(pattern) if p.is_file()}


def _from_elsewhere(tmp_path: Path) -> dict:
    """What resources finds in a fresh interpreter started in an empty folder (no checkout in the CWD)."""
    code = ("import json; from dora_rl import resources as r; "
            "print(json.dumps({k: str(getattr(r, k)()) for k in "
            "('presets_dir', 'agents_dir', 'hyperparams_dir', 'profiles_dir')}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(Path(dora_rl.__file__).resolve().parents[1]), "PATH": ""})
    return json.loads(out.stdout)


def test_resources_find_every_asset_from_another_folder(tmp_path):
    found = {k: Path(v) for k, v in _from_elsewhere(tmp_path).items()}
    for path in found.values():
        assert path.is_absolute() and path.is_dir() and tmp_path not in path.parents
    # every preset, every file of every shipped agent, every hyperparameter file, every profile
    assert _files(found["presets_dir"], "*.yaml") == _files(REPO / "envs", "*.yaml") != set()
    assert _files(found["agents_dir"], "*/*") == _files(REPO / "trained_agents", "*/*") != set()
    assert _files(found["hyperparams_dir"], "*.yml") == _files(REPO / "policies", "*.yml") >= {"ppo.yml",
                                                                                               "dora_train.yml"}
    assert _files(found["profiles_dir"], "*.json") == _files(REPO / "dora_rl" / "data" / "profiles", "*.json")


def test_package_users_of_the_assets_go_through_resources():
    from dora_rl.envs import preset_env_names
    from dora_rl.learning.agents import default_agent_path, resolve_agent_path
    from dora_rl.scenario import preset_names, scenario_path

    assert preset_names() == resources.preset_names() == sorted(p.stem for p in (REPO / "envs").glob("*.yaml"))
    assert set(preset_names()) <= set(preset_env_names())
    for name in preset_names():
        assert scenario_path(name) == resources.presets_dir() / f"{name}.yaml"
    assert default_agent_path().parent == resources.agents_dir()
    for folder in sorted(p for p in resources.agents_dir().iterdir() if (p / "model.zip").is_file()):
        assert resolve_agent_path(folder.name) == folder
        assert resolve_agent_path(folder.name.replace("__", "/")) == folder


def test_wheel_layout_lists_every_package_and_maps_every_asset_folder():
    """pyproject.toml lists the packages (so that it can map the asset folders into the
    wheel): a new subpackage of dora_rl must be added there, or a wheel install lacks it."""
    tomllib = pytest.importorskip("tomllib")
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    code = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "dora_rl").rglob("__init__.py")}
    listed = set(cfg["packages"])
    assert code <= listed, f"add to pyproject.toml [tool.setuptools] packages: {sorted(code - listed)}"
    assets = {f"dora_rl._assets.{f}": f for f in resources.ASSET_FOLDERS}
    assert listed - code == set(assets), sorted(listed - code)
    assert cfg["package-dir"] == assets
    assert set(cfg["package-data"]) >= set(assets) | {"dora_rl"}
