"""Multi-start local search on the cost model: the safety net past `dora`'s exact regime.

A state is a list of stages (l, r, devices in ascending index) of the documented plan
space (docs/planners.md); shares are `proportional_shares` (training: 1F1B in-flight
min(M, S - s)), so a state whose stage cannot hold its blocks is skipped. States are
ranked by `rank`: QoE-compliant first, then by how far the plan misses its targets
(sum of relative misses), then by the objective. Steepest descent: every round scores
the whole neighbourhood and moves to its best state while that improves the rank.

Moves (`neighbours`):
- shift a cut by +-1, 2, 4, ... blocks (a stage keeps at least one block);
- merge two adjacent stages (their devices together, or either group alone);
- split a stage in two (at 1/4, 1/2, 3/4 of its FLOPs or at its smallest activation;
  its group halved, or one half on one of the three best unused devices);
- add an unused device to a group, drop a member, swap a member for an unused one
  (unused candidates: the `CANDIDATES` fastest and the `CANDIDATES` most
  energy-efficient devices not in the plan).

Starts (`starts`): the fastest device alone, the pipeline over the k fastest devices
(blocks in proportion to speed, the smallest k that fits), and whatever the caller adds
(`dora` passes its best approximate candidates). A descent stops at a local optimum or
after `max_evals` scored states (it never hangs)."""

from __future__ import annotations

from dora_rl.cost import CostModel, Metrics
from dora_rl.cost.qoe import required_rate
from dora_rl.planners.base import proportional_shares

CANDIDATES = 6          # unused devices tried per add / swap move, by speed and by efficiency
MAX_EVALS = 1500        # scored states per descent (one start)


def device_orders(cost: CostModel) -> tuple[list[int], list[int]]:
    """The devices by speed (fastest first) and by energy per unit of work (dynamic power /
    rate, most efficient first): the two lists `unused_candidates` draws from."""
    n = cost.n
    eff = [(cost.active_w[d] - cost.idle_w[d]) / cost.rate[d] for d in range(n)]
    return sorted(range(n), key=lambda d: (-cost.rate[d], d)), sorted(range(n), key=lambda d: (eff[d], d))


def unused_candidates(orders: tuple[list[int], list[int]], used, k: int = CANDIDATES) -> list[int]:
    """The unused devices a move may bring into a plan: the `k` fastest and the `k` most
    efficient not in `used` (without repeats; every unused device when there are at most
    k). Why: on 64 devices trying every unused one makes a neighbourhood ~10x larger,
    and the devices past the fastest and most efficient rarely make a better plan."""
    out = []
    for lst in orders:
        j = 0
        for d in lst:
            if d not in used:
                if d not in out:
                    out.append(d)
                j += 1
                if j >= k:
                    break
    return out


def miss(cost: CostModel, m: Metrics) -> float:
    """0 for a QoE-compliant plan, else the sum of its relative misses (ratio - 1 per
    violated target, battery included; 10 more when it does not fit in memory)."""
    if m.qoe_ok:
        return 0.0
    q, out = cost.qoe, 0.0
    if not m.feasible:
        out += 10.0
    if q.latency_slo_ms is not None and m.latency_ms > q.latency_slo_ms:
        out += m.latency_ms / q.latency_slo_ms - 1.0
    need = required_rate(cost)
    if need and m.throughput < need:
        out += need / max(m.throughput, 1e-12) - 1.0
    if q.min_battery_hours is not None and m.battery_hours:
        h = min(m.battery_hours.values())
        if h < q.min_battery_hours:
            out += q.min_battery_hours / max(h, 1e-12) - 1.0
    return out if out > 0 else 1e-9      # a tolerance-level miss still ranks after compliant plans


def rank(cost: CostModel, m: Metrics) -> tuple:
    """Sort key of a scored plan (lower is better): compliant, then miss, then objective."""
    obj = m.objective(cost.qoe.objective)
    other = m.energy_j if cost.qoe.objective == "latency" else m.latency_ms
    return (not m.qoe_ok, miss(cost, m), obj, other)


