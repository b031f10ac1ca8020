"""The network scheduler (Dora's mechanism (ii)): for a plan, choose the number of
micro-batches, per-medium flow priorities, all-reduce buckets and start, and extra 1F1B
warm-up, judged on the simulator.

A small coordinate search (docs/simulator.md, "The scheduler"): starting from FIFO with
the plan's micro-batches, each dimension in turn tries its few candidates with the
others fixed and keeps the best; the micro-batch count is tried again at the end with
the chosen schedule. Every candidate is one or two simulator runs (a few ms). A
candidate is admissible only if it fits in memory and is not slower than FIFO on the
plan as given, so the scheduled plan is never slower than FIFO on the simulator; among
admissible ones the scenario's QoE decides (compliant first, then the objective)."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

from dora_rl.cost.qoe import required_rate
from dora_rl.plan import Plan
from dora_rl.schedule import FIFO, Schedule
from dora_rl.sim.program import build
from dora_rl.sim.simulate import SimResult, simulate

log = logging.getLogger(__name__)

BUCKETS = (1, 2, 4, 8)
WARMUP = (0, 1, 2, 4)
MAX_M = 6          # micro-batch counts tried (those nearest the plan's, by ratio)
TOL = 1e-9


@dataclass
class Scheduled:
    plan: Plan              # the plan with its chosen micro-batches and schedule
    result: SimResult       # the simulator on it
    fifo: SimResult         # the simulator on the plan as given, FIFO
    evaluated: int          # candidates simulated


def violations(cm, r: SimResult) -> int:
    """QoE targets the simulated plan misses: latency SLO, required rate, battery."""
    q, n = cm.qoe, 0
    if q.latency_slo_ms is not None and r.latency_ms > q.latency_slo_ms * (1 + TOL):
        n += 1
    need = required_rate(cm)
    if need and r.throughput < need * (1 - TOL):
        n += 1
    if q.min_battery_hours is not None:
        for name, e in r.energy_by_device.items():
            bj = cm.battery_j[cm.cluster.index[name]]
            if bj is not None and e > 0 and bj / (e / r.period_s) / 3600.0 < q.min_battery_hours * (1 - TOL):
                n += 1
                break
    return n


def objective(cm, r: SimResult) -> float:
    """The scenario's objective of a simulated plan: latency (ms) or energy (J)."""
    return r.latency_ms if cm.qoe.objective == "latency" else r.energy_j


def key(cm, r: SimResult) -> tuple:
    other = r.energy_j if cm.qoe.objective == "latency" else r.latency_ms
    return (violations(cm, r), objective(cm, r), other)


def fits(cm, plan: Plan, extra_warmup: int) -> bool:
    """Memory of `plan` (analytic model) plus the activations `extra_warmup` more
    in-flight micro-batches store: w m (a_l + Σ a_b) per extra micro-batch (training)."""
    m = cm.evaluate(plan, validate=False)
    if not m.feasible:
        return False
    if not extra_warmup or not cm.training:
        return True
    M = plan.microbatches
    mb = cm.workload.batch // M
    S = len(plan.stages)
    for s, (l, r, devs, sh) in enumerate(cm.stage_indices(plan)):
        more = min(M, S - s + extra_warmup) - min(M, S - s)
        act = cm.bnd[l] + cm.ap[r] - cm.ap[l]
        for d, w in zip(devs, cm.realized(mb, sh, devs)):
            if m.memory_bytes[d] + more * w * mb * act > cm.mem[d]:
                return False
    return True


def priority_orders(cm, plan: Plan) -> list[tuple]:
    """Candidate priorities: the same rule on every medium that carries two or more
    classes. Critical path first: downstream boundaries before upstream ones (gradients
    before activations in training), all-reduce last; and the reverse orders."""
    classes = build(cm, plan, 1).classes
    rules = [lambda c: (c[0] == "ar", c[0] == "act", -c[1]),    # grads, then acts, downstream first
             lambda c: (c[0] == "ar", c[0] == "grad", -c[1]),   # acts, then grads, downstream first
             lambda c: (c[0] == "ar", c[1])]                    # upstream first
    out = []
    for rule in rules:
        prios = []
        for mu, name in enumerate(cm.media_names):
            on = [c for c, media in classes.items() if mu in media]
            if len(on) < 2:
                continue
            parsed = sorted(((c.rstrip("0123456789"), int(c[len(c.rstrip("0123456789")):])) for c in on), key=rule)
            prios.append((name, tuple(f"{k}{i}" for k, i in parsed)))
        if prios and tuple(prios) not in out:
            out.append(tuple(prios))
    return out


def microbatch_counts(cm, M0: int) -> list[int]:
    b = cm.workload.batch
    divs = [d for d in range(1, b + 1) if b % d == 0]
    return sorted(divs, key=lambda d: (max(d / M0, M0 / d), d))[:MAX_M]


def schedule_plan(cm, plan: Plan, microbatches: bool = True) -> Scheduled:
    """The best schedule the search finds for `plan` (module docstring)."""
    cm.validate(plan)
    plan = dataclasses.replace(plan, schedule=None)
    fifo = simulate(cm, plan, FIFO, validate=False)
    limit = fifo.latency_ms * (1 + TOL)
    best = [plan, FIFO, fifo, key(cm, fifo)]
    count = [1]

    def trial(p: Plan, s: Schedule) -> None:
        if not fits(cm, p, s.extra_warmup):
            return
        r = simulate(cm, p, s, validate=False)
        count[0] += 1
        k = key(cm, r)
        if r.latency_ms <= limit and k < best[3]:
            best[:] = [p, s, r, k]

    def try_m():
        for M in microbatch_counts(cm, plan.microbatches):
            if M != best[0].microbatches:
                trial(dataclasses.replace(best[0], microbatches=M), best[1])

    if microbatches:
        try_m()
    for prios in priority_orders(cm, best[0]):
        trial(best[0], dataclasses.replace(best[1], priorities=prios))
    if cm.training:
        if any(len(s.devices) > 1 for s in plan.stages):
            base = best[1]
            for start in ("drain", "backward"):
                for b in BUCKETS:
                    trial(best[0], dataclasses.replace(base, buckets=b, allreduce_start=start))
        base = best[1]
        for w in WARMUP[1:]:
            trial(best[0], dataclasses.replace(base, extra_warmup=w))
    if microbatches:
        try_m()
    p, s, r, _ = best
    log.info("scheduled %d candidates: %.4g ms -> %.4g ms", count[0], fifo.latency_ms, r.latency_ms)
    return Scheduled(dataclasses.replace(p, schedule=s), r, fifo, count[0])
