"""Learning: a short training run improves on random; agents load (and fail to load)
the way the docs say; every shipped agent still plans what its results.json records."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from dora_rl.cli import main as cli_main
from dora_rl.envs.partition import PartitionEnv
from dora_rl.errors import AgentError
from dora_rl.scenario import load_scenario

REPO = Path(__file__).resolve().parents[1]
ENV = "dora_rl/Partition-traffic_analytics-v0"
FAST = {"policy": "SetPointerPolicy", "n_envs": 4, "n_steps": 128, "batch_size": 256, "n_epochs": 10,
        "learning_rate": 3e-3, "gamma": 1.0, "ent_coef": 0.0,
        "policy_kwargs": {"features_extractor_kwargs": {"hidden": 32, "device_dim": 16},
                          "net_arch": {"pi": [], "vf": [32]}},
        "env_kwargs": {"max_devices": 8}, "n_eval_episodes": 5}


def _random_utility(scenario, n=200):
    env = PartitionEnv(scenario=scenario)
    rng = np.random.default_rng(0)
    out = []
    for s in range(n):
        env.reset(seed=s)
        done = False
        while not done:
            _, r, done, _, _ = env.step(int(rng.choice(np.flatnonzero(env.action_masks()))))
        out.append(r)
    return float(np.mean(out))


@pytest.fixture(scope="module")
def tiny_agent(tmp_path_factory):
    from dora_rl.policies.training import train

    out = tmp_path_factory.mktemp("train")
    folder = train(ENV, timesteps=4096, seed=0, out=out, progress=False, hyperparams=FAST, eval_freq=10**9)
    return folder


def test_short_training_improves_on_random(tiny_agent):
    from dora_rl.policies.agents import load_agent

    sc = load_scenario("traffic_analytics")
    agent = load_agent(tiny_agent)
    (_, m, u), = agent.rollouts(sc)
    assert u > _random_utility(sc) + 0.2
    for f in ("model.zip", "config.yml", "results.json", "README.md"):
        assert (tiny_agent / f).is_file()
    assert (tiny_agent.parent / "tb").is_dir()        # TensorBoard logs
    cfg = yaml.safe_load((tiny_agent / "config.yml").read_text())
    assert cfg["max_devices"] == 8 and cfg["obs_version"] >= 1


def test_ppo_planner_with_agent_option(tiny_agent):
    from dora_rl.planners import run_planner
    from dora_rl.planners import ppo  # noqa: F401  (registers "ppo" until the package imports it)

    sc = load_scenario("traffic_analytics")
    greedy = run_planner("ppo", sc, agent=str(tiny_agent))
    best = run_planner("ppo", sc, agent=str(tiny_agent), samples=6, seed=1)
    obj = sc.qoe.objective
    key = lambda m: (not m.qoe_ok, not m.feasible, m.objective(obj))  # noqa: E731
    assert key(best.metrics) <= key(greedy.metrics)


def test_agent_errors(tiny_agent, tmp_path):
    from dora_rl.policies.agents import load_agent
    from dora_rl.synthetic import random_scenario

    with pytest.raises(AgentError, match="not found"):
        load_agent(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(AgentError, match="model.zip is missing"):
        load_agent(empty)
    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny_agent, corrupt)
    (corrupt / "model.zip").write_bytes(b"not a zip file")
    with pytest.raises(AgentError, match="corrupt"):
        load_agent(corrupt)
    old = tmp_path / "old"
    shutil.copytree(tiny_agent, old)
    cfg = yaml.safe_load((old / "config.yml").read_text())
    cfg["obs_version"] = 0
    (old / "config.yml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(AgentError, match="observation layout"):
        load_agent(old)
    agent = load_agent(tiny_agent)
    big = random_scenario(np.random.default_rng(0), min_devices=10, max_devices=10)
    with pytest.raises(AgentError, match="--planner dora"):
        agent.plan(big)
    small = tmp_path / "small"
    shutil.copytree(tiny_agent, small)
    cfg = yaml.safe_load((small / "config.yml").read_text())
    cfg["max_devices"] = 4
    (small / "config.yml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(AgentError, match="max_devices"):
        load_agent(small)


def test_cli_evaluate_json(tiny_agent, capsys):
    rc = cli_main(["evaluate", str(tiny_agent), "--scenarios", "traffic_analytics", "--planners", "dora,local,random",
                   "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    row = out["rows"][0]
    assert row["scenario"] == "traffic_analytics" and "dora" in row["vs"]
    assert cli_main(["evaluate", str(tiny_agent / "missing")]) == 2


def _shipped():
    root = REPO / "trained_agents"
    return sorted(p for p in root.iterdir() if (p / "model.zip").is_file()) if root.is_dir() else []


@pytest.mark.parametrize("folder", _shipped(), ids=lambda p: p.name)
def test_shipped_agent_matches_results_and_beats_random(folder):
    from dora_rl.planners import run_planner
    from dora_rl.policies.agents import load_agent

    assert (folder / "model.zip").stat().st_size < 5e6
    agent = load_agent(folder)
    res = json.loads((folder / "results.json").read_text())
    checks = res.get("check") or []
    assert checks, "results.json must record greedy plans to re-check"
    for c in checks:
        sc = load_scenario(c["scenario"])
        plan, m = agent.plan(sc)
        obj = sc.qoe.objective
        assert m.objective(obj) == pytest.approx(c["objective"], rel=1e-6)
        assert m.qoe_ok == c["qoe_ok"]
        rnd = sorted((not r.qoe_ok, r.objective(obj)) for r in
                     (run_planner("random", sc, seed=s).metrics for s in range(5)))
        assert (not m.qoe_ok, m.objective(obj)) <= rnd[2], (c["scenario"], rnd)   # beats random's median


def test_numpy_actor_matches_torch(tiny_agent):
    import torch

    from dora_rl.policies.agents import load_agent

    agent = load_agent(tiny_agent)
    actor = agent.actor()
    env = PartitionEnv(seed=5)
    rng = np.random.default_rng(0)
    for s in range(5):
        obs, _ = env.reset(seed=s)
        done = False
        while not done:
            t = {k: torch.from_numpy(v).unsqueeze(0) for k, v in obs.items()}
            m = env.action_masks()
            lt = agent.policy.masked_logits(t, torch.from_numpy(m).unsqueeze(0))[0].numpy()
            np.testing.assert_allclose(actor.logits(obs, m)[m], lt[m], atol=1e-4)
            obs, _, done, _, _ = env.step(int(rng.choice(np.flatnonzero(m))))


def test_cli_train_rejects_unknown_env(capsys):
    assert cli_main(["train", "dora_rl/Nope-v0", "--timesteps", "10", "--no-progress"]) == 2
    assert "unknown environment" in capsys.readouterr().err
