"""The physics laws of the cost model as checks on fuzzed scenarios and plans.

Why: a planner exploits whatever the model rewards, so the model must never reward the
impossible (docs/cost-model.md "Laws"). Each law perturbs one figure of a random
scenario in the direction that can only help (a faster device or link, an extra link)
or only hurt (more bytes, more FLOPs) and checks that the same plan's predicted time
moves the right way: latency per request / iteration always, and throughput where it
is a function of it (training) or where the latency did not strictly improve (an
inference plan's one routing is chosen by latency, then period: its throughput may
drop only in exchange for a strictly lower latency). Figures that are by-products of
that one routing (inference throughput under a hurting change, energy) are counted as
`traded` when they move the wrong way, not as violations: no single routing can
guarantee two criteria (docs/cost-model.md "Laws").
`bench/bench_cost.py` runs 3000 cases per law; tests/cost runs a few hundred."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from dora_rl.cluster import Cluster
from dora_rl.cost.model import CostModel
from dora_rl.plan import Plan
from dora_rl.profile.model_profile import ModelProfile
from dora_rl.scenario import Scenario
from dora_rl.synthetic import random_scenario

REL = 1e-9
LAWS = ("faster_device", "faster_link", "faster_medium", "extra_link", "more_bytes", "more_flops")
HURT = ("more_bytes", "more_flops")


def random_plan(rng: np.random.Generator, sc: Scenario) -> Plan:
    """A random valid plan: 1-4 stages on disjoint random groups (1-3 devices, random
    shares), random cuts, the workload's micro-batch count."""
    names = list(sc.cluster.names)
    B = sc.profile.n_blocks
    S = int(rng.integers(1, min(4, B, len(names)) + 1))
    cuts = sorted(rng.choice(np.arange(1, B), S - 1, replace=False).tolist()) if S > 1 else []
    bounds = [0, *cuts, B]
    order = rng.permutation(len(names)).tolist()
    stages = []
    for s in range(S):
        left = len(order) - (S - s - 1)
        g = int(rng.integers(1, min(3, left) + 1))
        devs = [names[i] for i in order[:g]]
        order = order[g:]
        w = rng.random(g) + 0.05
        stages.append((bounds[s], bounds[s + 1], devs, (w / w.sum()).tolist()))
    return Plan.make(stages, sc.workload.microbatches)


def _cluster(sc: Scenario, edit) -> Scenario:
    d = sc.cluster.to_dict()
    edit(d)
    return sc.replace(cluster=Cluster.from_dict(d))


def perturb(rng: np.random.Generator, sc: Scenario, law: str) -> Scenario | None:
    """`sc` with one figure changed as `law` says (None if the law does not apply)."""
    k = float(rng.uniform(1.5, 20.0))
    if law == "faster_device":
        i = int(rng.integers(sc.cluster.n))
        return _cluster(sc, lambda d: d["devices"][i].update(gflops=d["devices"][i]["gflops"] * k))
    if law == "faster_link":
        if not sc.cluster.links:
            return None
        i = int(rng.integers(len(sc.cluster.links)))
        return _cluster(sc, lambda d: d["links"][i].update(mbps=d["links"][i]["mbps"] * k))
    if law == "faster_medium":
        if not sc.cluster.media:
            return None
        mu = str(rng.choice(list(sc.cluster.media)))
        return _cluster(sc, lambda d: d["media"][mu].update(mbps=d["media"][mu]["mbps"] * k))
    if law == "extra_link":
        have = {frozenset((ln.a, ln.b)) for ln in sc.cluster.links}
        names = sc.cluster.names
        free = [(a, b) for x, a in enumerate(names) for b in names[x + 1:] if frozenset((a, b)) not in have]
        if not free:
            return None
        a, b = free[int(rng.integers(len(free)))]
        row = {"a": a, "b": b, "mbps": float(rng.uniform(20, 2000)), "latency_ms": float(rng.uniform(0.1, 8))}
        if sc.cluster.media and rng.random() < 0.5:
            row["medium"] = str(rng.choice(list(sc.cluster.media)))
        return _cluster(sc, lambda d: d["links"].append(row))
    prof = sc.profile
    if law == "more_bytes":
        i = int(rng.integers(prof.n_blocks + 1))      # 0: the model input, i: block i-1's output
        if i == 0:
            p = ModelProfile(prof.name, int(prof.input_bytes * k) + 1, list(prof.blocks), prof.dtype_bytes, prof.meta)
        else:
            blocks = list(prof.blocks)
            blocks[i - 1] = replace(blocks[i - 1], out_bytes=int(blocks[i - 1].out_bytes * k) + 1)
            p = ModelProfile(prof.name, prof.input_bytes, blocks, prof.dtype_bytes, prof.meta)
        return sc.replace(profile=p)
    if law == "more_flops":
        blocks = list(prof.blocks)
        i = int(rng.integers(len(blocks)))
        blocks[i] = replace(blocks[i], flops=blocks[i].flops * k)
        return sc.replace(profile=ModelProfile(prof.name, prof.input_bytes, blocks, prof.dtype_bytes, prof.meta))
    raise ValueError(f"unknown law {law!r}; known: {', '.join(LAWS)}")


