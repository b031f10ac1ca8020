"""Imitation warm-start (behaviour cloning) of the `ppo` policy from the `dora` planner.

The standard way to bootstrap a PPO policy from an expert (AlphaGo's SL policy, then
RL): replay the teacher's plans through PartitionEnv's action space, record
(observation, action mask, teacher action) at every real decision (forced moves -
one allowed action - are skipped: they carry no information), and train the
MaskablePPO policy's network with masked cross-entropy; the value head regresses on
the teacher episode's return (the final `utility`, gamma = 1) so that PPO fine-tuning
starts with a critic that matches the actor. `dora train` then continues with
MaskablePPO on the environment reward (lower learning rate, smaller clip range).

Teacher (`teacher_plan`): the `dora` DP's plan (QoE-compliant, best objective). When no
plan meets QoE, the same DP without QoE constraints (`search(constrained=False)`),
keeping the candidate with the best `utility` (the environment's reward: the least
penalised miss). A teacher plan the action space cannot reach (a training plan that
fits in memory only because a late stage keeps fewer than M micro-batches in flight)
is skipped and counted.

Data: synthetic instances of the training generator (`InstanceSource(seed, ...)`,
indices [0, episodes)) - disjoint from the evaluation seed and from the held-out seed
(dora_rl/learning/evaluation.py) - plus the preset scenarios (`presets`, each repeated
`preset_repeat` times, so they are NOT held out for the agent)."""

from __future__ import annotations

import logging
import math
import time

import numpy as np

from dora_rl.errors import DoraError

log = logging.getLogger(__name__)

KEYS = ("devices", "device_mask", "global", "action_mask")


class Decisions:
    """(observation, mask, action) decisions with their episode's return, collected for
    cloning; `dataset(stats)` is the {obs, actions, returns, stats} layout
    `behaviour_clone` and `merge_datasets` take."""

    def __init__(self):
        self.cols: dict[str, list] = {k: [] for k in KEYS}
        self.acts: list[int] = []
        self.rets: list[float] = []

    def add(self, steps, ret: float, repeat: int = 1) -> None:
        for _ in range(repeat):
            for obs, _mask, a in steps:
                for k in KEYS:
                    self.cols[k].append(obs[k])
                self.acts.append(a)
                self.rets.append(ret)

    def __len__(self) -> int:
        return len(self.acts)

    def dataset(self, stats: dict) -> dict:
        obs = {k: np.stack(v).astype(np.float32) if v else np.zeros((0,), np.float32) for k, v in self.cols.items()}
        return {"obs": obs, "actions": np.array(self.acts, dtype=np.int64),
                "returns": np.array(self.rets, dtype=np.float32), "stats": stats}


def teacher_plan(inst, budget: float | None = None):
    """(Plan, 'dora' | 'relaxed') for an Instance, or (None, reason)."""
    from dora_rl.cost.qoe import utility
    from dora_rl.errors import NoFeasiblePlan
    from dora_rl.planners import run_planner
    from dora_rl.planners.dp import search, to_plan

    try:
        return run_planner("dora", inst.scenario, inst.cost).plan, "dora"
    except NoFeasiblePlan:
        pass
    except DoraError as e:
        return None, f"dora: {type(e).__name__}"
    try:
        res = search(inst.scenario, inst.cost, constrained=False)
    except DoraError as e:
        return None, f"relaxed: {type(e).__name__}"
    cands = [c for c in res.candidates if c.metrics.feasible]
    if not cands:
        return None, "relaxed: nothing fits"
    best = max(cands, key=lambda c: utility(inst.cost, c.metrics, inst.ref_obj))
    return to_plan(inst.cost, best.stages), "relaxed"


def replay(env, inst, plan):
    """Replay `plan` on `inst` through `env`: ([(obs, mask, action)], utility, qoe_ok) or
    None when an action of the plan is masked (unreachable in the action space)."""
    from dora_rl.envs.partition import actions_for_plan

    obs, _ = env.reset(seed=0, options={"scenario": inst})
    steps = []
    for a in actions_for_plan(plan, inst.scenario, env.max_devices):
        mask = env.action_masks()
        if not mask[a]:
            return None
        if mask.sum() > 1:
            steps.append((obs, mask, a))
        obs, r, done, _, info = env.step(a)
        if done:
            return steps, float(r), bool(info["qoe_ok"])
    return None


