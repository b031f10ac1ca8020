"""Routes and network resources for the cost model: which path a transfer takes and
which capacities it uses on the way.

Why here and not in `Cluster`: the route of a transfer depends on its size and on the
other flows (a large flow prefers a fast path, a small one a short path), so the cost
model chooses it by the time the plan will take (`routing.py`, docs/cost-model.md
"Routes and network resources"). Per device pair this module keeps the candidate
paths: on clusters of up to EXACT_DEVICES devices, every simple path of at most
MAX_HOPS hops (a set that only grows with the graph), less the paths another candidate
dominates (no more latency and a sub-multiset of its resources: never better, under
any contention); pairs farther apart, and larger clusters, add the paths of heuristic
searches (per link-rate threshold and per serialisation weight), which are not
monotone in the graph.

Resources (each a capacity in B/s that every flow through it shares):
- a shared medium μ (`C_μ`; both directions, every hop on it counts once);
- a link, per direction (full duplex: a -> b and b -> a are separate capacities);
- a device's network interface, per direction (send and receive are separate), as fast
  as the device's fastest link.
A path uses, per hop u -> v: the link's u -> v direction, its medium (if any), u's send
and v's receive interface. Intermediate devices of a path are its relays."""

from __future__ import annotations

import heapq
from typing import NamedTuple

import numpy as np

EXACT_DEVICES = 8     # up to this many devices: every simple path of <= MAX_HOPS hops is a candidate
MAX_HOPS = 2          # one relay at most in the exhaustive candidate set
MAX_THRESHOLDS = 32   # heuristic searches: one per link-rate threshold (at most this many)
LAMBDAS = (1e4, 1e5, 1e6, 1e7)  # bytes: flow sizes the serialisation-weighted searches aim at


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
        mcap = cluster.medium_bps.tolist()
        adj = [[(v, res, r, lt, mu, 1.0 / (r if mu < 0 else min(r, mcap[mu]))) for v, res, r, lt, mu in row]
               for row in adj]
        cands: list[list[dict]] = [[{} for _ in range(n)] for _ in range(n)]
        self.exact = n <= EXACT_DEVICES     # candidates complete up to MAX_HOPS (see routing.options)
        if self.exact:
            for s in range(n):
                for t, paths in self._simple_paths(adj, s).items():
                    cands[s][t] = paths
        # pairs with no exhaustive candidate (farther than MAX_HOPS, or a large cluster)
        far = {(s, t) for s in range(n) for t in range(n) if t != s and not cands[s][t]}
        if far:
            self._searches(cluster, links, adj, far, cands)
        # drop a path only if another is no slower and uses a subset of its resources
        # (never better, under any contention); least latency first
        self.routes: list[list[tuple[Route, ...]]] = [[() for _ in range(n)] for _ in range(n)]
        lat, kap = np.full((n, n), np.inf), np.zeros((n, n))
        for s in range(n):
            for t in range(n):
                rs = sorted(cands[s][t].values(), key=lambda r: (r.lat, r.kappa, len(r.hops)))
                keep: list[Route] = []
                for r in rs:
                    mine = dict(r.res)
                    if not any(k.lat <= r.lat and all(mine.get(x, 0) >= c for x, c in k.res) for k in keep):
                        keep.append(r)
                self.routes[s][t] = tuple(keep)
                if keep and s != t:     # least latency first: the first route's is the least
                    lat[s, t], kap[s, t] = keep[0].lat, min(r.kappa for r in keep)
        self.least: tuple[np.ndarray, np.ndarray] = (lat, kap)
        """(lat, kappa), each (n, n): per pair s -> t the least latency and the least seconds
        per byte of any candidate route, each on its own (so together a lower bound of any
        flow's lone time: lat + bytes x kappa); inf and 0 on the diagonal and where no route
        exists. What the learned planner's QoE masks bound with; filled as the routes are
        (every plan of the cluster shares them)."""

    def _simple_paths(self, adj, s: int) -> dict:
        """Every simple path from s of at most MAX_HOPS hops: {t: {path: Route}}."""
        out: dict = {}
        stack = [[s]]
        while stack:
            path = stack.pop()
            u = path[-1]
            if len(path) > 1:
                out.setdefault(u, {})[tuple(path)] = None
            if len(path) <= MAX_HOPS:
                for e in adj[u]:
                    if e[0] not in path:
                        stack.append(path + [e[0]])
        return {t: {p: self._route(list(p), adj) for p in paths} for t, paths in out.items()}

    def _searches(self, cluster, links, adj, far, cands) -> None:
        """Heuristic candidates of the pairs `far`: per link-rate threshold, the least-latency
        and the fewest-hop path over links at least that fast (and the least-latency path
        on dedicated links only); the least latency + lam x per-hop serialisation path."""
        n = cluster.n
        rates = sorted({ln.bytes_per_s for ln in links})
        if len(rates) > MAX_THRESHOLDS:
            step = (len(rates) - 1) / (MAX_THRESHOLDS - 1)
            rates = sorted({rates[round(k * step)] for k in range(MAX_THRESHOLDS)})
        searches = [(beta, by_hops, 0.0, False) for beta in rates for by_hops in (False, True)]
        searches += [(0.0, False, lam, False) for lam in LAMBDAS]
        if self.n_media:    # paths that avoid every shared medium
            searches += [(beta, False, 0.0, True) for beta in rates]
        sources = sorted({s for s, _ in far})
        seen: set = set()
        for beta, by_hops, lam, wired in searches:
            # the search's graph, once for every source: usable links (in adj's order, so
            # ties resolve as before) with the edge weight (latency + lam x serialisation)
            sub = tuple(tuple((v, lt + lam * inv) for v, _res, r, lt, mu, inv in row
                              if r >= beta and not (wired and mu >= 0)) for row in adj)
            if (sub, by_hops) in seen:     # the same graph searched the same way: the same paths
                continue
            seen.add((sub, by_hops))
            for s in sources:
                prev = self._dijkstra(sub, s, n, by_hops)
                for t in range(n):
                    if (s, t) not in far or prev[t] is None:
                        continue
                    path = [t]
                    while path[-1] != s:
                        path.append(prev[path[-1]][0])
                    path.reverse()
                    key = tuple(path)
                    if key not in cands[s][t]:
                        cands[s][t][key] = self._route(path, adj)

    @staticmethod
    def _dijkstra(sub, s: int, n: int, by_hops: bool):
        """Shortest paths from s over the search's graph `sub` ([(v, weight)] per
        device): by (weight, hops), or by (hops, weight)."""
        best: list = [None] * n
        best[s] = (0.0, 0.0)
        prev: list = [None] * n
        heap = [(0.0, 0.0, s)]
        while heap:
            d1, d2, u = heapq.heappop(heap)
            if (d1, d2) > best[u]:
                continue
            for v, w in sub[u]:
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
