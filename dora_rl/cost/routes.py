"""Routes and network resources for the cost model: which path a transfer takes and
which capacities it uses on the way.

Why here and not in `Cluster`: the route of a transfer depends on its size (a large
flow prefers a fast path, a small one a short path), so the cost model chooses it per
flow by the same criterion it times it with (docs/cost-model.md "Routes and network
resources"). Per device pair this module keeps a few candidate paths; the cost model
picks, for a flow of b bytes, the candidate of least `lat + b · κ`.

Resources (each a capacity in B/s that every flow through it shares):
- a shared medium μ (`C_μ`; both directions, every hop on it counts once);
- a link, per direction (full duplex: a -> b and b -> a are separate capacities);
- a device's network interface, per direction (send and receive are separate), as fast
  as the device's fastest link.
A path uses, per hop u -> v: the link's u -> v direction, its medium (if any), u's send
and v's receive interface. Intermediate devices of a path are its relays."""

from __future__ import annotations

import heapq
import itertools
from typing import NamedTuple

MAX_THRESHOLDS = 32   # candidate paths per pair: one per link-rate threshold (at most this many)
LAMBDAS = (1e4, 1e5, 1e6, 1e7)  # bytes: flow sizes the serialisation-weighted searches aim at
MAX_ASSIGNMENTS = 64  # concurrent flows' route assignments tried exhaustively up to this many


class Route(NamedTuple):
    lat: float                               # summed latency (s)
    kappa: float                             # s per byte of a lone flow: max over its resources count / capacity
    res: tuple[tuple[int, int], ...]         # (resource index, uses) of the path
    media: tuple[tuple[int, int], ...]       # the media subset of res
    hops: tuple[tuple[int, int], ...]        # (u, v) device pairs, in order
    relays: tuple[int, ...]                  # intermediate devices


