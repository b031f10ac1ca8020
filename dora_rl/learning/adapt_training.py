"""Training the AdaptEnv agent (the learned `ppo` runtime adapter): warm start from the rule, then MaskablePPO.

1. Behaviour cloning: `bc_episodes` AdaptEnv episodes (training traces) where the action is
   the row `pareto`'s rule would deploy (the observation flags it, `rule_pick`); the policy
   is fitted to those rows (masked cross-entropy). This gives PPO a start that is as good
   as the rule; the agent then deviates from it where the reward (the bench's QoE utility)
   says so.
2. MaskablePPO on AdaptEnv for at most `minutes` of wall time (checkpoints every
   `ckpt_steps` steps under <out>/checkpoints).
3. Selection: the BC start and every checkpoint are scored on `select_episodes` AdaptEnv
   episodes of the TRAINING split (fixed seeds; the validation split stays for the bench);
   the best is saved as <out>/model.zip with config.yml (observation layout, hyperparameters).

    PYTHONPATH=. DORA_TRACES=../shared/data/traces/pensieve nice -n 10 \\
        python -m dora_rl.learning.adapt_training --out runs/adapt --minutes 25
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from dora_rl.adapter.observation import ROW_FEATURES, layout

log = logging.getLogger(__name__)
RULE_COL = ROW_FEATURES.index("rule_pick")
HYPER = {"n_steps": 512, "batch_size": 128, "n_epochs": 4, "learning_rate": 1e-4, "gamma": 0.9,
         "gae_lambda": 0.9, "ent_coef": 0.003, "clip_range": 0.1, "net_arch": [128, 128]}


def rule_row(obs: dict) -> int:
    """The row `pareto`'s rule would deploy (keep first, then the LP's, then a candidate)."""
    rows = np.flatnonzero((obs["candidates"][:, RULE_COL] > 0.5) & (obs["action_mask"] > 0.5))
    return int(rows[0]) if len(rows) else 1


def run_episode(env, act, seed: int) -> dict:
    obs, _ = env.reset(seed=seed)
    tot, n, ok, agent, done = 0.0, 0, 0, 0, False
    while not done:
        obs, r, term, trunc, info = env.step(act(obs))
        tot += r
        n += 1
        ok += info["qoe_ok"]
        agent += info["agent"]
        done = term or trunc
    return {"utility": tot / max(n, 1), "qoe": ok / max(n, 1), "agent": agent / max(n, 1)}


def collect(env, episodes: int, seed: int) -> tuple[dict, np.ndarray]:
    """Observations and the rule's rows over `episodes` episodes."""
    obs_l, act_l = [], []

    def act(obs):
        a = rule_row(obs)
        obs_l.append({k: v.copy() for k, v in obs.items()})
        act_l.append(a)
        return a

    for e in range(episodes):
        run_episode(env, act, seed + e)
    keys = obs_l[0].keys()
    return {k: np.stack([o[k] for o in obs_l]) for k in keys}, np.asarray(act_l)


def behaviour_clone(model, obs: dict, acts: np.ndarray, epochs: int = 30, batch: int = 256, lr: float = 1e-3):
    """Fit the policy's action distribution to `acts` (masked log-likelihood)."""
    import torch as th

    pol = model.policy
    opt = th.optim.Adam(pol.parameters(), lr=lr)
    n = len(acts)
    rng = np.random.default_rng(0)
    for ep in range(epochs):
        idx = rng.permutation(n)
        tot = 0.0
        for i in range(0, n, batch):
            b = idx[i:i + batch]
            ob = {k: th.as_tensor(v[b]) for k, v in obs.items()}
            _, logp, _ = pol.evaluate_actions(ob, th.as_tensor(acts[b]), action_masks=obs["action_mask"][b] > 0.5)
            loss = -logp.mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            tot += float(loss.detach()) * len(b)
        if ep % 10 == 0 or ep == epochs - 1:
            log.info("bc epoch %d: nll %.4f", ep, tot / n)


def score(model, env, seeds) -> float:
    def act(obs):
        a, _ = model.predict(obs, deterministic=True, action_masks=obs["action_mask"] > 0.5)
        return int(a)
    return float(np.mean([run_episode(env, act, s)["utility"] for s in seeds]))


