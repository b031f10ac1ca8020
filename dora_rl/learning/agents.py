"""Saving, loading and running trained agents.

An agent folder (trained_agents/<env-id-sanitised>/) holds `model.zip` (MaskablePPO),
`config.yml` (safe YAML: env id, hyperparameters, observation layout version, maximum
devices/blocks), `results.json` and a model card `README.md`. Loading never depends on
pickled schedules: the learning-rate and clip-range schedules are replaced by constants
through `custom_objects`, so a model saved under another SB3/Python version still
loads for planning."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import yaml

from dora_rl.errors import AgentError, DoraError, NoFeasiblePlan
from dora_rl.learning import SEARCHES
from dora_rl.learning.agent_files import load_model, read_config
from dora_rl.learning.hyperparams import load_hyperparams
from dora_rl.plan import Plan
from dora_rl.resources import agents_dir
from dora_rl.scenario import Scenario

AGENTS_DIR = agents_dir()
DEFAULT_ENV_ID = "dora_rl/Partition-v0"


def sanitize(env_id: str) -> str:
    return env_id.replace("/", "__")


def default_agent_path() -> Path:
    return AGENTS_DIR / sanitize(DEFAULT_ENV_ID)


def resolve_agent_path(agent: str | Path | None) -> Path:
    """An agent folder, a model.zip, an env id (`dora_rl/Partition-v0`) or a folder name
    under trained_agents/ -> the agent folder (None: the shipped generalist)."""
    if agent is None:
        return default_agent_path()
    p = Path(agent)
    if p.suffix == ".zip":
        return p.parent
    if p.exists():
        return p
    for cand in (AGENTS_DIR / str(agent), AGENTS_DIR / sanitize(str(agent))):
        if cand.exists():
            return cand
    shipped = sorted(q.name for q in AGENTS_DIR.iterdir() if q.is_dir()) if AGENTS_DIR.is_dir() else []
    raise AgentError(f"agent {str(agent)!r} not found: not a folder or model.zip, and not a shipped agent "
                     f"(shipped: {', '.join(shipped) or 'none'}); train one with `dora train ENV --out DIR`")




class PartitionAgent:
    """A loaded agent: plans scenarios greedily (or by sampling) with masks."""

    def __init__(self, model, config: dict, path: Path):
        self.model, self.config, self.path = model, config, path
        self.policy = model.policy
        self.max_devices = int(config["max_devices"])
        self.name = config.get("env_id", str(path))

    def actor(self):
        """The policy's actor as numpy (planning is one observation at a time)."""
        if getattr(self, "_actor", None) is None:
            from dora_rl.learning.extractor import NumpyActor
            self._actor = NumpyActor(self.policy)
        return self._actor

    def check_scenario(self, scenario: Scenario) -> None:
        n = scenario.cluster.n
        if n > self.max_devices:
            raise AgentError(f"scenario {scenario.name!r} has {n} devices but agent {self.name!r} was trained for "
                             f"at most {self.max_devices}; use the exact planner instead "
                             f"(`dora plan {scenario.name} --planner dora`) or train an agent with more devices")
        mb = int(self.config.get("max_blocks") or 0)
        if mb and scenario.profile.n_blocks > mb:
            raise AgentError(f"scenario {scenario.name!r} has {scenario.profile.n_blocks} blocks but agent "
                             f"{self.name!r} supports at most {mb}; use `--planner dora`")

    def rollouts(self, scenario: Scenario, samples: int = 1, seed: int = 0, instance=None, cost=None,
                 search: str = "greedy", top_k: int | None = None, budget_ms: float | None = None):
        """The greedy plan (`search="polish"`: then polished locally on the cost model;
        `search="rollout"`: rollout search, then polished; dora_rl/learning/search.py)
        first, then `samples - 1` sampled ones: [(plan, metrics, utility)]."""
        from dora_rl.envs.instance import Instance
        from dora_rl.envs.partition import PartitionEnv
        from dora_rl.learning.search import greedy_complete, polish, rollout_search, search_key

        if search not in SEARCHES[:3]:
            raise AgentError(f"unknown search {search!r} for this agent; choose one of {', '.join(SEARCHES[:3])}")
        self.check_scenario(scenario)
        inst = instance or Instance(scenario, self.max_devices, cost)
        if not inst.completable:
            raise NoFeasiblePlan(f"ppo: no plan fits in memory on {scenario.name!r} (the model's parameters "
                                 f"{scenario.profile.total_params / 1e9:.3g} GB; largest device "
                                 f"{max(d.memory_gb for d in scenario.cluster.devices):.3g} GB)", constraint="memory")
        env = PartitionEnv(scenario=None, max_devices=self.max_devices, pool_size=1)
        rng = np.random.default_rng(int(seed))
        actor = self.actor()
        env.reset(seed=seed, options={"scenario": inst})
        greedy = greedy_complete(actor, [env.fork()])[0]
        if search == "greedy":
            first = greedy
        elif search == "polish":
            first = polish(inst, greedy)
        else:   # rollout, and the polished greedy plan too: never worse than `polish`
            first = min(polish(inst, rollout_search(actor, env, top_k)), polish(inst, greedy),
                        key=lambda r: search_key(r, inst.objective))
        out = [first]
        for k in range(1, max(1, int(samples))):
            env.reset(seed=seed + k, options={"scenario": inst})
            done = False
            while not done:
                allowed = np.flatnonzero(env._mask)
                if len(allowed) == 1:       # a forced move: no need to ask the network
                    _, done, _ = env.advance(int(allowed[0]))
                    continue
                logits = actor.logits(env.observe(), env._mask)
                p = np.exp(logits - logits.max())
                _, done, _ = env.advance(int(rng.choice(len(p), p=p / p.sum())))
            out.append(env.result)
        return out

    def plan(self, scenario: Scenario, samples: int = 1, seed: int = 0, cost=None, search: str = "greedy",
             top_k: int | None = None, budget_ms: float | None = None) -> tuple[Plan, object]:
        """The best plan (QoE-compliant first, then feasible, then objective) of the rollouts."""
        from dora_rl.cost.qoe import preference

        res = self.rollouts(scenario, samples, seed, cost=cost, search=search, top_k=top_k)
        best = min(res, key=lambda x: preference(x[1], scenario.qoe.objective))
        return best[0], best[1]


