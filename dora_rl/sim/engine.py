"""The discrete-event loop: compute calls on devices, fluid flows on the network, ring
all-reduce in buckets; one run of a `Program` under a schedule.

A heap holds timed events (a call ends, a flow's last byte lands after the route
latency, a gradient bucket becomes ready); between two events every active flow
progresses at the rate `network.allocate` gives it, so the loop steps from event to
event (or to the next flow's last byte), never per byte. Calls on a device run one at a
time in the program's order (1F1B in training), each once its input has arrived. Flows
of one class between one pair of devices go out in micro-batch order (a sender's queue)."""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass, field

from dora_rl.sim.network import allocate
from dora_rl.sim.program import Program, capacities, route


@dataclass(eq=False)
class Flow:
    cls: str
    mb: int
    i: int
    j: int
    nbytes: float
    route: object
    res: list
    prio: int
    ring: object = None
    rem: float = 0.0
    rate: float = 0.0
    start: float = 0.0
    cap: float = math.inf


@dataclass
class Run:
    """What one run recorded: per-device busy seconds, radio bytes (sent + received),
    when each micro-batch completed, the end of the last event, and a timeline of
    (resource, start, end, label)."""

    busy: list[float]
    radio: list[float]
    mb_done: list[float]
    end: float
    carried: dict                      # resource -> bytes x uses it carried
    timeline: list = field(default_factory=list)
    transfers: list = field(default_factory=list)   # (i, j, bytes, first byte, last byte) of each flow


class _Ring:
    """A data-parallel group's ring all-reduce: buckets in order, 2(g-1) steps each."""

    def __init__(self, cm, stage, devs, nbytes, buckets):
        self.stage, self.devs, self.buckets = stage, devs, buckets
        g = len(devs)
        self.chunk = nbytes / buckets / g
        self.routes = [route(cm, devs[t], devs[(t + 1) % g], self.chunk) for t in range(g)]
        self.ready = [0] * buckets       # members whose gradients of bucket b are ready
        self.next = 0                    # bucket to run next
        self.step = 0
        self.outstanding = 0
        self.busy = False