def violated(before, after, law: str) -> list[str]:
    """The laws broken from `before` to `after`: a helping change (faster, extra link)
    must not raise latency, nor lower throughput unless latency strictly fell (inference);
    a hurting one (more bytes or FLOPs) must not lower latency, nor raise a training
    plan's throughput (samples / iteration time)."""
    out = []
    if law in HURT:
        if after.latency_ms < before.latency_ms * (1 - REL):
            out.append("latency")
        if before.training and after.throughput > before.throughput * (1 + REL):
            out.append("throughput")
        return out
    if after.latency_ms > before.latency_ms * (1 + REL):
        out.append("latency")
    gained = after.latency_ms < before.latency_ms * (1 - REL)
    if after.throughput < before.throughput * (1 - REL) and (before.training or not gained):
        out.append("throughput")
    return out


def traded(before, after, law: str) -> list[str]:
    """By-products of the plan's one routing that moved the wrong way without breaking
    a law: an inference throughput that fell with a strictly lower latency (helping
    change) or rose (hurting change), and energy that fell under a hurting change."""
    out = []
    if law in HURT:
        if not before.training and after.throughput > before.throughput * (1 + REL):
            out.append("throughput")
        if after.energy_j < before.energy_j * (1 - REL):
            out.append("energy")
        return out
    if (not before.training and after.throughput < before.throughput * (1 - REL)
            and after.latency_ms < before.latency_ms * (1 - REL)):
        out.append("throughput")
    return out


def fuzz(law: str, cases: int, seed: int = 0, max_devices: int = 6, min_devices: int = 2) -> dict:
    """Check `law` on `cases` random (scenario, plan) pairs; returns the violations per
    figure, the by-products `traded` per figure, and up to five violating seeds (rerun
    with `case(law, seed, i)`)."""
    counts = {"cases": 0, "latency": 0, "throughput": 0, "energy": 0,
              "traded": {"throughput": 0, "energy": 0}, "examples": []}
    i = 0
    while counts["cases"] < cases:
        res = case(law, seed, i, max_devices, min_devices, with_trades=True)
        i += 1
        if res is None:
            continue
        counts["cases"] += 1
        bad, trades = res
        for v in bad:
            counts[v] += 1
        for v in trades:
            counts["traded"][v] += 1
        if bad and len(counts["examples"]) < 5:
            counts["examples"].append([seed, i - 1, bad])
    return counts


def case(law: str, seed: int, i: int, max_devices: int = 6, min_devices: int = 2, with_trades: bool = False):
    """One fuzzed case: the violated figures (and, with_trades, the traded ones), or
    None if the law does not apply."""
    rng = np.random.default_rng([seed, i, LAWS.index(law)])
    sc = random_scenario(rng, min_devices=min_devices, max_devices=max_devices, qoe="none")
    plan = random_plan(rng, sc)
    other = perturb(rng, sc, law)
    if other is None:
        return None
    a, b = CostModel(sc).evaluate(plan), CostModel(other).evaluate(plan)
    return (violated(a, b, law), traded(a, b, law)) if with_trades else violated(a, b, law)
