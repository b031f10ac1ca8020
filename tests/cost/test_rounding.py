"""Whole-sample rounding (docs/cost-model.md "Compute"): the counts are a function of the
group as a set of (device, share) pairs, so neither the cost model nor the runtime's
split depends on the order a plan lists a group's members in."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from dora_rl.cost import CostModel
from dora_rl.plan import sample_counts, sample_edges
from dora_rl.synthetic import random_scenario


def test_hand_computed_examples():
    # m = 4, shares 500/3100, 500/3100, 2100/3100 (targets 0.645, 0.645, 2.710): one each
    # (m >= 3 members), the fourth sample to the largest shortfall 2.710 - 1 = 1.710
    assert sample_counts(4, [5 / 31, 5 / 31, 21 / 31], ["jetson1", "jetson2", "roadside"]) == [1, 1, 2]
    # m = 10 on (1/4, 1/4, 1/2): targets 2.5, 2.5, 5 -> 2, 2, 5 (shortfalls >= 1 first);
    # the tenth breaks the 0.5 / 0.5 tie by name: "a" < "b" -> 3, 2, 5
    assert sample_counts(10, [0.25, 0.25, 0.5], ["a", "b", "c"]) == [3, 2, 5]
    assert sample_counts(10, [0.25, 0.25, 0.5], ["b", "a", "c"]) == [2, 3, 5]
    # a tiny share still gets its one sample: m = 3 on (0.1, 0.45, 0.45) -> 1, 1, 1
    # (cumulative rounding would have given 0, 2, 1)
    assert sample_counts(3, [0.1, 0.45, 0.45], ["x", "y", "z"]) == [1, 1, 1]
    # m < members: no floor; m = 1 on (2/3, 1/3): the sample to the larger target
    assert sample_counts(1, [2 / 3, 1 / 3]) == [1, 0]
    # m = 7 on (0.2, 0.5, 0.3): targets 1.4, 3.5, 2.1 -> 1, 3, 2 (sum 6); the seventh
    # to the largest shortfall 0.5 -> 1, 4, 2
    assert sample_counts(7, [0.2, 0.5, 0.3], ["p", "q", "r"]) == [1, 4, 2]
    assert sample_edges(7, [0.2, 0.5, 0.3], ["p", "q", "r"]) == [0, 1, 5, 7]


def test_counts_are_permutation_invariant_on_random_groups():
    rng = np.random.default_rng(14)
    for _ in range(400):
        g = int(rng.integers(1, 6))
        m = int(rng.integers(1, 17))
        w = rng.random(g) + 0.01
        w = (w / w.sum()).tolist()
        if rng.random() < 0.3:            # exact ties too
            w = [1.0 / g] * g
        names = [f"dev{int(x)}" for x in rng.permutation(50)[:g]]
        ref = dict(zip(names, sample_counts(m, w, names)))
        assert sum(ref.values()) == m
        if m >= g:
            assert min(ref.values()) >= 1
        for p in itertools.islice(itertools.permutations(range(g)), 24):
            got = sample_counts(m, [w[i] for i in p], [names[i] for i in p])
            assert {names[i]: c for i, c in zip(p, got)} == ref


@pytest.mark.parametrize("kind", ["inference", "training"])
def test_realized_is_permutation_invariant_in_the_cost_model(kind):
    """CostModel.realized() gives every device the same share in every member order, so an
    inference plan of one stage (the source sends each member its slice, whatever the
    layout) scores the same in every order. (Training's ring all-reduce runs in the
    listed order: docs/planners.md fixes it to ascending index.)"""
    rng = np.random.default_rng(15)
    for _ in range(30):
        sc = random_scenario(rng, min_devices=3, max_devices=5, n_blocks=4, kind=kind, qoe="none")
        cost = CostModel(sc)
        g = min(cost.n, 4)
        devs = rng.permutation(cost.n)[:g].tolist()
        w = rng.random(g) + 0.05
        w = (w / w.sum()).tolist()
        m = sc.workload.batch // sc.workload.microbatches
        ref = dict(zip(devs, cost.realized(m, w, devs)))
        figs = set()
        for p in itertools.permutations(range(g)):
            pd = [devs[i] for i in p]
            assert dict(zip(pd, cost.realized(m, [w[i] for i in p], pd))) == ref
            if kind == "training":
                continue
            met = cost.evaluate_stages([(0, cost.n_blocks, pd, [w[i] for i in p])], sc.workload.microbatches)
            figs.add((round(met.latency_ms, 9), round(met.energy_j, 9)))
        assert len(figs) <= 1
