"""Candidate plans for the adapters: the DP's Pareto sets per condition (cached), over bandwidth levels, and
the composition ingredients.

The adapters choose among plans the `dora` DP produced; running the DP is the
expensive part of a decision, so its results are cached per process on binned
conditions (bandwidth rounded down to a 1% log-bin, battery down to 1%), and the
candidate sets built before a run (`pareto`, `ppo`, `oracle`) are unions of Pareto sets
at fixed fractions of the dynamic medium's nominal rate."""

from __future__ import annotations

import dataclasses
import json
import math
import time

from dora_rl.adapter.compose import conditions
from dora_rl.errors import NoFeasiblePlan, PlannerError
from dora_rl.plan import Plan
from dora_rl.scenario import Scenario

_DP_CACHE: dict = {}
BW_BIN = 0.01          # binned DP runs at the bandwidth rounded down to a 1% log-bin (cache key)
SCORE_BIN = 0.02       # adapters score on the bandwidth rounded down to a 2% log-bin (cache key)

# fractions of the dynamic medium's nominal rate
PARETO_LEVELS = (2.0, 1.5, 1.25, 1.0, 0.85, 0.75, 0.5, 0.35, 0.25)   # `pareto`'s (and the oracle's) Pareto sets
INGREDIENT_LEVELS = (2.0, 1.0, 0.75, 0.5, 0.35, 0.25)                # the composition ingredients


def log_bin(v: float, width: float = BW_BIN) -> float:
    """`v` rounded DOWN to a log-bin of relative `width` (a conservative cache key)."""
    step = math.log1p(width)
    return math.exp(math.floor(math.log(max(v, 1e-6)) / step + 1e-9) * step)


def _scen_key(s: Scenario) -> str:
    return json.dumps({"w": s.workload.__dict__, "q": s.qoe.__dict__, "c": s.cluster.to_dict(),
                       "p": s.profile.name, "n": s.profile.n_blocks}, sort_keys=True, default=str)


def dp_pareto(scenario: Scenario, bandwidth: dict[str, float], battery: dict[str, float],
              exact: bool = False) -> tuple[list[Plan], float]:
    """Pareto set of the `dora` DP on a condition (bandwidth rounded down to a 1% bin
    unless `exact`, battery to 1%), cached per process. Returns (plans sorted by latency,
    seconds the DP took; 0 on a cache hit)."""
    from dora_rl.planners.dp import pareto

    bw = {m: (v if exact else log_bin(v)) for m, v in sorted(bandwidth.items())}
    bt = {d: math.floor(v * 100) / 100 for d, v in sorted(battery.items())}
    key = (_scen_key(scenario), tuple(bw.items()), tuple(bt.items()))
    if key in _DP_CACHE:
        return _DP_CACHE[key], 0.0
    t0 = time.perf_counter()
    try:
        plans = [p for p, _ in pareto(conditions(scenario, bw, bt))]
    except (NoFeasiblePlan, PlannerError):
        plans = []
    dt = time.perf_counter() - t0
    _DP_CACHE[key] = plans
    return plans, dt


def relaxed_for_composition(scenario: Scenario) -> Scenario:
    """The scenario with the QoE targets a time-share can meet on AVERAGE relaxed
    (min_throughput, request_rate, min_battery_hours); the latency SLO and memory stay
    (every plan in a time-share must meet them on its own)."""
    q = dataclasses.replace(scenario.qoe, min_throughput=None, min_battery_hours=None)
    wl = scenario.workload if scenario.workload.training else dataclasses.replace(scenario.workload, request_rate=None)
    return scenario.replace(qoe=q, workload=wl)


def ingredient_plans(scenario: Scenario, levels=INGREDIENT_LEVELS) -> list[Plan]:
    """Composition ingredients: the DP's Pareto sets of `relaxed_for_composition` at
    `levels` x the dynamic medium's nominal rate. Such a plan may miss the throughput or
    a battery budget on its own (a Jetson alone a little under the frame rate, the
    laptop alone over its battery budget) yet, time-shared by the LP, meet both on
    average, at lower power and at lower bandwidth than any single compliant plan."""
    if scenario.workload.training:
        return []
    return pareto_over_levels(relaxed_for_composition(scenario), levels)


SUBSET_LEVELS = (1.0, 0.5)      # the device-subset plans' bandwidth levels
MAX_SUBSET_DEVICES = 6          # subsets of at most this many devices besides the source (2^6 - 1 DP runs)


def subset_plans(scenario: Scenario, levels=SUBSET_LEVELS) -> list[Plan]:
    """The DP's Pareto sets (as is and `relaxed_for_composition`) of the scenario restricted to
    each subset of the devices besides the source, at `levels` x nominal. The full cluster's
    (latency, energy) front drops a plan that some other plan dominates at that condition, e.g.
    in traffic_analytics one Jetson alone: no faster, no cheaper when QoE holds, but the
    cheapest thing to run while nothing complies (a lost interval still pays its energy).
    Subsets that leave the cluster disconnected are skipped; none above MAX_SUBSET_DEVICES."""
    from itertools import combinations

    from dora_rl.errors import ClusterError

    others = [d.name for d in scenario.cluster.devices if d.name != scenario.workload.source]
    if len(others) > MAX_SUBSET_DEVICES or scenario.workload.training:
        return []
    out = []
    for r in range(1, len(others)):
        for keep in combinations(others, r):
            try:
                sub = scenario.without_devices([n for n in others if n not in keep])
            except ClusterError:
                continue
            out += pareto_over_levels(sub, levels) + pareto_over_levels(relaxed_for_composition(sub), levels)
    return out


def level_bandwidths(scenario: Scenario, levels) -> list[dict[str, float]]:
    """Per level, the bandwidth override that puts the dynamic medium at that fraction
    of its nominal rate ({} at 1.0: the scenario as it is)."""
    medium = scenario.dynamic_medium()
    return [{} if (f == 1.0 or medium is None) else {medium: scenario.cluster.media[medium].mbps * f}
            for f in levels]


def pareto_over_levels(scenario: Scenario, levels) -> list[Plan]:
    """The union, in order, of the DP's Pareto sets with the dynamic medium at `levels`
    x its nominal rate (duplicates are merged by the adapter's plan table)."""
    return [p for bw in level_bandwidths(scenario, levels) for p in dp_pareto(scenario, bw, {})[0]]
