"""Automatic time dilation (`--slowdown auto`): the smallest factor by which a run must
be slowed down, in every respect, so that no emulated device is faster than the CPU
that emulates it.

An emulating worker runs the real torch code and sleeps out the difference to the
modelled (device) time; it is *saturated* when the real time exceeds the modelled one.
At dilation X every modelled time is X times longer (`Scenario.dilated`: compute and
link rates divided by X; link latencies, the SLO and the request period multiplied by
X), so worker d keeps up when

    X >= headroom * ratio_d * contention

- ratio_d: this machine's real seconds for the blocks d runs (one torch thread, as the
  workers run; `measure_profile`, cached per model, host and thread count) divided by
  the device's modelled seconds for them (`CostModel.device_times`), the worst stage
  of the plan (or the whole model when no plan is given: the live adapter switches);
- contention: how much slower a worker computes because the cores are shared: the
  expected number of busy workers (the sum of the devices' predicted utilisations at
  the offered rate, at least 1) plus the load of other processes (the 1-minute load
  average), over the cores this process may use; at least 1;
- headroom: margin for scheduling noise (default 1.5).

A machine too slow for any dilation within the run's timeout (one dilated request or
iteration would outlast it) is a `RuntimeFault` naming the worker and by how much."""

from __future__ import annotations

import logging
import math
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path

from dora_rl.cost import CostModel
from dora_rl.errors import PlanError, ProfileError, RuntimeFault
from dora_rl.plan import Plan
from dora_rl.profile.measured import DeviceProfile
from dora_rl.scenario import Scenario

log = logging.getLogger(__name__)

HEADROOM = 1.5


def parse_slowdown(v) -> float | str:
    """`--slowdown` value: 'auto' or a number > 0 (PlanError otherwise)."""
    if isinstance(v, str) and v.strip().lower() == "auto":
        return "auto"
    try:
        x = float(v)
    except (TypeError, ValueError):
        x = math.nan
    if not (math.isfinite(x) and x > 0):
        raise PlanError(f"--slowdown must be 'auto' or a number > 0, got {v!r}")
    return x


def cache_dir() -> Path:
    """Where measured block times are cached ($DORA_CACHE, else ~/.cache/dora_rl)."""
    return Path(os.environ.get("DORA_CACHE") or Path.home() / ".cache" / "dora_rl") / "block_times"


def cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def other_load() -> float:
    """The 1-minute load average (other processes competing for the cores)."""
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return 0.0


def block_times(model: str, *, training: bool = False, batch: int = 1, threads: int = 1,
                refresh: bool = False, announce=None) -> DeviceProfile:
    """This machine's block times of zoo model `model` (`measure_profile`), cached under
    cache_dir() per model, host, thread count, batch size and phase. `announce(text)`
    is told before a measurement (it takes seconds to a minute)."""
    host = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname())
    path = cache_dir() / f"{model}-{host}-t{threads}-b{batch}{'-train' if training else ''}.json"
    if path.is_file() and not refresh:
        try:
            return DeviceProfile.load(path)
        except ProfileError as e:   # a corrupt cache entry is re-measured
            log.warning("re-measuring %s: cached block times unreadable (%s)", model, e)
    from dora_rl.profile.timing import measure_profile  # torch: only when measuring
    msg = f"measuring {model}'s block times on this machine (once; cached in {path.parent})"
    log.info(msg)
    if announce is not None:
        announce(msg)
    prof = measure_profile(model, batch_sizes=(batch,), training=training, threads=threads,
                           warmup=1, repeats=3)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        prof.save(path)
    except OSError as e:
        log.warning("cannot cache block times in %s (%s)", path, e)
    return prof


@dataclass
class Dilation:
    """The chosen factor and why: per device the real/modelled compute ratio, the
    contention, the headroom and the factor that device alone needs."""

    factor: float
    auto: bool
    ratio: dict = field(default_factory=dict)
    need: dict = field(default_factory=dict)
    contention: float = 1.0
    headroom: float = HEADROOM
    cores: int = 1
    load: float = 0.0

    @property
    def saturated(self) -> dict:
        """Devices predicted to saturate at this factor: {device: factor it needs}."""
        return {d: x for d, x in self.need.items() if x > self.factor * (1 + 1e-9)}

    def to_dict(self) -> dict:
        return {"factor": self.factor, "auto": self.auto, "ratio": self.ratio, "need": self.need,
                "contention": self.contention, "headroom": self.headroom, "cores": self.cores,
                "load": self.load, "predicted_saturated": self.saturated}


