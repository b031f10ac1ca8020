"""Gymnasium environments, registered on import (cheap: entry-point strings only, no
torch, no scenario loading until `gymnasium.make`).

- `dora_rl/Partition-v0`: build one plan per episode on a synthetic scenario (up to 8
  devices) - the generalist's training environment;
- `dora_rl/Partition-<preset>-v0`: the same on one preset scenario (envs/<preset>.yaml);
- `dora_rl/PartitionStage-v0`: the same plan a stage at a time (cut + device group per
  step; spaces sized by `max_devices` / `max_blocks`) - the size-free stage policy's env;
- `dora_rl/Adapt-v0` and `dora_rl/Adapt-<preset>-v0`: keep or switch plans while
  bandwidth moves and batteries drain;
- `dora_rl/Schedule-v0`: given a plan, choose its network schedule (micro-batches,
  priorities, all-reduce start and buckets, warm-up), rewarded by the simulator.

See docs/learning.md."""

from __future__ import annotations

from gymnasium.envs.registration import register, registry

from dora_rl.resources import preset_names

NAMESPACE = "dora_rl"
KNOWN_PRESETS = ("smart_home", "traffic_analytics", "edge_cluster")


def preset_env_names() -> list[str]:
    """The presets (dora_rl/resources.py) and the known ones, each gets its environments."""
    return sorted(set(preset_names()) | set(KNOWN_PRESETS))


def _reg(env_id: str, entry: str, kwargs: dict, max_steps: int | None = None) -> None:
    if env_id not in registry:
        register(id=env_id, entry_point=entry, kwargs=kwargs, max_episode_steps=max_steps)


def register_all() -> None:
    _reg(f"{NAMESPACE}/Partition-v0", "dora_rl.envs.partition:PartitionEnv", {})
    _reg(f"{NAMESPACE}/PartitionStage-v0", "dora_rl.envs.stage:StageEnv", {})
    _reg(f"{NAMESPACE}/Adapt-v0", "dora_rl.envs.adapt:AdaptEnv", {})
    _reg(f"{NAMESPACE}/Schedule-v0", "dora_rl.envs.schedule:ScheduleEnv", {})
    for name in preset_env_names():
        _reg(f"{NAMESPACE}/Partition-{name}-v0", "dora_rl.envs.partition:PartitionEnv", {"scenario": name})
        _reg(f"{NAMESPACE}/Adapt-{name}-v0", "dora_rl.envs.adapt:AdaptEnv", {"scenario": name})


def sanitize(env_id: str) -> str:
    """`dora_rl/Partition-v0` -> `dora_rl__Partition-v0` (a folder name)."""
    return env_id.replace("/", "__")


def __getattr__(name: str):  # lazy access to the classes without importing them on `import dora_rl.envs`
    if name == "PartitionEnv":
        from dora_rl.envs.partition import PartitionEnv
        return PartitionEnv
    if name == "StageEnv":
        from dora_rl.envs.stage import StageEnv
        return StageEnv
    if name == "AdaptEnv":
        from dora_rl.envs.adapt import AdaptEnv
        return AdaptEnv
    if name == "ScheduleEnv":
        from dora_rl.envs.schedule import ScheduleEnv
        return ScheduleEnv
    raise AttributeError(name)


register_all()

__all__ = ["NAMESPACE", "register_all", "sanitize", "preset_env_names", "PartitionEnv", "AdaptEnv", "ScheduleEnv"]
