"""`StageAgent`: a loaded stage-policy agent planning any cluster size with a time budget.

The agent's network has no size cap: each scenario gets a StageEnv sized to it exactly
(padding per call, not per agent). `config.yml` records the range it was trained on
(`trained_range`); a scenario outside it is planned with a warning naming the range;
beyond `HARD_MAX_DEVICES` (256) devices it is refused (AgentError)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from dora_rl.envs.stage import HARD_MAX_DEVICES
from dora_rl.errors import AgentError, NoFeasiblePlan
from dora_rl.scenario import Scenario

log = logging.getLogger(__name__)


class OutOfRangeWarning(UserWarning):
    """The scenario is outside the range of sizes the agent was trained on."""


class StageAgent:
    """A StagePolicy agent (see the module docstring); `plan` and `rollouts` as PartitionAgent."""

    def __init__(self, model, config: dict, path: Path):
        self.model, self.config, self.path = model, config, path
        self.policy = model.policy
        self.max_devices = HARD_MAX_DEVICES
        self.name = config.get("env_id", str(path))
        tr = config.get("trained_range") or {}
        self.trained_devices = tuple(tr.get("devices") or (2, int(config.get("max_devices", 8))))
        self.trained_blocks = tuple(tr.get("blocks") or (1, int(config.get("max_blocks", 32))))
        self._actor = None

    def actor(self):
        if self._actor is None:
            from dora_rl.learning.stage_actor import StageNumpyActor
            self._actor = StageNumpyActor(self.policy)
        return self._actor

    def check_scenario(self, scenario: Scenario) -> None:
        n, B = scenario.cluster.n, scenario.profile.n_blocks
        if n > HARD_MAX_DEVICES:
            raise AgentError(f"scenario {scenario.name!r} has {n} devices; the stage policy's hard limit is "
                             f"{HARD_MAX_DEVICES} (use `--planner dora`)")
        (d0, d1), (b0, b1) = self.trained_devices, self.trained_blocks
        if not (d0 <= n <= d1 and b0 <= B <= b1):
            msg = (f"scenario {scenario.name!r} ({n} devices, {B} blocks) is outside agent {self.name!r}'s trained "
                   f"range ({d0}-{d1} devices, {b0}-{b1} blocks); planning anyway")
            log.warning(msg)
            warnings.warn(msg, OutOfRangeWarning, stacklevel=3)

    def env_for(self, inst):
        from dora_rl.envs.stage import StageEnv

        return StageEnv.planning(inst)

    def rollouts(self, scenario: Scenario, samples: int = 1, seed: int = 0, instance=None, cost=None,
                 search: str = "greedy", top_k: int | None = None, budget_ms: float | None = None,
                 checked: bool = False):
        """[(plan, metrics, utility)]: the `search` result first, then `samples - 1` sampled plans.
        `checked`: the caller ran `check_scenario` already (its range warning once)."""
        from dora_rl.envs.instance import Instance
        from dora_rl.learning.stage_search import _sample, decode

        if not checked:
            self.check_scenario(scenario)
        inst = instance or Instance(scenario, max(scenario.cluster.n, 1), cost)
        if not inst.completable:
            raise NoFeasiblePlan(f"ppo: no plan fits in memory on {scenario.name!r}", constraint="memory")
        import numpy as np

        from dora_rl.learning.stage_actor import one_blas_thread

        rng = np.random.default_rng(seed)
        with one_blas_thread():
            env = self.env_for(inst)
            out = [decode(self.actor(), env, search, budget_ms=budget_ms, top_k=top_k, seed=seed)]
            for _ in range(1, max(1, int(samples))):
                out.append(_sample(self.actor(), env.fork(), rng))
        return out

    def plan(self, scenario: Scenario, samples: int = 1, seed: int = 0, cost=None, search: str = "greedy",
             top_k: int | None = None, budget_ms: float | None = None):
        """The best (QoE-compliant first, then objective) of `rollouts`. With search=polish (the
        `ppo` planner's default), the polish from the fastest device (the bench's control) is
        a candidate too, so the planner is never worse than that control: the network's plan
        can lead the polish into a local optimum that misses QoE, or a worse compliant one,
        where the control's start does not (edge_cluster: 602 -> 687 ms with the session-10
        masks, docs/learning.md "Session 8" and "Session 10"). The bench's "network + polish"
        row is the network's start alone (`decode`), not this planner."""
        from dora_rl.cost.qoe import preference
        from dora_rl.envs.instance import Instance
        from dora_rl.learning.stage_actor import one_blas_thread

        self.check_scenario(scenario)        # before the instance tables (a typed error on bad input)
        with one_blas_thread():
            inst = Instance(scenario, max(scenario.cluster.n, 1), cost)
            res = self.rollouts(scenario, samples, seed, instance=inst, search=search, top_k=top_k,
                                budget_ms=budget_ms, checked=True)
            if search == "polish":
                from dora_rl.learning.stage_search import decode
                from dora_rl.learning.stage_training import fastest_plan

                start = fastest_plan(inst)
                if start is not None:
                    res.append(decode(self.actor(), self.env_for(inst), "polish", budget_ms=budget_ms, start=start))
        best = min(res, key=lambda x: preference(x[1], scenario.qoe.objective))
        return best[0], best[1]


