"""Balanced pipelines of the rest: the chains the group key (dora_rl/envs/stage_group.py)
weighs beside its data-parallel groups.

Why: the greedy policy chose each cut by a two-stage estimate (the stage, then one more
device for the rest), which never sees a pipeline of three or more stages as a whole: on
the card's large instances it cut three edge servers [0, 24) [24, 49) [49, 50) where
[0, 17) [17, 36) [36, 50) is 1.21 x faster (32 x 50 instance 1), and ended on two devices
where four to six balanced stages are 1.3 x faster (64 x 200 instances 1 and 5;
docs/learning.md, "Session 36"). A pipeline's latency is `sum_s c_s + sum_k x_k + (M - 1)
T` (docs/cost-model.md, "Pipelining"): its period T is the slowest stage, so the cuts that
matter are the ones that balance the stages' compute.

What a chain is: the rest [p, B) on the k fastest free devices (k = 2 .. CHAIN_MAX; also
the k fastest whose battery lasts the target busy all the time), one stage each, ordered
so that the path from the source through them and back crosses the best links
(`_link_order`), cut where the period is least (`balanced_chain`): with a period T fixed,
each device in turn takes the most blocks it computes within T (a battery device within
its `QoEBound.max_duty` share of T) and holds in memory (`Instance.reach`), ending where the
boundary's transfer to the next device also fits T; the least T at which the chain covers
the rest is the balance (the farthest take is monotone in T, and taking farthest is never
worse for the devices after). Contention, relays and the exact energy are left to the
exact evaluation that follows (`stage_group`): the CHAIN_EVALS chains that rank best by
`estimate` are evaluated there, and a chain is only a candidate.

The devices were first taken in order of falling and of rising speed as well: on the card's
large sets neither order won a plan the link order did not (session 36)."""

from __future__ import annotations

import functools
import itertools

import numpy as np

CHAIN_MAX = 6       # the chains tried: the 2 .. 6 fastest free devices
CHAIN_EVALS = 3     # the chains evaluated exactly: the best by `estimate`
_GRID = 16          # periods tried per refinement round (three rounds: ~0.03 % of the period)


def chains(env, free: list[int], qb) -> list[list[tuple[int, int, tuple[int, ...]]]]:
    """The CHAIN_EVALS best balanced chains of the rest from env's state (no pending group)
    by `estimate`, as the rest's stage tuples [(l, r, (d,))], each with at least two stages.
    A device whose battery cannot last the target even nearly idle (duty <= 5 %) is left
    out; the second pool, the devices that last busy all the time, matters because a
    balanced pipeline keeps every stage about as busy as the slowest."""
    inst, p = env.inst, env.p
    by_rate = sorted(free, key=lambda d: -inst.rate[d])
    duty = dict(zip(by_rate, qb.max_duty(np.asarray(by_rate, dtype=int)).tolist()))
    by_rate = [d for d in by_rate if duty[d] > 0.05]
    lasting = [d for d in by_rate if duty[d] >= 1.0]
    pools = [by_rate[:CHAIN_MAX]] + ([lasting[:CHAIN_MAX]] if lasting[:CHAIN_MAX] != by_rate[:CHAIN_MAX] else [])
    scored, seen = [], set()
    for fast in pools:
        for k in range(2, len(fast) + 1):
            seq = _link_order(inst, fast[:k])
            plan = balanced_chain(inst, seq, p, np.array([duty[d] for d in seq]))
            if plan is not None and len(plan) >= 2 and tuple(plan) not in seen:
                seen.add(tuple(plan))
                scored.append((estimate(env, qb, plan), plan))
    scored.sort(key=lambda x: x[0])         # stable: equal estimates keep the pools' order
    return [plan for _, plan in scored[:CHAIN_EVALS]]


def estimate(env, qb, plan) -> float:
    """The chain's objective as the cost model would have it on its direct links without
    contention (seconds of latency, or joules per period), leaving out what every chain
    from this state shares (the stages already closed): for ranking chains only."""
    inst, m, M = env.inst, env.inst.batch / env.inst.M, env.inst.M
    bnd = inst.bnd_l
    devs = [ds[0] for _, _, ds in plan]
    u = np.array([inst.back * m * (inst.fp[r] - inst.fp[lo]) / inst.rate[d] for (lo, r, _), d in zip(plan, devs)])
    into = env.prev[0] if env.prev else inst.src
    hops = [(into, devs[0], plan[0][0])] + [(a, b, r) for a, b, (_, r, _) in zip(devs, devs[1:], plan)]
    x = np.array([inst.lat[a, b] + m * bnd[r] / inst.bw[a, b] for a, b, r in hops if a != b])
    x_out = inst.lat[devs[-1], inst.src] + m * bnd[inst.B] / inst.bw[devs[-1], inst.src]
    T = max(u.max(), x.max(initial=0.0))
    if inst.objective == "latency":
        return float(u.sum() + x.sum() + x_out + (M - 1) * T)
    rr = inst.scenario.workload.request_rate
    period = max(M * T, 1.0 / rr if rr else 0.0)
    idle = qb.idle[devs].sum() + qb.idle[sorted(env.used)].sum()
    return float((qb.dyn_w[devs] * M * u).sum() + idle * period)