def load_agent(agent: str | Path | None = None) -> PartitionAgent:
    """Load an agent folder (see `resolve_agent_path`); AgentError says what is wrong."""
    from dora_rl.envs.instance import NF, NG, OBS_VERSION

    path = resolve_agent_path(agent)
    folder = path if path.is_dir() else path.parent
    fix = "train one with `dora train ENV --out DIR`"
    if not (folder / "model.zip").is_file():
        raise AgentError(f"agent {str(folder)!r}: model.zip is missing; {fix}")
    config = read_config(folder, "agent", "re-save the agent with `dora train`")
    if "obs_version" not in config or "max_devices" not in config:
        raise AgentError(f"agent {str(folder)!r}: config.yml lacks obs_version/max_devices; re-save the agent")
    if config.get("action_space") == "stage":
        return _load_stage(folder, config)
    if config["obs_version"] != OBS_VERSION:
        raise AgentError(f"agent {str(folder)!r} uses observation layout v{config['obs_version']} but this dora_rl "
                         f"uses v{OBS_VERSION}; retrain it with `dora train {config.get('env_id', 'ENV')}`")
    from dora_rl.learning.extractor import SetPointerPolicy

    # agents saved before dora_rl.policies became dora_rl.learning pickled the policy class
    # under its old module path: name the class here instead of unpickling it
    model = load_model(folder, "agent", fix, SetPointerPolicy)
    space = model.observation_space
    try:
        D, F = space["devices"].shape
        G = space["global"].shape[0]
    except Exception:
        raise AgentError(f"agent {str(folder)!r}: model.zip was not trained on a PartitionEnv "
                         "(its observation space has no 'devices'/'global')") from None
    if F != NF or G != NG:
        raise AgentError(f"agent {str(folder)!r}: its network expects {F} device / {G} global features but this "
                         f"dora_rl's observation layout has {NF} / {NG}; retrain the agent")
    if D != int(config["max_devices"]):
        raise AgentError(f"agent {str(folder)!r}: config.yml says max_devices={config['max_devices']} "
                         f"but the network was trained for {D}")
    return PartitionAgent(model, config, folder)


