"""`train(env_id, ...)`: MaskablePPO on a registered environment, zoo style.

Hyperparameters come from policies/ppo.yml (block `env_id`, else `default`); the run
writes TensorBoard logs (`<out>/tb/`), evaluates periodically with masks
(MaskableEvalCallback on an environment with a different instance seed), and saves the
agent folder `<out>/<env-id-sanitised>/` (model.zip, config.yml, results.json,
README.md). The shipped model is the best periodic evaluation's checkpoint (the final
one when no evaluation ran)."""

from __future__ import annotations

import copy
import json
import platform
import time
from pathlib import Path

import numpy as np

from dora_rl.errors import AgentError
from dora_rl.policies.agents import load_hyperparams, sanitize, save_agent

ALGO_KEYS = ("n_steps", "batch_size", "n_epochs", "learning_rate", "gamma", "gae_lambda", "ent_coef",
             "clip_range", "vf_coef", "max_grad_norm", "policy_kwargs")


def _policy_class(name: str):
    if name == "SetPointerPolicy":
        from dora_rl.policies.extractor import SetPointerPolicy
        return SetPointerPolicy
    return name   # an SB3 alias such as MultiInputPolicy


def train(env_id: str, timesteps: int | None = None, seed: int = 0, out: str | Path = "runs",
          max_minutes: float | None = None, progress: bool = True, verbose: int = 0,
          hyperparams: dict | None = None, eval_freq: int | None = None, n_threads: int = 1) -> Path:
    import gymnasium as gym
    import torch
    from sb3_contrib import MaskablePPO
    from sb3_contrib.common.maskable.callbacks import MaskableEvalCallback
    from stable_baselines3.common.callbacks import BaseCallback, CallbackList
    from stable_baselines3.common.env_util import make_vec_env

    import dora_rl.envs  # noqa: F401  registers the environments

    if env_id not in gym.registry:
        known = sorted(k for k in gym.registry if k.startswith("dora_rl/"))
        raise AgentError(f"unknown environment {env_id!r}; registered: {', '.join(known)}")
    torch.set_num_threads(max(1, int(n_threads)))
    hp = copy.deepcopy(hyperparams if hyperparams is not None else load_hyperparams(env_id))
    n_timesteps = int(timesteps if timesteps is not None else hp.get("n_timesteps", 100_000))
    n_envs = int(hp.get("n_envs", 4))
    env_kwargs = dict(hp.get("env_kwargs") or {})
    eval_kwargs = dict(hp.get("eval_env_kwargs") or env_kwargs)
    out = Path(out)
    folder = out / sanitize(env_id)
    folder.mkdir(parents=True, exist_ok=True)
    tb = out / "tb"

    venv = make_vec_env(env_id, n_envs=n_envs, seed=seed, env_kwargs={"render_mode": None, **env_kwargs})
    eval_env = make_vec_env(env_id, n_envs=1, seed=seed + 10_000, env_kwargs={"render_mode": None, **eval_kwargs})
    algo = {k: hp[k] for k in ALGO_KEYS if k in hp}
    algo["batch_size"] = min(int(algo.get("batch_size", 64)), int(algo.get("n_steps", 2048)) * n_envs)
    policy = _policy_class(hp.get("policy", "SetPointerPolicy"))
    model = MaskablePPO(policy, venv, seed=seed, device="cpu", tensorboard_log=str(tb), verbose=verbose, **algo)

    freq = int(eval_freq or hp.get("eval_freq", 25_000))
    cbs = [MaskableEvalCallback(eval_env, n_eval_episodes=int(hp.get("n_eval_episodes", 50)),
                                eval_freq=max(1, freq // n_envs), best_model_save_path=str(folder / "best"),
                                log_path=str(folder / "evaluations"), deterministic=True, verbose=0)]

    class _Deadline(BaseCallback):
        def __init__(self, seconds):
            super().__init__()
            self.seconds, self.t0 = seconds, time.time()

        def _on_step(self) -> bool:
            return time.time() - self.t0 < self.seconds

    if max_minutes:
        cbs.append(_Deadline(60.0 * max_minutes))
    t0 = time.time()
    model.learn(total_timesteps=n_timesteps, callback=CallbackList(cbs), progress_bar=progress,
                tb_log_name=sanitize(env_id))
    seconds = time.time() - t0
    steps_done = int(model.num_timesteps)
    best = folder / "best" / "best_model.zip"
    best_reward = float(cbs[0].best_mean_reward) if np.isfinite(cbs[0].best_mean_reward) else None
    if best.is_file():
        from dora_rl.policies.agents import CUSTOM_OBJECTS
        model = MaskablePPO.load(str(best), device="cpu", custom_objects=CUSTOM_OBJECTS)
    import gymnasium
    import sb3_contrib
    import stable_baselines3

    from dora_rl.envs.partition import NF, NG, OBS_VERSION

    config = {
        "env_id": env_id, "algo": "MaskablePPO", "policy": hp.get("policy", "SetPointerPolicy"),
        "obs_version": OBS_VERSION, "device_features": NF, "global_features": NG,
        "max_devices": int(env_kwargs.get("max_devices", 8)), "max_blocks": 0,
        "seed": seed, "timesteps": steps_done, "train_seconds": round(seconds, 1),
        "hyperparams": {k: v for k, v in hp.items()},
        "versions": {"python": platform.python_version(), "torch": str(torch.__version__),
                     "stable_baselines3": stable_baselines3.__version__, "sb3_contrib": sb3_contrib.__version__,
                     "gymnasium": gymnasium.__version__},
    }
    results = {"env_id": env_id, "timesteps": steps_done, "train_seconds": round(seconds, 1),
               "best_eval_mean_reward": best_reward}
    ev = folder / "evaluations" / "evaluations.npz"
    if ev.is_file():
        d = np.load(ev)
        results["eval_curve"] = {"timesteps": d["timesteps"].tolist(),
                                 "mean_reward": d["results"].mean(axis=1).round(4).tolist()}
    save_agent(model, folder, config, results,
               card=f"# {env_id}\n\nTrained with `dora train {env_id}` for {steps_done} steps "
                    f"({seconds / 60:.1f} min). Run `dora evaluate {folder}` for the comparison table.\n")
    venv.close()
    eval_env.close()
    (folder / "train_log.json").write_text(json.dumps({"seconds": seconds, "timesteps": steps_done}) + "\n")
    return folder
