"""Route assignment for the cost model: which candidate path each flow takes, exactly.

`flow_pairs` says which flows a transfer has (who sends whom how many bytes).

Why a module of its own: the laws of docs/cost-model.md ("Routes and network
resources", "Laws") hold by construction only if every routing decision is the exact
optimum over a candidate set that can only grow or improve when the network does. This
module makes both decisions exactly:

- `options(net, pairs)`: the concurrent flows of one transfer (a boundary, or one step
  of a ring all-reduce) over the candidates of `routes.Network`. Every assignment of
  candidates to flows is summarised by its vector (time x = max latency + occupancy,
  occupancy o, bytes on each medium); the Pareto-minimal vectors are kept (a partial
  assignment dominated on latency and on every resource's load cannot complete into a
  better one, so the search prunes as it goes). Sorted by (x, o): the first is the
  transfer's own fastest routing, which the planners compose.
- `choose(...)`: one option per transfer for the whole plan, minimising the plan's
  time `Σ w_k x_k + K · max(U, max_k d_k o_k, max_μ Σ_k d_k ℓ_kμ / C_μ)` (latency per
  request or iteration; then the period) exactly, by a Pareto DP over the transfers.

Where exactness ends (stated in the doc): more than MAX_LABELS partial assignments of one
transfer, or plan labels, fall back to the greedy assignment / the per-transfer fastest."""

from __future__ import annotations

import itertools
import logging
from typing import NamedTuple

import numpy as np

log = logging.getLogger(__name__)

MAX_LABELS = 4096   # partial assignments (per transfer) or plan labels kept before the fallback
MAX_ASSIGNMENTS = 64  # heuristic regime: assignments tried exhaustively up to this many
EPS = 1e-12


class Option(NamedTuple):
    """One routing of a transfer; its first four fields are what `CostModel.transfer` returns."""
    occ: float                                # occupancy: busiest resource's bytes / capacity (s)
    lat: float                                # slowest flow's latency (s)
    load: dict                                # {medium: bytes} (media carrying any)
    flows: list                               # (u, v, bytes) per hop of every flow
    x: float                                  # transfer time: lat + occ (s)
    media: tuple[float, ...]                  # bytes on each medium (index = medium)
    routes: tuple                             # the Route of each flow, in input order


def no_flow(n_media: int) -> tuple[Option]:
    """The routings of a transfer that has no flow (zero bytes, or all local)."""
    return (Option(0.0, 0.0, {}, [], 0.0, (0.0,) * n_media, ()),)


def flow_pairs(a_devs, a_sh, b_devs, b_sh, nbytes: float) -> list[tuple[int, int, float]]:
    """The end-to-end flows of one boundary: group A's micro-batch (nbytes in all, split
    by shares a_sh) goes to group B (shares b_sh); samples are laid out as contiguous
    slices in listed order, so A's member i sends B's member j the overlap of their
    slices, times nbytes; nothing from a device to itself. [(i, j, bytes)]. The cost
    model's `transfer` and the simulator's program (dora_rl/sim) both split flows so."""
    if nbytes <= 0:
        return []
    if len(a_devs) == 1 and len(b_devs) == 1:
        return [(a_devs[0], b_devs[0], nbytes)] if a_devs[0] != b_devs[0] else []
    pairs = []
    i = j = 0
    a_lo = b_lo = 0.0
    na, nb = len(a_devs), len(b_devs)
    while i < na and j < nb:
        a_hi = a_lo + a_sh[i]
        b_hi = b_lo + b_sh[j]
        ov = (a_hi if a_hi < b_hi else b_hi) - (a_lo if a_lo > b_lo else b_lo)
        if ov > EPS and a_devs[i] != b_devs[j]:
            pairs.append((a_devs[i], b_devs[j], ov * nbytes))
        if a_hi < b_hi or j == nb - 1:
            a_lo = a_hi
            i += 1
        else:
            b_lo = b_hi
            j += 1
    return pairs


