"""Reading an agent folder's two files, `config.yml` and `model.zip`, with typed errors.

Why one module: the partition, stage, schedule and adapter agents are all MaskablePPO
networks saved the same way (a folder with `model.zip` and a `config.yml` describing
the observation layout). Each loader used to repeat the same "read the YAML or say it is
invalid" and "MaskablePPO.load or say the zip is corrupt" blocks, with different lists of
caught exceptions (one caught nothing around the YAML). Here both are done once; the
caller names the agent (`what`) and how to make a new one (`fix`), so every message
still says what is wrong and how to fix it.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import yaml

from dora_rl.errors import AgentError

# what MaskablePPO.load raises on a truncated, foreign or damaged file
LOAD_ERRORS = (OSError, ValueError, KeyError, RuntimeError, EOFError, TypeError, AttributeError,
               pickle.UnpicklingError, zipfile.BadZipFile)


def read_config(folder: Path, what: str, fix: str) -> dict:
    """The mapping in `folder/config.yml`; AgentError if it is missing, not YAML or not a
    mapping. `what` names the agent ("schedule agent"), `fix` says how to make a new one."""
    cpath = folder / "config.yml"
    if not cpath.is_file():
        raise AgentError(f"{what} {str(folder)!r}: config.yml is missing (it records the observation layout); {fix}")
    try:
        cfg = yaml.safe_load(cpath.read_text())
    except yaml.YAMLError as e:
        raise AgentError(f"{what} {str(folder)!r}: config.yml is not valid YAML ({str(e).splitlines()[0]}); "
                         f"{fix}") from None
    if not isinstance(cfg, dict):
        raise AgentError(f"{what} {str(folder)!r}: config.yml is not a mapping; {fix}")
    return cfg


def load_model(folder: Path, what: str, fix: str, policy_class=None):
    """`MaskablePPO.load` of `folder/model.zip` on the CPU with constant schedules (and,
    given, the policy class named here rather than unpickled: agents saved under an older
    module path still load); AgentError if it is missing or unreadable."""
    zpath = folder / "model.zip"
    if not zpath.is_file():
        raise AgentError(f"{what} {str(folder)!r}: model.zip is missing; {fix}")
    from sb3_contrib import MaskablePPO

    from dora_rl.learning.hyperparams import CUSTOM_OBJECTS

    custom = {**CUSTOM_OBJECTS, "policy_class": policy_class} if policy_class is not None else CUSTOM_OBJECTS
    try:
        return MaskablePPO.load(str(zpath), device="cpu", custom_objects=custom)
    except LOAD_ERRORS as e:
        raise AgentError(f"{what} {str(folder)!r}: model.zip is corrupt or unreadable "
                         f"({type(e).__name__}: {str(e)[:120]}); {fix}") from None
