"""Time each block of a zoo model on this machine -> a `DeviceProfile` (what
`dora profile MODEL --measure` and `dora calibrate` run).

Per batch size: `warmup` untimed rounds, then `repeats` timed rounds; a round runs
the chain once on a seeded random input, each block on the previous block's output,
and times per block (a) the inference forward under `torch.no_grad()`, and with
`training` (b) the forward with autograd on and (c) the backward of that forward
(gradient of a seeded random output cotangent; parameters and, except for block 0, the
input get gradients). A block's figure is its median over the timed rounds. Blocks
run in eval mode, as the runtime's workers run them, and under the workers' allocator
settings (`tune_malloc`). The process runs with `threads` torch threads, pinned to
`cpus` if given (os.sched_setaffinity)."""

from __future__ import annotations

import logging
import os
import platform
import socket
import statistics
import sys
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


def tune_malloc() -> None:
    """Keep freed activation buffers in the heap instead of returning them to the OS
    (process-wide, and it stays: the runtime's workers run with it, and block times are
    measured with it so that they are the times a worker sees; mobilenet_v2 on one core
    of this host: 24.5 ms per forward without, 16-17 ms with).

    With glibc's defaults every large activation (tens of MB for early CNN layers) is
    mmap'ed, zero-filled page by page and munmap'ed again (or the heap is trimmed), so
    a stage spends a sizeable share of its time in page faults (~15-20% system time
    for resnet18's first blocks). A worker runs the same shapes over and over, so a
    fixed mmap threshold (32 MiB, glibc's maximum; also stops the dynamic one) and no
    trimming below 1 GiB let it reuse the same pages. DORA_MALLOC_TUNE=0 disables."""
    if os.environ.get("DORA_MALLOC_TUNE", "1") == "0" or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        libc.mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024)
        libc.mallopt(M_TRIM_THRESHOLD, 1024 * 1024 * 1024)
    except (OSError, AttributeError):   # not glibc: keep the allocator's defaults
        pass


def host_facts() -> dict:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return {"hostname": socket.gethostname(), "cpu": cpu, "cpu_count": os.cpu_count(),
            "platform": platform.platform(), "torch": torch.__version__}


def measure_profile(model: str, *, batch_sizes=(1,), training: bool = False, threads: int = 1,
                    cpus: list[int] | None = None, warmup: int = 3, repeats: int = 7,
                    seed: int = 0, ready=None) -> DeviceProfile:
    """Time every block of zoo model `model` at each batch size (see the module doc).
    `ready`, if given, is called once the model and inputs are built, just before the
    timing starts (`dora calibrate` passes a barrier so workers time together)."""
    sizes = sorted({int(b) for b in batch_sizes})
    if not sizes or sizes[0] < 1:
        raise ProfileError(f"batch sizes must be whole numbers >= 1, got {list(batch_sizes)}")
    if int(threads) < 1:
        raise ProfileError(f"--threads must be >= 1, got {threads}")
    if warmup < 0 or repeats < 1:
        raise ProfileError(f"warm-up must be >= 0 and repeats >= 1, got {warmup} and {repeats}")
    before = (torch.get_num_threads(), os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None)
    tune_malloc()      # the allocator a worker runs with (it stays set: see tune_malloc)
    pinned = pin(cpus, threads)
    try:
        return _time_blocks(model, sizes, training, threads, pinned, warmup, repeats, seed, ready)
    finally:   # a library call must not leave its caller pinned to one core and one thread
        torch.set_num_threads(before[0])
        if before[1] is not None and pinned is not None:
            os.sched_setaffinity(0, before[1])


def _time_blocks(model, sizes, training, threads, pinned, warmup, repeats, seed, ready) -> DeviceProfile:
    """The timing loop of `measure_profile`, in the thread count and cores already set.

    Rounds, not one loop per block: a round runs the whole chain once (block b on block
    b-1's output, as a worker runs it) and times every block; a block's figure is its
    median over the rounds. A slow spell of the host (other tenants, clock changes)
    then lands on one round of every block, not on all the repeats of a few blocks."""
    net, ex = build_model(model, seed=seed)
    net.eval()
    blocks = list(net)
    g = torch.Generator().manual_seed(seed)
    shape = tuple(ex.shape[1:])
    inputs = [torch.randn((n,) + shape, generator=g) if ex.dtype.is_floating_point
              else torch.randint(0, 1000, (n,) + shape, generator=g) for n in sizes]
    cots = [_cotangents(blocks, x, g) for x in inputs] if training else None
    if ready is not None:
        ready()
    fwd, tfwd, bwd = ([[0.0] * len(sizes) for _ in blocks] for _ in range(3))
    for i, x0 in enumerate(inputs):
        rounds = []
        for _ in range(warmup + repeats):
            rounds.append(_round(blocks, x0, cots[i] if training else None))
            net.zero_grad(set_to_none=True)
        for phase, rows in enumerate((fwd, tfwd, bwd)[:3 if training else 1]):
            for b in range(len(blocks)):
                rows[b][i] = statistics.median(r[phase][b] for r in rounds[warmup:])
        log.info("timed %s at batch %d", model, sizes[i])
    names = [n for n, _ in net.named_children()]
    return DeviceProfile(model, names, sizes, fwd, tfwd if training else None, bwd if training else None,
                         int(threads), pinned, host_facts(),
                         {"warmup": warmup, "repeats": repeats, "statistic": "median over rounds", "mode": "eval",
                          "dtype": str(ex.dtype).replace("torch.", "")})


def _cotangents(blocks, x, g) -> list:
    """A seeded random output gradient per block (None where the output is not float)."""
    out = []
    with torch.no_grad():
        for block in blocks:
            x = block(x)
            out.append(torch.randn(x.shape, generator=g) if x.is_floating_point() else None)
    return out


def _round(blocks, x0, cots) -> tuple[list[float], ...]:
    """One pass over the chain: seconds per block of the inference forward and, with
    `cots`, of the forward with autograd on and of its backward (each block's input is
    a leaf that, past block 0, wants its gradient, as a pipeline stage sends it back)."""
    clock = time.perf_counter
    fw, x = [], x0
    with torch.no_grad():
        for block in blocks:
            t = clock()
            x = block(x)
            fw.append(clock() - t)
    if cots is None:
        return (fw,)
    tf, outs, x = [], [], x0
    for b, block in enumerate(blocks):
        xin = x.detach().requires_grad_(b > 0 and x.is_floating_point())
        t = clock()
        x = block(xin)
        tf.append(clock() - t)
        outs.append(x)
    bw = [0.0] * len(blocks)
    for b in reversed(range(len(blocks))):
        if cots[b] is not None and outs[b].requires_grad:
            t = clock()
            outs[b].backward(cots[b])
            bw[b] = clock() - t
    return fw, tf, bw