def teacher_dataset(episodes: int, seed: int = 0, max_devices: int = 8, presets=(), preset_repeat: int = 20,
                    env_kwargs: dict | None = None, progress: bool = False, max_seconds: float | None = None) -> dict:
    """Teacher trajectories: {obs: {key: array}, actions, returns, stats}."""
    from dora_rl.envs.instance import Instance
    from dora_rl.envs.partition import PartitionEnv
    from dora_rl.scenario import load_scenario

    kw = {k: v for k, v in (env_kwargs or {}).items() if k in ("min_devices", "gen_max_devices", "gen_kwargs")}
    env = PartitionEnv(scenario=None, max_devices=max_devices, seed=seed, pool_size=max(1, episodes), **kw)
    t0 = time.time()
    dec = Decisions()
    stats = {"episodes": 0, "dora": 0, "relaxed": 0, "unreachable": 0, "no_teacher": 0, "qoe_ok": 0,
             "decisions": 0, "presets": list(presets), "preset_repeat": preset_repeat, "seed": seed}
    items = [("synthetic", i) for i in range(episodes)] + [("preset", p) for p in presets]
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(items), desc="teacher", unit="episode", leave=False)
    for kind, i in items:
        if max_seconds and time.time() - t0 > max_seconds:
            stats["stopped_early"] = True
            break
        if kind == "synthetic":
            inst = env.source.instance(i)
            env.source.cache.clear()          # one pass: no need to keep instances
            rep = 1
        else:
            sc = load_scenario(i)
            if sc.cluster.n > max_devices:
                continue
            inst = Instance(sc, max_devices)
            rep = preset_repeat
        plan, how = teacher_plan(inst)
        if bar is not None:
            bar.update(1)
        if plan is None:
            stats["no_teacher"] += 1
            continue
        out = replay(env, inst, plan)
        if out is None:
            stats["unreachable"] += 1
            continue
        steps, u, ok = out
        stats["episodes"] += 1
        stats[how] += 1
        stats["qoe_ok"] += ok
        dec.add(steps, u, rep)
    if bar is not None:
        bar.close()
    stats["decisions"] = len(dec)
    stats["seconds"] = round(time.time() - t0, 1)
    if not len(dec):
        raise DoraError("behaviour cloning: the teacher produced no decisions")
    return dec.dataset(stats)


def rollout_dataset(policy, indices, seed: int = 0, max_devices: int = 8, env_kwargs: dict | None = None,
                    top_k: int | None = 2, max_seconds: float | None = None) -> dict:
    """Expert-iteration labels: rollout search with the current policy
    (dora_rl/learning/search.py) on training instances `indices`; every real decision
    it takes becomes (observation, mask, action), the return is its plan's utility."""
    from dora_rl.envs.partition import PartitionEnv
    from dora_rl.learning.extractor import NumpyActor
    from dora_rl.learning.search import rollout_search

    kw = {k: v for k, v in (env_kwargs or {}).items() if k in ("min_devices", "gen_max_devices", "gen_kwargs")}
    pool = max(indices) + 1 if len(indices) else 1
    env = PartitionEnv(scenario=None, max_devices=max_devices, seed=seed, pool_size=pool, **kw)
    actor = NumpyActor(policy)
    t0 = time.time()
    dec = Decisions()
    stats = {"episodes": 0, "qoe_ok": 0, "decisions": 0, "top_k": top_k}
    for i in indices:
        if max_seconds and time.time() - t0 > max_seconds:
            stats["stopped_early"] = True
            break
        inst = env.source.instance(int(i))
        env.source.cache.clear()
        if not inst.completable:
            continue
        env.reset(seed=0, options={"scenario": inst})
        rec: list = []
        _, m, u = rollout_search(actor, env, top_k, record=rec)
        stats["episodes"] += 1
        stats["qoe_ok"] += bool(m.qoe_ok)
        dec.add(rec, u)
    stats["decisions"] = len(dec)
    stats["seconds"] = round(time.time() - t0, 1)
    return dec.dataset(stats)


