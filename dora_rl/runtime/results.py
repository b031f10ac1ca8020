"""What a run on the workers measured: `InferenceResult` (a request stream) and
`TrainResult` (training iterations), and the energy both report.

Kept apart from the loops that fill them (request_loop.py, training.py) so that the CLI,
the bench and the live loop read one plain record whichever runtime produced it."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dora_rl.runtime.emulation import energy_j
from dora_rl.scenario import Scenario


def _pct(xs, q):
    return float(np.percentile(np.asarray(xs), q)) if len(xs) else float("nan")


def stream_energy(sc: Scenario, st: dict, wall: float, devs: list[str]) -> float:
    """Joules over `wall` seconds of the devices `devs`, from their worker stats `st`
    (busy seconds at active power, the rest idle, plus radio energy per byte)."""
    cl = sc.cluster
    tot = 0.0
    for d in devs:
        dv = cl.device(d)
        tot += energy_j(st[d]["busy_s"], wall, dv.idle_w, dv.active_w,
                        st[d]["sent_bytes"] + st[d]["recv_bytes"], dv.radio_j_per_mb / 1e6)
    return tot


def _saturated(st: dict, names: list[str]) -> dict:
    return {d: (st[d]["saturated"], st[d]["excess_s"]) for d in names if st[d]["saturated"]}


@dataclass
class InferenceResult:
    n: int
    latencies_s: dict          # rid -> seconds, measured at the source device
    outputs: dict              # rid -> tensor (if kept)
    wall_s: float
    throughput: float          # requests/s over the stream
    energy_j: float            # per request, all participating devices
    busy_s: dict               # device -> emulated busy seconds over the stream
    saturated: dict            # device -> (sections over modelled time, excess seconds)
    switch_s: float | None = None
    switch: dict = field(default_factory=dict)
    answered: list = field(default_factory=list)   # rids in answer order
    duplicates: int = 0        # late or duplicate answers dropped by id (after a fault)
    reissued: int = 0          # requests issued again after a recovery
    faults: list = field(default_factory=list)     # the runtime's recoveries so far

    @property
    def latency_ms(self) -> dict:
        xs = [v * 1e3 for v in self.latencies_s.values()]
        return {"mean": float(np.mean(xs)) if xs else float("nan"), "p50": _pct(xs, 50), "p95": _pct(xs, 95)}

    def to_dict(self) -> dict:
        return {"requests": self.n, "latency_ms": self.latency_ms, "throughput": self.throughput,
                "energy_j": self.energy_j, "wall_s": self.wall_s, "busy_s": self.busy_s,
                "saturated": {d: {"sections": a, "excess_s": b} for d, (a, b) in self.saturated.items()},
                "switch_s": self.switch_s, "switch": self.switch}


@dataclass
class TrainResult:
    iterations: int
    iter_s: list
    energy_j: float            # per iteration
    busy_s: dict
    saturated: dict
    switch_s: float | None = None
    switch: dict = field(default_factory=dict)
    faults: list = field(default_factory=list)     # the runtime's recoveries so far

    def to_dict(self) -> dict:
        xs = [t * 1e3 for t in self.iter_s]
        return {"iterations": self.iterations, "iteration_ms": {"mean": float(np.mean(xs)), "p50": _pct(xs, 50),
                                                                 "p95": _pct(xs, 95)},
                "energy_j": self.energy_j, "busy_s": self.busy_s,
                "saturated": {d: {"sections": a, "excess_s": b} for d, (a, b) in self.saturated.items()},
                "switch_s": self.switch_s, "switch": self.switch}
