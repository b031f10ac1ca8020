"""Training the AdaptEnv agent (the learned `ppo` runtime adapter): counterfactual regression, then MaskablePPO.

Each AdaptEnv step knows what EVERY row would have given for the coming interval
(`AdaptEnv.row_utilities`: the runtime's own interval on a fork of the Monitor's battery
state - switch drain, the true bandwidth, battery on the 60 s trailing average; a row the
veto would override counts as the veto's choice). That is the bench's QoE utility, per row:
a full-information target, where PPO sees only the reward of the row it tried.

1. Counterfactual regression (DAgger-style, `rounds`): episodes on the TRAINING split,
   driven first by a mix of the best row in hindsight and random rows, then by the
   network itself with `explore` random rows; every visited state is labelled with every
   row's utility, and the actor's logits are fitted to LOGIT_SCALE x (utility - the
   state's mean over its rows) (masked MSE). The network sees only what the adapter sees
   (its estimate and history, not the true bandwidth), so its greedy row is the one with
   the highest EXPECTED utility given the observation. The rule is not an input and not a
   teacher.
   `miss_weight` > 1 counts a QoE miss that many times in the targets (envs.adapt.shaped_reward).
2. MaskablePPO from there for what is left of `minutes` (checkpoints every `ckpt_steps`):
   the regression's horizon is one interval; PPO's reward is the same (shaped) utility, discounted.
3. Selection: the regression result and every PPO checkpoint are run (greedy) on
   `select_episodes` AdaptEnv episodes of the TRAINING split (fixed seeds; the validation
   split stays for the bench) next to `pareto` on the same episodes, and ranked by issue 13's
   targets against it (`versus`, `selection_key`: targets met, then the share of episodes with
   violating intervals <= the rule's, then mean utility); the best is saved as <out>/model.zip
   with config.yml.

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
from dora_rl.envs.adapt import shaped_reward

log = logging.getLogger(__name__)
HYPER = {"n_steps": 512, "batch_size": 128, "n_epochs": 4, "learning_rate": 3e-5, "gamma": 0.5,
         "gae_lambda": 0.9, "ent_coef": 0.0, "clip_range": 0.1, "net_arch": [128, 128]}
LOGIT_SCALE = 20.0
VETO_PENALTY = 0.1        # a row the veto would override is worth the veto's choice minus this
OK_EST_COL = ROW_FEATURES.index("qoe_ok_est")


def shaped(q: np.ndarray, obs: dict) -> np.ndarray:
    """Row utilities (one state, or a batch) with VETO_PENALTY off the rows the veto would
    override (missing QoE at the estimate while another valid row meets it there: the
    observation says which), so that the agent learns to pick a compliant row itself."""
    ok = obs["candidates"][..., OK_EST_COL] > 0.5
    valid = obs["action_mask"] > 0.5
    some = (ok & valid).any(axis=-1, keepdims=True)
    return q - VETO_PENALTY * (valid & ~ok & some)


def best_row(q: np.ndarray, obs: dict) -> int:
    """The row with the highest (shaped) utility in hindsight, among the valid ones."""
    return int(np.argmax(np.where(obs["action_mask"] > 0.5, np.nan_to_num(shaped(q, obs), nan=-np.inf), -np.inf)))


def run_episode(env, act, seed: int) -> dict:
    """One greedy episode: mean QoE utility (the bench's, unshaped), share of intervals meeting QoE,
    share the agent decided, and the number of violating intervals."""
    obs, _ = env.reset(seed=seed)
    tot, n, ok, agent, done = 0.0, 0, 0, 0, False
    while not done:
        obs, _, term, trunc, info = env.step(act(obs))
        tot += info["utility"]
        n += 1
        ok += info["qoe_ok"]
        agent += info["agent"]
        done = term or trunc
    return {"utility": tot / max(n, 1), "qoe": ok / max(n, 1), "agent": agent / max(n, 1), "violations": n - ok}


def collect(env, episodes: int, seed: int, act=None, explore: float = 0.3,
            miss_weight: float = 1.0) -> tuple[dict, np.ndarray]:
    """Observations and every row's utility (AdaptEnv.row_utilities) over `episodes` episodes,
    acting with `act(obs)` (None: the best row in hindsight) or, with probability `explore`, a
    random valid row. `miss_weight` > 1 counts a QoE miss that many times (a one-interval target
    does not see that a miss after a drop is followed by more while the estimate lags)."""
    rng = np.random.default_rng(seed)
    obs_l, q_l = [], []
    for e in range(episodes):
        obs, _ = env.reset(seed=seed + e)
        done = False
        while not done:
            q, ok = env.row_utilities(with_ok=True)
            q = shaped_reward(q, ok, miss_weight)
            obs_l.append({k: v.copy() for k, v in obs.items()})
            q_l.append(q)
            valid = np.flatnonzero(obs["action_mask"] > 0.5)
            if rng.random() < explore:
                a = int(rng.choice(valid))
            else:
                a = best_row(q, obs) if act is None else act(obs)
            obs, _, term, trunc, _ = env.step(a)
            done = term or trunc
    keys = obs_l[0].keys()
    return {k: np.stack([o[k] for o in obs_l]) for k in keys}, np.stack(q_l)


def fit_rows(model, obs: dict, q: np.ndarray, epochs: int = 30, batch: int = 256, lr: float = 1e-3) -> float:
    """Fit the actor's logits to LOGIT_SCALE x (shaped q - its mean over the valid rows) (masked
    MSE); returns the last epoch's loss."""
    import torch as th

    pol = model.policy
    mask = (obs["action_mask"] > 0.5) & np.isfinite(q)
    qz = np.where(mask, np.nan_to_num(shaped(q, obs)), 0.0)
    centred = qz - (qz.sum(1, keepdims=True) / np.maximum(mask.sum(1, keepdims=True), 1))
    target = np.where(mask, LOGIT_SCALE * centred, 0.0).astype(np.float32)
    params = list(pol.features_extractor.parameters()) + list(pol.mlp_extractor.policy_net.parameters()) + \
        list(pol.action_net.parameters())
    opt = th.optim.Adam(params, lr=lr)
    n = len(target)
    rng = np.random.default_rng(0)
    tot = 0.0
    for ep in range(epochs):
        idx = rng.permutation(n)
        tot = 0.0
        for i in range(0, n, batch):
            b = idx[i:i + batch]
            ob = {k: th.as_tensor(v[b]) for k, v in obs.items()}
            feats = pol.extract_features(ob, pol.pi_features_extractor)
            logits = pol.action_net(pol.mlp_extractor.forward_actor(feats))
            m = th.as_tensor(mask[b], dtype=th.float32)
            z = logits - (logits * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp(min=1)
            loss = (((z - th.as_tensor(target[b])) ** 2) * m).sum() / m.sum().clamp(min=1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            tot += float(loss.detach()) * len(b)
        if ep % 10 == 0 or ep == epochs - 1:
            log.info("regression epoch %d: mse %.4f", ep, tot / n)
    return tot / n


def greedy(model):
    from dora_rl.learning.adapter_agent import NumpyActor

    return NumpyActor(model.policy).act


def rule_episodes(env, seeds, name: str = "pareto") -> list[dict]:
    """What the rule adapter `name` gets on the episodes `seeds` draw (AdaptEnv.replay), per episode."""
    from dora_rl.adapter import get_adapter

    out = []
    for s in seeds:
        env.reset(seed=s)
        r = env.replay(get_adapter(name, env.scen))
        out.append({**r, "violations": int(round((1.0 - r["qoe"]) * env.horizon))})
    return out


def agent_episodes(model, env, seeds) -> list[dict]:
    act = greedy(model)
    return [run_episode(env, act, s) for s in seeds]


def versus(agent: list[dict], rule: list[dict]) -> dict:
    """Issue 13's targets of `agent` against `rule` on the same episodes (bench/bench_adapter.py's, per
    episode instead of per trace): mean utilities and gain, share of episodes with utility >= the rule's,
    with violating intervals <= the rule's; `met`: how many of (gain >= 5%, utility >= on >= 2/3,
    violations <= on >= 2/3) hold."""
    n = max(len(agent), 1)
    ua, ur = float(np.mean([a["utility"] for a in agent])), float(np.mean([r["utility"] for r in rule]))
    gain = (ua - ur) / abs(ur) if ur else 0.0
    u_ge = sum(a["utility"] >= r["utility"] - 1e-9 for a, r in zip(agent, rule)) / n
    v_le = sum(a["violations"] <= r["violations"] for a, r in zip(agent, rule)) / n
    met = int(gain >= 0.05) + int(u_ge >= 2 / 3 - 1e-9) + int(v_le >= 2 / 3 - 1e-9)
    return {"utility": round(ua, 4), "gain": round(gain, 4), "utility_ge": round(u_ge, 3),
            "violations_le": round(v_le, 3), "met": met}


def selection_key(v: dict) -> tuple:
    """Checkpoints are ranked by how many of the targets they meet on the selection episodes, then by
    the share of episodes with violations <= the rule's while that share is under 2/3, then utility."""
    return (v["met"], min(v["violations_le"], 2 / 3), v["utility"])


def train(out: Path, minutes: float = 25.0, episodes: int = 60, rounds: int = 3, select_episodes: int = 24,
          ckpt_steps: int = 10_000, seed: int = 0, explore: float = 0.2, miss_weight: float = 1.0) -> Path:
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
    venv = DummyVecEnv([lambda: ActionMasker(AdaptEnv(seed=seed, miss_weight=miss_weight),
                                             lambda e: e.unwrapped.action_masks())])
    hp = dict(HYPER)
    arch = hp.pop("net_arch")
    model = MaskablePPO("MultiInputPolicy", venv, seed=seed, device="cpu", verbose=0,
                        policy_kwargs={"net_arch": {"pi": arch, "vf": arch}}, **hp)
    data_o: list[dict] = []
    data_q: list[np.ndarray] = []
    rounds_log = []
    for r in range(rounds):
        o, q = collect(env, episodes, 10_000 + 1000 * r, act=None if r == 0 else greedy(model),
                       explore=0.5 if r == 0 else explore, miss_weight=miss_weight)
        data_o.append(o)
        data_q.append(q)
        allo = {k: np.concatenate([d[k] for d in data_o]) for k in o}
        mse = fit_rows(model, allo, np.concatenate(data_q), epochs=40 if r == rounds - 1 else 25)
        rounds_log.append({"round": r, "steps": int(len(q)), "mse": round(mse, 4),
                           "minutes": round((time.time() - t_start) / 60, 1)})
        log.info("round %d: %d steps, total %d, mse %.4f, %.1f min", r, len(q), sum(len(x) for x in data_q), mse,
                 (time.time() - t_start) / 60)
    model.save(str(out / "checkpoints" / "regression"))
    reg_s = time.time() - t_start
    n_reg = int(sum(len(x) for x in data_q))

    class Deadline(BaseCallback):
        def _on_step(self) -> bool:
            if self.num_timesteps % 2048 == 0:
                log.info("ppo %d steps, %.1f min", self.num_timesteps, (time.time() - t_start) / 60)
            return time.time() - t_start < 60 * minutes

    ppo_t0 = time.time()
    if time.time() - t_start < 60 * minutes - 60:
        model.learn(total_timesteps=10_000_000, callback=[Deadline(), CheckpointCallback(
            ckpt_steps, str(out / "checkpoints"), name_prefix="ppo")])
        model.save(str(out / "checkpoints" / "final"))
    steps, ppo_s = int(model.num_timesteps), time.time() - ppo_t0
    # selection on fixed training-split episodes, by issue 13's targets against `pareto` (versus)
    sel = AdaptEnv(seed=seed + 1)
    seeds = list(range(50_000, 50_000 + select_episodes))
    rule = rule_episodes(sel, seeds)
    scores = {"pareto": round(float(np.mean([r["utility"] for r in rule])), 4)}
    best, best_k = None, None
    for ck in sorted((out / "checkpoints").glob("*.zip")):
        v = versus(agent_episodes(MaskablePPO.load(str(ck), device="cpu"), sel, seeds), rule)
        scores[ck.stem] = v
        log.info("selection %s: %s (pareto %.4f)", ck.stem, v, scores["pareto"])
        if best_k is None or selection_key(v) > best_k:
            best, best_k = ck, selection_key(v)
    MaskablePPO.load(str(best), device="cpu").save(str(out / "model.zip"))
    import gymnasium
    import sb3_contrib
    import stable_baselines3

    config = {"env_id": "dora_rl/Adapt-v0", "algo": "MaskablePPO", "policy": "MultiInputPolicy", "kind": "adapt",
              **layout(), "env_kwargs": {"beds": list(env.beds), "horizon": env.horizon, "split": "train"},
              "keep_row": "pareto", "seed": seed,
              "regression": {"rounds": rounds_log, "episodes_per_round": episodes, "steps": n_reg,
                             "explore": explore, "logit_scale": LOGIT_SCALE,
                             "miss_weight": miss_weight, "veto_penalty": VETO_PENALTY,
                             "seconds": round(reg_s, 1)},
              "ppo_timesteps": steps, "ppo_seconds": round(ppo_s, 1), "ppo_miss_weight": miss_weight,
              "train_seconds": round(time.time() - t_start, 1), "shipped_checkpoint": best.stem,
              "selection": {"episodes": select_episodes, "scores": scores,
                            "rule": "versus pareto: targets met, violations <= share, utility"},
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
    ap.add_argument("--episodes", type=int, default=60, help="episodes per regression round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--miss-weight", type=float, default=1.0, help="a QoE miss counts this many times in the targets")
    ap.add_argument("--select-episodes", type=int, default=24)
    ap.add_argument("--ckpt-steps", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.minutes <= 0 or args.episodes < 1 or args.rounds < 1:
        sys.stderr.write("adapt_training: --minutes must be > 0, --episodes and --rounds >= 1\n")
        return 2
    from dora_rl.errors import DoraError

    try:
        train(Path(args.out), args.minutes, args.episodes, args.rounds, args.select_episodes, args.ckpt_steps,
              seed=args.seed, miss_weight=args.miss_weight)
    except DoraError as e:       # e.g. a trace split without validation traces
        sys.stderr.write(f"adapt_training: {e}\n")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
