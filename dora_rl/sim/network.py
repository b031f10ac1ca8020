"""Fluid rates of concurrent flows: max-min fair sharing within a priority level, strict
priority between levels (docs/simulator.md, "Network").

A flow loads every resource its route crosses (a shared medium once per hop on it, a
link direction, a device's send or receive interface), each a capacity all flows
through it share. Progressive filling raises every unfrozen flow's rate together until
a resource saturates, freezes the flows through it and repeats; a lower priority level
then fills what the levels above left. One flow alone gets min over its resources of
capacity / uses, the rate the analytic model gives it (1 / kappa); two equal flows on a
channel each get half, as the analytic contention term assumes."""

from __future__ import annotations

import math

EPS = 1e-12


def allocate(flows, capacity: dict) -> None:
    """Set `f.rate` of every flow in `flows` (objects with `.cap`, `.res` = [(resource,
    weight)], `.prio` = level, lower first) given resource capacities (bytes/s)."""
    left = dict(capacity)
    levels: dict[int, list] = {}
    for f in flows:
        levels.setdefault(f.prio, []).append(f)
    for lvl in sorted(levels):
        _fill(levels[lvl], left)


def _fill(flows, left: dict) -> None:
    active = list(flows)
    for f in active:
        f.rate = 0.0
    while active:
        load: dict = {}
        for f in active:
            for r, w in f.res:
                load[r] = load.get(r, 0.0) + w
        # the common increment every unfrozen flow can still take
        inc = math.inf
        for r, w in load.items():
            x = left[r] / w
            if x < inc:
                inc = x
        for f in active:
            x = f.cap - f.rate
            if x < inc:
                inc = x
        if inc < 0:
            inc = 0.0
        full = set()
        for r, w in load.items():
            left[r] -= inc * w
            if left[r] <= EPS * max(1.0, inc * w):
                left[r] = 0.0
                full.add(r)
        keep = []
        for f in active:
            f.rate += inc
            if f.rate >= f.cap * (1 - 1e-12) or any(r in full for r, _ in f.res):
                continue
            keep.append(f)
        if len(keep) == len(active):   # no progress possible (cannot happen with finite caps)
            break
        active = keep
