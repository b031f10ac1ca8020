"""Heuristic baselines from the literature, each a registered `Planner`.

Every baseline here is the published *rule*, re-expressed on this project's cost model
(docs/cost-model.md) so that the comparison with `dora`, `oracle` and `ppo` is fair:
the same stage times, transfer times, memory model and metrics for everyone. What each
rule ignores (QoE targets, energy, contention, data parallelism) it keeps ignoring: a
baseline returns its plan even when that plan violates QoE, and raises `NoFeasiblePlan`
(via `no_fit`) only when nothing it can express fits in memory. docs/baselines.md has
one section per baseline (rule, source, what it ignores).

Registered names: `local`, `offload`, `neurosurgeon`, `even`, `proportional`,
`pipeedge`, `data_parallel`, `random`.

Conventions shared by all of them:
- micro-batches: `Plan.microbatches = scenario.workload.microbatches` (m = batch / M
  samples per micro-batch);
- device order for the fixed-order splitters (`even`, `proportional`): the source
  device first (its stage needs no input transfer), then the others by decreasing
  compute rate, ties by their order in the scenario (`device_order`).
"""

from __future__ import annotations

import math
import random as _random

import numpy as np

from dora_rl.cost import CostModel, Metrics
from dora_rl.planners.base import Planner, no_fit, proportional_shares, register
from dora_rl.plan import Plan
from dora_rl.scenario import Scenario

INF = math.inf

__all__ = ["Local", "Offload", "Neurosurgeon", "Even", "Proportional", "PipeEdge", "DataParallel",
           "RandomPlanner", "device_order", "pipeedge_search"]


# --- shared helpers ---------------------------------------------------------------

def _setup(scenario: Scenario, cost: CostModel | None) -> tuple[CostModel, int, float]:
    cost = cost or CostModel(scenario)
    M = scenario.workload.microbatches
    return cost, M, scenario.workload.batch / M


def device_order(cost: CostModel) -> list[int]:
    """Source first, then the other devices by decreasing compute rate (ties: scenario order)."""
    others = sorted((d for d in range(cost.n) if d != cost.src), key=lambda d: (-cost.rate[d], d))
    return [cost.src] + others


def _plan(cost: CostModel, stages, M: int) -> Plan:
    """Index stages [(l, r, [dev idx], shares)] -> Plan with device names."""
    names = cost.names
    return Plan.make([(l, r, [names[d] for d in devs], sh) for (l, r, devs, sh) in stages], M)


def _mem_detail(cost: CostModel, m: Metrics) -> str:
    return "; ".join(v for v in m.violations if v.startswith("memory")) or "a device overflows"


def _single(cost: CostModel, d: int) -> list:
    return [(0, cost.n_blocks, [d], [1.0])]


def _clean(devs: list[int], shares: list[float]) -> tuple[list[int], list[float]]:
    """Drop zero shares (a member whose memory cap is 0) and renormalise to sum 1."""
    keep = [(d, s) for d, s in zip(devs, shares) if s > 1e-12]
    tot = sum(s for _, s in keep)
    return [d for d, _ in keep], [s / tot for _, s in keep]


def _balanced_counts(B: int, S: int) -> list[int]:
    """B blocks over S stages as evenly as possible; the first B % S stages get one more."""
    q, r = divmod(B, S)
    return [q + (1 if s < r else 0) for s in range(S)]


# --- local ----------------------------------------------------------------------

@register
class Local(Planner):
    """`local`: the whole model on the source device, one stage (no network at all).

    The on-device baseline of every offloading paper (e.g. Kang et al., ASPLOS 2017,
    "Neurosurgeon", the "mobile-only" status quo). Ignores every other device, QoE and
    energy; raises NoFeasiblePlan if the model does not fit on the source."""

    name = "local"
    description = "everything on the source device"

    def plan(self, scenario: Scenario, cost: CostModel | None = None) -> Plan:
        cost, M, _ = _setup(scenario, cost)
        stages = _single(cost, cost.src)
        m = cost.evaluate_stages(stages, M)
        if not m.feasible:
            raise no_fit(self.name, scenario, f"the model does not fit on source {scenario.source!r}: {_mem_detail(cost, m)}")
        return _plan(cost, stages, M)


