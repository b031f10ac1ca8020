"""What one simulated run does: the compute calls each device makes in order, the flows
each call sends, and the all-reduce rings, built from the cost model's own accessors.

Everything the simulator charges comes from `CostModel`: per-member compute time
(`stage_compute` / `stage_busy`, so measured block times are used where a device has
them), the realized whole-sample shares, the bytes per cut, and the network: each flow
takes the route the cost model gives a flow of its size (`cm.net.route`: least latency +
bytes x kappa), and loads that route's resources (media, link directions, interface
directions; `cm.net.cap`). The simulator and the analytic model therefore share their
inputs and differ only in how they combine them (docs/simulator.md)."""

from __future__ import annotations

from dataclasses import dataclass, field

from dora_rl.cost.routing import flow_pairs
from dora_rl.errors import ScheduleError
from dora_rl.schedule import FIFO, Schedule


@dataclass
class Op:
    """One compute call: forward ('F') or backward ('B') of micro-batch `mb` of stage
    `stage` on device `dev`, lasting `dur` seconds. `needs` names the input it waits for
    (a (flow class, mb, device) counter key) or is None."""

    dev: int
    stage: int
    mb: int
    kind: str
    dur: float
    needs: tuple | None = None


@dataclass
class Program:
    ops: dict[int, list[Op]]                  # per device, in execution order (1F1B in training)
    sends: dict[tuple, list[tuple]]           # (kind, stage, device) -> [(class, i, j, bytes, route), ...]
    inputs: dict[tuple, int]                  # (class, receiver) -> flows it waits for per micro-batch
    source_flows: list[tuple]                 # boundary 0 flows (class, i, j, bytes, route) per micro-batch
    rings: list[tuple]                        # (stage, member devices, gradient bytes) with >= 2 members
    classes: dict[str, set]                   # flow class -> media indices it crosses
    n_mb: int                                 # micro-batches in this run
    mb_per_request: int
    last_stage: int
    participants: set = field(default_factory=set)


def route(cm, i: int, j: int, nbytes: float):
    """The route a flow of nbytes from i to j takes (`cm.net.route`): `.lat`, `.res` =
    [(resource, uses)], `.media`, `.hops`, `.relays`."""
    return cm.net.route(i, j, nbytes)


def capacities(cm) -> dict:
    """Resource index -> capacity (B/s): media, link directions, interface directions."""
    return dict(enumerate(cm.net.cap))


def one_f_one_b(s: int, S: int, M: int, extra: int = 0) -> list[tuple[str, int]]:
    """The 1F1B order of stage s (from 0) of S over M micro-batches: min(S - s - 1 +
    extra, M) warm-up forwards, then one forward / one backward, then the remaining
    backwards (extra = 0: the textbook 1F1B)."""
    warm = min(S - s - 1 + extra, M)
    order = [("F", q) for q in range(warm)]
    for q in range(M - warm):
        order += [("F", warm + q), ("B", q)]
    return order + [("B", q) for q in range(M - warm, M)]


def build(cm, plan, requests: int = 1, extra_warmup: int = 0) -> Program:
    """The program of `requests` requests (inference; each the plan's micro-batches, all
    offered at time 0) or of one training iteration."""
    training = cm.training
    M = plan.microbatches
    m = cm.workload.batch // M
    n_mb = M if training else M * requests
    stages = [(l, r, devs, cm.realized(m, sh, devs)) for (l, r, devs, sh) in cm.stage_indices(plan)]
    S = len(stages)
    src = cm.src
    ops: dict[int, list[Op]] = {}
    part = {src}
    for s, (l, r, devs, sh) in enumerate(stages):
        _, fwd = cm.stage_compute(l, r, devs, sh, m)
        tot = cm.stage_busy(l, r, devs, sh, m, fwd) if training else fwd
        order = one_f_one_b(s, S, n_mb, extra_warmup) if training else [("F", q) for q in range(n_mb)]
        for d, f, u in zip(devs, fwd, tot):
            part.add(d)
            ops[d] = [Op(d, s, q, k, f if k == "F" else u - f,
                         (f"act{s}", d) if k == "F" else ((f"grad{s + 1}", d) if s < S - 1 else None))
                      for k, q in order]
    groups = [([src], [1.0])] + [(st[2], st[3]) for st in stages]
    if not training:
        groups.append(([src], [1.0]))
    sends: dict[tuple, list] = {}
    inputs: dict[tuple, int] = {}
    classes: dict[str, set] = {}
    source_flows: list = []

    def add(cls, flows, key_of):
        for i, j, b in flows:
            r = route(cm, i, j, b)
            classes.setdefault(cls, set()).update(mu for mu, _ in r.media)
            part.update(r.relays)
            inputs[(cls, j)] = inputs.get((cls, j), 0) + 1
            key = key_of(i)
            (source_flows if key is None else sends.setdefault(key, [])).append((cls, i, j, b, r))

    for k in range(len(groups) - 1):
        (a_devs, a_sh), (b_devs, b_sh) = groups[k], groups[k + 1]
        per = cm.bnd[stages[k - 1][1]] if k > 0 else cm.bnd[0]
        add(f"act{k}", flow_pairs(a_devs, a_sh, b_devs, b_sh, per * m),
            (lambda i, k=k: None if k == 0 else ("F", k - 1, i)))
        if training and k > 0:
            add(f"grad{k}", flow_pairs(b_devs, b_sh, a_devs, a_sh, per * m), (lambda i, k=k: ("B", k, i)))
    rings = []
    if training:
        for s, (l, r, devs, _) in enumerate(stages):
            p = cm.pp[r] - cm.pp[l]
            if len(devs) > 1 and p > 0:
                rings.append((s, list(devs), p))
                g = len(devs)
                for t in range(g):
                    r = route(cm, devs[t], devs[(t + 1) % g], p / g)
                    classes.setdefault(f"ar{s}", set()).update(mu for mu, _ in r.media)
                    part.update(r.relays)
    # a forward whose input comes from nowhere (source member of stage 0) needs nothing
    for lst in ops.values():
        for op in lst:
            if op.needs is not None and (op.needs[0], op.dev) not in inputs:
                op.needs = None
    return Program(ops, sends, inputs, source_flows, rings, classes, n_mb, M, S - 1, part)


def flow_levels(cm, prog: Program, schedule: Schedule | None) -> dict[str, dict[int, int]]:
    """Check `schedule` against this plan and return, per flow class, its rank on every
    listed medium it crosses. A listed medium must be one of the cluster's and its list
    a permutation of the classes that cross it; anything else is a ScheduleError naming
    the entry."""
    schedule = schedule or FIFO
    ranks: dict[str, dict[int, int]] = {c: {} for c in prog.classes}
    midx = {n: i for i, n in enumerate(cm.media_names)}
    for medium, order in schedule.priorities:
        where = f"schedule: priorities[{medium!r}]"
        if medium not in midx:
            raise ScheduleError(f"{where}: unknown medium {medium!r}; the cluster's media are "
                                f"{', '.join(cm.media_names) or 'none'}")
        mu = midx[medium]
        on = sorted(c for c, media in prog.classes.items() if mu in media)
        for c in order:
            if c not in on:
                raise ScheduleError(f"{where}: flow class {c!r} does not cross medium {medium!r} in this plan; "
                                    f"the classes on it are {', '.join(on) or 'none'}")
        missing = [c for c in on if c not in order]
        if missing:
            raise ScheduleError(f"{where} is not a permutation of the classes on {medium!r}: "
                                f"missing {', '.join(missing)}")
        for rank, c in enumerate(order):
            ranks[c][mu] = rank
    return ranks
