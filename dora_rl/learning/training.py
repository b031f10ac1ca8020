"""`train(env_id, ...)`: MaskablePPO on a registered environment, zoo style.

Hyperparameters come from policies/ppo.yml (rl-zoo keys) and policies/dora_train.yml
(`dora train`'s own keys, on top; dora_rl/learning/hyperparams.py), block `env_id`, else
`default`; the run
writes TensorBoard logs (`<out>/tb/`), evaluates periodically with masks
(MaskableEvalCallback on an environment with a different instance seed), and saves the
agent folder `<out>/<env-id-sanitised>/` (model.zip, config.yml, results.json,
README.md). The shipped model is the best periodic evaluation's checkpoint (the final
one when no evaluation ran).

Imitation warm-start (`bc_episodes`, default from the `bc` block of policies/dora_train.yml, on
for the Partition environments): before PPO, the `dora` planner's plans on
`bc_episodes` seeded training instances (plus the presets) are replayed through the
action space and the policy is trained on them with masked cross-entropy
(dora_rl/learning/imitation.py); PPO then fine-tunes with the `finetune` overrides
(lower learning rate, smaller clip range). The behaviour-cloned policy is evaluated
like a PPO checkpoint and stays the shipped model unless fine-tuning beats it.

Expert iteration (`expert_iteration` block, generalist only): after cloning `dora`, a
few rounds in which the policy plans fresh training instances with rollout search
(dora_rl/learning/search.py), and the network is cloned again on the aggregated
decisions - it learns to recover from its own mistakes on the states it visits.
config.yml records what was done (`bc`: episodes, decisions, epochs, seconds; PPO
steps and seconds).

`max_minutes` bounds every phase (session 13; before, only PPO, and `dora train
dora_rl/Partition-v0 --max-minutes 2` ran 10 minutes in its warm start): teacher data
until 35 % of it, the fit until 50 %, expert iteration until 80 %, PPO the rest. Ctrl-C in
any phase skips to saving, so the folder always holds a loadable agent."""

from __future__ import annotations

import copy
import json
import platform
import time
import warnings
from pathlib import Path

import numpy as np

from dora_rl.errors import AgentError
from dora_rl.learning.agents import sanitize, save_agent
from dora_rl.learning.hyperparams import load_hyperparams

ALGO_KEYS = ("n_steps", "batch_size", "n_epochs", "learning_rate", "gamma", "gae_lambda", "ent_coef",
             "clip_range", "vf_coef", "max_grad_norm", "policy_kwargs")


def _policy_class(name: str):
    if name == "SetPointerPolicy":
        from dora_rl.learning.extractor import SetPointerPolicy
        return SetPointerPolicy
    return name   # an SB3 alias such as MultiInputPolicy