def _load_stage(folder: Path, config: dict):
    """A stage-policy agent (dora_rl/learning/stage_agent.py), its layout checked first."""
    from dora_rl.envs.stage import NFB, NFD, SNG, STAGE_OBS_VERSION
    from dora_rl.learning.stage_agent import StageAgent, add_new_keys, load_stage_model

    want = (STAGE_OBS_VERSION, NFD, NFB, SNG)
    got = (config.get("obs_version"), config.get("device_features"), config.get("block_features"),
           config.get("global_features"))
    if got != want and not (got[0] in (3, 4, 5, 6) and got[1:] == want[1:]):    # v3-v6 -> v7: `add_new_keys`
        raise AgentError(f"agent {str(folder)!r} uses stage observation layout v{got[0]} with {got[1]}/{got[2]}/"
                         f"{got[3]} device/block/global features, but this dora_rl uses v{want[0]} with "
                         f"{want[1]}/{want[2]}/{want[3]}; retrain it with `dora train`")
    model = load_stage_model(folder)
    add_new_keys(model)          # (nothing to do on a v7 model)
    return StageAgent(model, config, folder)


def save_agent(model, folder: str | Path, config: dict, results: dict | None = None, card: str | None = None) -> Path:
    import json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # constant floats instead of schedules: nothing callable needs to survive pickling
    model.learning_rate = float(model.lr_schedule(0.0)) if callable(model.lr_schedule) else float(model.learning_rate)
    model.save(str(folder / "model.zip"), exclude=["lr_schedule", "clip_range", "clip_range_vf", "ep_info_buffer",
                                                   "ep_success_buffer", "_last_obs", "_last_original_obs",
                                                   "_last_episode_starts", "env", "tensorboard_log"])
    (folder / "config.yml").write_text(yaml.safe_dump(_plain(config), sort_keys=False))
    if results is not None:
        (folder / "results.json").write_text(json.dumps(_plain(results), indent=1) + "\n")
    if card is not None:
        (folder / "README.md").write_text(card)
    return folder


def update_results(folder: str | Path, entries: dict) -> dict:
    """Merge `entries` into the agent folder's results.json (created if missing); returns
    the merged results (the card builders and `dora evaluate --write-results` keep what
    earlier steps recorded)."""
    import json

    path = Path(folder) / "results.json"
    res = json.loads(path.read_text()) if path.is_file() else {}
    res.update(entries)
    path.write_text(json.dumps(_plain(res), indent=1) + "\n")
    return res


def _plain(o):
    """Make YAML/JSON-safe (numpy scalars, tuples, inf)."""
    if isinstance(o, dict):
        return {str(k): _plain(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_plain(v) for v in o]
    if isinstance(o, (np.floating, float)):
        v = float(o)
        return None if math.isnan(v) else (str(v) if math.isinf(v) else v)
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, str):
        return str(o)
    return o


def timed_plan(agent: PartitionAgent, scenario: Scenario, samples: int = 1, seed: int = 0):
    t0 = time.perf_counter()
    plan, m = agent.plan(scenario, samples, seed)
    return plan, m, time.perf_counter() - t0


__all__ = ["PartitionAgent", "load_agent", "save_agent", "default_agent_path", "resolve_agent_path", "load_hyperparams",
           "DoraError"]