class LocalSearch:
    """Steepest-descent local search over index stages (module docstring)."""

    def __init__(self, cost: CostModel, max_evals: int = MAX_EVALS, max_group: int | None = None):
        self.cost = cost
        self.max_evals = max_evals
        self.max_group = max_group or cost.n
        wl = cost.workload
        self.M = wl.microbatches
        self.m = wl.batch / self.M
        self.evals = 0
        self._seen: dict = {}
        self.orders = device_orders(cost)
        self.by_speed = self.orders[0]

    # --- scoring ---------------------------------------------------------------
    def score(self, layout: tuple) -> tuple | None:
        """(rank, stages with shares, Metrics) of a layout ((l, r, devs), ...), or None
        when a stage cannot hold its blocks (cached)."""
        if layout in self._seen:
            return self._seen[layout]
        cost, S = self.cost, len(layout)
        stages = []
        res = None
        for s, (l, r, devs) in enumerate(layout):
            sh = proportional_shares(cost, list(devs), l, r, self.m, min(self.M, S - s) if cost.training else 1)
            if sh is None:
                break
            stages.append((l, r, list(devs), sh))
        else:
            self.evals += 1
            m = cost.evaluate_stages(stages, self.M)
            res = (rank(cost, m), stages, m)
        self._seen[layout] = res
        return res

    # --- starts ------------------------------------------------------------------
    def starts(self) -> list[tuple]:
        """The fastest device alone; the pipeline over the k fastest devices (blocks in
        proportion to speed), the smallest k whose stages all fit."""
        B, cost = self.cost.n_blocks, self.cost
        out = [((0, B, (self.by_speed[0],)),)]
        for k in range(2, min(cost.n, B) + 1):
            devs = self.by_speed[:k]
            tot = sum(cost.rate[d] for d in devs)
            fp, F = cost.fp, cost.fp[-1]
            layout, l, acc = [], 0, 0.0
            for i, d in enumerate(devs):
                acc += cost.rate[d] / tot
                if i == k - 1:
                    r = B
                else:
                    r = min(range(l + 1, B - (k - 1 - i) + 1), key=lambda c: (abs(fp[c] - acc * F), c))
                layout.append((l, r, (d,)))
                l = r
            layout = tuple(layout)
            if self.score(layout) is not None:
                out.append(layout)
                break
        return out

    # --- moves ---------------------------------------------------------------------
    def neighbours(self, layout: tuple) -> list[tuple]:
        """Every state one move away (module docstring)."""
        S, B = len(layout), self.cost.n_blocks
        used = {d for _, _, g in layout for d in g}
        free = unused_candidates(self.orders, used)
        out = []
        st = list(layout)
        for k in range(S - 1):                       # shift cut k (between stage k and k+1)
            (l0, c, g0), (_, r1, g1) = st[k], st[k + 1]
            step = 1
            while step < B:
                for c2 in (c - step, c + step):
                    if l0 < c2 < r1:
                        out.append(tuple(st[:k] + [(l0, c2, g0), (c2, r1, g1)] + st[k + 2:]))
                step *= 2
        for k in range(S - 1):                       # merge stages k and k+1
            (l0, _, g0), (_, r1, g1) = st[k], st[k + 1]
            for g in (tuple(sorted(g0 + g1)), g0, g1):
                if len(g) <= self.max_group:
                    out.append(tuple(st[:k] + [(l0, r1, g)] + st[k + 2:]))
        fp, bnd = self.cost.fp, self.cost.bnd
        for k, (l, r, g) in enumerate(st):           # split stage k
            if r - l < 2:
                continue
            mids = {min(range(l + 1, r), key=lambda c: (abs(fp[c] - fp[l] - f * (fp[r] - fp[l])), c))
                    for f in (0.25, 0.5, 0.75)}
            mids.add(min(range(l + 1, r), key=lambda c: (bnd[c], c)))
            for mid in sorted(mids):
                if len(g) >= 2:
                    ga, gb = tuple(sorted(g[0::2])), tuple(sorted(g[1::2]))
                    out.append(tuple(st[:k] + [(l, mid, ga), (mid, r, gb)] + st[k + 1:]))
                    out.append(tuple(st[:k] + [(l, mid, gb), (mid, r, ga)] + st[k + 1:]))
                for d in free[:3]:
                    out.append(tuple(st[:k] + [(l, mid, g), (mid, r, (d,))] + st[k + 1:]))
                    out.append(tuple(st[:k] + [(l, mid, (d,)), (mid, r, g)] + st[k + 1:]))
        for k, (l, r, g) in enumerate(st):           # add / drop / swap a member
            if len(g) < self.max_group:
                for d in free:
                    out.append(tuple(st[:k] + [(l, r, tuple(sorted(g + (d,))))] + st[k + 1:]))
            for i in range(len(g)):
                rest = g[:i] + g[i + 1:]
                if rest:
                    out.append(tuple(st[:k] + [(l, r, rest)] + st[k + 1:]))
                for d in free:
                    out.append(tuple(st[:k] + [(l, r, tuple(sorted(rest + (d,))))] + st[k + 1:]))
        return out

    # --- the search -----------------------------------------------------------------
    def descend(self, layout: tuple):
        """Steepest descent from `layout`; the best (rank, stages, Metrics) reached, or None."""
        cur = self.score(layout)
        if cur is None:
            return None
        stop = self.evals + self.max_evals
        while self.evals < stop:
            best, best_lay = cur, None
            for nb in self.neighbours(layout):
                if self.evals >= stop:
                    break
                s = self.score(nb)
                if s is not None and s[0] < best[0]:
                    best, best_lay = s, nb
            if best_lay is None:
                break
            cur, layout = best, best_lay
        return cur


def local_search(cost: CostModel, extra_starts=(), max_evals: int = MAX_EVALS, max_group: int | None = None,
                 fastest_only: bool = False, scored: list | None = None):
    """Best (rank, stages, Metrics) over descents from `LocalSearch.starts` (only the
    fastest device with `fastest_only`) and from `extra_starts` (index stages (l, r,
    devs[, shares])); None if no start fits. Each descent scores at most `max_evals` states
    (they share one cache). `scored`, if given, receives the Metrics of every plan scored
    (what `explain_infeasible` reports from past the exact regime)."""
    ls = LocalSearch(cost, max_evals, max_group)
    starts = ls.starts()[:1] if fastest_only else ls.starts()
    for st in extra_starts:
        starts.append(tuple((s[0], s[1], tuple(sorted(s[2]))) for s in st))
    best = None
    for lay in starts:
        r = ls.descend(lay)
        if r is not None and (best is None or r[0] < best[0]):
            best = r
    if scored is not None:
        scored.extend(v[2] for v in ls._seen.values() if v is not None)
    return best

