"""The schedule agent: a trained `dora_rl/Schedule-v0` MaskablePPO network choosing a plan's
network schedule, and the rule that keeps FIFO when its choice is worse.

Why here: the `ppo` planner (dora_rl/learning/planner.py) builds a plan with the partition
agent and then asks this agent for the plan's schedule (micro-batches, per-medium
priorities, all-reduce start and buckets, extra 1F1B warm-up: issue 16 item 6), so the
learned planner decides the scheduling too. The agent plays one `ScheduleEnv` episode on
the plan (greedy, with the masks); the simulator then judges the result against FIFO, and
if the agent's schedule is slower than FIFO, or worse by the scenario's QoE and objective
(`dora_rl.sim.scheduler.key`), the plan keeps FIFO (`Decision.rule`: the figure comes from
the rule, not the network). Without a shipped agent the coordinate-search scheduler
(`dora_rl.sim.schedule_plan`) decides, with a logged warning (docs/learning.md,
"The schedule agent")."""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from dora_rl.errors import AgentError
from dora_rl.learning.agent_files import load_model, read_config
from dora_rl.learning.agents import sanitize
from dora_rl.plan import Plan
from dora_rl.resources import agents_dir

log = logging.getLogger(__name__)

ENV_ID = "dora_rl/Schedule-v0"
KIND = "schedule"
TOL = 1e-9


def default_schedule_agent_path() -> Path:
    return agents_dir() / sanitize(ENV_ID)


def layout() -> dict:
    """What a schedule agent's network was trained on: a mismatch cannot be loaded."""
    from dora_rl.envs.schedule import N_ACTIONS, N_OBS, PHASES

    return {"kind": KIND, "n_obs": N_OBS, "n_actions": N_ACTIONS, "phases": list(PHASES)}


@dataclass
class Decision:
    """The schedule the planner attaches: `plan` (with its micro-batches and schedule),
    the simulator on it and on the plan as given under FIFO, who decided (`agent`, `rule`:
    the agent's choice was worse than FIFO so FIFO is kept, `scheduler`: no agent), the
    agent's own choice and the simulator on it (even when the rule overrode it), and the
    decision time."""

    plan: Plan
    result: object
    fifo: object
    by: str
    proposed: dict
    network: object
    seconds: float


class ScheduleAgent:
    """A loaded Schedule-v0 network: `episode(cm, plan)` plays it greedily on one plan,
    `decide(cm, plan)` adds the FIFO rule."""

    def __init__(self, model, config: dict, path: Path):
        self.model, self.config, self.path = model, config, path

    def episode(self, cm, plan: Plan, env=None):
        """The agent's greedy schedule for `plan`: (plan with the chosen micro-batches and
        schedule, the simulator's result on it, the environment played)."""
        from dora_rl.envs.schedule import ScheduleEnv

        env = env or ScheduleEnv(instances=[(cm, plan)])
        obs, _ = env.reset(seed=0, options={"instance": 0})
        while not env.done:
            a, _ = self.model.predict(obs, deterministic=True, action_masks=env.action_masks())
            obs, *_ = env.step(int(a))
        return env.chosen_plan(), env.result, env

    def decide(self, cm, plan: Plan) -> Decision:
        """The agent's schedule for `plan`, or FIFO where the simulator rates it worse."""
        from dora_rl.sim.scheduler import key

        t0 = time.perf_counter()
        chosen, r, env = self.episode(cm, plan)
        fifo = env.inst.fifo
        base = dataclasses.replace(plan, schedule=None)
        proposed = {"microbatches": chosen.microbatches, **chosen.schedule.to_dict()}
        if r.latency_ms <= fifo.latency_ms * (1 + TOL) and key(cm, r) <= key(cm, fifo):
            if chosen.schedule.is_fifo:
                chosen = dataclasses.replace(chosen, schedule=None)
            return Decision(chosen, r, fifo, "agent", proposed, r, time.perf_counter() - t0)
        log.info("schedule agent: its schedule (%.4g ms) is worse than FIFO (%.4g ms) on the simulator; "
                 "FIFO kept", r.latency_ms, fifo.latency_ms)
        return Decision(base, fifo, fifo, "rule", proposed, r, time.perf_counter() - t0)


def load_schedule_agent(path: str | Path | None = None) -> ScheduleAgent:
    """The Schedule-v0 agent in `path` (its folder or model.zip; default: the shipped one);
    AgentError names what is missing or does not match."""
    folder = Path(path) if path is not None else default_schedule_agent_path()
    folder = folder.parent if folder.suffix == ".zip" else folder
    what, fix = "schedule agent", "retrain it with `python -m dora_rl.learning.schedule_training --out DIR`"
    cfg = read_config(folder, what, fix)
    bad = [f"{k}: agent {cfg.get(k)!r} vs this dora_rl {v!r}" for k, v in layout().items() if cfg.get(k) != v]
    if bad:
        raise AgentError(f"{what} {str(folder)!r}: layout mismatch ({'; '.join(bad)}); {fix}")
    model = load_model(folder, what, fix)
    return ScheduleAgent(model, cfg, folder)


_CACHE: dict[str, ScheduleAgent | None] = {}


def cached_schedule_agent(agent: str | Path | None = None) -> ScheduleAgent | None:
    """The schedule agent in `agent` (default: the shipped one), loaded once per process;
    None, with a warning, if there is none there."""
    folder = Path(agent) if agent is not None else default_schedule_agent_path()
    k = str(folder)
    if k not in _CACHE:
        exists = (folder / "model.zip").is_file() or (folder.suffix == ".zip" and folder.is_file())
        _CACHE[k] = load_schedule_agent(folder) if exists else None
        if not exists:
            log.warning("no schedule agent at %s: the ppo planner's schedule comes from the coordinate-search "
                        "scheduler instead (docs/learning.md, 'The schedule agent')", folder)
    return _CACHE[k]


def schedule_for(cm, plan: Plan, agent: str | Path | None = None) -> Decision:
    """The `ppo` planner's schedule for `plan`: the schedule agent's (module docstring); if
    no agent is shipped (or `agent` names none), the coordinate-search scheduler's, with a
    warning. An agent that exists but cannot be loaded is an AgentError."""
    from dora_rl.sim import schedule_plan

    a = cached_schedule_agent(agent)
    if a is not None:
        return a.decide(cm, plan)
    t0 = time.perf_counter()
    s = schedule_plan(cm, plan)
    plan_out = dataclasses.replace(s.plan, schedule=None) if s.plan.schedule.is_fifo else s.plan
    return Decision(plan_out, s.result, s.fifo, "scheduler", {}, s.result, time.perf_counter() - t0)


__all__ = ["ENV_ID", "KIND", "Decision", "ScheduleAgent", "default_schedule_agent_path", "layout",
           "load_schedule_agent", "cached_schedule_agent", "schedule_for"]