# --- offload --------------------------------------------------------------------

@register
class Offload(Planner):
    """`offload`: the best single device (full offloading, the "cloud-only" / "server-only"
    status quo of Kang et al., ASPLOS 2017, generalised to any device of the cluster).

    Rule: for every device d (the source included, so offloading never loses to
    `local`), the one-stage plan [0, B) on d, scored by the cost model *including* the
    input transfer from the source and the answer back to it; pick the lowest objective
    (`qoe.objective`: latency_ms or energy_j) among those that fit in memory; ties to the
    lower device index. Ignores QoE targets (latency SLO, throughput, battery)."""

    name = "offload"
    description = "best single device"

    def plan(self, scenario: Scenario, cost: CostModel | None = None) -> Plan:
        cost, M, _ = _setup(scenario, cost)
        obj = cost.qoe.objective
        best = None
        for d in range(cost.n):
            stages = _single(cost, d)
            m = cost.evaluate_stages(stages, M)
            if not m.feasible:
                continue
            key = (m.objective(obj), m.latency_ms, d)
            if best is None or key < best[0]:
                best = (key, stages)
        if best is None:
            raise no_fit(self.name, scenario, "the whole model fits on no single device")
        return _plan(cost, best[1], M)


# --- neurosurgeon ---------------------------------------------------------------

@register
class Neurosurgeon(Planner):
    """`neurosurgeon`: the best single cut between the source and one other device.

    Source: Y. Kang, J. Hauswald, C. Gao, A. Rovinski, T. Mudge, J. Mars, L. Tang,
    "Neurosurgeon: Collaborative Intelligence Between the Cloud and Mobile Edge",
    ASPLOS 2017. Neurosurgeon predicts per-layer latency and energy on the mobile and
    the server, then evaluates every partition point k (mobile runs layers [0, k), the
    server [k, B); k = 0 is full offload, k = B is mobile-only) and picks the one that
    minimises end-to-end latency, or the *mobile device's* energy.

    Here: the mobile is the source device and "the server" is every other device in
    turn; all (device, k) pairs are scored by the cost model (input upload, the cut's
    activation transfer and the answer's return included). Objective `latency` ->
    min latency_ms; objective `energy` -> min energy of the source device only (the
    paper's mobile-energy mode), tie-broken by latency. Plans that do not fit in memory
    are skipped. Ignores QoE targets, the energy of the other devices, and every device
    but one. Training workloads are handled by the same rule on the cost model's
    training figures (an extension; the paper is inference only)."""

    name = "neurosurgeon"
    description = "best single cut between the source and one other device"

    def plan(self, scenario: Scenario, cost: CostModel | None = None) -> Plan:
        cost, M, _ = _setup(scenario, cost)
        src, B = cost.src, cost.n_blocks
        energy = cost.qoe.objective == "energy"
        best = None

        def consider(stages):
            nonlocal best
            m = cost.evaluate_stages(stages, M)
            if not m.feasible:
                return
            key = ((m.energy_by_device[src] if energy else m.latency_ms), m.latency_ms)
            if best is None or key < best[0]:
                best = (key, stages)

        consider(_single(cost, src))                       # k = B: mobile only
        for d in range(cost.n):
            if d == src:
                continue
            consider(_single(cost, d))                     # k = 0: full offload to d
            for k in range(1, B):
                consider([(0, k, [src], [1.0]), (k, B, [d], [1.0])])
        if best is None:
            raise no_fit(self.name, scenario, "no cut between the source and another device fits")
        return _plan(cost, best[1], M)


# --- even -----------------------------------------------------------------------