def _prune(labels):
    """Drop partial assignments (lat, loads, routes) that another one matches or beats on
    latency and on every resource's load. Cheap necessary tests first: the sum of loads,
    then the resources used (every load is > 0, so a label that uses a resource the other
    does not cannot be at or below it)."""
    tagged = sorted(((lat, sum(ld.values()), ld, ch) for lat, ld, ch in labels), key=lambda t: (t[0], t[1]))
    keep: list = []
    for lat, tot, ld, ch in tagged:
        used = ld.keys()
        for klat, ktot, kld, _ in keep:
            if ktot <= tot and klat <= lat and kld.keys() <= used and all(v <= ld[x] for x, v in kld.items()):
                break
        else:
            keep.append((lat, tot, ld, ch))
    return [(lat, ld, ch) for lat, _, ld, ch in keep]


def options(net, pairs) -> tuple[Option, ...]:
    """The Pareto-minimal routings of concurrent flows [(i, j, bytes), ...] over
    (x, o, bytes per medium), sorted by (x, o). Exact when the network's candidates are
    (`net.exact`) and the search keeps at most MAX_LABELS partial assignments; else one
    heuristic routing (`fastest`)."""
    if not net.exact:
        return fastest(net, pairs)
    if len(pairs) == 1:       # one flow: each candidate is an assignment
        i, j, b = pairs[0]
        return _summarise(net, [(r.lat, {x: b * c for x, c in r.res}, (r,)) for r in net.routes[i][j]], pairs)
    size = 1
    for i, j, _ in pairs:
        size *= len(net.routes[i][j])
    if size > MAX_LABELS:
        return fastest(net, pairs)
    inc = _vector(net, *_time(net, pairs, [net.route(i, j, b) for i, j, b in pairs])[1::2])
    rest = _floors(net, pairs)
    labels = [(0.0, {}, ())]
    for k, (i, j, b) in enumerate(pairs):
        rs = net.routes[i][j]
        new = []
        for lat, ld, chosen in labels:
            for r in rs:
                nl = dict(ld)
                for x, c in r.res:
                    nl[x] = nl.get(x, 0.0) + b * c
                new.append((lat if lat > r.lat else r.lat, nl, chosen + (r,)))
        if k + 1 < len(pairs):
            new = [t for t in new if not _beaten(net, t[0], t[1], rest[k + 1], inc)]
        labels = _prune(new) if len(rs) > 1 or len(new) > 1 else new
    return _summarise(net, labels, pairs)


def lone(net, i: int, j: int, nbytes: float) -> tuple[float, float]:
    """(occupancy, latency) of `options(net, [(i, j, nbytes)])[0]`, one flow's own fastest
    routing (i != j, nbytes > 0), without building the Options when the candidates are
    heuristic: a lone flow then takes `net.route` (StageEnv's QoE masks ask for one per
    device per decision)."""
    if net.exact:
        o = options(net, [(i, j, nbytes)])[0]
        return o.occ, o.lat
    return net.route(i, j, nbytes).lone(nbytes, net.cap)      # `_time` + `_vector` of one flow


def lones(net, s, t, nbytes: float) -> tuple[np.ndarray, np.ndarray]:
    """`lone` of every pair (s[k], t[k]) as two arrays (occupancy, latency), 0 where s[k] ==
    t[k]: on heuristic candidates (`net.exact` False) in one call (`Network.lone_times`)."""
    if not net.exact:
        return net.lone_times(s, t, nbytes)
    occ, lat = np.zeros(len(s)), np.zeros(len(s))
    for k, (i, j) in enumerate(zip(s, t)):
        if i != j:
            occ[k], lat[k] = lone(net, int(i), int(j), nbytes)
    return occ, lat


def _vector(net, lat: float, ld: dict) -> tuple[float, float, tuple[float, ...]]:
    """(x, o, bytes per medium) of an assignment with latency `lat` and loads `ld`."""
    cap = net.cap
    occ = max(v / cap[x] for x, v in ld.items()) if ld else 0.0
    med = [0.0] * net.n_media
    for x, v in ld.items():
        if x < net.n_media:                # resources 0 .. n_media - 1 are the media
            med[x] = v
    return lat + occ, occ, tuple(med)


