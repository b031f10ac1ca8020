"""Training, evaluating and shipping the schedule agent (`dora_rl/Schedule-v0`, MaskablePPO MLP).

Why one module: the agent's results.json is what this evaluation measures, on held-out
contention instances and on the `ppo` planner's plans of the three presets, beside its
controls (FIFO, the uniform masked policy, the coordinate-search scheduler) with the
decision times; bench/bench_sim.py prints the same evaluation of the shipped agent, and
the card (README.md) is written from it. The rule that keeps FIFO where the agent's
schedule is worse (dora_rl/learning/schedule_agent.py) is counted separately from the
network's own gain, so a figure that comes from the rule says so.

    PYTHONPATH=. python -m dora_rl.learning.schedule_training --out trained_agents/dora_rl__Schedule-v0
    PYTHONPATH=. python -m dora_rl.learning.schedule_training --evaluate trained_agents/dora_rl__Schedule-v0
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
import time
from pathlib import Path

import numpy as np

from dora_rl.learning.schedule_agent import ENV_ID, ScheduleAgent, layout, load_schedule_agent

log = logging.getLogger(__name__)

PRESETS = ("smart_home", "traffic_analytics", "edge_cluster")
CHECK_SEEDS = (100, 101, 102, 103)      # results.json "check": the network's schedule, re-played by the tests


def _geo(xs) -> float:
    xs = [x for x in xs if x and math.isfinite(x)]
    return math.exp(statistics.fmean(math.log(x) for x in xs)) if xs else float("nan")


def judge(agent: ScheduleAgent, name: str, cm, plan, rng, uniform_samples: int = 8) -> dict:
    """One plan: the network's schedule, the kept one (after the FIFO rule), the uniform
    masked policy's (mean of `uniform_samples` episodes) and the coordinate-search
    scheduler's, as gains over FIFO in the scenario's objective; decision times."""
    from dora_rl.envs.schedule import ScheduleEnv
    from dora_rl.sim import schedule_plan
    from dora_rl.sim.scheduler import objective

    d = agent.decide(cm, plan)
    f = objective(cm, d.fifo)
    env = ScheduleEnv(instances=[(cm, plan)])
    uni = []
    for _ in range(uniform_samples):
        env.reset(options={"instance": 0})
        while not env.done:
            env.step(int(rng.choice(np.flatnonzero(env.action_masks()))))
        uni.append(f / max(objective(cm, env.result), 1e-12))
    t0 = time.perf_counter()
    s = schedule_plan(cm, plan)
    sched_s = time.perf_counter() - t0
    net = f / max(objective(cm, d.network), 1e-12)
    return {"instance": name, "training": cm.training, "objective": cm.qoe.objective, "fifo": f,
            "network_gain": net, "gain": f / max(objective(cm, d.result), 1e-12), "rule": d.by == "rule",
            "uniform_gain": _geo(uni), "scheduler_gain": f / max(objective(cm, s.result), 1e-12),
            "agent_ms": 1e3 * d.seconds, "scheduler_ms": 1e3 * sched_s, "schedule": d.proposed}


def _summary(rows: list[dict]) -> dict:
    return {"n": len(rows), "network_gain": _geo(r["network_gain"] for r in rows),
            "gain": _geo(r["gain"] for r in rows), "uniform_gain": _geo(r["uniform_gain"] for r in rows),
            "scheduler_gain": _geo(r["scheduler_gain"] for r in rows),
            "network_never_slower": sum(r["network_gain"] >= 1 - 1e-9 for r in rows),
            "rule_fired": sum(r["rule"] for r in rows),
            "agent_ms_median": statistics.median(r["agent_ms"] for r in rows),
            "scheduler_ms_median": statistics.median(r["scheduler_ms"] for r in rows)}


def check_entries(agent: ScheduleAgent, seeds=CHECK_SEEDS) -> list[dict]:
    """The network's greedy schedule and simulated objective on fixed contention seeds."""
    from dora_rl.envs.schedule import contention_instance
    from dora_rl.sim.scheduler import objective

    out = []
    for s in seeds:
        _, cm, plan = contention_instance(s)
        chosen, r, _ = agent.episode(cm, plan)
        out.append({"seed": s, "microbatches": chosen.microbatches, "schedule": chosen.schedule.to_dict(),
                    "objective": objective(cm, r)})
    return out


