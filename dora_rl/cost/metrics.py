"""`Metrics`: what the cost model predicts for one plan (the Metrics JSON of DESIGN.md §4).

Per-device figures are kept as lists indexed like `Cluster.devices` so scoring stays
cheap inside searches and rollouts; `to_dict()` names them."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Metrics:
    feasible: bool                   # fits in memory (a plan that does not fit cannot run)
    qoe_ok: bool                     # feasible and every QoE target met
    violations: list[str]            # one human-readable line per failed constraint
    latency_ms: float                # per request (inference) / per iteration (training)
    throughput: float                # requests/s (inference) / samples/s (training)
    energy_j: float                  # per request (inference) / per iteration (training)
    period_s: float                  # wall time a request/iteration accounts for (energy window)
    bottleneck_s: float              # steady-state time per micro-batch of the slowest resource
    bottleneck: str                  # which resource that is ("stage 1", "link 0->1", "medium wifi")
    device_names: list[str]
    participants: list[int]          # device indices the plan uses (stage devices + source)
    busy_s: list[float]              # compute-busy seconds per request/iteration, per device
    memory_bytes: list[float]        # peak memory per device
    energy_by_device: list[float]    # J per request/iteration, per device (0 for non-participants)
    battery_hours: dict[int, float]  # participating battery devices only
    stage_compute_s: list[float] = field(default_factory=list)   # per micro-batch (forward)
    transfer_s: list[float] = field(default_factory=list)        # per micro-batch, per boundary
    allreduce_s: float = 0.0
    training: bool = False

    def objective(self, kind: str) -> float:
        """The scalar a planner minimises: latency_ms or energy_j."""
        return self.latency_ms if kind == "latency" else self.energy_j

    @property
    def avg_power_w(self) -> list[float]:
        return [e / self.period_s for e in self.energy_by_device]

    @property
    def busy_frac(self) -> list[float]:
        return [b / self.period_s for b in self.busy_s]

    def to_dict(self) -> dict:
        names = self.device_names
        part = self.participants
        pw = self.avg_power_w
        bf = self.busy_frac
        return {
            "feasible": self.feasible,
            "qoe_ok": self.qoe_ok,
            "violations": list(self.violations),
            "latency_ms": self.latency_ms,
            "throughput": self.throughput,
            "throughput_unit": "samples/s" if self.training else "requests/s",
            "energy_j": self.energy_j,
            "period_s": self.period_s,
            "bottleneck": self.bottleneck,
            "bottleneck_ms": self.bottleneck_s * 1e3,
            "stage_compute_ms": [t * 1e3 for t in self.stage_compute_s],
            "transfer_ms": [t * 1e3 for t in self.transfer_s],
            "allreduce_ms": self.allreduce_s * 1e3,
            "avg_power_w": {names[i]: pw[i] for i in part},
            "memory_bytes": {names[i]: self.memory_bytes[i] for i in part},
            "busy_frac": {names[i]: bf[i] for i in part},
            "energy_by_device_j": {names[i]: self.energy_by_device[i] for i in part},
            "battery_hours": {names[i]: h for i, h in self.battery_hours.items()},
        }
