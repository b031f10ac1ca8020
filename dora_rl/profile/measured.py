"""Measured device profiles: seconds per block of one model on one device (the JSON that
`dora profile MODEL --measure` writes and a scenario device names with `profile:`).

A measured profile replaces FLOPs / gflops for that device in the cost model. Each
block was timed at one or more batch sizes; `fit` turns those timings into a line
`t(n) = fixed + n · per_sample` per block (docs/cost-model.md, "Measured block times"),
whose prefix sums keep a stage O(1). Torch-free: the timing itself is in timing.py."""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path

from dora_rl.errors import ProfileError

FORMAT = "dora-device-profile/1"
PHASES = ("forward_s", "train_forward_s", "backward_s")


def _seconds(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


@dataclass
class DeviceProfile:
    """Per-block timings of `model` (a chain of `n_blocks` blocks) on one device.

    `forward_s[b][i]` is the median seconds of one inference forward call (no autograd)
    of block b on a batch of `batch_sizes[i]` samples; `train_forward_s` (autograd on)
    and `backward_s` (backward of that forward) are present when measured with
    --training. `threads` is the torch intra-op thread count it was measured with,
    `cpus` the cores the process was pinned to (None: not pinned)."""

    model: str
    blocks: list[str]
    batch_sizes: list[int]
    forward_s: list[list[float]]
    train_forward_s: list[list[float]] | None = None
    backward_s: list[list[float]] | None = None
    threads: int = 1
    cpus: list[int] | None = None
    host: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    source: str = "device profile"

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)

    @property
    def training(self) -> bool:
        return self.backward_s is not None and self.train_forward_s is not None

    def check_model(self, model: str, n_blocks: int, device: str = "device") -> None:
        """ProfileError unless this profile was measured on `model` with `n_blocks` blocks."""
        if self.model != model or self.n_blocks != n_blocks:
            raise ProfileError(f"{device}: profile {self.source} was measured on model {self.model!r} "
                               f"({self.n_blocks} blocks) but the scenario runs model {model!r} ({n_blocks} blocks); "
                               f"measure it with `dora profile {model} --measure`")

    def fit(self, phase: str = "forward_s") -> tuple[list[float], list[float]]:
        """Per block (fixed seconds per call, seconds per sample) of `phase`: the
        least-squares line through (batch size, seconds), slope and intercept clamped at
        0 (a negative intercept is noise: the line is then refitted through the origin).
        One batch size: fixed = 0, per_sample = seconds / batch."""
        rows = getattr(self, phase)
        if rows is None:
            raise ProfileError(f"profile {self.source} has no {phase!r} (measure it with --training)")
        xs = [float(b) for b in self.batch_sizes]
        k = len(xs)
        mx = sum(xs) / k
        sxx = sum((x - mx) ** 2 for x in xs)
        fixed, per = [], []
        for ts in rows:
            if sxx == 0:
                a, b = 0.0, sum(ts) / sum(xs)
            else:
                my = sum(ts) / k
                b = sum((x - mx) * (t - my) for x, t in zip(xs, ts)) / sxx
                a = my - b * mx
                if b < 0:
                    a, b = min(ts), 0.0
                elif a < 0:
                    a, b = 0.0, sum(x * t for x, t in zip(xs, ts)) / sum(x * x for x in xs)
            fixed.append(a)
            per.append(b)
        return fixed, per

    def scaled(self, factor: float) -> "DeviceProfile":
        """Every time multiplied by `factor` (a device `factor` times slower)."""
        def mul(rows):
            return None if rows is None else [[t * factor for t in r] for r in rows]
        return DeviceProfile(self.model, list(self.blocks), list(self.batch_sizes), mul(self.forward_s),
                             mul(self.train_forward_s), mul(self.backward_s), self.threads, self.cpus,
                             dict(self.host), {**self.meta, "scaled": self.meta.get("scaled", 1.0) * factor},
                             self.source)

    # --- JSON -------------------------------------------------------------
    def to_dict(self) -> dict:
        d = {"format": FORMAT, "model": self.model, "n_blocks": self.n_blocks, "blocks": list(self.blocks),
             "batch_sizes": list(self.batch_sizes), "forward_s": self.forward_s, "threads": self.threads,
             "cpus": self.cpus, "host": self.host, "meta": self.meta}
        if self.training:
            d["train_forward_s"] = self.train_forward_s
            d["backward_s"] = self.backward_s
        return d

    @classmethod
    def from_dict(cls, d: dict, source: str = "device profile") -> "DeviceProfile":
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ProfileError(f"{source}: not a device profile (expected a JSON object with format {FORMAT!r}; "
                               "write one with `dora profile MODEL --measure --out FILE.json`)")
        for key in ("model", "n_blocks", "blocks", "batch_sizes", "forward_s"):
            if key not in d:
                raise ProfileError(f"{source}: missing field {key!r}")
        blocks, sizes = d["blocks"], d["batch_sizes"]
        if not isinstance(blocks, list) or len(blocks) != d["n_blocks"] or not blocks:
            raise ProfileError(f"{source}: 'blocks' must list the n_blocks ({d['n_blocks']!r}) block names")
        if not (isinstance(sizes, list) and sizes and all(isinstance(b, int) and b >= 1 for b in sizes)):
            raise ProfileError(f"{source}: 'batch_sizes' must be a non-empty list of whole numbers >= 1")
        rows = {}
        for phase in PHASES:
            r = d.get(phase)
            if r is None:
                rows[phase] = None
                continue
            ok = isinstance(r, list) and len(r) == len(blocks) and all(
                isinstance(x, list) and len(x) == len(sizes) and all(_seconds(t) for t in x) for x in r)
            if not ok:
                raise ProfileError(f"{source}: {phase!r} must hold, per block, one time in seconds (>= 0) per "
                                   f"batch size ({len(blocks)} x {len(sizes)})")
            rows[phase] = [[float(t) for t in x] for x in r]
        if (rows["train_forward_s"] is None) != (rows["backward_s"] is None):
            raise ProfileError(f"{source}: 'train_forward_s' and 'backward_s' go together (--training)")
        threads = d.get("threads", 1)
        if not (isinstance(threads, int) and threads >= 1):
            raise ProfileError(f"{source}: 'threads' must be a whole number >= 1, got {threads!r}")
        cpus = d.get("cpus")
        if cpus is not None and not (isinstance(cpus, list) and all(isinstance(c, int) and c >= 0 for c in cpus)):
            raise ProfileError(f"{source}: 'cpus' must be a list of core numbers or null, got {cpus!r}")
        return cls(str(d["model"]), [str(b) for b in blocks], list(sizes), rows["forward_s"],
                   rows["train_forward_s"], rows["backward_s"], threads, cpus, dict(d.get("host") or {}),
                   dict(d.get("meta") or {}), source)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> "DeviceProfile":
        p = Path(path)
        if not p.is_file():
            raise ProfileError(f"device profile {str(p)!r} does not exist; write it with "
                               "`dora profile MODEL --measure --out FILE.json`")
        try:
            d = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ProfileError(f"device profile {str(p)!r} is not valid JSON ({e.msg} at line {e.lineno})") from None
        return cls.from_dict(d, source=str(p))
