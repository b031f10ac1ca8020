"""The DP's search space: which device groups and cut positions `dora` explores.

`choose_spaces` picks the exact space (every group of at most `max_group` devices,
every cut) when its estimated work fits the budget, and otherwise the chain
approximation of docs/planners.md (groups are runs of consecutive devices in a speed
order, thinned candidate cuts, a beam per Pareto list), so the planner never hangs.
`oracle` enumerates the same `Space`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations

from dora_rl.cost import CostModel

# Exact-regime budget: estimated transitions (key pairs x block pairs). Above it the
# planner narrows the search. Chosen so the exact DP stays around a second in CPython.
EXACT_BUDGET = 100_000
APPROX_GROUP = 3       # past the exact regime: at most this many devices per stage
APPROX_BEAM = 12       # past the exact regime: labels kept per DP key
APPROX_CUTS = 24       # past the exact regime: candidate cut positions (fewer if needed)
APPROX_BUDGET = 15_000  # past the exact regime: transitions (cut pairs x group pairs x j); 16 x 50 <= 0.5 s
APPROX_DEVICES = 8     # past the exact regime: the chain keeps at least this many devices (then fewer per stage)


@dataclass
class Space:
    """The candidate plan space.

    exact (order is None): every group of <= `max_group` of `devices`, any order of
    stages, disjoint groups.
    chain (order given): groups are runs of <= `max_group` consecutive devices of
    `order`, and stages use them in that order (devices may be skipped)."""

    devices: list[int]
    max_group: int
    beam: int | None = None            # labels kept per key (None: exact)
    exact: bool = True
    note: str = ""
    order: list[int] | None = None
    cuts: list[int] | None = None      # allowed stage boundaries (None: every block boundary)

    def groups(self) -> list[tuple[int, ...]]:
        out = []
        if self.order is None:
            devs = sorted(self.devices)
            for k in range(1, min(self.max_group, len(devs)) + 1):
                out.extend(combinations(devs, k))
            return out
        o = self.order
        for a in range(len(o)):
            for k in range(1, self.max_group + 1):
                if a + k <= len(o):
                    out.append(tuple(sorted(o[a:a + k])))
        return out

    def claims(self) -> list[int]:
        """Per group: the device mask a suffix starting with it claims (exact: the group;
        chain: the group and everything after it in `order`)."""
        if self.order is None:
            return [sum(1 << d for d in g) for g in self.groups()]
        o = self.order
        out = []
        for a in range(len(o)):
            for k in range(1, self.max_group + 1):
                if a + k <= len(o):
                    out.append(sum(1 << d for d in o[a:]))
        return out


def estimate_work(n_dev: int, max_group: int, n_blocks: int, jmax: int) -> float:
    """Transitions the exact DP examines: (ordered disjoint group pairs) x (block pairs) x j x
    an allowance for the Pareto labels carrying different device sets (~ 2^n)."""
    g = sum(math.comb(n_dev, k) for k in range(1, min(max_group, n_dev) + 1))
    pairs = 0
    for a in range(1, min(max_group, n_dev) + 1):
        for b in range(1, min(max_group, n_dev - a) + 1):
            pairs += math.comb(n_dev, a) * math.comb(n_dev - a, b)
    blocks = n_blocks * (n_blocks + 1) / 2
    return (pairs + g) * blocks * jmax * 2 ** max(n_dev - 3, 0)


def candidate_cuts(cost: CostModel, k: int) -> list[int]:
    """At most k interior cut positions (+ 0 and B): half spread evenly by FLOPs, half at
    the boundaries with the smallest activations (cheap to cross)."""
    B = cost.n_blocks
    if B - 1 <= k:
        return list(range(B + 1))
    fp = cost.fp
    tot = fp[-1] or 1.0
    chosen = set()
    half = k // 2
    for i in range(1, half + 1):
        target = tot * i / (half + 1)
        best = min(range(1, B), key=lambda c: (abs(fp[c] - target), c))
        chosen.add(best)
    for c in sorted(range(1, B), key=lambda c: (cost.bnd[c], c)):
        if len(chosen) >= k:
            break
        chosen.add(c)
    return [0] + sorted(chosen) + [B]


def memory_binds(cost: CostModel) -> bool:
    """False when every device could hold the whole model with all M micro-batches in
    flight (then shares never hit a memory cap and the 1F1B count cannot matter)."""
    B, M = cost.n_blocks, cost.workload.microbatches
    m = cost.workload.batch / M
    if cost.training:
        need_act = max((cost.bnd[l] + cost.ap[r] - cost.ap[l]) for l in range(B) for r in (B,))
        need = cost.pp[B] * cost.param_copies + m * need_act * M
    else:
        need = cost.pp[B] + m * cost.peak[0][B]
    return any(need > mem for mem in cost.mem)


def speed_order(cost: CostModel, source_first: bool = True) -> list[int]:
    """Devices by decreasing compute rate (ties: more memory, then index), the source
    first when `source_first`: the order the chain approximation uses devices in."""
    order = sorted(range(cost.n), key=lambda d: (-cost.rate[d], -cost.mem[d], d))
    if source_first:
        order = [cost.src] + [d for d in order if d != cost.src]
    return order


def max_inflight(cost: CostModel, n_devices: int) -> int:
    """The largest 1F1B in-flight count a DP key needs: min(M, devices) for training when
    memory can bind, else 1 (then the in-flight count cannot change any plan)."""
    if cost.training and memory_binds(cost):
        return min(cost.workload.microbatches, n_devices)
    return 1


def choose_spaces(cost: CostModel, max_group: int | None = None, exact: bool | None = None,
                  budget: float = EXACT_BUDGET) -> list[Space]:
    """The exact space (every device, groups up to `max_group`) when its estimated work fits
    `budget` (or `exact=True`); otherwise the chain approximation, run for two device
    orders (source first then fastest first; fastest first) with a beam. To fit
    APPROX_BUDGET it thins the cuts (down to 8), then keeps only the first devices of
    the order (down to APPROX_DEVICES), then shrinks the groups (down to 1 device); the
    local search (`planners/local.py`) can add any other device afterwards."""
    n, B = cost.n, cost.n_blocks
    jmax = max_inflight(cost, n)
    mg = n if max_group is None else max(1, int(max_group))
    heavy = 2.0 if cost.training else 1.0      # training labels carry more components
    if exact or (exact is None and heavy * estimate_work(n, mg, B, jmax) <= budget):
        return [Space(list(range(n)), mg, None, True, "exact")]
    g = min(mg, APPROX_GROUP)
    k = APPROX_CUTS
    nd = n

    def approx_work(g, k, nd):
        ng = sum(max(nd - a, 0) for a in range(g))
        return (k + 2) * (k + 1) / 2 * ng * ng / 2 * jmax * (3.0 if cost.training else 1.0)

    while approx_work(g, k, nd) > APPROX_BUDGET and k > 8:
        k -= 4
    while approx_work(g, k, nd) > APPROX_BUDGET and nd > APPROX_DEVICES:
        nd -= 1
    while approx_work(g, k, nd) > APPROX_BUDGET and g > 1:
        g -= 1
    cuts = candidate_cuts(cost, k)
    out = []
    for sf in (True, False):
        order = speed_order(cost, sf)[:nd]
        out.append(Space(sorted(order), g, APPROX_BEAM, False,
                         f"chain approximation: stages on runs of <= {g} consecutive devices of the order "
                         f"{'source, then fastest first' if sf else 'fastest first'}"
                         f"{f' (the first {nd} of {n} devices)' if nd < n else ''}; "
                         f"{len(cuts) - 2} candidate cuts of {B - 1}; beam {APPROX_BEAM}", order, cuts))
    if out[0].order == out[1].order:
        out = out[:1]
    return out
