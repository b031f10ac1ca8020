"""The htb classes of a shared medium's egress under `--network netns`: fair sharing per
sender (FIFO), or a plan schedule's priorities as per-device-pair htb priority classes.

Why a module of its own: `netns.py` builds the namespaces and routes; what a medium's one
egress (`m<k>` in the hub, which every packet crossing the medium leaves through) does
with its packets is the schedule's business (issue 16 item 5, docs/runtime.md,
"Priorities under --network netns"):

* FIFO (no priorities on the medium): a parent class at the medium's capacity and one
  child per sending device (rate = capacity / senders, ceil = capacity): htb's deficit
  round robin gives each backlogged sender an equal share.
* Priorities: gloo keeps one TCP connection per device pair, and the kernel sees
  addresses, not flow classes, so a class's rank can only be applied to the device pairs
  that carry it (`pair_priorities`): a pair's packets (u32 match on source and
  destination address) go to a child class with htb `prio` 1 + its most urgent class's
  rank (at most 6); pairs that carry no ranked class share `prio` 7. Every child has a
  token rate of 0.1 % of the capacity and ceil = capacity, so nearly all of the medium
  is lent, and htb lends to the lowest `prio` first: strict priority, as the simulator's
  levels. Packets under 128 bytes (TCP acknowledgements) go first (`prio` 0), so that a
  high-priority flow's ACKs, which travel the reverse pair, are not queued behind
  lower-priority data.

What per-pair priority cannot express: two classes on one device pair in one direction
(for instance the source's input `act0` and, when the source is also a member of a later
stage, that stage's traffic to the same peer) share the pair's most urgent rank; ranks
beyond 5 share `prio` 6 (htb has 8 levels); equal ranks are shared per pair, not per
sender; and a starved TCP flow backs off (retransmission timeouts), so a low-priority flow
resumes up to one RTO after the urgent one ends, where the simulator resumes at once."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

WIRE = 1514 / 1448            # wire bytes per TCP payload byte (MTU 1500, TCP timestamps)
UNSHAPED = "10gbit"
ACK_PRIO, MAX_PRIO, DEFAULT_PRIO = 0, 6, 7
LEND = 1e-3                   # each priority child's own token rate, as a share of the medium


def bits(bytes_per_s: float) -> str:
    return f"{max(8, int(round(bytes_per_s * 8 * WIRE)))}bit"


def quantum(bytes_per_s: float) -> int:
    return int(min(200_000, max(1514 * 2, bytes_per_s * WIRE / 10)))


def pair_class(i: int, j: int) -> str:
    """The htb class id of device pair i -> j on a medium in priority mode."""
    return f"1:{0x1000 + 200 * i + j:x}"


def sender_class(i: int) -> str:
    return f"1:{0x10 + i:x}"


def medium_classes(dev: str, cap: float, senders: list[int], prios: dict | None, verb: str = "add") -> list[str]:
    """`tc -batch` lines for the classes under medium egress `dev`'s parent 1:1 (module
    docstring): per sender without `prios`, else per pair {(i, j): prio} plus the ACK class
    and the senders' default classes at `prio` 7. `verb` add or change (same classes)."""
    q = quantum(cap)
    if not prios:
        share = cap / max(1, len(senders))
        return [f"class {verb} dev {dev} parent 1:1 classid {sender_class(i)} htb rate {bits(share)} "
                f"ceil {bits(cap)} quantum {q}" for i in senders]
    low = bits(cap * LEND)
    out = [f"class {verb} dev {dev} parent 1:1 classid 1:3 htb rate {low} ceil {bits(cap)} prio {ACK_PRIO} "
           f"quantum {q}"]
    out += [f"class {verb} dev {dev} parent 1:1 classid {pair_class(i, j)} htb rate {low} ceil {bits(cap)} "
            f"prio {p} quantum {q}" for (i, j), p in sorted(prios.items())]
    out += [f"class {verb} dev {dev} parent 1:1 classid {sender_class(i)} htb rate {low} ceil {bits(cap)} "
            f"prio {DEFAULT_PRIO} quantum {q}" for i in senders]
    return out


def medium_lines(dev: str, cap: float, senders: list[int], prios: dict | None, addr) -> list[str]:
    """The whole egress of medium interface `dev`: root qdisc, the unshaped default class
    (traffic that does not cross the medium), the capacity class, `medium_classes` and
    their u32 filters (`addr(i)`: device i's address)."""
    out = [f"qdisc add dev {dev} root handle 1: htb default 2",
           f"class add dev {dev} parent 1: classid 1:2 htb rate {UNSHAPED}",
           f"class add dev {dev} parent 1: classid 1:1 htb rate {bits(cap)} ceil {bits(cap)} quantum {quantum(cap)}"]
    out += medium_classes(dev, cap, senders, prios)
    sender_prio = 1
    if prios:
        # IPv4 total length (bytes 2-3 of the header) below 128: acknowledgements, first
        out.append(f"filter add dev {dev} parent 1: protocol ip prio 1 u32 match u16 0x0000 0xff80 at 2 flowid 1:3")
        out += [f"filter add dev {dev} parent 1: protocol ip prio 2 u32 match ip src {addr(i)}/32 "
                f"match ip dst {addr(j)}/32 flowid {pair_class(i, j)}" for (i, j) in sorted(prios)]
        sender_prio = 3
    out += [f"filter add dev {dev} parent 1: protocol ip prio {sender_prio} u32 match ip src {addr(i)}/32 "
            f"flowid {sender_class(i)}" for i in senders]
    return out


def pair_priorities(cost, plan, cluster) -> dict[int, dict[tuple[int, int], int]]:
    """{medium index: {(i, j): htb prio}} for `plan`'s schedule ({} without priorities):
    every device pair that carries a ranked flow class across the medium (the kernel's
    route, `cluster.hops`), at 1 + the most urgent rank among its classes (at most
    `MAX_PRIO`). A ScheduleError if the schedule does not fit the plan."""
    if plan.schedule is None or not plan.schedule.priorities:
        return {}
    from dora_rl.sim.program import build, flow_levels

    prog = build(cost, plan, 1)
    levels = flow_levels(cost, prog, plan.schedule)
    pairs: dict[tuple[int, int], set] = {}
    for flows in (prog.source_flows, *prog.sends.values()):
        for cls, i, j, *_ in flows:
            pairs.setdefault((i, j), set()).add(cls)
    for s, devs, _ in prog.rings:
        for t in range(len(devs)):
            pairs.setdefault((devs[t], devs[(t + 1) % len(devs)]), set()).add(f"ar{s}")
    out: dict[int, dict] = {}
    for (i, j), classes in sorted(pairs.items()):
        if i == j:
            continue
        for mu, _ in cluster.hops[i][j]:
            ranks = {c: levels[c][mu] for c in classes if mu in levels.get(c, {})}
            if not ranks:
                continue
            if len(set(ranks.values())) > 1:
                log.info("netns: %s -> %s carries %s on medium %s: one TCP pair, one htb class, so all at "
                         "the most urgent rank", cluster.names[i], cluster.names[j], sorted(ranks),
                         cluster.media_names[mu])
            out.setdefault(mu, {})[(i, j)] = min(1 + min(ranks.values()), MAX_PRIO)
    return out


__all__ = ["WIRE", "UNSHAPED", "bits", "quantum", "medium_classes", "medium_lines", "pair_priorities",
           "pair_class", "sender_class"]
