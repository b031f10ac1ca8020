"""Training the stage policy: imitate the best plan known, DAgger on its own states, then PPO.

Why this recipe: the network must plan well greedily on its own. Cloning a good teacher
gives it the decisions on the teacher's trajectories; DAgger (Ross et al. 2011) adds the
states the network reaches itself, each labelled by the teacher; a short MaskablePPO
fine-tune optimises the reward the evaluation reports (`utility`). Every phase has its
share of one wall-clock budget and a progress bar with an ETA.

Families (the curriculum): each is a StageEnv shape and a generator range, e.g. `small`
(2-8 devices, 4-24 blocks, padded to 8 x 32) and `large` (12-64 devices, 30-200 blocks,
padded to 64 x 200). Imitation trains on all of them (per-family batches: padding is per
batch, not per agent); the same weights serve every size.

Teacher (`best_known`): the best, QoE-compliant first then by objective, of the `dora`
plan (where it runs), its local polish, and the polish of the fastest single-device plan
(dora_rl/learning/search.py:polish). DAgger labels a state by rollout: each of the
policy's `top_k` most likely actions is completed greedily and polished, the best wins. The
phases that collect data on training instances (in worker processes) are in
stage_collect.py.

Seeds: training instances use generator seed `seed` (default 0); the held-out sets
(dora_rl/learning/evaluation.py) use other seeds."""

from __future__ import annotations

import logging
import math
import time

import numpy as np

from dora_rl.errors import DoraError

log = logging.getLogger(__name__)
OBS = ("devices", "device_mask", "blocks", "block_mask", "global", "relay_w", "two_stage", "promise", "group")
FAMILIES = {
    "small": {"max_devices": 8, "max_blocks": 32, "min_devices": 2, "gen_max_devices": 8, "gen_kwargs": {}},
    "large": {"max_devices": 64, "max_blocks": 200, "min_devices": 12, "gen_max_devices": 64,
              "gen_kwargs": {"min_blocks": 30, "max_blocks": 200}},
}


def make_env(family: dict, seed: int = 0, pool_size: int = 10**9, reward: str = "utility"):
    from dora_rl.envs.stage import StageEnv

    return StageEnv(scenario=None, max_devices=family["max_devices"], max_blocks=family["max_blocks"], seed=seed,
                    pool_size=pool_size, min_devices=family["min_devices"],
                    gen_max_devices=family["gen_max_devices"], gen_kwargs=dict(family["gen_kwargs"]), reward=reward)


def fastest_plan(inst):
    """The whole model on the fastest device that holds it (a search's start), or None."""
    from dora_rl.cost.qoe import utility
    from dora_rl.errors import NoFeasiblePlan

    for d in sorted(range(inst.n), key=lambda d: -inst.rate[d]):
        try:
            M, st, m = inst.finish([(0, inst.B, (d,))])
        except NoFeasiblePlan:
            continue
        return inst.to_plan(st, M), m, utility(inst.cost, m, inst.ref_obj)
    return None


def best_known(inst, use_dora: bool = True, polish_rounds: int = 40):
    """(plan, metrics, utility) of the best plan known for an Instance (see the docstring)."""
    from dora_rl.cost.qoe import utility
    from dora_rl.learning.search import polish, search_key
    from dora_rl.planners import run_planner

    cands = []
    if use_dora:
        try:
            r = run_planner("dora", inst.scenario, inst.cost, explain=False)
            cands.append((r.plan, r.metrics, utility(inst.cost, r.metrics, inst.ref_obj)))
        except (DoraError, OverflowError, MemoryError):      # no compliant plan, or dora's own limits
            pass
    f = fastest_plan(inst)
    if f is not None:
        cands.append(f)
    if not cands:
        return None
    best = min(cands, key=lambda c: search_key(c, inst.objective))
    return polish(inst, best, max_rounds=polish_rounds)


