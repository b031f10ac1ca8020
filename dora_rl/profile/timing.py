"""Time each block of a zoo model on this machine -> a `DeviceProfile` (what
`dora profile MODEL --measure` and `dora calibrate` run).

Per block and batch size: the block's real input (the previous blocks' output on a
seeded random input), `warmup` untimed calls, then the median of `repeats` timed calls
of (a) the inference forward under `torch.no_grad()`, and with `training` (b) the
forward with autograd on and (c) the backward of that forward (gradient of a random
output cotangent; parameters and, except for block 0, the input get gradients). Blocks
run in eval mode, as the runtime's workers run them. The process runs with `threads`
torch threads, pinned to `cpus` if given (os.sched_setaffinity)."""

from __future__ import annotations

import logging
import os
import platform
import socket
import statistics
import time

import torch

from dora_rl.errors import ProfileError
from dora_rl.profile.measured import DeviceProfile
from dora_rl.profile.zoo import build_model

log = logging.getLogger(__name__)


def pin(cpus: list[int] | None, threads: int) -> list[int] | None:
    """Pin this process to `cpus` (where the OS allows it) and set torch's thread count.
    Returns the cores actually pinned to (None: not pinned)."""
    torch.set_num_threads(int(threads))
    if not cpus or not hasattr(os, "sched_setaffinity"):
        return None
    try:
        os.sched_setaffinity(0, set(cpus))
    except OSError as e:
        log.warning("cannot pin to cores %s (%s); timing unpinned", cpus, e)
        return None
    return sorted(cpus)


def host_facts() -> dict:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return {"hostname": socket.gethostname(), "cpu": cpu, "cpu_count": os.cpu_count(),
            "platform": platform.platform(), "torch": torch.__version__}


def _median_time(fn, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def measure_profile(model: str, *, batch_sizes=(1,), training: bool = False, threads: int = 1,
                    cpus: list[int] | None = None, warmup: int = 3, repeats: int = 7,
                    seed: int = 0) -> DeviceProfile:
    """Time every block of zoo model `model` at each batch size (see the module doc)."""
    sizes = sorted({int(b) for b in batch_sizes})
    if not sizes or sizes[0] < 1:
        raise ProfileError(f"batch sizes must be whole numbers >= 1, got {list(batch_sizes)}")
    if int(threads) < 1:
        raise ProfileError(f"--threads must be >= 1, got {threads}")
    if warmup < 0 or repeats < 1:
        raise ProfileError(f"warm-up must be >= 0 and repeats >= 1, got {warmup} and {repeats}")
    before = (torch.get_num_threads(), os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None)
    pinned = pin(cpus, threads)
    try:
        return _time_blocks(model, sizes, training, threads, pinned, warmup, repeats, seed)
    finally:   # a library call must not leave its caller pinned to one core and one thread
        torch.set_num_threads(before[0])
        if before[1] is not None and pinned is not None:
            os.sched_setaffinity(0, before[1])


def _time_blocks(model, sizes, training, threads, pinned, warmup, repeats, seed) -> DeviceProfile:
    """The timing loop of `measure_profile`, in the thread count and cores already set."""
    net, ex = build_model(model, seed=seed)
    net.eval()
    names = [n for n, _ in net.named_children()]
    fwd = [[0.0] * len(sizes) for _ in names]
    tfwd = [[0.0] * len(sizes) for _ in names] if training else None
    bwd = [[0.0] * len(sizes) for _ in names] if training else None
    g = torch.Generator().manual_seed(seed)
    for i, n in enumerate(sizes):
        if ex.dtype.is_floating_point:
            x = torch.randn((n,) + tuple(ex.shape[1:]), generator=g)
        else:
            x = torch.randint(0, 1000, (n,) + tuple(ex.shape[1:]), generator=g)
        for b, block in enumerate(net):
            with torch.no_grad():
                fwd[b][i] = _median_time(lambda block=block, x=x: block(x), warmup, repeats)
                y = block(x)
            if training:
                xin = x.detach().clone().requires_grad_(b > 0 and x.is_floating_point())
                tfwd[b][i] = _median_time(lambda block=block, xin=xin: block(xin), warmup, repeats)
                cot = torch.randn(y.shape, generator=g) if y.is_floating_point() else None

                def back(block=block, xin=xin, cot=cot):
                    out = block(xin)
                    t = time.perf_counter()
                    out.backward(cot)
                    return time.perf_counter() - t
                for _ in range(warmup):
                    back()
                bwd[b][i] = statistics.median(back() for _ in range(repeats))
                net.zero_grad(set_to_none=True)
            x = y
        log.info("timed %s at batch %d", model, n)
    return DeviceProfile(model, names, sizes, fwd, tfwd, bwd, int(threads), pinned, host_facts(),
                         {"warmup": warmup, "repeats": repeats, "statistic": "median", "mode": "eval",
                          "dtype": str(ex.dtype).replace("torch.", "")})
