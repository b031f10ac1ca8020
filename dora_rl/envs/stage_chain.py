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

What a chain is: the rest [p, B) on a device order, one stage each, cut where the period is
least (`balanced_chains`): with a period T fixed, each device in turn takes the most blocks
it computes within T (a battery device within its `QoEBound.max_duty` share of the energy
window per micro-batch, `_busy`) and holds in memory (`Instance.reach`), ending where the
boundary's transfer to the next device also fits T, on its link and, under latency, within
an even share of what each shared medium it crosses has left (`_take`); the least T at
which the chain covers the rest is the balance (the farthest take is monotone in T, and
taking farthest is never worse for the devices after). The orders (`chains`):
- the k fastest free devices (k = 2 .. CHAIN_MAX), and the k fastest whose battery lasts
  the target busy all the time, ordered so that the path from the source through them and
  back crosses the best links (`_link_order`);
- the prefixes of a path grown from the fastest device, each next the fast device on a
  good link from the last (`_linked_path`: where the fastest devices' links are poor);
- under energy, the devices ordered most efficient first instead (least active power per
  FLOP/s; also the k most efficient of the fastest), each also ending on the source (no
  return transfer), and cut at 1, 1.5, 2.5 and 4 times the least period (the efficient
  first devices then take more).
Relays, routes and the exact energy are left to the exact evaluation that follows
(`stage_group`): the CHAIN_EVALS chains that rank best by `estimate` (its QoE miss first,
then its objective) are evaluated there; a chain is only a candidate. The first one that
misses QoE but fits is cut again with its batteries' duties scaled down (`tightened`).

Session 41: the window and the media. Until then a battery device took its duty share of T
itself, as if the energy window were always M T, where in training it is the whole
iteration (fill + (M - 1) T; docs/cost-model.md, "Energy and battery"); and the cuts
ignored the shared media, whose term `max_mu L_mu / C_mu` of the period sums every
boundary on the medium. On the card's 64 x 200 instance 1 the chain's period was the WiFi
medium's (112 ms against 97 ms of compute) and its laptops took 0.53 of T; polish moved
every cut to a 1.2-2.3x smaller boundary and gave the laptops 0.75 (1405 -> 1167 ms). Now
the training window (`_busy`), under latency the media share of each cut (`_take`), and in
`estimate` the media term of the period and the training window. Against the code before,
on the validation sets (greedy, the shipped network): large seed 1 (60 instances) 3 plans
better, 1 worse, geo-mean 0.9991; large seed 2 (150) 7 better, 1 worse, 0.9965; small seed
2 (400) 1 better, 1 worse, 0.9997; compliance unchanged. Measured and left out
(docs/learning.md, "Session 41"): the inference window with a request stream (1 /
request_rate; one more plan better per set, but on the card's 32 x 50 instance 6, energy, a
chain it let in at the first state ended at 1.38x the plan before) and the media share
under energy too (more plans worse: the cuts there follow efficiency, not the period).

Tried and not kept (session 36, card large sets): devices in order of falling and of rising
speed (no plan the link order did not find); 0.9 of each battery's duty (worse on 4 sizes)."""

from __future__ import annotations

import functools
import itertools
from typing import NamedTuple

import numpy as np

CHAIN_MAX = 6       # the chains tried: the 2 .. 6 fastest free devices
PATH_FROM = 16      # the linked path's candidates: the fastest free devices
CHAIN_EVALS = 4     # the chains evaluated exactly: the best by `estimate`
ENERGY_STRETCH = (1.0, 1.5, 2.5, 4.0)   # under energy, periods tried (x the least)
DUTY_RETRY = (0.97, 0.93, 0.88)     # a non-compliant chain's battery duties scaled by these (`tightened`)
_GRID, _ROUNDS = 16, 2      # periods tried per round; rounds (the period to 1/256 of hi - lo)


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
    pools, stretch = [by_rate[:CHAIN_MAX], lasting[:CHAIN_MAX]], (1.0,)
    order = lambda devs: _link_order(inst, devs)        # noqa: E731
    if inst.objective == "energy":      # the most efficient, first in the chain and given more of the period
        order = lambda devs: sorted(devs, key=lambda d: (qb.dyn_w[d] + qb.idle[d]) / inst.rate[d])     # noqa: E731
        pools, stretch = pools + [order(by_rate)[:CHAIN_MAX]], ENERGY_STRETCH
    seqs = {tuple(path[:k]): None for path in [_linked_path(env, by_rate[:PATH_FROM])] for k in range(2, len(path) + 1)}
    for pool in dict.fromkeys(tuple(x) for x in pools if x):
        for k in range(1, len(pool) + 1):
            if k > 1:
                seqs[tuple(order(list(pool[:k])))] = None
            if inst.objective == "energy" and inst.src in by_rate and inst.src not in pool[:k]:
                seqs[tuple(order(list(pool[:k])) + [inst.src])] = None     # ending on the source: no return
    scored, seen, media = [], set(), media_context(env, qb)
    found = balanced_chains(inst, [list(q) for q in seqs], p, [[duty[d] for d in q] for q in seqs], stretch, media)
    for plan in (plan for plans in found for plan in plans):
        if plan is not None and len(plan) >= 2 and tuple(plan) not in seen:
            seen.add(tuple(plan))
            scored.append((estimate(env, qb, plan, duty, media), plan))
    scored.sort(key=lambda x: x[0])         # stable
    return [plan for _, plan in scored[:CHAIN_EVALS]]


class Media(NamedTuple):
    """What a chain of the rest shares the shared media with (`media_context`)."""
    forced: np.ndarray      # (devices, media): 1 where every link of the device crosses the medium
    cap: np.ndarray         # (media,): bytes/s
    committed: np.ndarray   # (media,): bytes per micro-batch the closed stages' boundaries put on each
    into: int               # the device the rest's input comes from
    lists: tuple            # (forced, cap, committed) as lists, for `estimate`'s plain floats


def media_context(env, qb) -> Media | None:
    """env's state's `Media` (`QoEBound.forced`, `.mcap`, `StageEnv._qM`), None without
    shared media."""
    if not qb.forced.shape[1]:
        return None
    return Media(qb.forced, qb.mcap, env._qM, env.prev[0] if env.prev else env.inst.src,
                 (qb.forced.tolist(), qb.mcap.tolist(), env._qM.tolist()))


def _fixed_load(inst, media: Media, first: np.ndarray, last: np.ndarray, p: int) -> np.ndarray:
    """(rows, media): the bytes per micro-batch on each shared medium that do not depend on
    a chain's cuts, per chain from device `first` to `last`: the closed stages', the rest's
    input from `media.into` and, in inference, the output back to the source. A transfer
    crosses a medium where every link of one of its ends does (`QoEBound.forced`)."""
    f, m = media.forced, inst.batch / inst.M
    f_in = np.where((first != media.into)[:, None], np.maximum(f[media.into][None, :], f[first]), 0.0)
    out = media.committed[None, :] + m * inst.bnd_l[p] * (2.0 if inst.training and p > 0 else 1.0) * f_in
    if not inst.training:
        f_out = np.where((last != inst.src)[:, None], np.maximum(f[inst.src][None, :], f[last]), 0.0)
        out = out + m * inst.bnd_l[inst.B] * f_out
    return out


def tightened(inst, qb, plan: list, p: int, media: Media | None = None) -> list:
    """The chain's device order cut again with each battery device's duty (`max_duty` < 1)
    scaled by DUTY_RETRY's factors in turn (an empty list where it has none): the duty
    leaves the radio and relays out, so a balanced chain can miss a battery target by a
    block (card large 16 x 200 instance 0: laptop_0 2.41 h against 2.45 h)."""
    seq = [ds[0] for _, _, ds in plan]
    duty = qb.max_duty(np.asarray(seq, dtype=int))
    if (duty >= 1.0).all():
        return []
    scaled = [np.where(duty < 1.0, duty * f, duty) for f in DUTY_RETRY]
    return [c[0] for c in balanced_chains(inst, [seq] * len(scaled), p, scaled, media=media) if c[0] is not None]


def stage_times(inst, plan) -> list[float]:
    """Seconds each single-device stage of `plan` computes per micro-batch (forward, and
    backward in training): the chains' estimate and the group key's latency bound."""
    m = inst.batch / inst.M
    return [inst.back * m * (inst.fp[r] - inst.fp[lo]) / inst.rate[ds[0]] for lo, r, ds in plan]


def estimate(env, qb, plan, duty: dict, media: Media | None = None) -> tuple:
    """The chain's (estimated QoE miss, objective) as the cost model would have it on its
    direct links without contention (seconds of latency, or joules per period), leaving out
    what every chain from this state shares (the stages already closed): for ranking chains
    only. The miss: latency over the QoE bound's cap, period over its cap or a battery
    device's busy share over its `duty` (`QoEBound.max_duty`), 0 if none. Plain floats: it
    runs for every candidate, and numpy's per-call cost dominated it."""
    inst, M = env.inst, env.inst.M
    m, bnd, lat, bw = inst.batch / M, inst.bnd_l, inst.lat, inst.bw
    devs = [ds[0] for _, _, ds in plan]
    u = stage_times(inst, plan)
    into = env.prev[0] if env.prev else inst.src
    hops = [(into, devs[0], plan[0][0])] + [(a, b, r) for a, b, (_, r, _) in zip(devs, devs[1:], plan)]
    x = [lat[a, b] + m * bnd[r] / bw[a, b] for a, b, r in hops if a != b]
    x_out = lat[devs[-1], inst.src] + m * bnd[inst.B] / bw[devs[-1], inst.src]
    T = max(max(u), max(x, default=0.0))
    if media is not None:       # the shared media's term of the period (docs/cost-model.md, "Pipelining")
        T = max(T, _media_period(inst, media, plan, m))
    latency = float(sum(u) + sum(x) + x_out + (M - 1) * T)
    rr = inst.scenario.workload.request_rate
    period = latency if inst.training else max(M * T, 1.0 / rr if rr else 0.0)     # the energy window
    drain = max(M * b / period / duty[d] - 1.0 for b, d in zip(u, devs))      # busy beyond the battery's share
    miss = max(latency / qb.lat_cap - 1.0, T / qb.T_cap - 1.0, drain, 0.0)
    if inst.objective == "latency":
        return miss, latency
    idle = sum(qb.idle[d] for d in devs) + sum(qb.idle[d] for d in env.used)
    return miss, float(sum(qb.dyn_w[d] * M * b for b, d in zip(u, devs)) + idle * period)


def _media_period(inst, media: Media, plan: list, m: float) -> float:
    """The chain's shared-media term of the period (its bytes per micro-batch on each medium
    over its capacity, the most loaded; as `_fixed_load` for its input and output)."""
    forced, cap, load = media.lists
    load, dk, bnd = list(load), (2.0 if inst.training else 1.0), inst.bnd_l
    devs, p = [ds[0] for _, _, ds in plan], plan[0][0]
    hops = [(media.into, devs[0], m * bnd[p] * (dk if p > 0 else 1.0))]
    hops += [(a, b, dk * m * bnd[r]) for a, b, (_, r, _) in zip(devs, devs[1:], plan)]
    if not inst.training:
        hops.append((devs[-1], inst.src, m * bnd[inst.B]))
    for a, b, nb in hops:
        if a != b:
            for k, (x, y) in enumerate(zip(forced[a], forced[b])):
                if x or y:
                    load[k] += nb
    return max(x / c for x, c in zip(load, cap))


def _linked_path(env, cands: list[int]) -> list[int]:
    """Up to CHAIN_MAX of `cands`, from the fastest on, each next the one whose share of the
    rest (a third of its work, over its speed) and boundary from the last (the model's
    median boundary over their link) take least: fast devices on good links, where the
    fastest devices' links are poor (card large 32 x 50 instance 8: two edge servers on a
    117 MB/s link, every laptop on 31-58 MB/s)."""
    inst = env.inst
    if not cands:
        return []
    m = inst.batch / inst.M
    work = inst.back * m * (inst.fp[inst.B] - inst.fp[env.p]) / 3.0
    hop = (2.0 if inst.training else 1.0) * m * float(np.median(inst.bnd_l))
    path, rest = [cands[0]], list(cands[1:])
    while rest and len(path) < CHAIN_MAX:
        t = path[-1]
        nxt = min(rest, key=lambda d: work / inst.rate[d] + inst.lat[t, d] + hop / inst.bw[t, d])
        path.append(nxt)
        rest.remove(nxt)
    return path


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


def balanced_chains(inst, seqs: list[list[int]], p: int, duties: list, stretch=(1.0,),
                    media: Media | None = None) -> list[list]:
    """Per device order of `seqs` (with its `duties`, the share of the period each device
    may compute) and per factor of `stretch`: the stages [(l, r, (d,))] of blocks [p, B) on
    those devices in that order (one stage each, in a prefix of the order: the last ones may
    take none) cut at that factor times the least period - the slowest stage's compute (over
    its duty share) or boundary transfer per micro-batch - at which they cover it (at a
    factor above 1 the first devices take more), or None where no period lets them hold
    the rest in memory. Every order is searched at once, the shorter ones padded (a pad
    position takes nothing and breaks nothing): the search's cost is numpy's per-call
    overhead, not its arithmetic."""
    fp, B, m = np.asarray(inst.fp, dtype=float), inst.B, inst.batch / inst.M
    span = inst.back * m * (fp[B] - fp[p])
    dk, top = (2.0 if inst.training else 1.0), max(inst.bnd_l)
    grid, st = np.arange(1, _GRID + 1) / _GRID, np.asarray(stretch, dtype=float)
    if not seqs:
        return []
    n, K = len(seqs), max(len(q) for q in seqs)
    valid = np.arange(K)[None, :] < np.array([len(q) for q in seqs])[:, None]        # (n, K)
    S, U = np.zeros((n, K), dtype=int), np.zeros((n, K))
    for i, (q, u) in enumerate(zip(seqs, duties)):
        S[i, :len(q)], U[i, :len(q)] = q, u
    speed, rate = inst.rate[S] * U, np.where(valid, inst.rate[S], 0.0)
    hop = valid[:, 1:] & valid[:, :-1]
    x = np.where(hop, dk * (inst.lat[S[:, :-1], S[:, 1:]] + m * top / inst.bw[S[:, :-1], S[:, 1:]]), 0.0)
    hi = span / np.where(valid, speed, np.inf).min(1) + x.max(1, initial=0.0)   # enough: the first may take it all
    lo = span / rate.sum(1)     # not enough unless compute alone balances perfectly, every device at full speed
    limits = [U, span / rate.max(1), None]     # duties, a lower bound of the fill (the rest on the fastest), media
    if media is not None and inst.objective == "latency":      # under energy the cuts follow efficiency
        F = np.maximum(media.forced[S[:, :-1]], media.forced[S[:, 1:]]) * hop[..., None]     # (n, K - 1, media)
        if F.any():         # each boundary gets an even share of what a shared medium it crosses has left
            cnt = F.sum(1)
            per = np.where(cnt > 0, 1.0 / (np.maximum(cnt, 1.0) * m * dk), 0.0)
            fixed = _fixed_load(inst, media, S[:, 0], S[np.arange(n), valid.sum(1) - 1], p)
            limits[2] = (F > 0, fixed, per, media.cap)
    dead, rows = np.zeros(n, dtype=bool), np.arange(n)
    for _ in range(_ROUNDS):    # a grid over (lo, hi], then over the cell where the chain first covers the rest
        T = lo[:, None] + (hi - lo)[:, None] * grid[None, :]
        got = _take(inst, fp, S, valid, hop, m, p, T, limits)
        ok = got[-1] >= B
        dead |= ~ok.any(1)
        j = ok.argmax(1)
        lo, hi = np.where(j > 0, T[rows, j - 1], lo), np.where(dead, hi, T[rows, j])
    # the ends at hi itself are the last round's at column j (hi is that T, and each period's
    # ends are its own): only the other factors of `stretch` take another pass
    ends = np.empty((S.shape[1], n, len(st)), dtype=int)
    one, more = st == 1.0, st != 1.0
    ends[:, :, one] = got[:, rows, j][:, :, None]
    if more.any():
        ends[:, :, more] = _take(inst, fp, S, valid, hop, m, p, hi[:, None] * st[None, more], limits)
    ends = ends.transpose(1, 2, 0).tolist()      # (n, st, K)
    return [[None if dead[i] else [(lo_, r, (d,)) for d, lo_, r in zip(q, [p] + e[:-1], e) if r > lo_]
             for e in ends[i]] for i, q in enumerate(seqs)]


def _cut_table(inst) -> tuple[np.ndarray, np.ndarray]:
    """(v, last), memoised on the Instance: v the distinct boundary sizes in rising order,
    last[q + 1, c] the largest r <= c whose boundary is at most v[q] (-1 if none; row 0: no
    size allowed). Why: a boundary's transfer fits a period T where its bytes are at most a
    threshold set by T and the link, so "the last cut up to c whose transfer fits" is one
    lookup per device and period instead of a scan of every block."""
    memo = inst.__dict__.get("_cut_table")
    if memo is None:
        bnd = np.asarray(inst.bnd_l, dtype=float)
        v, rank = np.unique(bnd, return_inverse=True)
        cols = np.arange(len(bnd))
        ok = rank[None, :] <= np.arange(-1, len(v))[:, None]
        memo = inst.__dict__["_cut_table"] = (v, np.maximum.accumulate(np.where(ok, cols, -1), axis=1))
    return memo


def _busy(inst, T: np.ndarray, U: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """(n, K, len(T[0])): the compute per micro-batch each device of each order (duties U,
    (n, K)) may take at each period T (n, len(T[0])): T, or a battery device's `max_duty`
    share of the energy window (docs/cost-model.md, "Energy and battery") per micro-batch
    if less: the window is taken as M T in inference and in training as the iteration, at
    least `fill` (n,) + (M - 1) T. (With a request stream the inference window is at least
    1 / request_rate; counting it was measured and left out, module docstring.)"""
    W = np.maximum(T, (fill[:, None] + (inst.M - 1) * T) / inst.M) if inst.training else T
    return np.minimum(T[:, None, :], U[:, :, None] * W[:, None, :])


def _take(inst, fp, S, valid, hop, m, p, T: np.ndarray, limits: list) -> np.ndarray:
    """(K, n, len(T[0])): for each device order (row of S, `valid` where a device stands
    and `hop` where the next one does too) and period (row of T), where each device's stage
    ends when each in turn takes the most blocks it computes within T and its duty's share
    of the window (`_busy`; `limits` = [duties U, fill bound, media share or None]) and
    holds in memory, ending where the boundary's transfer to the next device (its latency
    plus the bytes over its bandwidth, twice in training) also fits T and its bytes fit the
    even share of each shared medium it crosses (anywhere before a pad or at the model's
    end); a device that can take none where blocks remain breaks the chain (-1 at the last
    row), a pad takes none."""
    B, dk = inst.B, 2.0 if inst.training else 1.0
    v, last = _cut_table(inst)
    l = np.full(T.shape, p, dtype=int)
    broken = np.zeros(T.shape, dtype=bool)
    busy = _busy(inst, T, *limits[:2])
    if limits[2] is not None:       # (n, len(T[0]), hops): the bytes per sample a boundary's media shares carry
        crosses, fixed, per, cap = limits[2]
        left = (cap[None, None, :] * T[:, :, None] - fixed[:, None, :]) * per[:, None, :]
        media_cap = np.where(crosses[:, None, :, :], left[:, :, None, :], np.inf).min(3)
    out = []
    for i in range(S.shape[1]):
        d, on = S[:, i:i + 1], valid[:, i:i + 1]
        rmax = np.searchsorted(fp, fp[l] + busy[:, i] * inst.rate[d] / (inst.back * m) * (1 + 1e-12),
                               side="right") - 1
        r = np.minimum(np.minimum(rmax, inst.reach[d, l]), B)
        if i < S.shape[1] - 1:      # the last end <= r whose transfer fits T (the model's end always does)
            a, b = S[:, i], S[:, i + 1]
            cap = (T / dk - inst.lat[a, b][:, None]) * (inst.bw[a, b] / m)[:, None]    # bytes it may carry (a != b)
            if limits[2] is not None:
                cap = np.minimum(cap, media_cap[:, :, i])
            q = np.searchsorted(v, cap * (1 + 1e-12), side="right")
            r = np.where((r >= B) | ~hop[:, i:i + 1], r, last[q, r])
        r = np.where(on, r, l)                            # a pad takes none
        broken |= on & (r <= l) & (l < B)
        l = np.where(broken | (r <= l), l, r)
        out.append(l.copy())
    out[-1] = np.where(broken, -1, out[-1])
    return np.asarray(out)
