"""Pareto lists of the DP: exact dominance pruning, and the beam of the approximation.

A label dominates another when every vector component and every pending battery
energy is <= and its device set is a subset (and so is its set of participants paying
idle power, relays included): anything that completes the dominated label completes the
dominator at least as well, so pruning keeps the search exact.
The beam (chain approximation only) keeps the best labels by latency and by energy."""

from __future__ import annotations

import numpy as np

from dora_rl.planners.dp.labels import ALLREDUCE, BATTERY, ENERGY, FILL, IDLE, STEADY, Label
from dora_rl.planners.dp.limits import Limits

CHUNK = 128            # labels compared at once (memory of the pairwise test)
WORD = (1 << 64) - 1   # one uint64 word of a device mask


def prune(lst: list[Label], first: int, limits: Limits, parts: bool = True) -> list[Label]:
    """Keep the labels no other label dominates (vec and pending <=, device set subset,
    participant set subset when some label has a relay outside its device set: a relay
    pays idle power once, so a label with fewer participants can only gain from a
    completion's relays); `first` is the device mask of the list's first stage (its
    batteries are not final). `parts=False` (the chain approximation, whose claims are
    not member sets anyway) skips the participant test.
    Vectorised: sorted by a scaled sum (a dominator always sorts first), then checked
    chunk by chunk against the survivors so far.

    Battery with a variable period (training, or inference without a request rate): a
    longer period lowers average power, so a faster label may fail a battery target its
    slower rival meets. Then a label dominates only a rival with the same
    period-determining components, unless its own period lower bound already exceeds
    every battery demand a completion can still have (`Limits.demand_dev`,
    `Limits.demand_src`): dominance stays exact."""
    k = len(lst)
    if k <= 1:
        return lst
    X = np.array([o.vec + o.pending for o in lst], dtype=float)
    claims = [o.claim for o in lst]
    U = mask_array(claims, limits.mask_words)
    if parts and limits.relay_mask and any(o.part & ~o.claim for o in lst):
        # relays: the participant set must be a subset too (one mask: claim, then part)
        shift = limits.cost.n
        claims = [o.claim | (o.part << shift) for o in lst]
        UP = mask_array(claims, (2 * shift + 63) // 64)
    else:
        UP = U
    scale = np.abs(X).max(axis=0)
    scale[scale == 0] = 1.0
    key = (X / scale).sum(axis=1)
    pop = np.array([u.bit_count() for u in claims])
    order = np.lexsort((pop, key))
    X, U, UP = X[order], U[order], UP[order]
    bv = limits.battery_variable
    pcols = limits.lay.pcols
    if bv:
        P = X[:, pcols]
        # battery demands still possible: devices outside U (and the source), or BATTERY itself
        need = np.maximum(X[:, BATTERY], limits.demand_src)
        for d, rd in limits.demand_dev:
            outside = has_bit(U, d) == 0
            if (first >> d) & 1 or d in limits.rbcol:     # not final yet (a relay's energy grows to the end)
                outside[:] = True
            need = np.where(outside, np.maximum(need, rd), need)
        safe = period_lower_bound(X, limits) >= need
    U = UP
    keptX = np.empty((0, X.shape[1]))
    keptU = U[:0]
    keptP = np.empty((0, len(pcols)))
    keptS = np.empty(0, dtype=bool)
    keep_idx = []
    for c0 in range(0, k, CHUNK):
        cx, cu = X[c0:c0 + CHUNK], U[c0:c0 + CHUNK]
        alive = np.ones(len(cx), dtype=bool)
        if len(keptX):
            dom = (keptX[:, None, :] <= cx[None, :, :]).all(axis=2) & subset(keptU, cu)
            if bv:
                cp = P[c0:c0 + CHUNK]
                dom &= keptS[:, None] | (keptP[:, None, :] == cp[None, :, :]).all(axis=2)
            alive &= ~dom.any(axis=0)
        # inside the chunk: an earlier label (in sorted order) may dominate a later one
        le = (cx[:, None, :] <= cx[None, :, :]).all(axis=2) & subset(cu, cu)
        if bv:
            cp, cs = P[c0:c0 + CHUNK], safe[c0:c0 + CHUNK]
            le &= cs[:, None] | (cp[:, None, :] == cp[None, :, :]).all(axis=2)
        np.fill_diagonal(le, False)
        le &= np.tri(len(cx), dtype=bool, k=-1).T    # a (row) before b (column)
        alive &= ~le.any(axis=0)
        idx = np.nonzero(alive)[0]
        if len(idx):
            keptX = np.vstack([keptX, cx[idx]])
            keptU = np.concatenate([keptU, cu[idx]])
            if bv:
                keptP = np.vstack([keptP, P[c0:c0 + CHUNK][idx]])
                keptS = np.concatenate([keptS, safe[c0:c0 + CHUNK][idx]])
            keep_idx.extend((order[c0 + i] for i in idx.tolist()))
    return [lst[i] for i in keep_idx]


def mask_array(masks: list[int], words: int) -> np.ndarray:
    """Device masks (Python ints, any width) as uint64: a vector when one 64-bit word
    holds every device (<= 64 devices), else rows of `words` words (no device limit)."""
    if words == 1:
        return np.array(masks, dtype=np.uint64)
    return np.array([[(u >> (64 * w)) & WORD for w in range(words)] for u in masks], dtype=np.uint64)


def has_bit(U: np.ndarray, d: int) -> np.ndarray:
    """Per row of a `mask_array`: device d's bit (non-zero when set)."""
    if U.ndim == 1:
        return U & np.uint64(1 << d)
    return U[:, d // 64] & np.uint64(1 << (d % 64))


def subset(A: np.ndarray, C: np.ndarray) -> np.ndarray:
    """[a, c]: mask A[a] is a subset of mask C[c] (`mask_array` rows)."""
    z = (A[:, None] & ~C[None, :]) == 0
    return z if z.ndim == 2 else z.all(axis=2)


def period_lower_bound(X: np.ndarray, limits: Limits) -> np.ndarray:
    """Lower bound of the final period of any completion of label vectors X (rows)."""
    lay = limits.lay
    T = X[:, STEADY].copy()
    A = X[:, ALLREDUCE].copy()
    for mu in range(lay.nmed):
        T = np.maximum(T, X[:, lay.loads + mu] / limits.caps[mu])
        if limits.training:
            A = np.maximum(A, X[:, lay.ar_loads + mu] / limits.caps[mu])
    if limits.training:
        return X[:, FILL] + (limits.M - 1) * T + A
    return limits.M * T


def beam(lst: list[Label], width: int | None, M: int, factor: int = 1) -> list[Label]:
    """At most `width` x `factor` labels (all of them when `width` is None): alternately
    the next best by partial latency and by partial energy."""
    if width is None or len(lst) <= width * factor:
        return lst
    K = width * factor
    vecs = [o.vec for o in lst]
    lat = [v[FILL] + (M - 1) * v[STEADY] + v[ALLREDUCE] for v in vecs]
    energy = [v[ENERGY] + v[IDLE] * (v[FILL] + M * v[STEADY]) for v in vecs]
    byl = [lst[i] for i in sorted(range(len(lst)), key=lat.__getitem__)]      # stable, as sorting lst
    bye = [lst[i] for i in sorted(range(len(lst)), key=energy.__getitem__)]
    out, seen = [], set()
    for a, b in zip(byl, bye):
        for o in (a, b):
            if id(o) not in seen and len(out) < K:
                seen.add(id(o))
                out.append(o)
    return out
