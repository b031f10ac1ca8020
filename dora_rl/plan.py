"""`Plan` / `Stage`: the output of every planner and the input of the cost model and
the runtime. A stage is a half-open block range `[start, end)` on a device group with
per-device shares of each micro-batch (heterogeneity-aware data parallelism). JSON
format in DESIGN.md §4 and docs/formats.md."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from dora_rl.errors import PlanError
from dora_rl.schedule import Schedule

SHARE_TOL = 1e-6


def sample_counts(m: int, shares, names=None) -> list[int]:
    """Whole samples per member when a micro-batch of m samples is split by `shares`.

    A function of the group as a set of (device, share) pairs, not of the order the
    members are listed in (docs/cost-model.md "Compute"): if there are at least as many
    samples as members, every member first gets one sample; each remaining sample then
    goes to the member furthest below its target (largest shortfall w_i m - n_i,
    compared to 1e-9), ties to the first device name in sort order (`names`; without
    names, the first listed). So counts sum to m, follow the shares as closely as whole
    samples can (largest remainder), and a listed member is never left idle."""
    k = len(shares)
    least = 1 if m >= k else 0
    targets = [w * m for w in shares]
    # the greedy below first brings every member up to max(least, floor(target)) (a
    # shortfall >= 1 always wins over one < 1), so start there when that fits in m
    counts = [max(least, math.floor(round(t, 9))) for t in targets]
    if sum(counts) > m:
        counts = [least] * k
    keys = [((names[i] if names is not None else ""), i) for i in range(k)]
    for _ in range(m - sum(counts)):
        best = min(range(k), key=lambda i: (-round(targets[i] - counts[i], 9), keys[i]))
        counts[best] += 1
    return counts


def sample_edges(m: int, shares, names=None) -> list[int]:
    """Integer slice edges [0, e_1, ..., m] of a micro-batch of m samples split by
    `shares`: member i computes samples [e_i, e_{i+1}). The counts come from
    `sample_counts` (independent of member order); the slices are laid out in the
    listed order, which only decides who sends what to whom. The cost model and the
    runtime both use this split."""
    edges = [0]
    for c in sample_counts(m, shares, names):
        edges.append(edges[-1] + c)
    return edges


@dataclass(frozen=True)
class Stage:
    start: int
    end: int
    devices: tuple[str, ...]
    shares: tuple[float, ...]

    @property
    def blocks(self) -> tuple[int, int]:
        return (self.start, self.end)

    def to_dict(self) -> dict:
        return {"blocks": [self.start, self.end], "devices": list(self.devices),
                "shares": [round(s, 12) for s in self.shares]}


@dataclass(frozen=True)
class Plan:
    stages: tuple[Stage, ...]
    microbatches: int = 1
    schedule: Schedule | None = None     # how the network is used (None: FIFO; docs/formats.md)

    # --- construction ---------------------------------------------------
    @classmethod
    def make(cls, stages, microbatches: int = 1) -> "Plan":
        """Build from [(start, end, devices, shares|None), ...]; shares default to equal."""
        out = []
        for st in stages:
            start, end, devs = st[0], st[1], tuple(st[2])
            shares = st[3] if len(st) > 3 and st[3] is not None else [1.0 / len(devs)] * len(devs)
            out.append(Stage(int(start), int(end), devs, tuple(float(s) for s in shares)))
        return cls(tuple(out), int(microbatches))

    def key(self) -> str:
        """A canonical string naming this plan (its JSON with sorted keys): equal for
        equal plans, usable as a dict key across processes and in logs."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @property
    def devices(self) -> list[str]:
        return [d for s in self.stages for d in s.devices]

    def cuts(self) -> list[int]:
        return [s.end for s in self.stages[:-1]]

    # --- validation -------------------------------------------------------
    def validate(self, n_blocks: int, device_names, batch: int | None = None) -> "Plan":
        """Check coverage, devices and shares against a model and cluster; return self."""
        known = device_names if isinstance(device_names, (set, frozenset)) else set(device_names)
        if not self.stages:
            raise PlanError("plan: 'stages' is empty; a plan needs at least one stage")
        if not isinstance(self.microbatches, int) or self.microbatches < 1:
            raise PlanError(f"plan: 'microbatches' must be a whole number >= 1, got {self.microbatches!r}")
        if batch is not None and batch % self.microbatches:
            raise PlanError(f"plan: microbatches={self.microbatches} must divide the workload batch ({batch})")
        expect = 0
        used: dict[str, int] = {}
        for i, s in enumerate(self.stages):
            if s.start != expect:
                what = "a gap" if s.start > expect else "an overlap"
                raise PlanError(f"plan: stage {i} starts at block {s.start} but the previous stage ends at {expect} "
                                f"({what}); stages must cover blocks [0, {n_blocks}) in order")
            if s.end <= s.start:
                raise PlanError(f"plan: stage {i} has blocks [{s.start}, {s.end}); a stage needs at least one block")
            if s.end > n_blocks:
                raise PlanError(f"plan: stage {i} ends at block {s.end}, beyond the model's {n_blocks} blocks")
            expect = s.end
            if not s.devices:
                raise PlanError(f"plan: stage {i} has no devices")
            if len(s.shares) != len(s.devices):
                raise PlanError(f"plan: stage {i} has {len(s.devices)} devices but {len(s.shares)} shares; "
                                "give one share per device")
            for d in s.devices:
                if d not in known:
                    raise PlanError(f"plan: stage {i} names unknown device {d!r}; "
                                    f"known devices: {', '.join(sorted(known))}")
                if d in used:
                    raise PlanError(f"plan: device {d!r} is in stage {used[d]} and stage {i}; "
                                    "a device may serve one stage")
                used[d] = i
            for sh in s.shares:
                if not (isinstance(sh, float) and math.isfinite(sh) and sh > 0):
                    raise PlanError(f"plan: stage {i} has share {sh!r}; every share must be a number > 0")
            tot = sum(s.shares)
            if abs(tot - 1.0) > SHARE_TOL:
                raise PlanError(f"plan: stage {i} shares sum to {tot:.6g}; they must sum to 1")
        if expect != n_blocks:
            raise PlanError(f"plan: stages end at block {expect} but the model has {n_blocks} blocks; "
                            "the last stage must end at the last block")
        return self

    # --- JSON --------------------------------------------------------------
    def to_dict(self) -> dict:
        d = {"microbatches": self.microbatches, "stages": [s.to_dict() for s in self.stages]}
        if self.schedule is not None:
            d["schedule"] = self.schedule.to_dict()
        return d

    @classmethod
    def from_dict(cls, d, source: str = "plan") -> "Plan":
        if not isinstance(d, dict) or "stages" not in d:
            raise PlanError(f"{source}: expected a JSON object with 'stages' (and optional 'microbatches')")
        if not isinstance(d["stages"], list):
            raise PlanError(f"{source}: 'stages' must be a list")
        stages = []
        for i, s in enumerate(d["stages"]):
            if not isinstance(s, dict):
                raise PlanError(f"{source}: stage {i} must be an object with blocks, devices, shares")
            blocks = s.get("blocks")
            if (not isinstance(blocks, list) or len(blocks) != 2
                    or not all(isinstance(b, int) and not isinstance(b, bool) for b in blocks)):
                raise PlanError(f"{source}: stage {i} 'blocks' must be [start, end) as two whole numbers")
            devs = s.get("devices")
            if not isinstance(devs, list) or not all(isinstance(x, str) for x in devs):
                raise PlanError(f"{source}: stage {i} 'devices' must be a list of device names")
            shares = s.get("shares")
            if shares is None:
                shares = [1.0 / len(devs)] * len(devs) if devs else []
            if not isinstance(shares, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                       for x in shares):
                raise PlanError(f"{source}: stage {i} 'shares' must be a list of numbers")
            stages.append(Stage(blocks[0], blocks[1], tuple(devs), tuple(float(x) for x in shares)))
        mb = d.get("microbatches", 1)
        if not isinstance(mb, int) or isinstance(mb, bool):
            raise PlanError(f"{source}: 'microbatches' must be a whole number, got {mb!r}")
        sched = d.get("schedule")
        sched = None if sched is None else Schedule.from_dict(sched, source=f"{source}: schedule")
        return cls(tuple(stages), mb, sched)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "Plan":
        p = Path(path)
        if not p.is_file():
            raise PlanError(f"plan file {str(p)!r} does not exist; write one with `dora plan SCENARIO --out {p}`")
        try:
            d = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise PlanError(f"plan file {str(p)!r} is not valid JSON ({e.msg} at line {e.lineno})") from None
        return cls.from_dict(d, source=str(p))