def merge_datasets(*parts: dict) -> dict:
    """Concatenate datasets of the same layout (DAgger-style aggregation)."""
    parts = [p for p in parts if len(p["actions"])]
    return {"obs": {k: np.concatenate([p["obs"][k] for p in parts]) for k in KEYS},
            "actions": np.concatenate([p["actions"] for p in parts]),
            "returns": np.concatenate([p["returns"] for p in parts]), "stats": {}}


def expert_iteration(policy, data: dict, rounds: int, episodes: int, start: int, seed: int = 0,
                     max_devices: int = 8, env_kwargs: dict | None = None, epochs: int = 4, lr: float = 1e-3,
                     batch_size: int = 256, top_k: int | None = 2, max_seconds: float | None = None,
                     progress: bool = False) -> dict:
    """Expert iteration (ExIt / DAgger with a search-improved teacher): each round, the
    current policy plans `episodes` fresh training instances with rollout search; its
    decisions are added to the data set and the network is cloned again on all of it.
    Rollout search is never worse than the greedy policy it searches with, so each round
    the greedy network imitates a better planner on the states it reaches itself (the
    states the `dora` teacher never visits). Returns per-round stats."""
    t0 = time.time()
    hist = []
    for r in range(int(rounds)):
        left = None if not max_seconds else max_seconds - (time.time() - t0)
        if left is not None and left <= 0:
            break
        idx = range(start + r * episodes, start + (r + 1) * episodes)
        new = rollout_dataset(policy, idx, seed, max_devices, env_kwargs, top_k,
                              max_seconds=None if left is None else 0.6 * left)
        if not len(new["actions"]):
            break
        data = merge_datasets(data, new)
        fit = behaviour_clone(policy, data, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed + r + 1,
                              max_seconds=None if not max_seconds else max(1.0, max_seconds - (time.time() - t0)))
        rec = {"round": r + 1, **{k: new["stats"][k] for k in ("episodes", "qoe_ok", "decisions", "seconds")},
               "search_qoe_ok": round(new["stats"]["qoe_ok"] / max(1, new["stats"]["episodes"]), 4),
               "samples": int(len(data["actions"])), "bc_seconds": fit["seconds"],
               "final": fit["history"][-1] if fit["history"] else None}
        hist.append(rec)
        if progress:
            log.info("expert iteration round %d/%d: %s", r + 1, rounds, rec)
    return {"rounds": hist, "seconds": round(time.time() - t0, 1), "top_k": top_k,
            "episodes_per_round": episodes, "epochs": epochs, "lr": lr}


class BudgetCosine:
    """Cosine decay of the optimizer's learning rates to 0 over whichever ends first:
    `total` steps or `seconds` of wall time from construction (`step()` after each
    optimizer step, as torch's schedulers). Why: a fit cut short by its time budget under a
    step-counted cosine stops at a high learning rate (the shipped stage policy's
    imitation ran 19 of its 40 epochs and ended at 55 % of the starting rate); annealed by
    the clock as well, every budget-bound fit ends annealed."""

    def __init__(self, opt, total: int, seconds: float | None = None):
        self.opt, self.total, self.seconds = opt, max(1, int(total)), seconds
        self.base = [g["lr"] for g in opt.param_groups]
        self.t0, self.n = time.time(), 0

    def progress(self) -> float:
        f = self.n / self.total
        if self.seconds:
            f = max(f, (time.time() - self.t0) / self.seconds)
        return min(1.0, f)

    def step(self) -> None:
        self.n += 1
        c = 0.5 * (1.0 + math.cos(math.pi * self.progress()))
        for g, b in zip(self.opt.param_groups, self.base):
            g["lr"] = b * c


def optimizer_step(policy, opt, sched, loss) -> None:
    """One supervised step: backward, clip the gradient norm to 1, step the optimizer and
    its schedule (behaviour cloning here and the stage policy's fit share it)."""
    import torch
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
    opt.step()
    sched.step()


