"""Calibrate this host: a scenario whose devices are worker processes on this machine,
each with measured block times, so predictions can be checked on real execution
(`dora calibrate`, then `dora run DIR/scenario.yaml --no-emulate`).

Worker i is pinned to core i (os.sched_setaffinity) and runs one torch thread; its block
times are measured the same way, pinned to the same core, in this process. Links form a
full mesh of dedicated links at `mbps` that the runtime's pacing enforces. Devices have
kind `generic`; `gflops` is the measured effective rate (FLOPs / measured seconds, what
planners' heuristics read); power figures are the generic placeholders (this host's power
is not measured)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import yaml

from dora_rl.errors import ProfileError
from dora_rl.profile import get_profile
from dora_rl.profile.timing import measure_profile

log = logging.getLogger(__name__)

LINK_LATENCY_MS = 0.1   # one message over loopback gloo, roughly; pacing adds the bandwidth term


def host_cores() -> list[int]:
    """The cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def oversubscription_warning(workers: int, cores: int) -> str | None:
    if workers <= cores:
        return None
    return (f"{workers} workers on {cores} core(s): workers are not pinned and share cores, but each block was "
            f"timed alone on an idle core, so at run time compute can be up to {workers / cores:.1f}x slower than "
            "measured and predictions will be optimistic")


def calibrate(model: str, workers: int, out_dir: str | Path, *, training: bool = False, mbps: float = 1000.0,
              batch: int | None = None, microbatches: int | None = None, repeats: int = 5,
              warmup: int = 2) -> dict:
    """Measure this host for `model` and write `out_dir`/scenario.yaml plus one device
    profile per worker (w<i>.json). Returns {scenario, profiles, cores, pinned, warnings}."""
    if workers < 1:
        raise ProfileError(f"--workers must be >= 1, got {workers}")
    if not mbps > 0:
        raise ProfileError(f"--mbps must be a positive number, got {mbps}")
    prof = get_profile(model)   # a ProfileError for an unknown model, before any timing
    batch = batch or (8 if training else 4)
    microbatches = microbatches or (4 if training else 2)
    if batch < 1 or microbatches < 1 or batch % microbatches:
        raise ProfileError(f"--microbatches ({microbatches}) must divide --batch ({batch}), both >= 1")
    m = batch // microbatches
    sizes = sorted({1, max(m, 2)})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cores = host_cores()
    warnings = [w for w in [oversubscription_warning(workers, len(cores))] if w]
    for w in warnings:
        log.warning(w)
    pinned = workers <= len(cores)
    devices, profiles = [], []
    for i in range(workers):
        cpus = [cores[i]] if pinned else None
        dp = measure_profile(model, batch_sizes=sizes, training=training, threads=1, cpus=cpus,
                             warmup=warmup, repeats=repeats)
        path = out / f"w{i}.json"
        dp.save(path)
        profiles.append(str(path))
        fixed, per = dp.fit()
        secs = sum(fixed) + m * sum(per)
        gflops = m * prof.total_flops / secs / 1e9 if secs > 0 else 1.0
        devices.append({"name": f"w{i}", "kind": "generic", "gflops": round(gflops, 3),
                        "memory_gb": round(_host_memory_gb() / workers, 2), "profile": path.name})
    names = [d["name"] for d in devices]
    links = [{"a": a, "b": b, "mbps": float(mbps), "latency_ms": LINK_LATENCY_MS}
             for k, a in enumerate(names) for b in names[k + 1:]]
    wl = {"kind": "training" if training else "inference", "batch": batch, "microbatches": microbatches,
          "source": names[0]}
    if training:
        wl["optimizer"] = "sgd"
    scen = {"name": f"calibrated_{model}_{workers}w", "model": model, "workload": wl,
            "qoe": {"objective": "latency"}, "devices": devices, "links": links,
            "description": f"{workers} worker process(es) on this host ({len(cores)} core(s)), measured by "
                           f"`dora calibrate`; links paced at {mbps:g} Mbps"}
    path = out / "scenario.yaml"
    path.write_text(yaml.safe_dump(scen, sort_keys=False))
    return {"scenario": str(path), "profiles": profiles, "cores": cores, "pinned": pinned,
            "batch_sizes": sizes, "warnings": warnings}


def _host_memory_gb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError, AttributeError):
        return 8.0