def _floors(net, pairs) -> list[tuple[float, list]]:
    """Per flow k, what flows k, k+1, ... add at least whatever candidates they take:
    (the largest of their least latencies, per flow the (resource, load) of the resources
    every candidate of that flow uses, at its fewest uses)."""
    out: list[tuple[float, list]] = [(0.0, [])]
    for i, j, b in reversed(pairs):
        rs = net.routes[i][j]
        uses = [dict(r.res) for r in rs]
        common = set(uses[0]).intersection(*uses[1:])
        least = [(x, b * min(u[x] for u in uses)) for x in sorted(common)]
        lat = min(r.lat for r in rs)
        out.append((max(lat, out[-1][0]), [least, *out[-1][1]]))
    return out[:0:-1]


def _beaten(net, lat: float, ld: dict, rest, inc) -> bool:
    """Whether the complete assignment `inc` ((x, o, media): every flow on its lone
    fastest candidate) beats every completion of a partial one (`lat`, loads `ld`) by the
    flows still to place (`rest`, `_floors`): lower x, no more o, no more bytes on any
    medium. Such a partial assignment cannot reach the Pareto set, and, its x being
    strictly worse, no tie either. The bound adds the floors in flow order, as the
    search adds loads, so rounding keeps it at or below every completion's figures."""
    least_lat, floors = rest
    lb = dict(ld)
    for fl in floors:
        for x, v in fl:
            lb[x] = lb.get(x, 0.0) + v
    x, occ, med = _vector(net, lat if lat > least_lat else least_lat, lb)
    ix, iocc, imed = inc
    return ix < x and iocc <= occ and all(a <= b for a, b in zip(imed, med))


def _summarise(net, labels, pairs) -> tuple[Option, ...]:
    """Options of the labels, Pareto-minimal over (x, o, bytes per medium); among equal
    vectors the one with the fewest relays outside the flows' own ends (a relay is a
    participant: idle power, battery), then the fewest hops, then the first found. The
    vectors are filtered first; an Option is built only for a label that is kept."""
    rows = [(*_vector(net, lat, ld), k) for k, (lat, ld, _) in enumerate(labels)]
    rows.sort()                            # by (x, o, media), then found order
    ends = None
    keep: list = []
    i = 0
    while i < len(rows):
        j = i + 1
        while j < len(rows) and rows[j][:3] == rows[i][:3]:
            j += 1
        if j - i > 1:                      # equal vectors: fewest outside relays, then hops
            ends = ends or {d for a, b, _ in pairs for d in (a, b)}
            rows[i] = min(rows[i:j], key=lambda t: (len({d for r in labels[t[3]][2] for d in r.relays} - ends),
                                                     sum(len(r.hops) for r in labels[t[3]][2]), t[3]))
        x, occ, med, k = rows[i]
        if not any(kx <= x and ko <= occ and all(a <= b for a, b in zip(km, med)) for kx, ko, km, _ in keep):
            keep.append(rows[i])
        i = j
    out = []
    for x, occ, med, k in keep:
        lat, _, chosen = labels[k]
        flows = [(u, v, b) for (_, _, b), r in zip(pairs, chosen) for u, v in r.hops]
        out.append(Option(occ, lat, {mu: v for mu, v in enumerate(med) if v > 0}, flows, x, med, chosen))
    return tuple(out)


def fastest(net, pairs) -> tuple[Option]:
    """Heuristic regime (not exact): the fastest routing found. Every flow on its
    lone-fastest candidate (optimal when no flow slows another); else every assignment of
    the candidates whose lone time is below that when there are at most MAX_ASSIGNMENTS,
    or the best of: lone-fastest, least latency, highest bandwidth, greedy (largest flow
    first, each on the candidate that least raises the time given the flows placed)."""
    lone = [net.route(i, j, b) for i, j, b in pairs]
    best = _time(net, pairs, lone)
    t0 = best[0]
    if len(pairs) > 1 and t0 > max(r.lat + b * r.kappa for (_, _, b), r in zip(pairs, lone)) * (1 + 1e-12):
        cands, size = [], 1
        for (i, j, b), r0 in zip(pairs, lone):
            rs = [r for r in net.routes[i][j] if r is r0 or r.lat + b * r.kappa < t0]
            cands.append(rs)
            size *= len(rs)
        if size > 1:
            if size <= MAX_ASSIGNMENTS:
                trials = itertools.product(*cands)
            else:
                trials = ([rs[0] for rs in cands], [rs[-1] for rs in cands], _greedy(net, pairs))
            for routes in trials:
                t = _time(net, pairs, routes)
                if t[0] < best[0]:
                    best = t
    return _summarise(net, [(best[1], best[3], tuple(best[2]))], pairs)


