"""The `pipeedge` baseline: PipeEdge's throughput-optimal pipeline, one device per stage.

An exact DP over (set of used devices, first device of the suffix, start block) on the
shared cost model, first for the bottleneck, then for the fill time among
bottleneck-optimal plans (Hu et al., DSD 2022; docs/baselines.md)."""

from __future__ import annotations

import math

import numpy as np

from dora_rl.cost import CostModel
from dora_rl.plan import Plan
from dora_rl.planners.base import Planner, no_fit
from dora_rl.planners.baselines.common import device_order, make_plan, setup
from dora_rl.scenario import Scenario

INF = math.inf


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
        cost, M, _ = setup(scenario, cost)
        cap = int(self.options.get("max_devices", 10))
        if cap < 1:
            raise ValueError("pipeedge: option max_devices must be >= 1")
        order = device_order(cost)
        cand = sorted(order[:cap])
        res = pipeedge_search(cost, cand, M)
        if res is None:
            raise no_fit(self.name, scenario, "no one-device-per-stage pipeline fits"
                         + ("" if cost.n <= cap else f" on the source and the {cap - 1} fastest devices"))
        return make_plan(cost, res[2], M)
