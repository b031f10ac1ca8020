"""Decoding a plan from the partition policy: greedy completion and rollout search.

Why: the greedy plan is one pass through the blocks, and one wrong early decision
cannot be undone - the typical miss is keeping the whole model on one device when only
a pipeline meets the SLO. Rollout search (Bertsekas' rollout algorithm, with the
policy's greedy plan as the base heuristic) fixes that at a bounded cost: at each real
decision it tries every allowed action (or the policy's `top_k` most likely ones),
completes each greedily, scores the finished plans with the shared cost model
(`search_key`: QoE-compliant plans first, by objective; then the rest by the
environment's reward, so a miss is judged by how much it misses) and takes the action
whose completion is best. The greedy completion of the chosen action is again a
candidate at the next decision, so the final plan is never worse than the greedy plan
(the rollout improvement property); the best plan seen is kept anyway.

Cost: one greedy completion per candidate per decision, all candidates completed in
lockstep with one batched network call per step (`NumpyActor.logits` on a batch).

`polish` then improves the searched plan locally on the cost model (hill climbing over
its cut points, stage merges and splits, device replacements, and adding or dropping a
device of a stage's data-parallel group): the greedy
completions rollout search relies on can place a long pipeline's cuts a few blocks off,
which a cut shift repairs in microseconds per candidate.

`rollout_search(..., record=[])` also returns the decisions it took (observation, mask,
chosen action): the improved policy's labels for expert iteration
(dora_rl/learning/imitation.py)."""

from __future__ import annotations

import numpy as np

from dora_rl.cost.qoe import utility
from dora_rl.envs.partition import PartitionEnv
from dora_rl.errors import NoFeasiblePlan
from dora_rl.planners.local import device_orders, unused_candidates

OBS_KEYS = ("devices", "device_mask", "global")


def search_key(result, objective: str) -> tuple:
    """Order finished episodes (plan, metrics, utility): QoE-compliant plans first, by
    objective (as `preference`), then the others by utility (the least-penalised miss)."""
    _, m, u = result
    return (0, m.objective(objective)) if m.qoe_ok else (1, -u)


def greedy_complete(actor, envs: list[PartitionEnv]) -> list:
    """Finish every episode in `envs` greedily, in lockstep (one batched network call
    per step for the envs that face a real choice: neither forced by the mask nor taken by
    the actor's rules whatever the network says, `ruled`); returns their `result`s. While
    an env follows a group plan (`_gplan`) the rule is asked first: its close is checked
    alone, without the whole mask (`StageMasks.allows`), and a ruled move is allowed, so
    it is the forced one wherever only one is: the order changes no result."""
    live = [e for e in envs if not e.done]
    ruled = getattr(actor, "ruled", None)       # a move the policy's rules take whatever the network says
    while live:
        ask = []
        for e in live:
            a = ruled(e) if ruled is not None and getattr(e, "_gplan", None) is not None else None
            if a is None:
                allowed = np.flatnonzero(e._mask)
                a = int(allowed[0]) if len(allowed) == 1 else (ruled(e) if ruled is not None else None)
            if a is not None:          # a forced or ruled move: no need to ask the network
                e.advance(a)
            else:
                ask.append(e)
        if ask:
            obs = [e.observe() for e in ask]
            batch = {k: np.stack([o[k] for o in obs]) for k in obs[0] if k != "action_mask"}
            logits = actor.logits(batch, np.stack([e._mask for e in ask]))
            for e, a in zip(ask, np.argmax(logits, axis=1)):
                e.advance(int(a))
        live = [e for e in live if not e.done]
    return [e.result for e in envs]


