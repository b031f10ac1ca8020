"""The `ppo` planner: a trained MaskablePPO partition agent building the plan block by block.

Why here and not in dora_rl/planners/: the planner runs a learned agent (torch, SB3), and
planners/ sits below learning/; the registry there names this class by string
("dora_rl.learning.planner:PPOPlanner") and imports it the first time `ppo` is asked for.
The agent walks the blocks with action masks (dora_rl/envs/partition.py).

Options: `agent=PATH` (an agent folder, its model.zip, an env id or a folder name under
trained_agents/; default: the shipped generalist `dora_rl/Partition-v0`), `samples=K`
(the greedy plan plus K-1 sampled ones, the best under the cost model is kept: QoE-
compliant first, then the objective), `seed=S` (the sampler's seed), `search=polish`
(the default: the greedy plan, then polished locally on the cost model - cut shifts, merges, splits,
device swaps; a few ms), `search=rollout`
(rollout search instead of the greedy pass: every allowed action at each decision is
completed greedily and the best completion under the cost model is taken, then the plan
is polished locally - cut shifts, merges, splits, device swaps; never worse than greedy,
~10-100x its time; dora_rl/learning/search.py), `top_k=K` (rollout search
tries only the policy's K most likely actions per decision), `schedule=agent|fifo` (agent, the
default: the plan's network schedule - micro-batches, priorities, all-reduce, warm-up - from
the schedule agent `dora_rl/Schedule-v0`, kept only where the simulator rates it no worse than
FIFO; without a shipped schedule agent, the coordinate-search scheduler's, with a warning;
dora_rl/learning/schedule_agent.py), `schedule_agent=PATH` (another schedule agent folder)."""

from __future__ import annotations

from dora_rl.cost import CostModel
from dora_rl.errors import PlannerError
from dora_rl.plan import Plan
from dora_rl.planners.base import Planner, register
from dora_rl.scenario import Scenario

_AGENTS: dict[str, object] = {}
# the greedy plan + local polish: the mode that meets every learning target in < 20 ms
# for 8 devices x 50 blocks (trained_agents/dora_rl__Partition-v0/README.md)
DEFAULT_SEARCH = "polish"


def cached_agent(agent=None):
    """Load an agent once per process (torch and the network are the slow part)."""
    from dora_rl.learning.agents import load_agent, resolve_agent_path

    key = str(resolve_agent_path(agent).resolve())
    if key not in _AGENTS:
        _AGENTS[key] = load_agent(key)
    return _AGENTS[key]


def _int(options: dict, key: str, default: int, lo: int = 0) -> int:
    v = options.get(key, default)
    try:
        iv = int(v)
    except (TypeError, ValueError):
        raise PlannerError(f"planner 'ppo': option {key}={v!r} must be a whole number") from None
    if iv < lo:
        raise PlannerError(f"planner 'ppo': option {key}={v!r} must be >= {lo}")
    return iv


@register
class PPOPlanner(Planner):
    name = "ppo"
    description = ("learned policy (pretrained MaskablePPO agent): greedy with masks + local polish; "
                   "search=greedy|rollout, samples=K keeps the best of K")

    def check_supported(self, scenario: Scenario) -> None:
        """Also load the agent (torch, the network: ~2 s the first time in a process) and
        check the scenario against it, so planning time is planning, and a mismatch
        fails before anything runs."""
        super().check_supported(scenario)
        cached_agent(self.options.get("agent")).check_scenario(scenario)
        if str(self.options.get("schedule") or "agent") != "fifo":
            from dora_rl.learning.schedule_agent import cached_schedule_agent
            cached_schedule_agent(self.options.get("schedule_agent"))

    def plan(self, scenario: Scenario, cost: CostModel | None = None) -> Plan:
        unknown = set(self.options) - {"agent", "samples", "seed", "search", "top_k", "budget_ms", "schedule",
                                       "schedule_agent"}
        if unknown:
            raise PlannerError(f"planner 'ppo': unknown option(s) {', '.join(sorted(unknown))}; "
                               "known: agent=PATH, samples=K, seed=S, search=greedy|polish|rollout|sample|beam, "
                               "top_k=K, budget_ms=MS, schedule=agent|fifo, schedule_agent=PATH")
        schedule = str(self.options.get("schedule") or "agent")
        if schedule not in ("agent", "fifo"):
            raise PlannerError(f"planner 'ppo': option schedule={schedule!r} must be agent or fifo")
        samples = _int(self.options, "samples", 1, 1)
        seed = _int(self.options, "seed", 0)
        top_k = _int(self.options, "top_k", 0, 1) if self.options.get("top_k") is not None else None
        search = str(self.options.get("search") or DEFAULT_SEARCH)
        budget = self.options.get("budget_ms")
        if budget is not None:
            try:
                budget = float(budget)
            except (TypeError, ValueError):
                raise PlannerError(f"planner 'ppo': option budget_ms={budget!r} must be a number of ms") from None
            if not budget > 0:
                raise PlannerError(f"planner 'ppo': option budget_ms={budget:g} must be > 0")
        from dora_rl.learning import SEARCHES

        if search not in SEARCHES:
            raise PlannerError(f"planner 'ppo': option search={search!r} must be one of {', '.join(SEARCHES)}")
        agent = cached_agent(self.options.get("agent"))
        kw = {"budget_ms": budget} if budget is not None else {}
        cost = cost or CostModel(scenario)
        plan, _ = agent.plan(scenario, samples=samples, seed=seed, cost=cost, search=search, top_k=top_k, **kw)
        self.schedule_decision = None
        if schedule == "fifo":
            return plan
        from dora_rl.learning.schedule_agent import schedule_for

        self.schedule_decision = schedule_for(cost, plan, self.options.get("schedule_agent"))
        return self.schedule_decision.plan
