"""`Schedule`: how a plan uses the network (the optional `schedule` section of a plan JSON).

Dora's mechanism (ii) refines a plan by choosing per-medium flow priorities and
all-reduce buckets that overlap backward; the number of micro-batches is the plan's own
`microbatches`. A schedule is data so that the simulator judges it, the plan JSON
carries it and the runtime can execute it; a plan without one means FIFO (flows start
when their data is ready and share every medium fairly; one all-reduce after the drain).
This module checks the shape only; `dora_rl.sim` checks the names against a plan
(docs/formats.md, "Schedule")."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from dora_rl.errors import ScheduleError

ALLREDUCE_STARTS = ("drain", "backward")
FLOW_CLASS = re.compile(r"^(act|grad|ar)(\d+)$")


@dataclass(frozen=True)
class Schedule:
    """priorities: medium name -> flow classes on it, most urgent first (strict priority;
    classes not on a listed medium's list cannot occur, see `dora_rl.sim.check_schedule`).
    buckets: gradient buckets per data-parallel group; allreduce_start: `drain` (after the
    whole pipeline, as the analytic model) or `backward` (each bucket once its gradients
    are ready during the last backward); extra_warmup: forwards each training stage runs
    ahead beyond 1F1B's S - s - 1 (more micro-batches in flight hide transfers, at the
    memory of their stored activations)."""

    priorities: tuple[tuple[str, tuple[str, ...]], ...] = field(default_factory=tuple)
    buckets: int = 1
    allreduce_start: str = "drain"
    extra_warmup: int = 0

    @property
    def is_fifo(self) -> bool:
        return not self.priorities and self.buckets == 1 and self.allreduce_start == "drain" \
            and not self.extra_warmup

    def priority_map(self) -> dict[str, tuple[str, ...]]:
        return dict(self.priorities)

    def to_dict(self) -> dict:
        return {"priorities": {m: list(c) for m, c in self.priorities},
                "allreduce": {"buckets": self.buckets, "start": self.allreduce_start},
                "extra_warmup": self.extra_warmup}

    @classmethod
    def from_dict(cls, d, source: str = "schedule") -> "Schedule":
        if not isinstance(d, dict):
            raise ScheduleError(f"{source}: expected an object with 'priorities' and/or 'allreduce'")
        unknown = set(d) - {"priorities", "allreduce", "extra_warmup"}
        if unknown:
            raise ScheduleError(f"{source}: unknown key(s) {', '.join(sorted(unknown))}; "
                                "a schedule has 'priorities', 'allreduce' and 'extra_warmup'")
        pr = d.get("priorities", {}) or {}
        if not isinstance(pr, dict):
            raise ScheduleError(f"{source}: 'priorities' must map a medium name to a list of flow classes")
        prios = []
        for medium, classes in pr.items():
            where = f"{source}: priorities[{medium!r}]"
            if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
                raise ScheduleError(f"{where} must be a list of flow class names (act<k>, grad<k>, ar<s>)")
            for c in classes:
                if not FLOW_CLASS.match(c):
                    raise ScheduleError(f"{where}: {c!r} is not a flow class; write act<k> (activation across "
                                        "boundary k), grad<k> (gradient back across k) or ar<s> "
                                        "(all-reduce of stage s)")
            dup = sorted({c for c in classes if classes.count(c) > 1})
            if dup:
                raise ScheduleError(f"{where} is not a permutation: {', '.join(dup)} listed twice")
            prios.append((str(medium), tuple(classes)))
        ar = d.get("allreduce", {}) or {}
        if not isinstance(ar, dict):
            raise ScheduleError(f"{source}: 'allreduce' must be an object {{buckets, start}}")
        bad = set(ar) - {"buckets", "start"}
        if bad:
            raise ScheduleError(f"{source}: allreduce has unknown key(s) {', '.join(sorted(bad))} (buckets, start)")
        buckets = ar.get("buckets", 1)
        if not isinstance(buckets, int) or isinstance(buckets, bool) or buckets < 1:
            raise ScheduleError(f"{source}: allreduce.buckets must be a whole number >= 1, got {buckets!r}")
        start = ar.get("start", "drain")
        if start not in ALLREDUCE_STARTS:
            raise ScheduleError(f"{source}: allreduce.start must be one of {', '.join(ALLREDUCE_STARTS)}, "
                                f"got {start!r}")
        warm = d.get("extra_warmup", 0)
        if not isinstance(warm, int) or isinstance(warm, bool) or warm < 0:
            raise ScheduleError(f"{source}: extra_warmup must be a whole number >= 0, got {warm!r}")
        return cls(tuple(prios), buckets, start, warm)


FIFO = Schedule()