def _real_and_model(prof: DeviceProfile, times: dict, l: int, r: int, n: float, training: bool):
    ff, fp = prof.fit("forward_s")
    real = sum(ff[l:r]) + n * sum(fp[l:r])
    model = times["fwd_fixed"][r] - times["fwd_fixed"][l] + n * (times["fwd_per"][r] - times["fwd_per"][l])
    if training:
        bf, bp = prof.fit("backward_s")
        tf, tp = prof.fit("train_forward_s")
        real = sum(tf[l:r]) + n * sum(tp[l:r]) + sum(bf[l:r]) + n * sum(bp[l:r])
        model += times["bwd_fixed"][r] - times["bwd_fixed"][l] + n * (times["bwd_per"][r] - times["bwd_per"][l])
    return real, model


def choose(scenario: Scenario, plan: Plan | None = None, *, slowdown="auto", rate: float | None = None,
           timeout: float | None = None, headroom: float = HEADROOM, profile: DeviceProfile | None = None,
           load: float | None = None, n_cores: int | None = None, announce=None) -> Dilation:
    """The dilation of a run of `plan` (None: any plan) on `scenario` (device time):
    `slowdown` 'auto' picks it (module doc), a number is taken as given (its predicted
    saturation is still reported). `rate`: offered requests/s in device time.
    `profile`, `load`, `n_cores`: this machine's block times and load (default: measured)."""
    slowdown = parse_slowdown(slowdown)
    if not isinstance(scenario.model, str):
        raise RuntimeFault(f"scenario {scenario.name!r}: the runtime needs a zoo model")
    w = scenario.workload
    cost = CostModel(scenario)
    mb = max(1, w.batch // (plan.microbatches if plan is not None else 1))
    prof = profile or block_times(scenario.model, training=w.training, batch=mb, announce=announce)
    n_blocks = len(cost.device_times(0)["fwd_per"]) - 1
    prof.check_model(scenario.model, n_blocks, "this machine")
    names = scenario.cluster.names
    ratio: dict[str, float] = {}
    if plan is not None:
        for s in plan.stages:
            for d, sh in zip(s.devices, s.shares):
                real, model = _real_and_model(prof, cost.device_times(names.index(d)), s.start, s.end,
                                              sh * mb, w.training)
                ratio[d] = max(ratio.get(d, 0.0), real / model if model > 0 else 0.0)
    else:
        for i, d in enumerate(names):
            real, model = _real_and_model(prof, cost.device_times(i), 0, n_blocks, mb, w.training)
            ratio[d] = real / model if model > 0 else 0.0
    busy = 1.0
    if plan is not None:
        m = cost.evaluate(plan)
        per_s = (rate / w.batch if rate else 1.0 / m.period_s) if not w.training else 1.0 / m.period_s
        busy = max(1.0, sum(min(1.0, b * per_s) for b in m.busy_s))
    else:
        busy = max(1.0, min(len(names), float(cores())))
    c = n_cores or cores()
    ld = other_load() if load is None else load
    contention = max(1.0, (busy + ld) / c)
    need = {d: headroom * r * contention for d, r in ratio.items()}
    worst = max(need.values(), default=1.0)
    factor = _round_up(max(1.0, worst)) if slowdown == "auto" else float(slowdown)
    dil = Dilation(factor, slowdown == "auto", ratio, need, contention, headroom, c, ld)
    if timeout is not None and plan is not None:
        lat_s = cost.evaluate(plan).latency_ms / 1e3 * factor
        if lat_s > timeout:
            dev = max(need, key=need.get)
            raise RuntimeFault(
                f"this machine is too slow to emulate {scenario.name!r}: worker {dev} computes "
                f"{ratio[dev]:.3g}x slower than its device (contention {contention:.2g}x), so the run needs a "
                f"dilation of {factor:.3g}, at which one {'iteration' if w.training else 'request'} takes "
                f"{lat_s:.3g} s, {lat_s / timeout:.2g}x the "
                f"--timeout of {timeout:g} s; raise --timeout or run a smaller model")
    log.info("dilation %.3g (ratios %s, contention %.2g)", factor, ratio, contention)
    return dil


def _round_up(x: float) -> float:
    """x rounded up to 2 significant digits (a readable factor)."""
    e = 10 ** (math.floor(math.log10(x)) - 1)
    return math.ceil(x / e - 1e-9) * e
