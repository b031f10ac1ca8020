"""The exact routing of docs/cost-model.md ("Routes and network resources"): a transfer's
fastest option is the least time over every assignment of candidates, and the plan's
choice is the least latency over every combination of the transfers' options (both
checked against brute force on fuzzed scenarios)."""

from __future__ import annotations

import itertools

import numpy as np

from dora_rl.cost import CostModel, routing
from dora_rl.cost.laws import random_plan
from dora_rl.synthetic import random_scenario

CHECKED_MIN, TRIED_MIN = 60, 8     # multi-flow boundaries / plans with a routing choice in these seeds: 67 / 9


def _instances(count: int):
    for i in range(count):
        rng = np.random.default_rng([31, i])
        sc = random_scenario(rng, min_devices=3, max_devices=6, qoe="none", kind="inference")
        yield CostModel(sc), random_plan(rng, sc)


def _boundaries(cm, plan):
    m = cm.workload.batch // plan.microbatches
    st = [(l, r, d, cm.realized(m, sh, d)) for l, r, d, sh in cm.stage_indices(plan)]
    groups = [([cm.src], [1.0])] + [(s[2], s[3]) for s in st] + [([cm.src], [1.0])]
    sizes = [m * cm.bnd[0]] + [m * cm.bnd[s[1]] for s in st]
    return [(a, b, nb) for a, b, nb in zip(groups, groups[1:], sizes)]


def _time(cm, pairs, routes):
    load: dict[int, float] = {}
    for (_, _, b), r in zip(pairs, routes):
        for x, c in r.res:
            load[x] = load.get(x, 0.0) + b * c
    return max(r.lat for r in routes) + max(v / cm.net.cap[x] for x, v in load.items())


def test_fastest_option_is_the_least_time_over_every_assignment():
    checked = 0
    for cm, plan in _instances(200):
        for (a, b, nb) in _boundaries(cm, plan):
            pairs = routing.flow_pairs(a[0], a[1], b[0], b[1], nb)
            if len(pairs) < 2:
                continue
            brute = min(_time(cm, pairs, rs) for rs in itertools.product(*(cm.net.routes[i][j] for i, j, _ in pairs)))
            occ, lat, _, _ = cm.transfer(a[0], a[1], b[0], b[1], nb)
            assert occ + lat <= brute * (1 + 1e-12)
            assert occ + lat >= brute * (1 - 1e-12)
            checked += 1
    assert checked >= CHECKED_MIN


def _latency(cm, combo):
    caps = cm.medium_bps
    media = [sum(o.media[mu] for o in combo) / caps[mu] for mu in range(len(caps))]
    return sum(o.x for o in combo) + 3 * max([1e-9, *(o.occ for o in combo), *media])


def test_plan_choice_is_the_least_latency_over_every_combination():
    """L = Σ x_k + (M - 1) max(U, max o_k, max_μ Σ ℓ_kμ / C_μ) over every combination of
    the boundaries' options (U: a period floor below the network's, so it binds nowhere)."""
    tried = 0
    for cm, plan in _instances(300):
        opts = [cm.transfer_options(a[0], a[1], b[0], b[1], nb) for a, b, nb in _boundaries(cm, plan)]
        if all(len(o) == 1 for o in opts):
            continue
        ones = [1.0] * len(opts)
        pick = routing.choose(opts, ones, ones, 1e-9, 3, cm.medium_bps)
        best = min(_latency(cm, c) for c in itertools.product(*opts))
        assert _latency(cm, [o[k] for o, k in zip(opts, pick)]) <= best * (1 + 1e-12)
        tried += 1
    assert tried >= TRIED_MIN