@register
class Even(Planner):
    """`even`: equal block counts over all devices, one device per stage.

    The naive uniform layer partition: the project's baseline list (DESIGN.md §6), and
    the "even partitioning" PipeEdge's runtime uses when no schedule is given
    (usc-isi/PipeEdge README, e.g. ViT-Base's 48 layers as [1,24],[25,48]). Rule: S = min(#devices, B) stages; stage s gets
    floor(B / S) blocks, the first B mod S stages one more; devices in `device_order`
    (source first, then by decreasing compute rate; with more devices than blocks the
    slowest are left out). Ignores device speed, memory, links, QoE and energy; raises
    NoFeasiblePlan if its one plan does not fit."""

    name = "even"
    description = "equal block counts over all devices"

    def plan(self, scenario: Scenario, cost: CostModel | None = None) -> Plan:
        cost, M, _ = _setup(scenario, cost)
        B = cost.n_blocks
        order = device_order(cost)[:B]
        stages, l = [], 0
        for d, c in zip(order, _balanced_counts(B, len(order))):
            stages.append((l, l + c, [d], [1.0]))
            l += c
        m = cost.evaluate_stages(stages, M)
        if not m.feasible:
            raise no_fit(self.name, scenario, f"the even split overflows: {_mem_detail(cost, m)}")
        return _plan(cost, stages, M)


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


@register
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
        cost, M, _ = _setup(scenario, cost)
        order = device_order(cost)[:cost.n_blocks]
        cuts = proportional_cuts(cost.fp, [cost.rate[d] for d in order])
        stages = [(cuts[s], cuts[s + 1], [d], [1.0]) for s, d in enumerate(order)]
        m = cost.evaluate_stages(stages, M)
        if not m.feasible:
            raise no_fit(self.name, scenario, f"the proportional split overflows: {_mem_detail(cost, m)}")
        return _plan(cost, stages, M)


# --- pipeedge -------------------------------------------------------------------

def _pipeedge_tables(cost: CostModel, cand: list[int], M: int, m: float):
    """Per-candidate stage-time matrices and per-pair transfer vectors on the cost model.

    Returns (C, occ, lat) where C[k-1][v][h, i] is the stage time
    (forward x 3 in training) of blocks [h, i) on candidate v when the stage keeps k
    micro-batches in flight (training 1F1B; inference has one k), +inf when h >= i or it
    does not fit in v's memory; occ/lat[a][b][i] the occupancy / latency of moving one
    micro-batch's activation at boundary i from candidate a to b (index len(cand): the
    source)."""
    B = cost.n_blocks
    fp, pp, ap = np.array(cost.fp), np.array(cost.pp), np.array(cost.ap)
    bnd = np.array(cost.bnd)
    back = 3.0 if cost.training else 1.0
    work = m * (fp[None, :] - fp[:, None])                  # [h, i]
    params = pp[None, :] - pp[:, None]
    valid = np.triu(np.ones((B + 1, B + 1), dtype=bool), 1)
    if cost.training:
        act = bnd[:, None] + ap[None, :] - ap[:, None]
        ks = range(1, min(M, len(cand)) + 1)
        need = [params * cost.param_copies + m * act * k for k in ks]
    else:
        need = [params + m * np.array(cost.peak)]
    C = []
    for nd in need:
        C.append(np.stack([np.where(valid & (nd <= cost.mem[d]), back * work / cost.rate[d], INF)
                           for d in cand]))
    nc = len(cand)
    ends = cand + [cost.src]                                # index nc = the source
    occ = np.zeros((nc + 1, nc + 1, B + 1))
    lat = np.zeros((nc + 1, nc + 1, B + 1))
    for a in range(nc + 1):
        for b in range(nc + 1):
            if ends[a] == ends[b]:
                continue
            for i in range(B + 1):
                o, lt, _, _ = cost.transfer([ends[a]], [1.0], [ends[b]], [1.0], m * bnd[i])
                occ[a, b, i], lat[a, b, i] = o, lt
    return C, occ, lat


