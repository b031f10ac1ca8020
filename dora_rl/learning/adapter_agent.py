"""The learned runtime adapter's agent: a trained AdaptEnv agent choosing among the adapter's plans.

Why here: the `ppo` adapter (dora_rl/runtime/adapter/) asks a policy which candidate plan to run
each control interval; the policy is a MaskablePPO network trained on AdaptEnv
(dora_rl/envs/adapt.py). This module loads it (`load_adapter_agent`) and turns the adapter's
candidates into the observation the network was trained on, through the one builder AdaptEnv
uses (dora_rl/envs/adapt_obs.py): latency/energy relative to the candidates' nominal
references, QoE flags, battery margin, weights to move from the current plan; bandwidth
relative to nominal, progress, battery level.
"""

from __future__ import annotations

import math
from pathlib import Path

import yaml

from dora_rl.cost import CostModel
from dora_rl.cost.qoe import required_rate
from dora_rl.envs.adapt_obs import (
    ADAPT_OBS_VERSION,
    NC,
    NGA,
    AdaptSituation,
    CandidateView,
    build_observation,
    moved_fraction,
)
from dora_rl.errors import AgentError
from dora_rl.plan import Plan
from dora_rl.scenario import Scenario


def _load_model(folder: Path):
    """The MaskablePPO network in `folder`, after checking config.yml describes an AdaptEnv
    agent with this package's observation layout; returns (model, config)."""
    cpath, zpath = folder / "config.yml", folder / "model.zip"
    if not cpath.is_file() or not zpath.is_file():
        raise AgentError(f"adapter agent {str(folder)!r}: model.zip or config.yml is missing")
    cfg = yaml.safe_load(cpath.read_text()) or {}
    if cfg.get("kind") != "adapt" or cfg.get("obs_version") != ADAPT_OBS_VERSION \
            or cfg.get("candidate_features") != NC or cfg.get("global_features") != NGA:
        raise AgentError(f"adapter agent {str(folder)!r}: not an AdaptEnv agent with this dora_rl's observation "
                         f"layout (v{ADAPT_OBS_VERSION}, {NC} candidate / {NGA} global features); retrain it "
                         "with `dora train dora_rl/Adapt-v0`")
    try:
        from sb3_contrib import MaskablePPO

        from dora_rl.learning.agents import CUSTOM_OBJECTS
        model = MaskablePPO.load(str(zpath), device="cpu", custom_objects=CUSTOM_OBJECTS)
    except Exception as e:  # noqa: BLE001 - any failure here means an unusable file
        raise AgentError(f"adapter agent {str(folder)!r}: model.zip is corrupt or unreadable "
                         f"({type(e).__name__}: {str(e)[:120]})") from None
    return model, cfg


class AdapterAgent:
    """A trained AdaptEnv agent as the runtime adapter's policy (`choose`): the adapter's
    candidates, scored on its planning condition, become an AdaptEnv observation and the
    agent picks one with masks, greedily. More candidates than the agent's slots: the
    current plan and the best ones (QoE first, then objective) are kept. Slots are ordered
    by nominal latency (AdaptEnv orders its Pareto set that way). The agent remembers the
    bandwidth of its previous decision (`bw_prev`, the observation's `log_bw_prev`)."""

    def __init__(self, scenario: Scenario, model, config: dict, path: Path):
        self.model, self.config, self.path = model, config, path
        self.K = int(config.get("max_candidates", 8))
        if self.model.observation_space["candidates"].shape != (self.K, NC):
            raise AgentError(f"adapter agent {str(path)!r}: config.yml and the network disagree on the candidates")
        ek = config.get("env_kwargs") or {}
        self.horizon_s = float(ek.get("horizon", 60)) * float(ek.get("dt", 5.0))
        self.scenario = scenario
        self.cost0 = CostModel(scenario)
        self.pp = self.cost0.pp
        self.medium = scenario.dynamic_medium()
        self.nominal = scenario.cluster.media[self.medium].mbps if self.medium else None
        self._nominal: dict[str, tuple] = {}     # plan key -> (stage indices, nominal metrics)
        self.bw_prev = None

    def _nom(self, plan: Plan):
        k = plan.key()
        if k not in self._nominal:
            st = self.cost0.stage_indices(plan)
            self._nominal[k] = (st, self.cost0.evaluate_stages(st, plan.microbatches))
        return self._nominal[k]

    def observation(self, state, options, current, bw_prev: float | None = None) -> tuple[dict, list[int], float]:
        """(observation, the option index in each slot, the bandwidth now) for the adapter's
        `options` (scored plans) with `current` the mix in use; `bw_prev` is the bandwidth
        at the previous decision."""
        q = self.cost0.qoe
        nom = [self._nom(o.plan) for o in options]
        cur_pid = None
        if current is not None and current.parts:
            cur_pid = max(current.parts, key=lambda x: x[1])[0].pid
        idx = list(range(len(options)))
        if len(idx) > self.K:
            rank = sorted(idx, key=lambda i: (options[i].pid != cur_pid, not options[i].ok,
                                              options[i].metrics.objective(q.objective)))
            idx = rank[:self.K]
        idx.sort(key=lambda i: (nom[i][1].latency_ms, nom[i][1].energy_j))
        cur_st = None
        if cur_pid is not None:
            for o in options:
                if o.pid == cur_pid:
                    cur_st = self._nom(o.plan)[0]
        views = []
        for i in idx:
            o, m = options[i], options[i].metrics
            views.append(CandidateView(
                metrics=m, battery_hours=min(m.battery_hours.values()) if m.battery_hours else math.inf,
                current=o.pid == cur_pid, moved=0.0 if cur_st is None else moved_fraction(self.pp, cur_st, nom[i][0]),
                qoe_ok=m.qoe_ok))
        mb = (state.bandwidth or {}).get(self.medium) if self.medium else None
        cl = self.scenario.cluster
        lv = [float(v) for d, v in (state.battery or {}).items() if d in cl.index and cl.device(d).on_battery]
        situation = AdaptSituation(
            qoe=q, need=required_rate(self.cost0),
            lat_ref=max(min(nom[i][1].latency_ms for i in idx), 1e-12),
            e_ref=max(min(nom[i][1].energy_j for i in idx), 1e-12),
            mbps=mb, mbps_prev=bw_prev, nominal=self.nominal,
            progress=min(0.99, max(0.0, state.t / self.horizon_s)), min_battery=min(lv) if lv else 1.0)
        return build_observation(situation, views, self.K), idx, mb

    def choose(self, state, options, current, scenario) -> int | None:
        """The index in `options` of the plan to run, or None (keep the current plan/mix)."""
        if not options:
            return None
        obs, idx, self.bw_prev = self.observation(state, options, current, self.bw_prev)
        a, _ = self.model.predict(obs, deterministic=True, action_masks=obs["action_mask"] > 0.5)
        a = int(a)
        return idx[a] if a < len(idx) else None


def load_adapter_agent(scenario: Scenario, path: str | Path) -> AdapterAgent:
    """The AdaptEnv agent in `path` (its folder or its model.zip) for `scenario`, as an object
    with `choose(state, options, current, scenario) -> int | None`; AgentError says what is wrong."""
    folder = Path(path)
    folder = folder.parent if folder.suffix == ".zip" else folder
    model, config = _load_model(folder)
    return AdapterAgent(scenario, model, config, folder)


__all__ = ["AdapterAgent", "load_adapter_agent"]
