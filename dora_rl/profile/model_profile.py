"""`ModelProfile`: a DNN as a chain of blocks with per-sample forward FLOPs, parameter
bytes and output-activation bytes, plus the input bytes. It is the only thing the cost
model knows about a model; prefix sums make any block range cost O(1)."""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dora_rl.errors import ProfileError


@dataclass(frozen=True)
class Block:
    """One block of the chain. All figures are per sample, forward pass."""

    name: str
    flops: float          # forward FLOPs per sample (2 x multiply-accumulates)
    param_bytes: int      # bytes of parameters (and buffers) held by the block
    out_bytes: int        # bytes of the block's output activation per sample


@dataclass
class ModelProfile:
    """A model as a chain of `Block`s. `input_bytes` is the model input per sample."""

    name: str
    input_bytes: int
    blocks: list[Block]
    dtype_bytes: int = 4
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.blocks:
            raise ProfileError(f"profile {self.name!r}: 'blocks' is empty; "
                               "a profile needs at least one block")
        ib = self.input_bytes
        if not (isinstance(ib, numbers.Real) and math.isfinite(ib) and ib > 0):
            raise ProfileError(f"profile {self.name!r}: 'input_bytes' must be a positive number, "
                               f"got {self.input_bytes!r}")
        for i, b in enumerate(self.blocks):
            for key in ("flops", "param_bytes", "out_bytes"):
                v = getattr(b, key)
                if not isinstance(v, numbers.Real) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
                    raise ProfileError(f"profile {self.name!r}: block {i} ({b.name}) has {key}={v!r}; "
                                       "it must be a finite number >= 0")
        f = np.array([b.flops for b in self.blocks], dtype=float)
        p = np.array([b.param_bytes for b in self.blocks], dtype=float)
        a = np.array([b.out_bytes for b in self.blocks], dtype=float)
        self.flops = f
        self.param_bytes = p
        self.out_bytes = a
        self.flops_prefix = np.concatenate([[0.0], np.cumsum(f)])
        self.param_prefix = np.concatenate([[0.0], np.cumsum(p)])
        self.act_prefix = np.concatenate([[0.0], np.cumsum(a)])

    # --- size -----------------------------------------------------------
    @property
    def n_blocks(self) -> int:
        return len(self.blocks)

    @property
    def total_flops(self) -> float:
        return float(self.flops_prefix[-1])

    @property
    def total_params(self) -> float:
        return float(self.param_prefix[-1])

    def boundary_bytes(self, k: int) -> float:
        """Bytes per sample crossing the cut before block k (k=0: the model input)."""
        return float(self.input_bytes if k == 0 else self.out_bytes[k - 1])

    # --- JSON -------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"name": self.name, "input_bytes": int(self.input_bytes), "dtype_bytes": self.dtype_bytes,
                "meta": self.meta,
                "blocks": [{"name": b.name, "flops": float(b.flops), "param_bytes": int(b.param_bytes),
                            "out_bytes": int(b.out_bytes)} for b in self.blocks]}

    @classmethod
    def from_dict(cls, d: dict, source: str = "profile") -> "ModelProfile":
        if not isinstance(d, dict):
            raise ProfileError(f"{source}: expected a JSON object with 'name', 'input_bytes' and 'blocks'")
        for key in ("name", "input_bytes", "blocks"):
            if key not in d:
                raise ProfileError(f"{source}: missing field {key!r}")
        if not isinstance(d["blocks"], list):
            raise ProfileError(f"{source}: 'blocks' must be a list of {{name, flops, param_bytes, out_bytes}}")
        blocks = []
        for i, b in enumerate(d["blocks"]):
            if not isinstance(b, dict):
                raise ProfileError(f"{source}: block {i} must be an object")
            try:
                blocks.append(Block(str(b.get("name", f"block{i}")), float(b["flops"]),
                                    int(b["param_bytes"]), int(b["out_bytes"])))
            except KeyError as e:
                raise ProfileError(f"{source}: block {i} is missing {e.args[0]!r}") from None
            except (TypeError, ValueError):
                raise ProfileError(f"{source}: block {i} has a non-numeric flops/param_bytes/out_bytes") from None
        try:
            input_bytes = int(d["input_bytes"])
        except (TypeError, ValueError):
            raise ProfileError(f"{source}: 'input_bytes' must be a number") from None
        return cls(str(d["name"]), input_bytes, blocks, int(d.get("dtype_bytes", 4)), dict(d.get("meta", {})))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> "ModelProfile":
        p = Path(path)
        if not p.is_file():
            raise ProfileError(f"profile file {str(p)!r} does not exist; "
                               "create it with `dora profile MODEL --json > FILE`")
        try:
            d = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ProfileError(f"profile file {str(p)!r} is not valid JSON ({e.msg} at line {e.lineno})") from None
        return cls.from_dict(d, source=str(p))
