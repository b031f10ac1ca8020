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
VECTOR_DEVICES = 24   # from this many devices the searches' trees are built for every source at once


def shortest_trees(n: int, eu, ev, w, sources, by_hops: bool) -> np.ndarray:
    """Shortest-path trees from every source at once, the same trees a label-setting (heap)
    search builds one source at a time: prev (len(sources), n), each device's predecessor
    on its path from the source, -1 where none (the source itself, unreachable devices).

    Why it gives the same trees: a label-setting search on (key1, key2) keys pops nodes in
    (key, index) order, and each node keeps the first-popped neighbour that reaches its
    final key; so a node's key is the lexicographic least over its in-edges (key1 computed
    in the same float additions, by scipy's Dijkstra or by hop levels), and its predecessor
    is the in-neighbour with that exact key step least by (key1, key2, index). Weights >= 0
    (a 0 ms link is an explicit 0 in the sparse graph, which scipy reads as an edge).
    Until session 28 one heap search ran per source (`dijkstra_trees`, still used below
    VECTOR_DEVICES devices): see docs/cost-model.md for the times."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import dijkstra

    S = len(sources)
    prev = np.full((S, n), -1, dtype=np.int64)
    if not len(w):
        return prev
    src = np.asarray(sources)
    by_tail = np.argsort(eu, kind="stable")        # the sparse graph's rows (edges already come so)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(eu, minlength=n))])
    g = csr_matrix((w[by_tail], ev[by_tail], indptr), shape=(n, n))
    k1 = dijkstra(g, directed=True, indices=src, unweighted=by_hops)
    k2 = np.full((S, n), np.inf)
    k2[np.arange(S), src] = 0.0
    ku = k1[:, eu]
    # the edges that step from a node's key1 to its head's: few per source, kept flat (source, edge)
    si, ej = np.nonzero(np.isfinite(ku) & ((ku + 1.0 if by_hops else ku + w) == k1[:, ev]))
    fu, fv, fw = eu[ej], ev[ej], w[ej]
    if by_hops:     # key2 = the least weight over the least-hop paths, a hop level at a time
        lvl = k1[si, fu]
        for level in range(int(lvl.max()) + 1 if len(lvl) else 0):
            at = lvl == level
            np.minimum.at(k2, (si[at], fv[at]), k2[si[at], fu[at]] + fw[at])
        tight = k2[si, fu] + fw == k2[si, fv]
    else:           # key2 = the fewest hops over the least-weight paths (breadth-first over those edges)
        level = 0.0
        while True:
            at = k2[si, fu] == level
            head = (si[at], fv[at])
            new = ~np.isfinite(k2[head])
            if not new.any():
                break
            level += 1.0
            k2[head[0][new], head[1][new]] = level
        tight = k2[si, fu] + 1.0 == k2[si, fv]
    # per (source, head) the tight edge whose tail is least by (key1, key2, index)
    ts, tv, tu = si[tight], fv[tight], fu[tight]
    o = np.lexsort((tu, k2[ts, tu], k1[ts, tu], tv, ts))
    ts, tv, tu = ts[o], tv[o], tu[o]
    first = np.ones(len(o), dtype=bool)
    first[1:] = (ts[1:] != ts[:-1]) | (tv[1:] != tv[:-1])
    prev[ts[first], tv[first]] = tu[first]
    return prev


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


def dijkstra_trees(n: int, eu, ev, w, sources, by_hops: bool) -> np.ndarray:
    """`shortest_trees` one source at a time (a heap search each): on small clusters the
    faster of the two (numpy's per-call cost outweighs the few sources), and the reference
    the vectorised trees are tested against."""
    sub: list = [[] for _ in range(n)]
    for u, v, x in zip(np.asarray(eu).tolist(), np.asarray(ev).tolist(), np.asarray(w).tolist()):
        sub[u].append((v, x))
    out = np.full((len(sources), n), -1, dtype=np.int64)
    for i, s in enumerate(sources):
        for t, p in enumerate(_dijkstra(sub, s, n, by_hops)):
            if p is not None:
                out[i, t] = p[0]
    return out


class Route(NamedTuple):
    lat: float                               # summed latency (s)
    kappa: float                             # s per byte of a lone flow: max over its resources count / capacity
    res: tuple[tuple[int, int], ...]         # (resource index, uses) of the path
    media: tuple[tuple[int, int], ...]       # the media subset of res
    hops: tuple[tuple[int, int], ...]        # (u, v) device pairs, in order
    relays: tuple[int, ...]                  # intermediate devices

    def lone(self, nbytes: float, cap) -> tuple[float, float]:
        """(occupancy, latency) of a lone flow of `nbytes` on this route (`cap`: the network's
        capacities): its resources are distinct, so each one's load is nbytes x uses."""
        return (max(nbytes * c / cap[x] for x, c in self.res) if self.res else 0.0), self.lat


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
        # per directed hop u -> v its link's (resource, latency, medium); a pair has at most one link
        self._hop = {(u, v): (res, lt, mu) for u, row in enumerate(adj) for v, res, _r, lt, mu, _inv in row}
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
        slots: list[tuple[int, int]] = []      # per kept route (s != t): its pair and candidate index,
        kept: list[Route] = []                 # and the route (`lone_relays`, `lone_times`)
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
                    slots.extend((s * n + t, c) for c in range(len(keep)))
                    kept.extend(keep)
        self.least: tuple[np.ndarray, np.ndarray] = (lat, kap)
        """(lat, kappa), each (n, n): per pair s -> t the least latency and the least seconds
        per byte of any candidate route, each on its own (so together a lower bound of any
        flow's lone time: lat + bytes x kappa); inf and 0 on the diagonal and where no route
        exists. What the learned planner's QoE masks bound with; filled as the routes are
        (every plan of the cluster shares them)."""
        self._alts = _Alternatives(n, slots, kept, cap)

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
        return {t: {p: self._route(p) for p in paths} for t, paths in out.items()}

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
        targets = {s: [t for t in range(n) if (s, t) in far] for s in sources}
        # every directed link once: from, to, rate, latency, medium, 1 / rate (as adj)
        e = np.array([(u, v, r, lt, mu, inv) for u, row in enumerate(adj) for v, _res, r, lt, mu, inv in row],
                     dtype=float).reshape(-1, 6)
        eu, ev, mu = e[:, 0].astype(np.int64), e[:, 1].astype(np.int64), e[:, 4]
        seen: set = set()
        trees: dict = {s: set() for s in sources}      # per source, the trees already read
        for beta, by_hops, lam, wired in searches:
            use = (e[:, 2] >= beta) & ~((mu >= 0) & wired)
            w = e[use, 3] + lam * e[use, 5]     # the edge weight: latency + lam x serialisation
            key = (use.tobytes(), w.tobytes(), by_hops)
            if key in seen:                     # the same graph searched the same way: the same paths
                continue
            seen.add(key)
            trees_of = shortest_trees if n >= VECTOR_DEVICES else dijkstra_trees
            prev = trees_of(n, eu[use], ev[use], w, sources, by_hops)
            for i, s in enumerate(sources):
                row = prev[i]
                if row.tobytes() in trees[s]:   # the same tree from s: its paths are in already
                    continue
                trees[s].add(row.tobytes())
                paths = {s: (s,)}              # the tree's path to each device, each built once
                for t in targets[s]:
                    if row[t] < 0:
                        continue
                    up, x = [], t
                    while x not in paths:
                        up.append(x)
                        x = int(row[x])
                    for y in reversed(up):
                        paths[y] = paths[x] + (y,)
                        x = y
                    if paths[t] not in cands[s][t]:
                        cands[s][t][paths[t]] = self._route(paths[t])

    def _route(self, path) -> Route:
        lat = 0.0
        uses: dict[int, int] = {}
        media: dict[int, int] = {}
        for u, v in zip(path, path[1:]):
            res, lt, mu = self._hop[u, v]
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

    def lone_relays(self, s, t, nbytes: float) -> np.ndarray:
        """(len(s), n) bool: row k marks the relays of the route a lone flow of `nbytes` takes
        from s[k] to t[k] (`route`'s choice: the least lat + nbytes x kappa, the first on
        ties), none where s[k] == t[k]. Why: the learned planner's energy terms ask for the
        relays of a thousand pairs per state at 64 devices (dora_rl/envs/stage_energy.py),
        where `route` pair by pair was a quarter of a decision's time."""
        return self._alts.relays(*self._alts.chosen(s, t, nbytes))

    def lone_times(self, s, t, nbytes: float) -> tuple[np.ndarray, np.ndarray]:
        """(occupancy, latency), each (len(s),), of a lone flow of `nbytes` from s[k] to t[k]
        on the route `route` chooses: max over its resources of nbytes x uses / capacity, and
        its summed latency (0, 0 where s[k] == t[k]); `routing.lone`'s heuristic case for many
        pairs, the routes chosen in one numpy call (the QoE bound asks for one per device per
        decision)."""
        rid, rows = self._alts.chosen(s, t, nbytes)
        return self._alts.times(rid, rows, nbytes, len(rid))


class _Alternatives:
    """Every pair's candidate routes as arrays (the pair's (C,) latencies and kappas, inf-padded,
    each route's relays as a slice of one flat array; the Route objects by route id):
    `Network.lone_relays` and `lone_times` choose among them for many pairs at once."""

    def __init__(self, n: int, slots: list, kept: list, cap: list):
        self.n = n
        C = 1 + max((c for _, c in slots), default=0)
        self.lat, self.kap = np.full((n * n, C), np.inf), np.zeros((n * n, C))
        self.rid = np.full((n * n, C), -1, dtype=np.int64)
        if slots:
            pair, c = np.array(slots, dtype=np.int64).T
            self.lat[pair, c] = [r.lat for r in kept]
            self.kap[pair, c] = [r.kappa for r in kept]
            self.rid[pair, c] = np.arange(len(kept))
        counts = np.array([len(r.relays) for r in kept], dtype=np.int64)
        self.off = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.flat = np.array([x for r in kept for x in r.relays], dtype=np.int64)
        self.routes = kept
        self.cap = cap

    def chosen(self, s, t, nbytes: float) -> tuple[np.ndarray, np.ndarray]:
        """Per pair the route id a lone flow of `nbytes` takes (-1: none) and the rows that have one."""
        pair = np.asarray(s, dtype=np.int64) * self.n + np.asarray(t, dtype=np.int64)
        rid = self.rid[pair, np.argmin(self.lat[pair] + nbytes * self.kap[pair], axis=1)]
        return rid, np.flatnonzero(rid >= 0)

    def relays(self, rid: np.ndarray, rows: np.ndarray) -> np.ndarray:
        out = np.zeros((len(rid), self.n), dtype=bool)
        start, cnt = self.off[rid[rows]], self.off[rid[rows] + 1] - self.off[rid[rows]]
        first = np.repeat(np.cumsum(cnt) - cnt, cnt)            # each relay's position within its route
        out[np.repeat(rows, cnt), self.flat[np.repeat(start, cnt) + np.arange(int(cnt.sum())) - first]] = True
        return out

    def times(self, rid: np.ndarray, rows: np.ndarray, nbytes: float, k: int) -> tuple[np.ndarray, np.ndarray]:
        occ, lat = np.zeros(k), np.zeros(k)
        for i, r in zip(rows.tolist(), rid[rows].tolist()):
            occ[i], lat[i] = self.routes[r].lone(nbytes, self.cap)
        return occ, lat
