"""Fixed-rule split baselines: `even`, `proportional`, `data_parallel`, `random`.

Each applies one published or customary rule without searching: equal block counts,
blocks in proportion to speed, a replica per device with the batch split by speed,
or a random feasible plan (the sanity floor). docs/baselines.md has the details."""

from __future__ import annotations

import random as _random

from dora_rl.cost import CostModel
from dora_rl.plan import Plan
from dora_rl.planners.base import Planner, no_fit, proportional_shares
from dora_rl.planners.baselines.common import balanced_counts, clean, device_order, make_plan, memory_detail, setup
from dora_rl.scenario import Scenario

# --- even -----------------------------------------------------------------------

class Even(Planner):
    """`even`: equal block counts over all devices, one device per stage.

    The naive uniform layer partition: the project's baseline list (DESIGN.md §6), and
    the "even partitioning" PipeEdge's runtime uses when no schedule is given
    (usc-isi/PipeEdge README, e.g. ViT-Base's 48 layers as [1,24],[25,48]). Rule:
    S = min(#devices, B) stages; stage s gets
    floor(B / S) blocks, the first B mod S stages one more; devices in `device_order`
    (source first, then by decreasing compute rate; with more devices than blocks the
    slowest are left out). Ignores device speed, memory, links, QoE and energy; raises
    NoFeasiblePlan if its one plan does not fit."""

    name = "even"
    description = "equal block counts over all devices"

    def plan(self, scenario: Scenario, cost: CostModel | None = None) -> Plan:
        cost, M, _ = setup(scenario, cost)
        B = cost.n_blocks
        order = device_order(cost)[:B]
        stages, l = [], 0
        for d, c in zip(order, balanced_counts(B, len(order))):
            stages.append((l, l + c, [d], [1.0]))
            l += c
        m = cost.evaluate_stages(stages, M)
        if not m.feasible:
            raise no_fit(self.name, scenario, f"the even split overflows: {memory_detail(cost, m)}")
        return make_plan(cost, stages, M)


# --- proportional ---------------------------------------------------------------

def proportional_cuts(fp: list[float], weights: list[float]) -> list[int]:
    """Cut a cumulative-FLOPs curve `fp` (length B + 1) into len(weights) contiguous,
    non-empty ranges whose FLOPs are as close as possible to proportional to `weights`.
    Cut s is the block boundary nearest to the target F * sum(w[:s]) / sum(w) that still
    leaves one block per earlier and later stage. Returns the S + 1 boundaries."""
    B, S = len(fp) - 1, len(weights)
    W, F = sum(weights), fp[-1]
    cuts = [0]
    acc = 0.0
    for s in range(1, S):
        acc += weights[s - 1]
        target = F * acc / W
        lo, hi = cuts[-1] + 1, B - (S - s)
        k = min(range(lo, hi + 1), key=lambda j: (abs(fp[j] - target), j))
        cuts.append(k)
    cuts.append(B)
    return cuts


class Proportional(Planner):
    """`proportional`: blocks in proportion to device speed, one device per stage.

    The speed-weighted generalisation of `even` from the project's baseline list
    (DESIGN.md §6); no single paper defines it, it is the common "capacity-proportional"
    static split: each device receives a share of the model's FLOPs proportional to its
    compute rate, so stages take equal compute time when the network is free. Rule: devices in `device_order` (source
    first, then by decreasing rate; at most B of them), cut the cumulative FLOPs curve at
    the boundaries nearest F * (rate prefix) / (total rate) (`proportional_cuts`).
    Ignores links, memory, QoE and energy; raises NoFeasiblePlan if its plan overflows."""

    name = "proportional"
    description = "blocks (by FLOPs) in proportion to device speed"

    def plan(self, scenario: Scenario, cost: CostModel | None = None) -> Plan:
        cost, M, _ = setup(scenario, cost)
        order = device_order(cost)[:cost.n_blocks]
        cuts = proportional_cuts(cost.fp, [cost.rate[d] for d in order])
        stages = [(cuts[s], cuts[s + 1], [d], [1.0]) for s, d in enumerate(order)]
        m = cost.evaluate_stages(stages, M)
        if not m.feasible:
            raise no_fit(self.name, scenario, f"the proportional split overflows: {memory_detail(cost, m)}")
        return make_plan(cost, stages, M)