def load_stage_model(folder: Path):
    """MaskablePPO.load of a stage agent's model.zip, checked to be a StageEnv network."""
    from dora_rl.learning.agent_files import load_model
    from dora_rl.learning.stage_policy import StagePolicy

    model = load_model(folder, "agent", "train one with `dora train ENV --out DIR`", StagePolicy)
    if "blocks" not in getattr(model.observation_space, "spaces", {}):
        raise AgentError(f"agent {str(folder)!r}: model.zip was not trained on a StageEnv (its observation space "
                         "has no 'blocks'), but config.yml says action_space: stage")
    return model


def add_new_keys(model) -> None:
    """Give a stage model saved with observation layout v3 to v6 the v7 space, in place:
    v4 added only the "relay_w" key (dora_rl/envs/stage_obs.py:relay_power), which the
    lookahead reads, v5 only "two_stage" and v6 only "promise" (dora_rl/envs/stage_two.py),
    which the two-stage rule reads, v7 only "group" (dora_rl/envs/stage_group.py), which
    the group rule reads; the encoder reads none of them, so an older network is the same
    network under v7 (its energy estimate then counts relays, its rules see two-stage
    plans, promises and groups). Saved after this, the model loads in plain SB3 against v7
    environments (the shipped agent's was, sessions 32-35)."""
    import numpy as np
    from gymnasium import spaces

    from dora_rl.features import CLIP

    old = model.observation_space
    D, Bm = old["devices"].shape[0], old["blocks"].shape[0]
    add = {"relay_w": spaces.Box(-CLIP, CLIP, (D,), np.float32),
           "two_stage": spaces.Box(-CLIP, CLIP, (D, Bm), np.float32),
           "promise": spaces.Box(0.0, 1.0, (D,), np.float32),
           "group": spaces.Box(0.0, 1.0, (D,), np.float32)}
    if all(k in old.spaces for k in add):
        return
    new = spaces.Dict({**old.spaces, **{k: v for k, v in add.items() if k not in old.spaces}})
    model.observation_space = model.policy.observation_space = new
    model.policy.features_extractor._observation_space = new


def fix_objective_term(model, weights) -> None:
    """Give `model`'s stage policy the fixed objective term at `weights` (latency, energy),
    in place: the head's buffer and the policy kwargs `model.save` records, so that
    `MaskablePPO.load` rebuilds the same network. Why after training: the term is a computed
    formula (`stage_lookahead.with_objective_term`) with no learned weight, so its weights can be
    chosen on validation for a trained network; the shipped agent's (32, 32) were
    (docs/learning.md, "Sessions 30-31")."""
    import torch

    w = [float(x) for x in weights]
    if len(w) != 2:
        raise ValueError(f"objective term: a (latency, energy) pair of weights, got {weights!r}")
    head = model.policy.action_net
    if isinstance(getattr(head, "obj_w", None), torch.nn.Parameter):
        raise ValueError("this policy learns its objective weights; fix them only on a policy without the term")
    head.obj_term = True
    head.register_buffer("obj_w", torch.tensor(w, device=head.add.weight.device))   # new or replaced
    model.policy.objective_term = w
    model.policy_kwargs = {**(model.policy_kwargs or {}), "objective_term": w}
