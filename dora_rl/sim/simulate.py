"""`simulate(cost_model, plan, schedule)`: latency, throughput, energy and a timeline of
one plan under one schedule, from the discrete-event engine (docs/simulator.md).

Inference latency is one request (the plan's micro-batches, offered at time 0) through
an idle pipeline, the quantity the analytic model predicts; throughput is measured on a
second run of `STREAM` back-to-back requests (the interval between completions), but
never above what the busiest device or medium can serve per request (a short stream
does not reach the steady state).
Training runs one iteration (1F1B, then or during backward the all-reduce). Energy uses
the analytic model's formula with the simulated busy time, radio bytes and window."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from dora_rl.plan import Plan
from dora_rl.schedule import FIFO, Schedule
from dora_rl.sim.engine import simulate_program
from dora_rl.sim.program import build, capacities, flow_levels

STREAM = 3   # requests in the throughput run (inference)


@dataclass
class SimResult:
    latency_ms: float          # per request (inference) / per iteration (training)
    throughput: float          # requests/s (inference) / samples/s (training)
    energy_j: float            # per request / per iteration
    period_s: float            # the energy window (as in the analytic model)
    schedule: Schedule
    microbatches: int
    training: bool
    energy_by_device: dict = field(default_factory=dict)
    timeline: list = field(default_factory=list)   # (resource, start_s, end_s, label)

    def to_dict(self) -> dict:
        return {"latency_ms": self.latency_ms, "throughput": self.throughput,
                "throughput_unit": "samples/s" if self.training else "req/s",
                "energy_j": self.energy_j, "period_s": self.period_s, "microbatches": self.microbatches,
                "schedule": self.schedule.to_dict(), "energy_by_device_j": self.energy_by_device}


def simulate(cm, plan: Plan, schedule: Schedule | None = None, timeline: bool = False,
             validate: bool = True) -> SimResult:
    """Simulate `plan` on the cost model's scenario under `schedule` (default: the plan's
    own, else FIFO). A schedule naming an unknown medium or flow class is a ScheduleError."""
    if validate:
        cm.validate(plan)
    sched = schedule or plan.schedule or FIFO
    prog = build(cm, plan, 1, sched.extra_warmup)
    levels = flow_levels(cm, prog, sched)
    run = simulate_program(cm, prog, levels, sched.buckets, sched.allreduce_start, timeline)
    total = run.end
    wl = cm.workload
    if cm.training:
        throughput = wl.batch / total if total > 0 else math.inf
        period = total
    else:
        stream = simulate_program(cm, build(cm, plan, STREAM), levels, sched.buckets, sched.allreduce_start)
        M = plan.microbatches
        done = [max(stream.mb_done[r * M:(r + 1) * M]) for r in range(STREAM)]
        caps = capacities(cm)
        per_req = max([(done[-1] - done[0]) / (STREAM - 1), max(run.busy)]
                      + [b / caps[r] for r, b in run.carried.items()])
        throughput = 1.0 / per_req if per_req > 0 else math.inf
        period = 1.0 / throughput if throughput > 0 else total
        if wl.request_rate:
            period = max(1.0 / wl.request_rate, period)
    if period <= 0:
        period = 1e-12
    energy = {}
    for d in sorted(prog.participants):
        energy[cm.names[d]] = (cm.active_w[d] * run.busy[d] + cm.idle_w[d] * (period - run.busy[d])
                               + cm.radio[d] * run.radio[d])
    return SimResult(total * 1e3, throughput, sum(energy.values()), period, sched, plan.microbatches,
                     cm.training, energy, run.timeline)


def stream_latency(cm, plan: Plan, spacing: float, n: int = 8) -> float:
    """Inference: the latency (s) of a request in a stream of `n` requests offered
    `spacing` seconds apart (the plan's schedule, else FIFO): the mean over the middle
    ones (requests 2 .. n-3, with neighbours on both sides). In a loaded pipeline a
    request's transfers share the media with its neighbours' (its input with the
    boundary transfer of the one before, on one WiFi), which the one-request latency -
    the analytic model's - does not have: smart_home's `dora` plan takes 116.1 ms alone
    and 125.9 ms in a stream at 80 % of its capacity."""
    done = [ta - r * spacing for r, ta in enumerate(replay(cm, plan, [r * spacing for r in range(n)]))]
    mid = done[2:n - 2] or done
    return sum(mid) / len(mid)


def replay(cm, plan: Plan, releases: list[float], caps_at=()) -> list[float]:
    """Inference: the answer instant (s) of each request offered at `releases` (s from 0,
    ascending) to `plan` (its schedule, else FIFO) while the network's capacities change
    as `caps_at` says ([(t, capacities)], e.g. a bandwidth trace's intervals, each
    `capacities(CostModel(conditions at that bandwidth))`). The requests share the
    devices (each runs its calls one at a time, in request order: a request offered while
    the bottleneck holds an earlier one waits) and the media (fair shares), and each
    transfer runs at the capacities of the moments it runs in."""
    M = plan.microbatches
    run = replay_run(cm, plan, releases, caps_at)
    return [max(run.mb_done[r * M:(r + 1) * M]) for r in range(len(releases))] if run else []


def replay_run(cm, plan: Plan, releases: list[float], caps_at=()):
    """`replay`'s whole run (the engine's `Run`: its `transfers` are what a monitor of the
    network would measure); None for no requests."""
    sched = plan.schedule or FIFO
    M, n = plan.microbatches, len(releases)
    if not n:
        return None
    prog = build(cm, plan, n, sched.extra_warmup)
    levels = flow_levels(cm, prog, sched)
    return simulate_program(cm, prog, levels, sched.buckets, sched.allreduce_start,
                            release=[releases[q // M] for q in range(n * M)], caps_at=caps_at)