def rollout_search(actor, env: PartitionEnv, top_k: int | None = None, record: list | None = None,
                   deadline: float | None = None):
    """Run `env` (reset on an instance) to the end by rollout search; returns the best
    (plan, metrics, utility) seen. `record` collects (obs, mask, action) per decision.
    `deadline` (time.perf_counter() value): from then on the episode is finished greedily."""
    import time

    objective = env.inst.objective
    forks: list = []
    best = None

    def consider(res):
        nonlocal best
        k = search_key(res, objective)
        if best is None or k < best[0]:
            best = (k, res)
        return k

    while not env.done:
        allowed = np.flatnonzero(env._mask)
        if len(allowed) == 1:
            env.advance(int(allowed[0]))
            continue
        if deadline is not None and time.perf_counter() > deadline:
            consider(greedy_complete(actor, [env])[0])
            break
        obs = env.observe()
        cands = allowed
        if top_k is not None and len(allowed) > top_k:
            logits = actor.logits(obs, env._mask)
            cands = allowed[np.argsort(-logits[allowed], kind="stable")[:top_k]]
        trials = []
        for i, a in enumerate(cands):
            if i >= len(forks):
                forks.append(env.fork())
            f = env.fork(forks[i])
            f.advance(int(a))
            trials.append(f)
        keys = [consider(r) for r in greedy_complete(actor, trials)]
        a = int(cands[min(range(len(cands)), key=lambda i: keys[i])])
        if record is not None:
            record.append((obs, env._mask.copy(), a))
        env.advance(a)
    if env.result is not None:
        consider(env.result)
    return best[1]


def index_stages(inst, plan) -> list[tuple]:
    """`plan`'s stages as (start, end, device indices) in `inst`'s device order: the form
    `_neighbours` moves and `Instance.finish` scores."""
    idx = inst.scenario.cluster.index
    return [(s.start, s.end, tuple(idx[d] for d in s.devices)) for s in plan.stages]


def _keeps(stages: list[tuple], fixed: tuple) -> bool:
    """Do `stages` start with the stages `fixed[0]`, and the next one's devices with `fixed[1]`?"""
    pre, group = fixed
    k = len(pre)
    if not pre and not group:
        return True
    return (len(stages) > k and [tuple(x) for x in stages[:k]] == [tuple(x) for x in pre]
            and tuple(stages[k][2][:len(group)]) == tuple(group) and len(stages[k][2]) > len(group))