def train(env_id: str, timesteps: int | None = None, seed: int = 0, out: str | Path = "runs",
          max_minutes: float | None = None, progress: bool = True, verbose: int = 0,
          hyperparams: dict | None = None, eval_freq: int | None = None, n_threads: int = 1,
          bc_episodes: int | None = None) -> Path:
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

    t_start = time.time()
    bc_hp = dict(hp.get("bc") or {})
    if bc_episodes is not None:
        bc_hp["episodes"] = int(bc_episodes)
    spec_kwargs = dict(gym.spec(env_id).kwargs or {})
    is_partition = "Partition" in env_id
    fixed_scenario = spec_kwargs.get("scenario") or env_kwargs.get("scenario")
    bc_n = int(bc_hp.get("episodes", 0) or 0) if is_partition else 0
    if bc_episodes and not is_partition:
        raise AgentError(f"--bc-episodes: behaviour cloning from `dora` needs a Partition environment, not {env_id!r}")
    do_bc = bc_n > 0
    if do_bc:
        for k, v in (hp.get("finetune") or {}).items():
            hp[k] = v

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

    budget = 60.0 * max_minutes if max_minutes else None

    def until(own_minutes, end_share: float) -> float | None:
        """Seconds a warm-start phase may take: its own `max_minutes` from the hyperparameters
        and, under `--max-minutes`, the time left until `end_share` of the budget."""
        caps = [60.0 * float(own_minutes)] if own_minutes else []
        if budget:
            caps.append(max(1.0, end_share * budget - (time.time() - t_start)))
        return min(caps) if caps else None

    bc_info, interrupted = None, False
    try:
        if do_bc:
            bc_info = _warm_start(model, hp, bc_hp, bc_n, env_kwargs, fixed_scenario, eval_env, folder, seed,
                                  progress, verbose, until)
            cbs[0].best_mean_reward = bc_info["eval_mean_reward"]
    except KeyboardInterrupt:       # Ctrl-C: no PPO, straight to saving what there is
        interrupted = True
    pre_seconds = time.time() - t_start
    if budget:
        cbs.append(_Deadline(max(1.0, budget - pre_seconds)))
    t0 = time.time()
    try:
        if not interrupted:
            with warnings.catch_warnings():      # SB3's bar is tqdm.rich, which warns it is "experimental"
                warnings.filterwarnings("ignore", message="rich is experimental")
                model.learn(total_timesteps=n_timesteps, callback=CallbackList(cbs), progress_bar=progress,
                            tb_log_name=sanitize(env_id))
    except KeyboardInterrupt:
        interrupted = True
    ppo_seconds = time.time() - t0
    seconds = time.time() - t_start
    steps_done = int(model.num_timesteps)
    best = folder / "best" / "best_model.zip"
    best_reward = float(cbs[0].best_mean_reward) if np.isfinite(cbs[0].best_mean_reward) else None
    best_is_bc = bool(do_bc and cbs[0].best_mean_reward == (bc_info or {}).get("eval_mean_reward"))
    if best.is_file():
        from dora_rl.learning.hyperparams import CUSTOM_OBJECTS
        model = MaskablePPO.load(str(best), device="cpu", custom_objects=CUSTOM_OBJECTS)
    import gymnasium
    import sb3_contrib
    import stable_baselines3

    from dora_rl.envs.instance import NF, NG, OBS_VERSION

    if is_partition:
        layout = {"obs_version": OBS_VERSION, "device_features": NF, "global_features": NG,
                  "max_devices": int(env_kwargs.get("max_devices", 8)), "max_blocks": 0}
    else:   # AdaptEnv: candidates x features (dora_rl/envs/adapt.py)
        from dora_rl.adapter.observation import ADAPT_OBS_VERSION, NC, NGA
        layout = {"obs_version": ADAPT_OBS_VERSION, "kind": "adapt", "candidate_features": NC,
                  "global_features": NGA, "max_candidates": int(env_kwargs.get("max_candidates", 8)),
                  "env_kwargs": {k: v for k, v in env_kwargs.items()}}
    config = {
        "env_id": env_id, "algo": "MaskablePPO", "policy": hp.get("policy", "SetPointerPolicy"), **layout,
        "seed": seed, "timesteps": steps_done, "train_seconds": round(seconds, 1), "interrupted": interrupted,
        "max_minutes": max_minutes,
        "ppo_timesteps": steps_done, "ppo_seconds": round(ppo_seconds, 1),
        "bc": bc_info, "shipped_checkpoint": "behaviour cloning (no PPO checkpoint beat it)" if best_is_bc
        else ("best periodic PPO evaluation" if best.is_file() else "final"),
        "hyperparams": {k: v for k, v in hp.items()},
        "versions": {"python": platform.python_version(), "torch": str(torch.__version__),
                     "stable_baselines3": stable_baselines3.__version__, "sb3_contrib": sb3_contrib.__version__,
                     "gymnasium": gymnasium.__version__},
    }
    results = {"env_id": env_id, "timesteps": steps_done, "train_seconds": round(seconds, 1),
               "best_eval_mean_reward": best_reward, "bc": bc_info}
    ev = folder / "evaluations" / "evaluations.npz"
    if ev.is_file():
        d = np.load(ev)
        results["eval_curve"] = {"timesteps": d["timesteps"].tolist(),
                                 "mean_reward": d["results"].mean(axis=1).round(4).tolist()}
    save_agent(model, folder, config, results,
               card=f"# {env_id}\n\nTrained with `dora train {env_id}`: "
                    + (f"behaviour cloning from `dora` on {bc_info['episodes']} teacher episodes "
                       f"({bc_info['teacher_seconds'] + bc_info['bc_seconds']:.0f} s), then " if bc_info else "")
                    + f"{steps_done} PPO steps ({ppo_seconds / 60:.1f} min); {seconds / 60:.1f} min in all. "
                    f"Run `dora evaluate {folder}` for the comparison table.\n")
    venv.close()
    eval_env.close()
    (folder / "train_log.json").write_text(json.dumps({"seconds": seconds, "timesteps": steps_done,
                                                        "bc": bc_info}, default=str) + "\n")
    return folder


