"""Synthetic model profiles and whole scenarios, drawn from a numpy Generator.

Why: the learned planner trains across many topologies and models it will never see
again, and the exact planners are checked against each other on many small random
instances. Everything here is a pure function of the `rng` state, so a seed names an
instance.

`random_profile` draws a chain shaped like a CNN: activations shrink and parameters
grow with depth (so late cuts are cheap to ship and early blocks cheap to hold).
`random_scenario` adds a random cluster, a workload and QoE targets that are sometimes
tight and sometimes loose, and sometimes makes memory binding by scaling the model's
parameters up to the size of the devices' memory.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from dora_rl.cluster.generator import WIFI, random_cluster
from dora_rl.errors import ScenarioError
from dora_rl.profile.model_profile import Block, ModelProfile
from dora_rl.scenario import OPTIMIZER_STATE, QoE, Scenario, Workload

KB, MB_ = 1e3, 1e6
INPUT_BYTES = 150_528          # a 224 x 224 x 3 uint8 image


def _logu(rng: np.random.Generator, lo: float, hi: float) -> float:
    """Log-uniform draw in [lo, hi]."""
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _sig(x: float, digits: int = 4) -> float:
    """Round to `digits` significant figures (keeps YAML and dicts readable)."""
    return float(f"{x:.{digits}g}")


def random_profile(rng: np.random.Generator, n_blocks: int | None = None, min_blocks: int = 4,
                   max_blocks: int = 24) -> ModelProfile:
    """A synthetic chain of `n_blocks` (default: uniform in [min_blocks, max_blocks])
    blocks named b0, b1, ...: FLOPs per block lognormal (sd 0.5) around a model-wide
    median log-uniform in [1e8, 2e9]; parameters 0.1-20 MB per block, rising with depth;
    output activations 10 KB-2 MB per sample, falling with depth; input ~150 KB."""
    if n_blocks is None:
        if not (1 <= min_blocks <= max_blocks):
            raise ScenarioError(f"random_profile: need 1 <= min_blocks ({min_blocks}) <= max_blocks ({max_blocks})")
        n_blocks = int(rng.integers(min_blocks, max_blocks + 1))
    n = int(n_blocks)
    if n < 1:
        raise ScenarioError(f"random_profile: n_blocks must be >= 1, got {n_blocks}")
    med = _logu(rng, 1e8, 2e9)
    depth = np.linspace(0.0, 1.0, n)
    flops = med * rng.lognormal(0.0, 0.5, size=n)
    lo_p, hi_p = math.log(0.1 * MB_), math.log(20 * MB_)
    log_p = lo_p + (hi_p - lo_p) * np.clip(depth * 0.7 + rng.uniform(0, 0.3, size=n), 0, 1)
    lo_a, hi_a = math.log(10 * KB), math.log(2 * MB_)
    log_a = lo_a + (hi_a - lo_a) * np.clip((1 - depth) * 0.7 + rng.uniform(0, 0.3, size=n), 0, 1)
    params, acts = np.exp(log_p), np.exp(log_a)
    input_bytes = int(INPUT_BYTES * rng.lognormal(0.0, 0.3))
    blocks = [Block(f"b{i}", _sig(float(flops[i])), int(params[i]), int(acts[i])) for i in range(n)]
    return ModelProfile(f"synthetic_{n}", max(1, input_bytes), blocks, meta={"synthetic": True})


def _divisors(n: int, options=(1, 2, 4, 8)) -> list[int]:
    return [m for m in options if m <= n and n % m == 0]


def _single_device_estimate(profile: ModelProfile, cluster, source: str, batch: int, training: bool) -> float:
    """Seconds to run one request (or iteration) wholly on the best single device:
    compute (x3 in training) plus, off the source, shipping the input there and the
    output back (bottleneck bandwidth + route latency, no contention). Crude on
    purpose: it only anchors the QoE targets."""
    s = cluster.index[source]
    work = profile.total_flops * batch * (3.0 if training else 1.0)
    ship = (profile.input_bytes + profile.boundary_bytes(profile.n_blocks)) * batch
    best = math.inf
    for j in range(cluster.n):
        t = work / cluster.rate_l[j]
        if j != s:
            t += ship / cluster.bw_l[s][j] + 2 * cluster.lat_l[s][j]
        best = min(best, t)
    return best


def random_scenario(rng: np.random.Generator, max_devices: int = 6, min_devices: int = 2,
                    n_blocks: int | None = None, kind: str | None = None, objective: str | None = None,
                    shared_media: bool = True, qoe: str = "random", dynamics: bool = False) -> Scenario:
    """A random valid scenario: a `random_profile`, a `random_cluster` of
    [min_devices, max_devices] devices, a workload of `kind` ('inference', 'training',
    None = either) and QoE targets (qoe='random') or none (qoe='none').

    Targets are scaled by a crude single-device estimate t1: the best device's time for
    total FLOPs x batch (x3 for training: forward + 2x backward), plus shipping the
    input and output between it and the source:
    latency SLO = U_log(0.5, 5) x t1 (85% of the time), min throughput from the request
    rate (inference) or U(0.3, 2) x batch / t1 (training) half the time, min battery
    hours U(1, 12) 40% of the time when a device is on battery. In 30% of scenarios
    memory binds: the parameters are scaled so that the model's resident bytes are
    0.3-1.5x the median device memory (profile.meta['param_scale'] records it).
    With `dynamics=True` and a shared WiFi medium, a synthetic Markov bandwidth spec
    is attached."""
    if kind not in (None, "inference", "training"):
        raise ScenarioError(f"random_scenario: kind must be 'inference', 'training' or None, got {kind!r}")
    if objective not in (None, "latency", "energy"):
        raise ScenarioError(f"random_scenario: objective must be 'latency', 'energy' or None, got {objective!r}")
    if qoe not in ("random", "none"):
        raise ScenarioError(f"random_scenario: qoe must be 'random' or 'none', got {qoe!r}")
    profile = random_profile(rng, n_blocks)
    cluster = random_cluster(rng, min_devices=min_devices, max_devices=max_devices, shared_media=shared_media)
    kind = kind or ("inference" if rng.random() < 0.6 else "training")
    objective = objective or ("latency" if rng.random() < 0.5 else "energy")
    training = kind == "training"
    optimizer = str(rng.choice(list(OPTIMIZER_STATE))) if training else "adam"

    # --- memory: sometimes binding -------------------------------------------------
    copies = (2 + OPTIMIZER_STATE[optimizer]) if training else 1      # params (+ grads + state)
    if rng.random() < 0.3:
        target = float(rng.uniform(0.3, 1.5)) * float(np.median(cluster.mem))
        scale = target / (profile.total_params * copies)
        blocks = [replace(b, param_bytes=max(1, int(b.param_bytes * scale))) for b in profile.blocks]
        profile = ModelProfile(profile.name, profile.input_bytes, blocks, profile.dtype_bytes,
                               {**profile.meta, "param_scale": _sig(scale)})

    # --- workload -------------------------------------------------------------------
    names = cluster.names
    on_batt = [d.name for d in cluster.devices if d.on_battery]
    if not training and on_batt and rng.random() < 0.7:
        source = on_batt[int(rng.integers(len(on_batt)))]
    else:
        source = names[int(rng.integers(len(names)))]
    batch = int(rng.choice([1, 1, 1, 2, 4, 8])) if not training else int(rng.choice([8, 16, 32, 64]))
    divs = _divisors(batch)
    micro = int(divs[int(rng.integers(len(divs)))])
    t1 = _single_device_estimate(profile, cluster, source, batch, training)
    rate = None if training else _sig(float(rng.uniform(0.2, 2.0)) / t1)
    workload = Workload(kind, batch, micro, rate, source, optimizer)

    # --- QoE ------------------------------------------------------------------------
    if qoe == "none":
        q = QoE(objective=objective)
    else:
        slo = _sig(_logu(rng, 0.5, 5.0) * t1 * 1e3) if rng.random() < 0.85 else None
        thr = None
        if rng.random() < 0.5:
            thr = rate if not training else _sig(float(rng.uniform(0.3, 2.0)) * batch / t1)
        hours = _sig(float(rng.uniform(1.0, 12.0)), 3) if on_batt and rng.random() < 0.4 else None
        q = QoE(slo, thr, hours, objective)

    dyn = {}
    if dynamics and WIFI in cluster.media:
        dyn = {"bandwidth": {"medium": WIFI, "synthetic": "markov", "seed": int(rng.integers(2**31)),
                             "scale": "mean"}}
    name = f"synthetic_{kind}_{cluster.n}d_{profile.n_blocks}b"
    return Scenario(name, {"profile": "synthetic"}, profile, cluster, workload, q, dyn)


def sparse_scenario(rng: np.random.Generator, scenario: Scenario, extra_links: int = 1) -> Scenario:
    """`scenario` on a sparse topology: a random spanning tree of its links (each kept link
    unchanged) plus up to `extra_links` of the others, so devices that lost their direct
    link reach each other through relays (docs/cost-model.md: relays are participants).
    Used to check the planners where routes have intermediate devices."""
    cl = scenario.cluster
    links = list(cl.links)
    order = [int(i) for i in rng.permutation(len(links))]
    comp = {d.name: d.name for d in cl.devices}

    def root(x: str) -> str:
        while comp[x] != x:
            x = comp[x]
        return x

    tree, rest = [], []
    for i in order:
        ln = links[i]
        a, b = root(ln.a), root(ln.b)
        if a != b:
            comp[a] = b
            tree.append(ln)
        else:
            rest.append(ln)
    kept = tree + rest[:max(0, int(extra_links))]
    kept.sort(key=links.index)
    used = {ln.medium for ln in kept if ln.medium is not None}
    cluster = type(cl)(cl.devices, kept, {k: m for k, m in cl.media.items() if k in used})
    return scenario.replace(cluster=cluster, name=f"{scenario.name}_sparse")