def train(out: Path, minutes: float = 25.0, bc_episodes: int = 120, select_episodes: int = 24,
          ckpt_steps: int = 10_000, seed: int = 0) -> Path:
    import torch
    from sb3_contrib import MaskablePPO
    from sb3_contrib.common.wrappers import ActionMasker
    from stable_baselines3.common.callbacks import BaseCallback, CheckpointCallback
    from stable_baselines3.common.vec_env import DummyVecEnv

    from dora_rl.envs.adapt import AdaptEnv

    torch.set_num_threads(1)          # a small MLP: more threads only contend on a shared machine
    t_start = time.time()
    out.mkdir(parents=True, exist_ok=True)
    env = AdaptEnv(seed=seed)
    obs, acts = collect(env, bc_episodes, 10_000)
    log.info("bc data: %d steps in %.0f s; rows %s", len(acts), time.time() - t_start,
             np.bincount(acts, minlength=env.action_space.n).tolist())
    venv = DummyVecEnv([lambda: ActionMasker(AdaptEnv(seed=seed), lambda e: e.unwrapped.action_masks())])
    hp = dict(HYPER)
    arch = hp.pop("net_arch")
    model = MaskablePPO("MultiInputPolicy", venv, seed=seed, device="cpu", verbose=0,
                        policy_kwargs={"net_arch": {"pi": arch, "vf": arch}}, **hp)
    behaviour_clone(model, obs, acts)
    model.save(str(out / "checkpoints" / "bc"))
    bc_s = time.time() - t_start

    class Deadline(BaseCallback):
        def _on_step(self) -> bool:
            if self.num_timesteps % 2048 == 0:
                log.info("ppo %d steps, %.1f min", self.num_timesteps, (time.time() - t_start) / 60)
            return time.time() - t_start < 60 * minutes

    ppo_t0 = time.time()
    model.learn(total_timesteps=10_000_000, callback=[Deadline(), CheckpointCallback(
        ckpt_steps, str(out / "checkpoints"), name_prefix="ppo")])
    model.save(str(out / "checkpoints" / "final"))
    steps, ppo_s = int(model.num_timesteps), time.time() - ppo_t0
    # selection on fixed training-split episodes
    sel = AdaptEnv(seed=seed + 1)
    seeds = list(range(50_000, 50_000 + select_episodes))
    scores = {"rule": float(np.mean([run_episode(sel, rule_row, s)["utility"] for s in seeds]))}
    best, best_s = None, -np.inf
    for ck in sorted((out / "checkpoints").glob("*.zip")):
        m = MaskablePPO.load(str(ck), device="cpu")
        scores[ck.stem] = s = score(m, sel, seeds)
        log.info("selection %s: %.4f (rule %.4f)", ck.stem, s, scores["rule"])
        if s > best_s:
            best, best_s = ck, s
    MaskablePPO.load(str(best), device="cpu").save(str(out / "model.zip"))
    import gymnasium
    import sb3_contrib
    import stable_baselines3

    config = {"env_id": "dora_rl/Adapt-v0", "algo": "MaskablePPO", "policy": "MultiInputPolicy", "kind": "adapt",
              **layout(), "env_kwargs": {"beds": list(env.beds), "horizon": env.horizon, "split": "train"},
              "seed": seed, "bc_episodes": bc_episodes, "bc_steps": int(len(acts)), "bc_seconds": round(bc_s, 1),
              "ppo_timesteps": steps, "ppo_seconds": round(ppo_s, 1),
              "train_seconds": round(time.time() - t_start, 1), "shipped_checkpoint": best.stem,
              "selection": {"episodes": select_episodes, "utility": {k: round(v, 4) for k, v in scores.items()}},
              "hyperparams": HYPER,
              "versions": {"python": platform.python_version(), "torch": str(torch.__version__),
                           "stable_baselines3": stable_baselines3.__version__,
                           "sb3_contrib": sb3_contrib.__version__, "gymnasium": gymnasium.__version__}}
    (out / "config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    (out / "train_log.json").write_text(json.dumps(config, indent=1) + "\n")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/adapt")
    ap.add_argument("--minutes", type=float, default=25.0)
    ap.add_argument("--bc-episodes", type=int, default=120)
    ap.add_argument("--select-episodes", type=int, default=24)
    ap.add_argument("--ckpt-steps", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.minutes <= 0 or args.bc_episodes < 1:
        sys.stderr.write("adapt_training: --minutes must be > 0 and --bc-episodes >= 1\n")
        return 2
    from dora_rl.errors import DoraError

    try:
        train(Path(args.out), args.minutes, args.bc_episodes, args.select_episodes, args.ckpt_steps, seed=args.seed)
    except DoraError as e:       # e.g. a trace split without validation traces
        sys.stderr.write(f"adapt_training: {e}\n")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