def _pipeedge_dp(C, mid, out, inn, op):
    """Backward DP over (set of used candidates S, first device f of the suffix, start
    block h): G[S, f, h] = best value of a pipeline running blocks [h, B) on exactly the
    devices S (one stage each, in some order), whose first stage is on f. `op` combines
    costs (np.maximum: bottleneck; np.add: latency). mid[v, f, i] is the cost of the
    boundary v -> f at block i, out[f] the last stage's return to the source, inn[f]
    the source's input to the first stage, C[k-1][v][h, i] the stage cost with k
    micro-batches in flight (k = stages from this one to the end). Returns
    (value, S, f, parents)."""
    K = len(C)
    nc, Bp1 = C[0].shape[0], C[0].shape[1]
    B = Bp1 - 1
    full = 1 << nc
    G = np.full((full, nc, Bp1), INF)
    PI = np.full((full, nc, Bp1), -1, dtype=np.int32)      # end block of the stage on f
    PF = np.full((full, nc, Bp1), -1, dtype=np.int32)      # device of the next stage (-1: last)
    rows = np.arange(Bp1)
    for v in range(nc):
        G[1 << v, v] = op(C[0][v][:, B], out[v])
        PI[1 << v, v] = B
    bits = [[b for b in range(nc) if S >> b & 1] for S in range(full)]
    for S in range(1, full):
        firsts = bits[S]
        sub = G[S, firsts]
        if not np.isfinite(sub).any():
            continue
        Ck = C[min(len(firsts) + 1, K) - 1]
        for v in range(nc):
            if S >> v & 1:
                continue
            A = op(sub, mid[v, firsts])                    # (|S|, B+1): continue at block i via f
            arg = A.argmin(axis=0)
            a = A[arg, rows]
            T = op(a[None, :], Ck[v])                     # (h, i): stage [h, i) on v, then the suffix
            bi = T.argmin(axis=1)
            S2 = S | (1 << v)
            G[S2, v] = T[rows, bi]
            PI[S2, v] = bi
            PF[S2, v] = np.asarray(firsts, dtype=np.int32)[arg[bi]]
    best, bS, bf = INF, -1, -1
    for S in range(1, full):
        for f in bits[S]:
            val = float(op(G[S, f, 0], inn[f]))
            if val < best:
                best, bS, bf = val, S, f
    return best, bS, bf, (PI, PF)


def _pipeedge_unwind(S: int, f: int, parents) -> list[tuple[int, int, int]]:
    PI, PF = parents
    out, h = [], 0
    while True:
        i, nxt = int(PI[S, f, h]), int(PF[S, f, h])
        out.append((h, i, f))
        if nxt < 0:
            return out
        S &= ~(1 << f)
        f, h = nxt, i


def pipeedge_search(cost: CostModel, cand: list[int], M: int):
    """PipeEdge's exact DP over `cand` (device indices). Returns (bottleneck, fill, stages)
    with stages [(l, r, [dev], [1.0])], or None if nothing fits in memory.

    Pass 1 minimises the bottleneck max(stage time, boundary occupancy) over every
    ordered subset of `cand` and every cut; pass 2 minimises the fill time (the sum of
    stage times and boundary occupancy + latency, i.e. the cost model's latency for a
    fixed bottleneck) among the plans whose every stage and boundary stays within the
    optimal bottleneck: an exact latency tie-break."""
    B = cost.n_blocks
    m = cost.workload.batch / M
    C, occ, lat = _pipeedge_tables(cost, cand, M, m)
    nc = len(cand)
    dmid = 2.0 if cost.training else 1.0                   # training: activations forward, gradients back
    mid_occ = dmid * occ[:nc, :nc]
    out_occ = np.zeros(nc) if cost.training else occ[:nc, nc, B]
    in_occ = occ[nc, :nc, 0]
    best, S, f, par = _pipeedge_dp(C, mid_occ, out_occ, in_occ, np.maximum)
    if not math.isfinite(best):
        return None
    thr = best * (1 + 1e-9) + 1e-15
    Cs = [np.where(c <= thr, c, INF) for c in C]
    mid_sum = np.where(mid_occ <= thr, dmid * (occ[:nc, :nc] + lat[:nc, :nc]), INF)
    out_sum = (np.zeros(nc) if cost.training
               else np.where(out_occ <= thr, occ[:nc, nc, B] + lat[:nc, nc, B], INF))
    in_sum = np.where(in_occ <= thr, occ[nc, :nc, 0] + lat[nc, :nc, 0], INF)
    fill, S2, f2, par2 = _pipeedge_dp(Cs, mid_sum, out_sum, in_sum, np.add)
    if math.isfinite(fill):
        S, f, par = S2, f2, par2
    stages = [(l, r, [cand[v]], [1.0]) for (l, r, v) in _pipeedge_unwind(S, f, par)]
    return best, fill, stages