# --- data_parallel --------------------------------------------------------------

class DataParallel(Planner):
    """`data_parallel`: the whole model replicated, each micro-batch split by speed.

    Heterogeneity-aware data parallelism (DESIGN.md §6): every device that can hold a
    full replica computes a slice of each micro-batch in proportion to its compute rate
    - the capability-weighted work split of MoDNN (Mao et al., "MoDNN: Local distributed
    mobile computing system for deep neural network", DATE 2017), applied here at sample
    granularity rather than MoDNN's intra-layer partitions. Rule: one stage [0, B) on the devices whose memory holds the
    replica's parameters (training: + gradients and optimizer state), source first then
    by decreasing rate, at most as many replicas as whole samples allow (the slowest are
    dropped until every replica gets a sample); shares from `proportional_shares`
    (speed-proportional, capped by each device's activation memory). Ignores links (the scatter/gather and the
    gradient all-reduce are costed, not avoided), QoE and energy."""

    name = "data_parallel"
    description = "whole model replicated, batch split by speed"

    def plan(self, scenario: Scenario, cost: CostModel | None = None) -> Plan:
        cost, M, m = setup(scenario, cost)
        B = cost.n_blocks
        base = (cost.pp[B] - cost.pp[0]) * (cost.param_copies if cost.training else 1)
        devs = [d for d in device_order(cost) if cost.mem[d] > base]
        if not devs:
            raise no_fit(self.name, scenario, "no device holds a whole replica")
        shares = proportional_shares(cost, devs, 0, B, m, inflight=1)
        while shares is None and len(devs) > 1:  # fewer samples than replicas: drop the slowest
            devs = devs[:-1]
            shares = proportional_shares(cost, devs, 0, B, m, inflight=1)
        if shares is None:
            raise no_fit(self.name, scenario,
                         f"the replicas' activation memory cannot absorb a micro-batch of {m:g} samples")
        devs, shares = clean(devs, shares)
        stages = [(0, B, devs, shares)]
        met = cost.evaluate_stages(stages, M)
        if not met.feasible:
            raise no_fit(self.name, scenario, memory_detail(cost, met))
        return make_plan(cost, stages, M)


# --- random ---------------------------------------------------------------------

class RandomPlanner(Planner):
    """`random`: a random feasible hybrid plan (the sanity floor of every comparison).

    Options: `seed` (default 0; the same seed gives the same plan), `tries` (default
    200). Each try draws: the stage count S uniform in 1..min(#devices, B); S - 1
    distinct cuts uniform in 1..B-1; the number of used devices U uniform in S..#devices;
    a uniform random choice and order of U devices, the first S one per stage, the rest
    each to a uniformly random stage; shares by `proportional_shares`. The first draw
    that fits in memory is returned; raises NoFeasiblePlan after `tries` misses.
    Ignores everything but memory."""

    name = "random"
    description = "a random feasible plan (option seed)"

    def plan(self, scenario: Scenario, cost: CostModel | None = None) -> Plan:
        cost, M, m = setup(scenario, cost)
        rng = _random.Random(int(self.options.get("seed", 0)))
        tries = int(self.options.get("tries", 200))
        n, B = cost.n, cost.n_blocks
        for _ in range(tries):
            S = rng.randint(1, min(n, B))
            cuts = [0] + sorted(rng.sample(range(1, B), S - 1)) + [B]
            U = rng.randint(S, n)
            devs = rng.sample(range(n), U)
            groups = [[d] for d in devs[:S]]
            for d in devs[S:]:
                groups[rng.randrange(S)].append(d)
            stages = []
            for s in range(S):
                l, r = cuts[s], cuts[s + 1]
                sh = proportional_shares(cost, groups[s], l, r, m, inflight=min(M, S - s))
                if sh is None:
                    break
                g, sh = clean(groups[s], sh)
                stages.append((l, r, g, sh))
            else:
                if cost.evaluate_stages(stages, M).feasible:
                    return make_plan(cost, stages, M)
        raise no_fit(self.name, scenario, f"{tries} random plans all overflow a device")