def _time(net, pairs, routes):
    cap = net.cap
    ld: dict[int, float] = {}
    lat = 0.0
    for (_, _, b), r in zip(pairs, routes):
        if r.lat > lat:
            lat = r.lat
        for x, c in r.res:
            ld[x] = ld.get(x, 0.0) + b * c
    occ = max(v / cap[x] for x, v in ld.items()) if ld else 0.0
    return lat + occ, lat, routes, ld


def _greedy(net, pairs) -> list:
    cap = net.cap
    load: dict[int, float] = {}
    routes: list = [None] * len(pairs)
    lat = 0.0
    for k in sorted(range(len(pairs)), key=lambda x: -pairs[x][2]):
        i, j, b = pairs[k]
        best, tb = None, None
        for r in net.routes[i][j]:
            t = max(lat, r.lat) + max((load.get(x, 0.0) + b * c) / cap[x] for x, c in r.res)
            if tb is None or t < tb:
                best, tb = r, t
        for x, c in best.res:
            load[x] = load.get(x, 0.0) + b * c
        lat = max(lat, best.lat)
        routes[k] = best
    return routes


def choose(opts, weights, dirs, U: float, K: float, mcap) -> list[int]:
    """The index of one option per transfer minimising (Σ w_k x_k + K·T, then T) with
    T = max(U, max_k d_k o_k, max_μ Σ_k d_k ℓ_kμ / C_μ), exactly (a Pareto DP over the
    transfers on (Σ w x, max d o, Σ d ℓ per medium)). `opts[k]` are transfer k's options."""
    if K <= 0 or all(len(o) == 1 for o in opts):
        return [0] * len(opts)   # K = 0: Σ w x alone, which each transfer's fastest minimises
    nmed = len(mcap)
    zero = (0.0,) * nmed
    default = [o[0] for o in opts]

    def period(maxo, media):
        t = max(U, maxo)
        for mu, v in enumerate(media):
            if v / mcap[mu] > t:
                t = v / mcap[mu]
        return t

    d_media = zero
    for o, d in zip(default, dirs):
        d_media = tuple(a + d * b for a, b in zip(d_media, o.media))
    t_def = period(max((d * o.occ for o, d in zip(default, dirs)), default=0.0), d_media)
    # a lower bound on T from every transfer's least occupancy and least medium bytes
    lo_media = zero
    for os, d in zip(opts, dirs):
        lo_media = tuple(a + d * min(o.media[mu] for o in os) for mu, a in enumerate(lo_media))
    t_lb = period(max((d * min(o.occ for o in os) for os, d in zip(opts, dirs)), default=0.0), lo_media)
    if t_def <= t_lb * (1 + 1e-12):
        return [0] * len(opts)   # the fastest transfers already reach the least period
    labels = [(0.0, 0.0, zero, ())]
    for os, w, d in zip(opts, weights, dirs):
        new = []
        for sx, mo, med, ch in labels:
            for i, o in enumerate(os):
                new.append((sx + w * o.x, max(mo, d * o.occ), tuple(a + d * b for a, b in zip(med, o.media)),
                            ch + (i,)))
        new.sort(key=lambda t: (t[0], t[1]))
        labels = []
        for lab in new:
            if not any(k[0] <= lab[0] and k[1] <= lab[1] and all(a <= b for a, b in zip(k[2], lab[2]))
                       for k in labels):
                labels.append(lab)
        if len(labels) > MAX_LABELS:
            log.debug("plan routing: %d labels > %d, keeping each transfer's fastest", len(labels), MAX_LABELS)
            return [0] * len(opts)
    best = min(labels, key=lambda t: (t[0] + K * period(t[1], t[2]), period(t[1], t[2])))
    return list(best[3])