class Data:
    """Decisions of one family: observations, masks, actions, returns, and per decision the
    set of actions as good as the label (`equiv`: the label, and for a DAgger label the
    rollout candidates whose polished completions tie with it)."""

    def __init__(self):
        self.obs = {k: [] for k in OBS}
        self.masks, self.acts, self.rets, self.equiv = [], [], [], []

    def add(self, obs, mask, a, ret, equiv=()):
        for k in OBS:
            self.obs[k].append(obs[k])
        self.masks.append(mask)
        self.acts.append(int(a))
        self.rets.append(float(ret))
        self.equiv.append(tuple(sorted({int(a), *map(int, equiv)})))

    def __len__(self):
        return len(self.acts)

    def extend(self, other: Data) -> None:
        for k in OBS:
            self.obs[k] += other.obs[k]
        self.masks += other.masks
        self.acts += other.acts
        self.rets += other.rets
        self.equiv += other.equiv

    def tensors(self):
        import torch

        masks = torch.from_numpy(np.stack(self.masks))
        eq = torch.zeros_like(masks)
        for i, e in enumerate(self.equiv):
            eq[i, list(e)] = True
        return ({k: torch.from_numpy(np.stack(v).astype(np.float32)) for k, v in self.obs.items()},
                masks, torch.tensor(self.acts), torch.tensor(self.rets), eq)


def group_adds(devs, added: int, D: int, Bm: int) -> tuple:
    """The add actions that build the same stage as adding `devs[added]` next: a data-parallel
    group's members may join in any order, so the add of any member not added yet is as
    good a next add, whichever is left last closing the stage (the cost model is symmetric
    in the members: reversing the groups of 23 teacher plans changed 22 objectives by
    nothing, one by 0.04 %, where the members' transfer routes differ). Without this a
    teacher label named one order and counted the others, which a set network cannot tell
    apart, as wrong."""
    return tuple(D * Bm + d for d in devs[added:]) if len(devs) - added >= 2 else ()


def replay_plan(env, inst, plan, data: Data, ret: float) -> bool:
    """Replay `plan` in env on `inst`, adding every real decision to `data` (label: the
    plan's action; its class: `group_adds`); False if a step is masked."""
    from dora_rl.envs.stage import stage_actions_for_plan

    D, Bm = env.max_devices, env.max_blocks
    idx = inst.scenario.cluster.index
    eqs = [group_adds([idx[d] for d in s.devices], k, D, Bm) for s in plan.stages for k in range(len(s.devices))]
    obs, _ = env.reset(seed=0, options={"scenario": inst})
    for a, eq in zip(stage_actions_for_plan(plan, inst.scenario, D, Bm), eqs):
        m = env.action_masks()
        if not m[a]:
            return False
        if m.sum() > 1:
            data.add(obs, m, a, ret, [e for e in eq if m[e]])
        obs, _, done, _, _ = env.step(a)
        if done:
            return True
    return False


class TimeBar:
    """A tqdm bar over `total` seconds from now, with an ETA; `tick(postfix)` moves it to
    the time elapsed. Nothing is drawn when `progress` is off."""

    def __init__(self, total: float, desc: str, progress: bool):
        self.total, self.t0, self.bar = total, time.time(), None
        if progress:
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc=desc, unit="s", leave=False, bar_format="{desc}: {percentage:3.0f}%|"
                            "{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}]{postfix}")

    def tick(self, postfix: str = "") -> None:
        if self.bar is not None:
            self.bar.n = min(self.total, time.time() - self.t0)
            self.bar.set_postfix_str(postfix)
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _batches(t, batch: int, rng) -> list:
    """Index chunks of one family's decisions, similar sizes together (sorted by devices x
    blocks with a random jitter, so chunks change between epochs): padding is per batch."""
    obs = t[0]
    nd = obs["device_mask"].sum(1).numpy()
    nb = obs["blocks"][..., 0].sum(1).numpy()
    order = np.argsort(nd * nb * (1.0 + 0.3 * rng.random(len(nd))), kind="stable")
    return np.array_split(order, max(1, math.ceil(len(order) / batch)))