def _warm_start(model, hp, bc_hp, bc_n, env_kwargs, fixed_scenario, eval_env, folder, seed, progress, verbose,
                until) -> dict:
    """Behaviour cloning from `dora` (+ expert iteration): teacher data until 35 % of the
    budget, the fit until 50 %, expert iteration until 80 % (`until`); the cloned policy is
    saved as the first best checkpoint. With `progress`, the teacher shows a bar and each
    fit epoch and expert-iteration round a log line (`dora train` shows them on stderr).
    Returns the run's `bc` record."""
    from sb3_contrib.common.maskable.evaluation import evaluate_policy

    from dora_rl.learning.imitation import behaviour_clone, expert_iteration, teacher_dataset

    D = int(env_kwargs.get("max_devices", 8))
    if fixed_scenario:
        presets, episodes = (fixed_scenario,), 0
        rep = bc_n      # one scenario: its teacher episode, repeated
    else:
        presets, episodes = tuple(bc_hp.get("presets") or ()), bc_n
        rep = int(bc_hp.get("preset_repeat", 20))
    data = teacher_dataset(episodes, seed=int(env_kwargs.get("seed", 0)), max_devices=D, presets=presets,
                           preset_repeat=rep, env_kwargs=env_kwargs, progress=progress,
                           max_seconds=until(bc_hp.get("max_minutes"), 0.35))
    np.savez_compressed(folder / "teacher.npz", actions=data["actions"], returns=data["returns"],
                        **{f"obs_{k}": v for k, v in data["obs"].items()})   # for re-use / inspection
    fit = behaviour_clone(model.policy, data, epochs=int(bc_hp.get("epochs", 10)),
                          batch_size=int(bc_hp.get("batch_size", 256)), lr=float(bc_hp.get("lr", 1e-3)),
                          seed=seed, progress=progress, max_seconds=until(None, 0.5))
    ex_hp = dict(hp.get("expert_iteration") or {})
    exit_info = None
    if int(ex_hp.get("rounds", 0) or 0) > 0 and not fixed_scenario:
        exit_info = expert_iteration(
            model.policy, data, rounds=int(ex_hp["rounds"]), episodes=int(ex_hp.get("episodes", 500)),
            start=episodes, seed=int(env_kwargs.get("seed", 0)), max_devices=D, env_kwargs=env_kwargs,
            epochs=int(ex_hp.get("epochs", 4)), lr=float(ex_hp.get("lr", 5e-4)),
            batch_size=int(bc_hp.get("batch_size", 256)), top_k=ex_hp.get("top_k", 2),
            max_seconds=until(ex_hp.get("max_minutes"), 0.8), progress=progress)
    mean_r, _ = evaluate_policy(model, eval_env, n_eval_episodes=int(hp.get("n_eval_episodes", 50)),
                                deterministic=True, use_masking=True, warn=False)
    (folder / "best").mkdir(parents=True, exist_ok=True)
    model.save(str(folder / "best" / "best_model"))
    info = {"teacher": "dora", "requested_episodes": bc_n, **data["stats"],
            "teacher_seconds": data["stats"]["seconds"], "epochs": fit["epochs"], "lr": fit["lr"],
            "batch_size": fit["batch_size"], "bc_seconds": fit["seconds"],
            "final": fit["history"][-1] if fit["history"] else None, "eval_mean_reward": round(float(mean_r), 4),
            "expert_iteration": exit_info}
    info.pop("seconds", None)
    return info
