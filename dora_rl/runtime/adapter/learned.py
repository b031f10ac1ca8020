"""The learned adapter `ppo`: an AdaptEnv agent choosing among `pareto`'s candidates, guarded by `pareto`'s rule;
the agent protocol and how an agent is found.

The agent itself (a trained MaskablePPO policy and its observation) lives with the
learning code; this module only asks for one (`load_agent_policy`) and holds what the
runtime demands of it: an index into the candidate set, QoE-compliant, not dearer than
the composition rule's choice by more than `margin`, and no flapping."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol

from dora_rl.cost.qoe import required_rate
from dora_rl.errors import AgentError, DoraError, NoFeasiblePlan
from dora_rl.runtime.adapter.base import register_adapter
from dora_rl.runtime.adapter.candidates import level_bandwidths
from dora_rl.runtime.adapter.compose import Mix, Scored, battery_budgets, conditions, make_mix, rescore
from dora_rl.runtime.adapter.rules import ParetoAdapter
from dora_rl.runtime.adapter.scoring import Evaluation
from dora_rl.runtime.adapter.state import State
from dora_rl.scenario import Scenario


class AgentPolicy(Protocol):
    """What a learned adapter must provide. `choose` sees the state, the candidate plans
    scored on the planning condition (sorted by plan id) and the current mix, and returns
    the index of the candidate to run, or None to keep the current plan/mix."""

    def choose(self, state: State, options: list[Scored], current: Mix | None, scenario: Scenario) -> int | None: ...


AGENT_LOADERS: list[Callable[[Scenario, str | Path | None], AgentPolicy]] = []


def register_agent_loader(fn: Callable[[Scenario, str | Path | None], AgentPolicy]) -> Callable:
    """Add a loader: fn(scenario, agent_path_or_None) -> AgentPolicy, raising AgentError
    when it cannot provide one. Loaders are tried newest first, then the built-in one."""
    AGENT_LOADERS.insert(0, fn)
    return fn


# ---------------------------------------------------------------- the built-in agent loader
def _load_agent(scenario: Scenario, path: str | Path | None) -> AgentPolicy:
    """The AdaptEnv agent shipped in trained_agents/: dora_rl__Adapt-<scenario>-v0, then
    dora_rl__Adapt-v0 (or the folder / zip `path`), loaded by
    dora_rl.learning.adapter_agent.load_adapter_agent (imported here, when first needed,
    so that importing the runtime does not import torch and SB3)."""
    from dora_rl.resources import agents_dir

    root = agents_dir()
    if path is not None:
        folders = [Path(path)] if Path(path).exists() else [root / str(path)]
    else:
        folders = [root / f"dora_rl__Adapt-{scenario.name}-v0", root / "dora_rl__Adapt-v0"]
    found = [f for f in folders if (f / "model.zip").is_file() or (f.suffix == ".zip" and f.is_file())]
    if not found:
        raise AgentError(f"no AdaptEnv agent for scenario {scenario.name!r} (looked in "
                         f"{', '.join(str(f) for f in folders)}); train one with `dora train dora_rl/Adapt-v0`, "
                         "or use --adapter pareto")
    from dora_rl.learning.adapter_agent import load_adapter_agent

    return load_adapter_agent(scenario, found[0])


def load_agent_policy(scenario: Scenario, agent: str | Path | None = None) -> AgentPolicy:
    """The first loader that yields a policy for `scenario`, else AgentError (all reasons)."""
    errors = []
    for fn in AGENT_LOADERS + [_load_agent]:
        try:
            return fn(scenario, agent)
        except AgentError as e:
            errors.append(str(e))
    raise AgentError("; ".join(dict.fromkeys(errors)))


@register_adapter
class PPOAdapter(ParetoAdapter):
    """The learned adapter: `pareto`'s candidates and composition, plus the partition
    agent's plan at each bandwidth level, with the AdaptEnv agent choosing among the
    single plans each interval. The agent decides whenever its pick is QoE-compliant over
    the planning band, costs at most `margin` more than the composition rule's choice
    (the LP's time-share, or keeping the current plan) and, where it differs from that
    choice, holds with `headroom` less bandwidth; a voluntary switch away from a
    compliant plan must save more than `margin`, hold with `headroom` less bandwidth and
    wait `min_dwell_s` (the rule's hysteresis: no flapping). Otherwise - a non-compliant pick, or
    a time-share clearly cheaper - `pareto`'s rule decides (reason 'guard' when it
    overrides the agent). `guard=False` follows the agent blindly (for studying it)."""

    name = "ppo"
    prestage = True

    def __init__(self, scenario: Scenario, *, agent: str | Path | None = None, policy: AgentPolicy | None = None,
                 guard: bool = True, partition_agent: str | Path | None | bool = None, **options):
        self.policy = policy if policy is not None else load_agent_policy(scenario, agent)
        self.guard = guard
        self.partition_agent = partition_agent
        super().__init__(scenario, **options)

    def add_candidates(self) -> None:
        """The partition agent's plan (rollout search) at every bandwidth level of the
        candidate set: the learned planner's proposals join the DP's."""
        if self.partition_agent is False or self._given is not None:
            return
        from dora_rl.learning.planner import cached_agent

        try:
            agent = cached_agent(None if self.partition_agent in (None, True) else self.partition_agent)
        except AgentError:
            if self.partition_agent not in (None, True):
                raise
            return          # no partition agent shipped: the DP's candidates only
        if self.scenario.cluster.n > agent.max_devices:
            return
        for bw in level_bandwidths(self.scenario, self.levels):
            try:
                plan, _ = agent.plan(conditions(self.scenario, bw, {}), search="rollout")
            except NoFeasiblePlan:
                continue
            self.pid(plan)

    def _choose(self, state: State, ev: Evaluation) -> tuple[Mix, str]:
        cost, best, by = ev.cost, ev.best, ev.by
        options = [by[p] for p in sorted(by)]
        try:
            k = self.policy.choose(state, options, self.current, self.scenario)
        except DoraError:
            raise
        except Exception as e:  # an agent that does not fit this scenario
            raise AgentError(f"adapter agent failed on scenario {self.scenario.name!r}: {e}") from None
        if k is not None and not (isinstance(k, int) and 0 <= k < len(options)):
            raise AgentError(f"adapter agent chose option {k!r} but scenario {self.scenario.name!r} offers "
                             f"{len(options)} candidate plans; the agent was trained for another candidate set")
        need, bud, slo = required_rate(cost), battery_budgets(cost), cost.qoe.latency_slo_ms
        if k is None:                     # the agent keeps what runs
            if self.current is None:
                return best, "initial"
            if not self.guard:
                return rescore(self.current, by, cost), "keep"
            return super()._choose(state, ev)
        pick = make_mix([(options[k], 1.0)], need, bud, slo)
        if not self.guard:
            if self.current is None:
                return pick, "initial"
            return pick, ("keep" if set(self.current.pids) == set(pick.pids) else "agent")
        rule, why = super()._choose(state, ev)
        if not pick.ok:
            return rule, ("guard" if set(rule.pids) != set(pick.pids) else why)
        if rule.ok and self.at_cost(pick, cost) > self.at_cost(rule, cost) * (1 + self.margin):
            return rule, "guard"
        if rule.ok and set(rule.pids) != set(pick.pids) and not self.holds_with_headroom(state, pick, ev):
            return rule, "guard"          # overruling the rule takes a pick as robust as its switches
        if self.current is None:
            return pick, "initial"
        if set(self.current.pids) == set(pick.pids):
            return pick, "keep"
        cur = rescore(self.current, by, cost)
        if not cur.ok:
            return pick, "qoe-risk"
        # a voluntary switch: after the dwell time, to a plan that saves more than
        # `margin` (a pick other than the rule's was checked for headroom above)
        saves = self.at_cost(pick, cost) < self.at_cost(cur, cost) * (1 - self.margin)
        if state.t - self.last_switch_t < self.min_dwell_s or not saves:
            return rule, why
        return pick, "agent"