def _crop(t, idx):
    """The decisions `idx` of a family cropped to their largest device and block counts:
    observations, masks and actions re-indexed to the (Dc, Bc) action layout."""
    import torch

    obs, masks, acts, rets, eq = t
    ii = torch.from_numpy(idx)
    D, Bm = obs["devices"].shape[1], obs["blocks"].shape[1]
    dc = max(1, int(obs["device_mask"][ii].sum(1).max()))
    bc = max(1, int(obs["blocks"][ii][..., 0].sum(1).max()))
    o = {"devices": obs["devices"][ii, :dc], "device_mask": obs["device_mask"][ii, :dc],
         "blocks": obs["blocks"][ii, :bc], "block_mask": obs["block_mask"][ii, :bc], "global": obs["global"][ii],
         "relay_w": obs["relay_w"][ii, :dc], "two_stage": obs["two_stage"][ii, :dc, :bc],
         "promise": obs["promise"][ii, :dc], "group": obs["group"][ii, :dc]}
    def cut(m):
        return torch.cat([m[:, :D * Bm].reshape(-1, D, Bm)[:, :dc, :bc].flatten(1), m[:, D * Bm:D * Bm + dc]], 1)

    a = acts[ii]
    close = a < D * Bm
    a = torch.where(close, (a // Bm) * bc + a % Bm, dc * bc + (a - D * Bm))
    return o, cut(masks[ii]), a, rets[ii], cut(eq[ii])


def fit(policy, datas: dict, seconds: float, epochs: int = 30, lr: float = 1e-3, batch: int = 128,
        seed: int = 0, progress: bool = False, desc: str = "imitate", threads: int = 1) -> dict:
    """Masked cross-entropy of each label's equivalence class (+ value regression) on every
    family's decisions, one family per mini-batch (each cropped to its largest instance),
    cosine learning rate annealed to 0 by `epochs` or by `seconds`, whichever comes first
    (imitation.BudgetCosine; the fit stops there), on `threads` torch threads (the
    collecting workers are idle while the network fits: 2 threads fit 1.7x faster here,
    the same weights)."""
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        return _fit(policy, datas, seconds, epochs, lr, batch, seed, progress, desc)
    finally:
        torch.set_num_threads(prev)


def _fit(policy, datas, seconds, epochs, lr, batch, seed, progress, desc) -> dict:
    import torch

    from dora_rl.learning.imitation import BudgetCosine, optimizer_step

    rng = np.random.default_rng(seed)
    tens = {k: d.tensors() for k, d in datas.items() if len(d)}
    if not tens:
        raise DoraError("imitation: no decisions to learn from")
    steps_per_epoch = sum(math.ceil(len(t[2]) / batch) for t in tens.values())
    opt = torch.optim.Adam(policy.parameters(), lr=lr)
    sched = BudgetCosine(opt, epochs * steps_per_epoch, seconds)
    policy.set_training_mode(True)
    t0, bar, hist = time.time(), TimeBar(seconds, desc, progress), []
    for ep in range(epochs):
        order = [(k, idx) for k, t in tens.items() for idx in _batches(t, batch, rng)]
        rng.shuffle(order)
        tot = acc = cnt = 0.0
        for k, idx in order:
            if ep and sched.progress() >= 1.0:      # the budget's end (after one epoch at least): the rate is 0
                break
            obs, masks, acts, rets, eq = _crop(tens[k], idx)
            logits, v = policy.any_size(obs, masks)
            logits = logits.masked_fill(~masks, -1e9)
            # cross-entropy of the label's equivalence class (one action unless equivalents were found)
            ce = (torch.logsumexp(logits, -1) - torch.logsumexp(logits.masked_fill(~eq, -1e9), -1)).mean()
            optimizer_step(policy, opt, sched, ce + 0.25 * torch.nn.functional.mse_loss(v, rets))
            tot += float(ce.detach()) * len(idx)
            acc += float(eq.gather(1, logits.argmax(-1, keepdim=True)).float().sum())
            cnt += len(idx)
        if cnt:
            hist.append({"epoch": ep + 1, "ce": round(tot / cnt, 4), "acc": round(acc / cnt, 4)})
            bar.tick(f"epoch {ep + 1} ce {tot / cnt:.3f} acc {acc / cnt:.3f}")
        if sched.progress() >= 1.0:
            break
    bar.close()
    policy.set_training_mode(False)
    return {"epochs": len(hist), "samples": {k: len(d) for k, d in datas.items()},
            "seconds": round(time.time() - t0, 1), "final": hist[-1] if hist else None}


def next_action(env, plan) -> int | None:
    """The StageEnv action at env's state that continues `plan` (None if the plan does not
    start with the episode's stages and pending group)."""
    from dora_rl.learning.search import index_stages

    stages = index_stages(env.inst, plan)
    k, g = len(env.stages), list(env.group)
    if len(stages) <= k or stages[:k] != [tuple(x) for x in env.stages] or list(stages[k][2][:len(g)]) != g:
        return None
    l, r, devs = stages[k]
    if l != env.p or len(devs) <= len(g):
        return None
    D, Bm = env.max_devices, env.max_blocks
    return D * Bm + devs[len(g)] if len(devs) > len(g) + 1 else devs[-1] * Bm + r - 1


def label_by_rollout(actor, env, top_k: int, tol: float = 1e-3):
    """The teacher's action at env's state: each of the policy's top_k actions (and the
    greedy one) completed greedily, then polished with the episode's partial plan kept
    (`polish(fixed=...)`); a candidate stands for the polished plan's own next action
    when the masks allow it (the polish may have moved the current stage's cut or
    device), else for itself with its unpolished completion. Returns (action, best
    result, the actions as good as it: same QoE status, objective within `tol`; for an
    add, also the adds of its group's other members, `group_adds`).

    Why not label the candidate with its freely polished plan: the polish rewrites the
    whole plan, often the stages already built or the current one (about half the labels
    on the session-6 agent's states), so a "close the whole model here" candidate was
    credited with the pipeline the polish made of it - a label for a plan the action does
    not lead to."""
    from dora_rl.learning.search import greedy_complete, polish, search_key

    mask = env._mask
    allowed = np.flatnonzero(mask)
    logits = actor.logits(env.observe(), mask)
    cands = allowed[np.argsort(-logits[allowed], kind="stable")[:top_k]]
    forks = []
    for a in cands:
        f = env.fork()
        f.advance(int(a))
        forks.append(f)
    fixed = ([tuple(x) for x in env.stages], tuple(env.group))
    acts, res = [], []
    for a, r in zip(cands, greedy_complete(actor, forks)):
        pr = polish(env.inst, r, max_rounds=30, fixed=fixed)
        na = next_action(env, pr[0])
        ok = na is not None and mask[na]
        acts.append(int(na) if ok else int(a))
        res.append(pr if ok else r)
    keys = [search_key(r, env.inst.objective) for r in res]
    i = min(range(len(cands)), key=lambda i: keys[i])
    eq = [acts[j] for j in range(len(cands))
          if keys[j][0] == keys[i][0] and keys[j][1] <= keys[i][1] + tol * abs(keys[i][1])]
    D, Bm = env.max_devices, env.max_blocks
    if acts[i] >= D * Bm and next_action(env, res[i][0]) == acts[i]:    # an add: its group's other members too
        idx = env.inst.scenario.cluster.index
        devs = [idx[d] for d in res[i][0].stages[len(env.stages)].devices]
        eq += [a for a in group_adds(devs, len(env.group), D, Bm) if mask[a]]
    return acts[i], res[i], sorted(set(eq))


def greedy_eval(policy, family: dict, n: int = 60, seed: int = 1, env=None) -> dict:
    """Greedy (network alone) on n instances of `family` with generator seed `seed`:
    mean utility and QoE compliance (a quick check for choosing checkpoints, not the bench).
    `env`: a StageEnv of that family and seed to reuse (its instances are cached: a
    64-device instance takes ~1.5 s to build)."""
    from dora_rl.learning.search import greedy_complete
    from dora_rl.learning.stage_actor import StageNumpyActor

    actor, env = StageNumpyActor(policy), env if env is not None else make_env(family, seed)
    us, ok = [], 0
    for i in range(n):
        env.reset(seed=0, options={"scenario": env.source.instance(i)})
        _, m, u = greedy_complete(actor, [env])[0]
        us.append(u)
        ok += m.qoe_ok
    return {"mean_utility": round(float(np.mean(us)), 4), "qoe_ok": round(ok / n, 4), "n": n, "seed": seed}