@functools.lru_cache(maxsize=None)
def _perms(k: int) -> np.ndarray:
    return np.array(list(itertools.permutations(range(k))), dtype=int)


def _link_order(inst, devs: list[int]) -> list[int]:
    """The order of `devs` whose path from the source through them and back has the least
    summed inverse bandwidth (every order tried: at most 6! = 720): a pipeline's boundaries
    then cross its best links."""
    P = np.asarray(devs)[_perms(len(devs))]                    # (k!, k)
    inv = 1.0 / inst.bw
    cost = inv[inst.src, P[:, 0]] + inv[P[:, :-1], P[:, 1:]].sum(1) + inv[P[:, -1], inst.src]
    return P[int(np.argmin(cost))].tolist()


def balanced_chain(inst, seq: list[int], p: int, duty=None) -> list | None:
    """The stages [(l, r, (d,))] of blocks [p, B) on the devices `seq` in this order (one
    stage each, in a prefix of `seq`: the last ones may take none) whose period - the
    slowest stage's compute (over its `duty` share, default 1) or boundary transfer per
    micro-batch - is least, or None where no period lets them hold the rest in memory."""
    fp, B, m = np.asarray(inst.fp, dtype=float), inst.B, inst.batch / inst.M
    span = inst.back * m * (fp[B] - fp[p])
    duty = np.ones(len(seq)) if duty is None else np.asarray(duty, dtype=float)
    x = _xfer(inst, seq, m)
    hi = span / min(inst.rate[d] * u for d, u in zip(seq, duty)) + x.max(initial=0.0)
    lo = 0.0
    for _ in range(3):      # a grid over (lo, hi], then twice over the cell where the chain first covers the rest
        T = np.linspace(lo, hi, _GRID + 1)[1:]
        ends = _take(inst, fp, seq, m, p, T, duty, x)
        ok = ends[-1] >= B
        if not ok.any():
            return None
        i = int(np.argmax(ok))
        lo, hi = (T[i - 1] if i else lo), T[i]
    ends = _take(inst, fp, seq, m, p, np.array([hi]), duty, x)[:, 0].tolist()
    return [(lo_, r, (d,)) for d, lo_, r in zip(seq, [p] + ends[:-1], ends) if r > lo_]


def _xfer(inst, seq: list[int], m: float) -> np.ndarray:
    """(k - 1, B + 1): the seconds of a boundary after block r - 1 from seq[i] to seq[i + 1]
    (the link's latency plus the micro-batch's activations over its bandwidth; twice in
    training, activation and gradient)."""
    rows = [inst.lat[a, b] + m * np.asarray(inst.bnd_l, dtype=float) / inst.bw[a, b] for a, b in zip(seq, seq[1:])]
    return (2.0 if inst.training else 1.0) * np.asarray(rows).reshape(len(rows), -1)


def _take(inst, fp, seq, m, p, T: np.ndarray, duty: np.ndarray, x: np.ndarray) -> np.ndarray:
    """(k, len(T)): where each device's stage ends when each in turn takes the most blocks it
    computes within its `duty` share of the period T and holds in memory, ending where the
    boundary's transfer `x` to the next device also fits T (anywhere at the model's end); a
    device that can take none where blocks remain breaks the chain (-1 at the last row)."""
    B = inst.B
    cols = np.arange(B + 1)
    l = np.full(T.shape, p, dtype=int)
    broken = np.zeros(T.shape, dtype=bool)
    rows = np.arange(len(T))
    out = []
    for i, d in enumerate(seq):
        rmax = np.searchsorted(fp, fp[l] + duty[i] * T * inst.rate[d] / (inst.back * m) * (1 + 1e-12), side="right") - 1
        r = np.minimum(np.minimum(rmax, inst.reach[d][l]), B)
        if i < len(seq) - 1:        # the last end <= r whose transfer fits T (the model's end always does)
            fits = (x[i][None, :] <= T[:, None]) | (cols == B)[None, :]
            last = np.maximum.accumulate(np.where(fits, cols[None, :], -1), axis=1)
            r = last[rows, r]
        broken |= (r <= l) & (l < B)
        l = np.where(broken | (r <= l), l, r)
        out.append(l.copy())
    out[-1] = np.where(broken, -1, out[-1])
    return np.asarray(out)
