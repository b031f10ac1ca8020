"""Calibrate this host: a scenario whose devices are worker processes on this machine,
each with measured block times, so predictions can be checked on real execution
(`dora calibrate`, then `dora run DIR/scenario.yaml --no-emulate`).

Worker i is pinned to core i (os.sched_setaffinity) and runs one torch thread; its block
times are measured the same way, pinned to the same core, and all workers are timed at
once (one process each, started together by a barrier): workers of a plan compute at
the same time, and what they share (the last-level cache, memory bandwidth, the host
under a virtual machine's cores) slows each of them (resnet18 on this 2-core VM: 98 ms
alone, 106 ms with the other core busy), which timing one core at a time leaves out. Unpinned (more workers than
cores), each is timed alone, in this process, with a warning. Links form a
full mesh of dedicated links at `mbps` that the runtime's pacing enforces. Devices have
kind `generic`; `gflops` is the measured effective rate (FLOPs / measured seconds, what
planners' heuristics read); power figures are the generic placeholders (this host's power
is not measured)."""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import threading
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import yaml

from dora_rl.errors import DoraError, ProfileError
from dora_rl.profile import get_profile
from dora_rl.profile.measured import DeviceProfile
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
    profiles = [str(out / f"w{i}.json") for i in range(workers)]
    jobs = [(model, sizes, training, [cores[i]] if pinned else None, warmup, repeats, path)
            for i, path in enumerate(profiles)]
    if pinned and workers > 1:
        _time_together(jobs)
    else:
        for job in jobs:
            _time_one(*job)
    devices = []
    for i, path in enumerate(profiles):
        dp = DeviceProfile.load(path)
        fixed, per = dp.fit()
        secs = sum(fixed) + m * sum(per)
        gflops = m * prof.total_flops / secs / 1e9 if secs > 0 else 1.0
        devices.append({"name": f"w{i}", "kind": "generic", "gflops": round(gflops, 3),
                        "memory_gb": round(_host_memory_gb() / workers, 2), "profile": Path(path).name})
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


def _time_one(model, sizes, training, cpus, warmup, repeats, path, ready=None) -> None:
    measure_profile(model, batch_sizes=sizes, training=training, threads=1, cpus=cpus, warmup=warmup,
                    repeats=repeats, ready=ready).save(path)


_BARRIER = None


def _join_barrier(barrier) -> None:
    global _BARRIER
    _BARRIER = barrier


def _time_in_child(job) -> None:
    try:
        _time_one(*job, ready=_BARRIER.wait)
    except BaseException:
        _BARRIER.abort()   # the other workers stop waiting for this one
        raise


def _time_together(jobs) -> None:
    """Time every worker's profile at once: one spawned process per job, each pinned to
    its core, released by one barrier when all have built the model. A job that fails
    breaks the barrier; its own error is the one raised."""
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(len(jobs), timeout=600)
    with ProcessPoolExecutor(len(jobs), mp_context=ctx, initializer=_join_barrier, initargs=(barrier,)) as pool:
        futures = [pool.submit(_time_in_child, job) for job in jobs]
        failed = [(job, e) for job, f in zip(jobs, futures) if (e := f.exception()) is not None]
    first = [x for x in failed if not isinstance(x[1], threading.BrokenBarrierError)] or failed
    if first:
        job, e = first[0]
        if isinstance(e, DoraError):
            raise e
        raise ProfileError(f"timing {job[0]} on core {job[3]} failed: {e}; run `dora calibrate` again, or with "
                           "--workers 1 to time one core alone") from e


def _host_memory_gb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError, AttributeError):
        return 8.0
