"""The learned runtime adapter's agent: a trained AdaptEnv MaskablePPO network as the `ppo` adapter's policy.

Why here: the `ppo` adapter (dora_rl/adapter/learned.py) builds the observation
itself, with the one builder AdaptEnv trains on (dora_rl/adapter/observation.py), and asks a
policy for a row (`act(obs) -> int`). This module loads the network (`load_adapter_agent`),
after checking that its config.yml describes this package's observation layout and row
count: a mismatch is an AgentError naming the field that differs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dora_rl.adapter.observation import layout
from dora_rl.errors import AgentError
from dora_rl.learning.agent_files import load_model, read_config
from dora_rl.scenario import Scenario


def check_layout(cfg: dict, where: str) -> None:
    """AgentError naming every layout field of `cfg` that differs from this package's."""
    if cfg.get("kind") != "adapt":
        raise AgentError(f"adapter agent {where}: config.yml kind is {cfg.get('kind')!r}, not 'adapt' "
                         "(not an AdaptEnv agent)")
    bad = [f"{k}: agent {cfg.get(k)!r} vs this dora_rl {v!r}" for k, v in layout().items() if cfg.get(k) != v]
    if bad:
        raise AgentError(f"adapter agent {where}: observation layout mismatch ({'; '.join(bad)}); retrain it "
                         "with `python -m dora_rl.learning.adapt_training`")


def _load_model(folder: Path):
    """(MaskablePPO network, config) of the agent in `folder`, layout checked."""
    fix = "retrain it with `python -m dora_rl.learning.adapt_training`"
    cfg = read_config(folder, "adapter agent", fix)
    check_layout(cfg, repr(str(folder)))
    model = load_model(folder, "adapter agent", fix)
    return model, cfg


class NumpyActor:
    """The greedy masked actor of a MaskablePPO MultiInputPolicy (flatten + concat, MLP, action net) in numpy."""

    def __init__(self, policy):
        import torch as th

        ext = policy.pi_features_extractor if hasattr(policy, "pi_features_extractor") else policy.features_extractor
        self.keys = list(ext.extractors.keys())
        self.layers: list = []
        for mod in list(policy.mlp_extractor.policy_net) + [policy.action_net]:
            if isinstance(mod, th.nn.Linear):
                self.layers.append(("lin", mod.weight.detach().numpy().astype(np.float64).T.copy(),
                                    mod.bias.detach().numpy().astype(np.float64).copy()))
            elif isinstance(mod, th.nn.Tanh):
                self.layers.append(("tanh", None, None))
            elif isinstance(mod, th.nn.ReLU):
                self.layers.append(("relu", None, None))
            else:
                raise AgentError(f"adapter agent: unsupported layer {type(mod).__name__} in the actor network")

    def logits(self, obs: dict) -> np.ndarray:
        x = np.concatenate([np.asarray(obs[k], dtype=np.float64).ravel() for k in self.keys])
        for kind, w, b in self.layers:
            x = x @ w + b if kind == "lin" else (np.tanh(x) if kind == "tanh" else np.maximum(x, 0.0))
        return x

    def act(self, obs: dict) -> int:
        z = self.logits(obs)
        z[np.asarray(obs["action_mask"]) < 0.5] = -np.inf
        return int(np.argmax(z))


class AdapterAgent:
    """A trained AdaptEnv network as the `ppo` adapter's policy: greedy, with the row mask."""

    def __init__(self, model, config: dict, path: Path):
        self.model, self.config, self.path = model, config, path
        want = (layout()["max_candidates"], layout()["candidate_features"])
        got = tuple(model.observation_space["candidates"].shape)
        if got != want or int(model.action_space.n) != want[0]:
            raise AgentError(f"adapter agent {str(path)!r}: the network's candidate rows {got} / actions "
                             f"{model.action_space.n} do not match this dora_rl's {want} / {want[0]}")
        self.actor = NumpyActor(model.policy)

    def act(self, obs: dict) -> int:
        return self.actor.act(obs)


def load_adapter_agent(scenario: Scenario, path: str | Path) -> AdapterAgent:
    """The AdaptEnv agent in `path` (its folder or its model.zip); AgentError says what is wrong.
    `scenario` is accepted for the loader protocol: the rows are built per scenario by the adapter."""
    folder = Path(path)
    folder = folder.parent if folder.suffix == ".zip" else folder
    model, config = _load_model(folder)
    return AdapterAgent(model, config, folder)


__all__ = ["AdapterAgent", "NumpyActor", "load_adapter_agent", "check_layout"]