class Network:
    """Resources and candidate routes of a cluster (indices as `Cluster.devices`)."""

    def __init__(self, cluster):
        n = cluster.n
        idx = cluster.index
        self.n_media = nmed = len(cluster.media_names)
        midx = {m: i for i, m in enumerate(cluster.media_names)}
        links = cluster.links
        L = len(links)
        cap = list(cluster.medium_bps.tolist())
        cap += [ln.bytes_per_s for ln in links for _ in (0, 1)]             # link li, direction a->b / b->a
        adj: list[list[tuple[int, int, float, float, int]]] = [[] for _ in range(n)]
        for li, ln in enumerate(links):
            a, b = idx[ln.a], idx[ln.b]
            mu = -1 if ln.medium is None else midx[ln.medium]
            r, lt = ln.bytes_per_s, ln.latency_ms / 1e3
            adj[a].append((b, nmed + 2 * li, r, lt, mu))
            adj[b].append((a, nmed + 2 * li + 1, r, lt, mu))
        self.iface0 = nmed + 2 * L
        cap += [f if f > 0 else float("inf") for f in cluster.interface_bps() for _ in (0, 1)]   # d: send, receive
        self.cap = cap
        rates = sorted({ln.bytes_per_s for ln in links})
        if len(rates) > MAX_THRESHOLDS:
            step = (len(rates) - 1) / (MAX_THRESHOLDS - 1)
            rates = sorted({rates[round(k * step)] for k in range(MAX_THRESHOLDS)})
        cands: list[list[dict]] = [[{} for _ in range(n)] for _ in range(n)]
        # searches: per rate threshold, least latency and fewest hops (and least latency on
        # dedicated links only); over all links, least (latency + lam x per-hop
        # serialisation at min(link, medium) rate)
        mcap = cluster.medium_bps.tolist()
        adj = [[(v, res, r, lt, mu, 1.0 / (r if mu < 0 else min(r, mcap[mu]))) for v, res, r, lt, mu in row]
               for row in adj]
        searches = [(beta, by_hops, 0.0, False) for beta in rates for by_hops in (False, True)]
        searches += [(0.0, False, lam, False) for lam in LAMBDAS]
        if nmed:    # paths that avoid every shared medium
            searches += [(beta, False, 0.0, True) for beta in rates]
        for beta, by_hops, lam, wired in searches:
            for s in range(n):
                prev = self._dijkstra(adj, s, beta, n, by_hops, lam, wired)
                for t in range(n):
                    if t == s or prev[t] is None:
                        continue
                    path = [t]
                    while path[-1] != s:
                        path.append(prev[path[-1]][0])
                    path.reverse()
                    key = tuple(path)
                    if key not in cands[s][t]:
                        cands[s][t][key] = self._route(path, adj)
        # drop a path only if another is no slower and uses a subset of its resources
        # (never better, under any contention); least latency first
        self.routes: list[list[tuple[Route, ...]]] = [[() for _ in range(n)] for _ in range(n)]
        for s in range(n):
            for t in range(n):
                rs = sorted(cands[s][t].values(), key=lambda r: (r.lat, r.kappa, len(r.hops)))
                keep: list[Route] = []
                for r in rs:
                    mine = dict(r.res)
                    if not any(k.lat <= r.lat and all(mine.get(x, 0) >= c for x, c in k.res) for k in keep):
                        keep.append(r)
                self.routes[s][t] = tuple(keep)

    @staticmethod
    def _dijkstra(adj, s: int, beta: float, n: int, by_hops: bool, lam: float, wired: bool):
        """Shortest paths from s over links at least beta B/s (and on no medium if
        wired): by (latency + lam x serialisation, hops), or by (hops, latency)."""
        best: list = [None] * n
        best[s] = (0.0, 0.0)
        prev: list = [None] * n
        heap = [(0.0, 0.0, s)]
        while heap:
            d1, d2, u = heapq.heappop(heap)
            if (d1, d2) > best[u]:
                continue
            for v, _res, r, lt, mu, inv in adj[u]:
                if r < beta or (wired and mu >= 0):
                    continue
                w = lt + lam * inv
                cand = (d1 + 1.0, d2 + w) if by_hops else (d1 + w, d2 + 1.0)
                if best[v] is None or cand < best[v]:
                    best[v] = cand
                    prev[v] = (u,)
                    heapq.heappush(heap, (cand[0], cand[1], v))
        return prev

    def _route(self, path: list[int], adj) -> Route:
        lat = 0.0
        uses: dict[int, int] = {}
        media: dict[int, int] = {}
        for u, v in zip(path, path[1:]):
            # the fastest (then lowest-latency) link u -> v (a pair has at most one link)
            _, res, r, lt, mu, _ = next(e for e in adj[u] if e[0] == v)
            lat += lt
            for x in (res, self.iface0 + 2 * u, self.iface0 + 2 * v + 1):
                uses[x] = uses.get(x, 0) + 1
            if mu >= 0:
                uses[mu] = uses.get(mu, 0) + 1
                media[mu] = media.get(mu, 0) + 1
        kappa = max(c / self.cap[x] for x, c in uses.items())
        return Route(lat, kappa, tuple(sorted(uses.items())), tuple(sorted(media.items())),
                     tuple(zip(path, path[1:])), tuple(path[1:-1]))

    def route(self, i: int, j: int, nbytes: float) -> Route:
        """The candidate path i -> j a flow of nbytes takes: least lat + nbytes · kappa."""
        rs = self.routes[i][j]
        best = rs[0]
        if len(rs) > 1:
            tb = best.lat + nbytes * best.kappa
            for r in rs[1:]:
                t = r.lat + nbytes * r.kappa
                if t < tb:
                    best, tb = r, t
        return best

    def place(self, pairs, load: dict[int, float]) -> tuple[float, list[Route]]:
        """Routes for concurrent flows [(i, j, bytes), ...] that share the resources.

        The assignment of candidate routes to flows that gives the least transfer time
        (max flow latency + busiest resource's load / capacity) is kept. Start: every
        flow on its lone-fastest route (`route`), time t0 (optimal when t0 is the slowest
        flow's lone time: no assignment is faster than that); a candidate whose lone time
        lat + b κ is already >= t0 cannot help and is dropped; the remaining assignments
        are all tried when there are at most MAX_ASSIGNMENTS, else the best of four
        (lone-fastest, least latency, highest bandwidth, greedy: largest flow first,
        each on the candidate that least raises the time given the flows placed).
        `load` is filled in with the kept assignment's bytes per resource. Returns
        (max latency, routes in input order)."""
        lone = [self.route(i, j, b) for i, j, b in pairs]
        best = self._time(pairs, lone)
        t0 = best[0]
        # no assignment beats the slowest flow's lone time: if t0 is that, stop here
        if t0 <= max(r.lat + b * r.kappa for (_, _, b), r in zip(pairs, lone)) * (1 + 1e-12):
            load.update(best[3])
            return best[1], lone
        cands = []
        size = 1
        for (i, j, b), r0 in zip(pairs, lone):
            rs = self.routes[i][j]
            if len(rs) > 1:
                rs = [r for r in rs if r is r0 or r.lat + b * r.kappa < t0]
            cands.append(rs)
            size *= len(rs)
        if size > 1:
            if size <= MAX_ASSIGNMENTS:
                options = itertools.product(*cands)
            else:
                options = ([rs[0] for rs in cands], [rs[-1] for rs in cands], self._greedy(pairs))
            for routes in options:
                t = self._time(pairs, routes)
                if t[0] < best[0]:
                    best = t
        load.update(best[3])
        return best[1], list(best[2])

    def _time(self, pairs, routes):
        cap = self.cap
        ld: dict[int, float] = {}
        lat = 0.0
        for (_, _, b), r in zip(pairs, routes):
            if r.lat > lat:
                lat = r.lat
            for x, c in r.res:
                ld[x] = ld.get(x, 0.0) + b * c
        occ = 0.0
        for x, v in ld.items():
            v /= cap[x]
            if v > occ:
                occ = v
        return lat + occ, lat, routes, ld

    def _greedy(self, pairs) -> list[Route]:
        cap = self.cap
        load: dict[int, float] = {}
        routes: list = [None] * len(pairs)
        lat = 0.0
        for k in sorted(range(len(pairs)), key=lambda x: -pairs[x][2]):
            i, j, b = pairs[k]
            rs = self.routes[i][j]
            best, tb = rs[0], None
            for r in rs:
                t = max(lat, r.lat) + max((load.get(x, 0.0) + b * c) / cap[x] for x, c in r.res)
                if tb is None or t < tb:
                    best, tb = r, t
            for x, c in best.res:
                load[x] = load.get(x, 0.0) + b * c
            lat = max(lat, best.lat)
            routes[k] = best
        return routes