def _seams(bnd, l: int, r: int, k: int) -> list[int]:
    """`k` cut points inside blocks [l, r), one per equal run of cuts: the cut of that run
    with the fewest bytes crossing it (`bnd`: bytes per sample at each cut,
    `CostModel.bnd`), the first of the run without `bnd`; every cut when there are at most
    k. Why: the objective is jagged in the cut - it follows the activation crossing it (a
    50-block training case: 174.8 ms at cut 32, 66 kB, and 235.3 at cut 31, 95 kB) - so
    evenly spaced points miss the seams `dora`'s local search splits at, while each run's
    seam keeps the points spread over the stage."""
    cuts = list(range(l + 1, r))
    if len(cuts) <= k:
        return cuts
    runs = [cuts[i * len(cuts) // k:(i + 1) * len(cuts) // k] for i in range(k)]
    return [min(run, key=lambda c: (bnd[c], c)) if bnd is not None else run[0] for run in runs]


def _neighbours(stages: list[tuple], n: int, B: int, max_shift: int = 3, split_points: int = 12, free=None,
                bnd=None):
    """Plans one local move away: shift a cut, merge two stages, replace a stage's device
    by an unused one, add an unused device to a stage's group (data parallelism) or drop
    one from it, split a single-device stage onto an unused device. `free`: the unused
    devices moves may bring in (None: every unused device). A split tries `split_points`
    cuts of the stage (`_seams`: with `bnd`, bytes per sample at each cut, the seam of each
    run of cuts); with `bnd` a cut also moves to the seams between its two stages' outer
    ends, besides its shifts of up to `max_shift` blocks."""
    S = len(stages)
    if free is None:
        used = {d for _, _, g in stages for d in g}
        free = [d for d in range(n) if d not in used]
    for i in range(S - 1):
        (l0, r0, g0), (_l1, r1, g1) = stages[i], stages[i + 1]
        far = [] if bnd is None else [b for b in _seams(bnd, l0, r1, split_points) if abs(b - r0) > max_shift]
        for b in [r0 + dlt for dlt in range(-max_shift, max_shift + 1) if dlt] + far:
            if l0 < b < r1:
                yield stages[:i] + [(l0, b, g0), (b, r1, g1)] + stages[i + 2:]
        for g in (g0, g1):
            yield stages[:i] + [(l0, r1, g)] + stages[i + 2:]
    for i, (l, r, g) in enumerate(stages):
        for u in free:
            yield stages[:i] + [(l, r, g + (u,))] + stages[i + 1:]
            for j in range(len(g)):
                yield stages[:i] + [(l, r, g[:j] + (u,) + g[j + 1:])] + stages[i + 1:]
        if len(g) > 1:
            for j in range(len(g)):
                yield stages[:i] + [(l, r, g[:j] + g[j + 1:])] + stages[i + 1:]
            continue
        if r - l > 1 and free:
            for q in _seams(bnd, l, r, split_points):
                for u in free:
                    yield stages[:i] + [(l, q, g), (q, r, (u,))] + stages[i + 1:]
                    yield stages[:i] + [(l, q, (u,)), (q, r, g)] + stages[i + 1:]


def polish(inst, result, max_rounds: int = 200, first: bool = True, deadline: float | None = None,
           fixed: tuple = ((), ()), wide: bool = True):
    """Hill-climb `result` (plan, metrics, utility) on Instance `inst` over `_neighbours`
    by `search_key`; returns the best (plan, metrics, utility). `first`: take the first
    improving move of each scan (first-improvement: about 1/3 of the evaluations of
    best-improvement for the same held-out results, 18 ms instead of 25 ms for 8 devices
    x 50 blocks); else the best move of each scan. `deadline` (time.perf_counter()
    value): stop there with the best plan so far. `fixed` = (stages, group): only moves
    that keep these leading stages `(l, r, devices)` and start the next stage's devices
    with `group` (a partial plan an episode has already built: a DAgger label must be a
    plan the episode can still reach).

    Moves bring in only `unused_candidates`, the 6 fastest and 6 most efficient unused
    devices (as `dora`'s local search; every unused device when they are all candidates):
    on 64 devices a scan over every one is ~10x longer. At a local optimum of those moves,
    `wide` scans once over every unused device and climbs on from there if that finds a
    better plan, so the result is a local optimum of the full neighbourhood, as before
    the candidates; `wide=False` stops at the candidates' optimum (restart search's starts)."""
    import time
    stages = index_stages(inst, result[0])
    best_key, best = search_key(result, inst.objective), result
    orders, widen = device_orders(inst.cost), False
    for _ in range(max_rounds):
        used = {d for _, _, g in stages for d in g}
        every = [d for d in range(inst.n) if d not in used]
        cands = sorted(unused_candidates(orders, used))
        narrow = len(cands) < len(every)
        found = None
        for cand in _neighbours(stages, inst.n, inst.B, free=every if widen or not narrow else cands,
                                bnd=inst.cost.bnd):
            if deadline is not None and time.perf_counter() > deadline:
                break
            if not _keeps(cand, fixed):
                continue
            try:
                M, st, m = inst.finish(cand)
            except NoFeasiblePlan:
                continue
            res = (None, m, utility(inst.cost, m, inst.ref_obj))
            k = search_key(res, inst.objective)
            if k < best_key and (found is None or k < found[0]):
                found = (k, cand, M, st, res)
                if first:
                    break
        if found is None:
            if narrow and wide and not widen:       # past the deadline, the wide scan stops at once
                widen = True
                continue
            break
        widen = False
        best_key, stages = found[0], found[1]
        M, st, res = found[2], found[3], found[4]
        best = (inst.to_plan(st, M), res[1], res[2])
    return best
