"""What an adapter sees (`State`) and what it returns (`Decision`), once per control interval.

Kept apart from the adapters so that the monitor (which builds a State), the
simulation and the live loop (which read a Decision) need not import the adapters."""

from __future__ import annotations

from dataclasses import dataclass, field

from dora_rl.adapter.compose import Mix
from dora_rl.plan import Plan


@dataclass
class State:
    """What the adapter sees at time `t`: estimated Mbps per medium, battery levels,
    and per medium the estimate's recent overshoot (plans are scored at
    bandwidth / (1 + error) x (1 - safety); 0 when unknown)."""

    t: float
    bandwidth: dict[str, float]
    battery: dict[str, float] = field(default_factory=dict)
    error: dict[str, float] = field(default_factory=dict)


@dataclass
class Decision:
    """What to run from now on: plan ids (into `Adapter.plans`) and time fractions."""

    t: float
    pids: tuple[int, ...]
    fractions: tuple[float, ...]
    plans: list[Plan]
    switch: bool                  # the set of plans changed (weights may move, pipeline drains)
    reason: str                   # initial | qoe-risk | cheaper | keep | reweight | oracle | agent | veto:qoe
    predicted: dict               # on the planning condition: latency_ms, throughput, power_w, ok
    move_bytes: dict[str, float]  # weights each device must receive for this decision
    switch_s: float               # predicted switch time (transfer + drain), 0 when not switching
    decide_ms: float = 0.0
    mix: Mix | None = None

    @property
    def label(self) -> str:
        if len(self.pids) == 1:
            return f"#{self.pids[0]}"
        return "+".join(f"#{p}:{a:.2f}" for p, a in zip(self.pids, self.fractions, strict=False))

    def to_dict(self) -> dict:
        return {"t": self.t, "pids": list(self.pids), "fractions": list(self.fractions), "switch": self.switch,
                "reason": self.reason, "predicted": self.predicted, "move_bytes": self.move_bytes,
                "switch_s": self.switch_s, "decide_ms": self.decide_ms,
                "plans": [p.to_dict() for p in self.plans]}