@register
class PipeEdge(Planner):
    """`pipeedge`: the throughput-optimal pipeline, one device per stage, exact DP.

    Source: Y. Hu, C. Imes, X. Zhao, S. Kundu, P. A. Beerel, S. P. Crago, J. P. Walters,
    "PipeEdge: Pipeline Parallelism for Large-Scale Model Inference on Heterogeneous Edge
    Devices", DSD 2022 (github.com/usc-isi/PipeEdge, partition/sched-pipeline.cpp).
    PipeEdge's scheduler is a DP over (layer prefix, multiset of used devices, next
    device) that minimises the pipeline's bottleneck: the max over stages of the stage's
    compute time and the time to send its output to the next stage, skipping
    assignments that do not fit in a device's memory.

    Here: the same DP per device (not per device type), run backwards over suffixes so
    the training 1F1B in-flight memory (which depends on the number of later stages) is
    exact; state (set of used devices, first device of the suffix, start block). Stage
    time and transfer occupancy come from the cost model (m = batch / M samples per
    micro-batch; training: forward + backward and the gradient back, i.e. 2x on inner
    boundaries). Unlike the original, which assumes the input is already on the first
    device, the source's input upload and (inference) the answer's return are
    boundaries too, as in the cost model. Among bottleneck-optimal plans a second exact
    DP picks the lowest latency (fill time). Ignores: data parallelism, QoE targets,
    energy, and contention *between* transfers on one shared medium (each transfer
    alone is costed with its medium's capacity; the cost model's aggregate medium load
    may still make the evaluated bottleneck higher).

    Exact for up to `max_devices` devices (option, default 10; time and memory grow as
    2^n). Beyond that it runs the same exact DP on a candidate subset: the source plus
    the `max_devices - 1` fastest other devices (ties: scenario order) - documented
    fallback, never a hang."""

    name = "pipeedge"
    description = "throughput-optimal pipeline, one device per stage (exact DP)"

    def plan(self, scenario: Scenario, cost: CostModel | None = None) -> Plan:
        cost, M, _ = _setup(scenario, cost)
        cap = int(self.options.get("max_devices", 10))
        if cap < 1:
            raise ValueError("pipeedge: option max_devices must be >= 1")
        order = device_order(cost)
        cand = sorted(order[:cap])
        res = pipeedge_search(cost, cand, M)
        if res is None:
            raise no_fit(self.name, scenario, "no one-device-per-stage pipeline fits"
                         + ("" if cost.n <= cap else f" on the source and the {cap - 1} fastest devices"))
        return _plan(cost, res[2], M)


# --- data_parallel --------------------------------------------------------------

@register
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
        cost, M, m = _setup(scenario, cost)
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
        devs, shares = _clean(devs, shares)
        stages = [(0, B, devs, shares)]
        met = cost.evaluate_stages(stages, M)
        if not met.feasible:
            raise no_fit(self.name, scenario, _mem_detail(cost, met))
        return _plan(cost, stages, M)


# --- random ---------------------------------------------------------------------

@register
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
        cost, M, m = _setup(scenario, cost)
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
                g, sh = _clean(groups[s], sh)
                stages.append((l, r, g, sh))
            else:
                if cost.evaluate_stages(stages, M).feasible:
                    return _plan(cost, stages, M)
        raise no_fit(self.name, scenario, f"{tries} random plans all overflow a device")
