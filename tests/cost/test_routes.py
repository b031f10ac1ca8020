"""The candidate routes' shortest-path trees: built for every source at once (scipy's
Dijkstra plus exact key steps), they must be the trees the per-source search builds, ties
included, or the candidate routes, and so every cost, would change with the speed-up."""

from __future__ import annotations

import numpy as np
import pytest

from dora_rl.cost import routes
from dora_rl.synthetic import random_scenario


def _graph(rng, n: int, p: float, levels: int, low: int = 1):
    """A random directed graph whose weights take few values (from low x 0.5 ms; 0: 0 ms
    links), so equal-length paths (ties) abound."""
    pairs = [(u, v) for u in range(n) for v in range(n) if u != v and rng.random() < p]
    eu = np.array([u for u, _ in pairs], dtype=np.int64)
    ev = np.array([v for _, v in pairs], dtype=np.int64)
    w = rng.integers(low, levels + 1, len(pairs)) * 0.5e-3
    return eu, ev, w


@pytest.mark.parametrize("by_hops", [False, True])
def test_vectorised_trees_are_the_per_source_searches_trees_ties_included(by_hops):
    rng = np.random.default_rng(7)
    ties = 0
    for n, p, levels, low in [(2, 1.0, 1, 1), (6, 0.5, 2, 1), (12, 0.3, 2, 1), (20, 0.2, 3, 1), (30, 0.08, 1, 1),
                              (40, 0.15, 4, 1), (10, 0.3, 2, 0), (25, 0.15, 1, 0)]:
        eu, ev, w = _graph(rng, n, p, levels, low)
        sources = sorted(rng.choice(n, size=max(1, n // 2), replace=False).tolist())
        fast = routes.shortest_trees(n, eu, ev, w, sources, by_hops)
        ref = routes.dijkstra_trees(n, eu, ev, w, sources, by_hops)
        assert np.array_equal(fast, ref), (n, p, levels, low)
        ties += int((np.bincount(ev, minlength=n) > 1).sum())
        assert (fast[np.arange(len(sources)), sources] == -1).all()     # a source has no predecessor
    assert ties > 0      # the graphs did offer more than one way into a node


def test_unreachable_devices_have_no_predecessor():
    eu, ev, w = np.array([0, 1]), np.array([1, 0]), np.array([1e-3, 1e-3])      # 2 and 3 are cut off
    for by_hops in (False, True):
        assert routes.shortest_trees(4, eu, ev, w, [0, 2], by_hops).tolist() == [[-1, 0, -1, -1], [-1, -1, -1, -1]]


def test_network_routes_do_not_depend_on_how_the_trees_are_built(monkeypatch):
    sc = random_scenario(np.random.default_rng([11, 20]), max_devices=20, min_devices=20, n_blocks=10)
    monkeypatch.setattr(routes, "VECTOR_DEVICES", 0)           # every source at once
    fast = routes.Network(sc.cluster)
    monkeypatch.setattr(routes, "VECTOR_DEVICES", 10**9)       # one heap search per source
    ref = routes.Network(sc.cluster)
    assert fast.routes == ref.routes
    assert all(np.array_equal(a, b) for a, b in zip(fast.least, ref.least))
    assert sum(len(r) for row in fast.routes for r in row) > 20 * 19      # more than one candidate somewhere


def test_a_zero_latency_link_is_a_route_of_zero_latency(monkeypatch):
    """scipy's sparse graphs read a 0 weight as no edge, so a 0 ms link must take the
    per-source search: its pair's least-latency route is the link itself, at 0 s."""
    from dora_rl.cluster.model import Cluster

    sc = random_scenario(np.random.default_rng([11, 12]), max_devices=12, min_devices=12, n_blocks=10)
    data = sc.cluster.to_dict()
    data["links"][0]["latency_ms"] = 0.0
    cluster = Cluster.from_dict(data)
    a, b = cluster.index[data["links"][0]["a"]], cluster.index[data["links"][0]["b"]]
    monkeypatch.setattr(routes, "VECTOR_DEVICES", 0)           # the vectorised trees, through scipy
    net = routes.Network(cluster)
    assert not net.exact                  # 12 devices: the pair's candidates come from the searches
    assert net.routes[a][b][0].lat == 0.0 and net.routes[a][b][0].hops == ((a, b),)
    assert net.least[0][a, b] == 0.0


def test_lone_relays_and_times_are_those_of_the_route_route_chooses_for_every_pair():
    """`Network.lone_relays` and `lone_times` choose among a pair's candidates in arrays;
    they must name the relays, and give `routing.lone`'s very floats, of the route
    `Network.route` takes, pair by pair, at every flow size (small flows take short paths,
    large ones fast paths: different relays)."""
    from dora_rl.cost import routing

    sc = random_scenario(np.random.default_rng([11, 21]), max_devices=24, min_devices=24, n_blocks=10)
    net = routes.Network(sc.cluster)
    n = sc.cluster.n
    s, t = np.divmod(np.arange(n * n), n)
    picks = set()
    for nb in (0.0, 1e3, 1e5, 1e7, 1e9):
        got = net.lone_relays(s, t, nb)
        occ, lat = routing.lones(net, s, t, nb)
        want = np.zeros((n * n, n), dtype=bool)
        for k, (a, b) in enumerate(zip(s.tolist(), t.tolist())):
            if a != b:
                want[k, list(net.route(a, b, nb).relays)] = True
                picks.add((a, b, net.route(a, b, nb).hops))
                assert (occ[k], lat[k]) == routing.lone(net, a, b, nb), (a, b, nb)
        assert np.array_equal(got, want), nb
        assert not got[s == t].any() and not occ[s == t].any() and not lat[s == t].any()
    assert want.any() and len(picks) > n * (n - 1)      # relayed routes, and flows of some pairs changed route