def behaviour_clone(policy, data: dict, epochs: int = 8, batch_size: int = 256, lr: float = 1e-3,
                    vf_coef: float = 0.5, seed: int = 0, val_frac: float = 0.05, progress: bool = False,
                    max_seconds: float | None = None) -> dict:
    """Masked cross-entropy on the teacher's actions (+ value regression on returns).
    Returns {epochs, seconds, train_loss, val_acc, ...}."""
    import torch

    t0 = time.time()
    n = len(data["actions"])
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    n_val = max(1, int(n * val_frac)) if (n > 20 and val_frac > 0) else 0
    val, tr = perm[:n_val], perm[n_val:]
    obs = {k: torch.from_numpy(v) for k, v in data["obs"].items()}
    masks = obs["action_mask"] > 0.5
    acts = torch.from_numpy(data["actions"])
    rets = torch.from_numpy(data["returns"])
    opt = torch.optim.Adam(policy.parameters(), lr=lr)
    sched = BudgetCosine(opt, epochs * math.ceil(len(tr) / batch_size), max_seconds)
    policy.set_training_mode(True)
    hist = []

    def batch_loss(idx):
        o = {k: v[idx] for k, v in obs.items()}
        dist = policy.get_distribution(o, action_masks=masks[idx].numpy())
        logp = dist.log_prob(acts[idx])
        v = policy.predict_values(o).flatten()
        ce = -logp.mean()
        vl = torch.nn.functional.mse_loss(v, rets[idx])
        return ce, vl, dist

    done_epochs = 0
    for ep in range(epochs):
        order = torch.from_numpy(rng.permutation(tr))
        tot, cnt = 0.0, 0
        for s in range(0, len(order), batch_size):
            if ep and sched.progress() >= 1.0:      # the budget's end (after one epoch at least): the rate is 0
                break
            idx = order[s:s + batch_size]
            ce, vl, _ = batch_loss(idx)
            optimizer_step(policy, opt, sched, ce + vf_coef * vl)
            tot += float(ce.detach()) * len(idx)
            cnt += len(idx)
        done_epochs += 1
        rec = {"epoch": ep + 1, "train_ce": round(tot / max(cnt, 1), 4)}
        if n_val:
            with torch.no_grad():
                idx = torch.from_numpy(val)
                ce, vl, dist = batch_loss(idx)
                pred = dist.distribution.probs.argmax(-1)
                rec.update(val_ce=round(float(ce), 4), val_acc=round(float((pred == acts[idx]).float().mean()), 4),
                           val_value_mse=round(float(vl), 4))
        hist.append(rec)
        if progress:
            log.info("bc epoch %d/%d: %s", ep + 1, epochs, rec)
        if sched.progress() >= 1.0:
            break
    policy.set_training_mode(False)
    return {"epochs": done_epochs, "batch_size": batch_size, "lr": lr, "samples": int(n), "val_samples": int(n_val),
            "seconds": round(time.time() - t0, 1), "history": hist}


def greedy_stats(policy, episodes: int = 100, seed: int = 1, max_devices: int = 8) -> dict:
    """Greedy masked rollouts on instances of generator seed `seed`: mean utility and
    QoE compliance (a quick check, not the evaluation)."""
    from dora_rl.envs.partition import PartitionEnv
    from dora_rl.learning.extractor import NumpyActor

    actor = NumpyActor(policy)
    env = PartitionEnv(scenario=None, max_devices=max_devices, seed=seed, pool_size=episodes)
    us, ok = [], 0
    for i in range(episodes):
        env.reset(seed=0, options={"scenario": env.source.instance(i)})
        done = False
        while not done:
            m = env._mask
            allowed = np.flatnonzero(m)
            a = int(allowed[0]) if len(allowed) == 1 else int(np.argmax(actor.logits(env.observe(), m)))
            r, done, info = env.advance(a)
        us.append(r)
        ok += info["qoe_ok"]
    return {"mean_utility": float(np.mean(us)), "qoe_ok": ok / episodes, "episodes": episodes, "seed": seed}