def simulate_program(cm, prog: Program, levels: dict, buckets: int = 1, start: str = "drain",
                     timeline: bool = False, release: list[float] | None = None, caps_at=()) -> Run:
    """Run `prog`; `release[q]` (inference) is when micro-batch q's input is offered at the
    source (default: every one at time 0): its source flows start then, and a source
    member of stage 0 computes it no earlier. `caps_at` [(t, capacities)] replaces the
    resource capacities at time t (a bandwidth trace: flows in progress continue at the
    new rates from t); the run ends with its last call or flow, not with these."""
    n = cm.n
    caps = capacities(cm)
    heap: list = []
    seq = 0
    now = 0.0
    busy = [0.0] * n
    radio = [0.0] * n
    mb_done = [0.0] * prog.n_mb
    tl: list = []
    sent: list = []
    carried: dict = {}
    names = cm.names
    media = cm.media_names
    pending: dict[tuple, int] = {}
    ptr = {d: 0 for d in prog.ops}
    running = {d: False for d in prog.ops}
    left_ops = [sum(len(v) for v in prog.ops.values())]
    chans: dict[tuple, deque] = {}
    chan_busy: set = set()
    active: list[Flow] = []
    dirty = [False]
    rings = [_Ring(cm, s, devs, p, buckets) for s, devs, p in prog.rings]
    ring_of = {r.stage: r for r in rings}

    def push(t, kind, x):
        nonlocal seq
        seq += 1
        heapq.heappush(heap, (t, seq, kind, x))

    def prio(cls):
        r = levels.get(cls)
        return min(r.values()) if r else 0

    def make(cls, mb, i, j, b, r, ring=None):
        return Flow(cls, mb, i, j, b, r, r.res, prio(cls), ring, b)

    def begin(f):
        f.start = now
        active.append(f)
        dirty[0] = True

    def offer(f):                        # a sender's queue per (class, i, j)
        key = (f.cls, f.i, f.j)
        if key in chan_busy:
            chans.setdefault(key, deque()).append(f)
        else:
            chan_busy.add(key)
            begin(f)

    def ready(op):
        if release is not None and op.mb < len(release) and release[op.mb] > now and op.stage == 0:
            return False
        if op.needs is None:
            return True
        cls, d = op.needs
        return pending.get((cls, op.mb, d), prog.inputs[(cls, d)]) == 0

    def try_start(d):
        if running[d] or ptr[d] >= len(prog.ops[d]):
            return
        op = prog.ops[d][ptr[d]]
        if not ready(op):
            return
        running[d] = True
        busy[d] += op.dur
        if timeline:
            tl.append((names[d], now, now + op.dur, f"{op.kind}{op.mb}"))
        if start == "backward" and op.kind == "B" and op.mb == prog.n_mb - 1 and op.stage in ring_of:
            for b in range(buckets):      # bucket b = the last (b+1)/buckets of the backward
                push(now + op.dur * (b + 1) / buckets, "bucket", (op.stage, b))
        push(now + op.dur, "op", d)

    def end_op(d):
        op = prog.ops[d][ptr[d]]
        ptr[d] += 1
        running[d] = False
        left_ops[0] -= 1
        for cls, i, j, b, r in prog.sends.get((op.kind, op.stage, d), ()):
            offer(make(cls, op.mb, i, j, b, r))
        if op.kind == "F" and op.stage == prog.last_stage:
            mb_done[op.mb] = max(mb_done[op.mb], now)
        try_start(d)
        if left_ops[0] == 0 and start == "drain":
            for r in rings:
                r.ready = [len(r.devs)] * buckets
                ring_next(r)

    def ring_next(r):
        if r.busy:
            return
        if r.step == 2 * (len(r.devs) - 1):
            r.step, r.next = 0, r.next + 1
        if r.next >= r.buckets or r.ready[r.next] < len(r.devs):
            return
        r.busy = True
        g = len(r.devs)
        r.outstanding = g
        for t in range(g):
            begin(make(f"ar{r.stage}", r.next, r.devs[t], r.devs[(t + 1) % g], r.chunk, r.routes[t], ring=r))

    def deliver(f):
        for u, v in f.route.hops:       # every hop: its sender and receiver (relays both)
            radio[u] += f.nbytes
            radio[v] += f.nbytes
        for r, w in f.res:
            carried[r] = carried.get(r, 0.0) + w * f.nbytes
        if f.ring is not None:
            r = f.ring
            r.outstanding -= 1
            if r.outstanding == 0:
                r.busy = False
                r.step += 1
                ring_next(r)
            return
        key = (f.cls, f.mb, f.j)
        pending[key] = pending.get(key, prog.inputs[(f.cls, f.j)]) - 1
        if f.cls == f"act{prog.last_stage + 1}":
            mb_done[f.mb] = max(mb_done[f.mb], now)
        if f.j in running:
            try_start(f.j)

    def transmitted(f):
        if timeline:
            where = [media[mu] for mu, _ in f.route.media] or [f"{names[u]}->{names[v]}" for u, v in f.route.hops]
            tl.extend((w, f.start, now, f"{f.cls}.{f.mb}") for w in where)
        if f.ring is None:
            sent.append((f.i, f.j, f.nbytes, f.start, now))
            key = (f.cls, f.i, f.j)
            q = chans.get(key)
            if q:
                begin(q.popleft())
            else:
                chan_busy.discard(key)
        push(now + f.route.lat, "deliver", f)

    def arrive(q):
        for cls, i, j, b, r in prog.source_flows:
            offer(make(cls, q, i, j, b, r))
        for d in prog.ops:
            try_start(d)

    for q in range(prog.n_mb):
        if release is None or release[q] <= 0:
            arrive(q)
        else:
            push(release[q], "arrive", q)
    for t_cap, c in caps_at:
        push(t_cap, "caps", c)
    n_caps = len(caps_at)
    for d in prog.ops:
        try_start(d)
    while True:
        if not active and len(heap) == n_caps:
            break                         # only capacity changes left: nothing runs any more
        if dirty[0]:
            allocate(active, caps)
            dirty[0] = False
        t_net, first = math.inf, None
        for f in active:
            t = now + f.rem / f.rate if f.rate > 0 else math.inf
            if t < t_net:
                t_net, first = t, f
        t_ev = heap[0][0] if heap else math.inf
        if t_net == math.inf and t_ev == math.inf:
            break
        t = min(t_net, t_ev)
        dt = t - now
        if dt > 0:
            for f in active:
                f.rem -= f.rate * dt
        now = t
        if t_net <= t_ev:
            done = [f for f in active if f is first or f.rem <= 1e-9 * f.nbytes]
            active[:] = [f for f in active if not (f is first or f.rem <= 1e-9 * f.nbytes)]
            dirty[0] = True
            for f in done:
                transmitted(f)
            continue
        _, _, kind, x = heapq.heappop(heap)
        if kind == "caps":
            caps, n_caps, dirty[0] = x, n_caps - 1, True
        elif kind == "op":
            end_op(x)
        elif kind == "deliver":
            deliver(x)
        elif kind == "arrive":
            arrive(x)
        else:
            r = ring_of[x[0]]
            r.ready[x[1]] += 1
            ring_next(r)
    if left_ops[0] or any(r.next < r.buckets for r in rings):
        raise RuntimeError(f"simulator: {left_ops[0]} compute calls never got their input (a program bug)")
    return Run(busy, radio, mb_done, now, carried, tl, sent)