def evaluate(agent: ScheduleAgent, heldout_seed: int = 100, heldout_n: int = 16, uniform_samples: int = 8,
             presets=PRESETS) -> dict:
    """Held-out contention instances and the presets' `ppo` plans (module docstring)."""
    from dora_rl.cost import CostModel
    from dora_rl.envs.schedule import contention_instance
    from dora_rl.learning.planner import cached_agent
    from dora_rl.scenario import load_scenario

    rng = np.random.default_rng(1)
    held = []
    for s in range(heldout_seed, heldout_seed + heldout_n):
        _, cm, plan = contention_instance(s)
        held.append(judge(agent, f"wifi{s}", cm, plan, rng, uniform_samples))
    pre = []
    part = cached_agent(None)
    for name in presets:
        scen = load_scenario(name)
        cm = CostModel(scen)
        plan, _ = part.plan(scen, cost=cm, search="polish")     # the ppo planner's partition, before its schedule
        pre.append(judge(agent, name, cm, plan, rng, uniform_samples))
    return {"heldout": {"seeds": [heldout_seed, heldout_seed + heldout_n], "rows": held, "summary": _summary(held)},
            "presets": {"partition_agent": part.name, "rows": pre, "summary": _summary(pre)},
            "check": check_entries(agent)}


def print_evaluation(ev: dict) -> None:
    for part in ("heldout", "presets"):
        print(f"{'instance':18s} {'net':>6s} {'kept':>6s} {'rule':>4s} {'uniform':>7s} {'sched':>6s} "
              f"{'agent ms':>8s} {'sched ms':>8s}")
        for r in ev[part]["rows"]:
            print(f"{r['instance']:18s} {r['network_gain']:6.3f} {r['gain']:6.3f} {'yes' if r['rule'] else '':>4s} "
                  f"{r['uniform_gain']:7.3f} {r['scheduler_gain']:6.3f} {r['agent_ms']:8.1f} {r['scheduler_ms']:8.1f}")
        print(f"{part}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                      for k, v in ev[part]["summary"].items()), flush=True)


def train(out, timesteps: int | None = None, seed: int = 0, hyperparams: dict | None = None,
          evaluate_after: bool = True) -> Path:
    """Train MaskablePPO on Schedule-v0 with `policies/` hyperparameters; save the agent
    (model.zip, config.yml, results.json, README.md) in `out`."""
    import torch
    from sb3_contrib import MaskablePPO

    from dora_rl.envs.schedule import ScheduleEnv
    from dora_rl.learning.agents import save_agent
    from dora_rl.learning.hyperparams import load_hyperparams

    torch.set_num_threads(1)
    hp = dict(hyperparams or load_hyperparams(ENV_ID))
    steps = int(timesteps or hp.get("n_timesteps", 32768))
    env_kwargs = dict(hp.get("env_kwargs") or {})
    ppo = {k: hp[k] for k in ("n_steps", "batch_size", "n_epochs", "learning_rate", "gamma", "gae_lambda",
                              "ent_coef", "policy_kwargs") if k in hp}
    model = MaskablePPO(hp.get("policy", "MlpPolicy"), ScheduleEnv(**env_kwargs), seed=seed, device="cpu", **ppo)
    t0 = time.perf_counter()
    model.learn(steps)
    secs = time.perf_counter() - t0
    import gymnasium
    import sb3_contrib
    import stable_baselines3

    config = {"env_id": ENV_ID, "algo": "MaskablePPO", "policy": hp.get("policy", "MlpPolicy"), **layout(),
              "env_kwargs": env_kwargs, "seed": seed, "timesteps": steps, "train_seconds": round(secs, 1),
              "hyperparams": ppo, "evaluation": {k: hp[k] for k in ("heldout_seed", "heldout_n", "uniform_samples")
                                                 if k in hp},
              "versions": {"torch": torch.__version__, "stable_baselines3": stable_baselines3.__version__,
                           "sb3_contrib": sb3_contrib.__version__, "gymnasium": gymnasium.__version__}}
    folder = save_agent(model, out, config)
    if evaluate_after:
        write_results(folder)
    return folder


def write_results(folder) -> dict:
    """Evaluate the agent in `folder` (its config's evaluation settings) and write its
    results.json and README.md."""
    import json

    import yaml

    from dora_rl.learning.schedule_card import card

    folder = Path(folder)
    agent = load_schedule_agent(folder)
    cfg = yaml.safe_load((folder / "config.yml").read_text())
    ev = evaluate(agent, **(cfg.get("evaluation") or {}))
    ev["when"] = time.strftime("%Y-%m-%d", time.gmtime())
    from dora_rl.learning.agents import _plain

    (folder / "results.json").write_text(json.dumps(_plain(ev), indent=1) + "\n")
    (folder / "README.md").write_text(card(cfg, ev))
    print_evaluation(ev)
    return ev


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="train / evaluate the schedule agent (dora_rl/Schedule-v0)")
    ap.add_argument("--out", help="train into this folder")
    ap.add_argument("--evaluate", metavar="FOLDER", help="only evaluate this agent folder (rewrites its results.json)")
    ap.add_argument("--timesteps", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if a.evaluate:
        write_results(a.evaluate)
    elif a.out:
        train(a.out, a.timesteps, a.seed)
    else:
        ap.error("give --out DIR (train) or --evaluate FOLDER")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
