"""A runtime worker: one process per device, one rank of the `torch.distributed` group.

Start it with the standard env vars (MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE), by
hand, under torchrun, or spawned by the coordinator (`dora run`): rank 0 is always
the coordinator. The worker announces its device name, receives the run's settings,
then executes commands from the coordinator until told to stop:

- `plan`: take a stage of a new plan; weights of blocks whose owner changes arrive
  from their previous owner (or, at first deployment, from the coordinator);
- `infer`: one request: inject it (source), run this device's slice of each
  micro-batch through its stage, collect the answer (source, in a background thread
  so that several requests are in flight);
- `train`: one iteration: 1F1B over micro-batches, ring all-reduce of gradients
  inside the stage's data-parallel group, SGD step;
- `probe`: paced test flows (checks the network emulation); `stats`; `stop`.

Messages between workers are paced by the network emulation and compute is stretched
to the device's modelled speed (`emulation.py`)."""

from __future__ import annotations

import argparse
import datetime
import os
import queue
import signal
import sys
import threading
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from dora_rl.errors import RuntimeFault
from dora_rl.runtime.comm import (TAG_ACK, TAG_BWD, TAG_CTRL, TAG_FWD, TAG_INPUT, TAG_PROBE, TAG_REPLY, TAG_RING,
                                  TAG_WEIGHTS, Pending, Transmitter, irecv_tensor, isend_obj, isend_tensor, overlaps,
                                  recv_obj, sample_edges, send_obj, wait_tensors)
from dora_rl.runtime.emulation import ComputeClock, NetEmulator, now, sleep_until

DTYPES = {"float32": torch.float32, "int64": torch.int64, "float64": torch.float64}


class Worker:
    def __init__(self, device: str, rank: int, world: int):
        self.device = device
        self.rank = rank
        self.world = world
        self.blocks: dict[int, nn.Module] = {}
        self.opt_state: dict[int, dict[str, torch.Tensor]] = {}
        self.plan = None
        self.pending = Pending()
        self.reply_lock = threading.Lock()
        self.local: dict = {}
        self.collect_q: queue.Queue = queue.Queue()
        self.collector = None
        self.sent_bytes = 0.0
        self.recv_bytes = 0.0
        self.faults = None   # [faults] WorkerFaults when fault tolerance is on

    # ------------------------------------------------------------------ setup
    def setup(self, cfg: dict) -> None:
        self.cfg = cfg
        self.names = cfg["names"]
        self.idx = self.names.index(self.device)
        self.ranks = cfg["ranks"]
        self.source = cfg["source"]
        self.is_source = self.device == self.source
        self.fp = cfg["flops_prefix"]
        self.shapes = [tuple(s) for s in cfg["shapes"]]
        self.dtypes = [DTYPES[d] for d in cfg["dtypes"]]
        self.emulate = cfg["emulate"]
        if cfg.get("network") == "netns":   # [netns] the kernel (tc) shapes the bytes: no calendar, latency floor
            from dora_rl.runtime.netns import KernelNet
            self.net = KernelNet(cfg["net"])
        else:
            self.net = NetEmulator(cfg["net"], cfg["calendar"] if self.emulate else None)
        self.clock = ComputeClock(cfg["flops_per_s"], self.emulate)
        self.tx = Transmitter(self.net, self.idx, self.ranks, self.names, self.emulate)
        self.lr = cfg.get("lr", 0.01)
        self.momentum = cfg.get("momentum", 0.0)
        if self.is_source:
            self.collector = threading.Thread(target=self._collect_loop, daemon=True)
            self.collector.start()

    def book(self, dst_dev: str, nbytes: float) -> float:
        self.sent_bytes += nbytes
        return self.net.book(self.idx, self.names.index(dst_dev), nbytes)

    def send_tensor(self, dst_dev: str, t: torch.Tensor, tag: int) -> None:
        self.sent_bytes += t.numel() * t.element_size()
        self.tx.send(dst_dev, t, tag)

    def flush(self) -> None:
        self.tx.flush()
        self.pending.wait()

    # ------------------------------------------------------------------ main loop
    def serve(self) -> None:
        while True:
            cmd = recv_obj(0, TAG_CTRL)
            op = cmd["op"]
            if op == "stop":
                break
            handler = getattr(self, "op_" + op)
            if self.faults is not None:   # [faults] freeze point for a rejoin (faults.py)
                self.faults.gate(op)
            handler(cmd)
            if self.faults is not None:   # [faults]
                self.faults.done()
        self.flush()
        self.tx.close()
        if self.is_source:
            self.collect_q.put(None)
            self.collector.join(timeout=30)

    def ack(self, obj: dict) -> None:
        self.pending.add(isend_obj(obj, 0, TAG_ACK))

    # ------------------------------------------------------------------ plans
    def op_plan(self, cmd: dict) -> None:
        """Adopt a plan: send blocks that move away, receive blocks that move here."""
        t0 = now()
        self.flush()
        plan = cmd["plan"]
        moves = cmd.get("moves", [])
        out: dict[str, dict] = {}
        for b, src, dst in moves:
            if src == self.device:
                out.setdefault(dst, {})[b] = (self.blocks[b], self.opt_state.get(b, {}))
        sends = Pending()
        for dst, blocks in out.items():
            sends.add(isend_obj(blocks, self.ranks[dst], TAG_WEIGHTS, book=lambda n, d=dst: self.book(d, n)))
        for src in sorted({s for b, s, d in moves if d == self.device}):
            got, n = recv_obj(self.ranks[src], TAG_WEIGHTS, with_meta=True)
            self.recv_bytes += n
            for b, (mod, st) in got.items():
                self.blocks[b] = mod
                self.opt_state[b] = st
        for b, mod in cmd.get("weights", {}).items():
            self.blocks[b] = mod
            self.opt_state[b] = {}
        for b, st in cmd.get("opt", {}).items():   # [faults] optimizer state shipped with re-deployed blocks
            self.opt_state[b] = st
        if "version" in cmd and self.faults is not None:   # [faults]
            self.faults.version = cmd["version"]
        sends.wait()
        self._adopt(plan, keep=bool(cmd.get("keep")))
        self.ack({"op": "plan", "device": self.device, "seconds": now() - t0,
                  "blocks": sorted(self.blocks)})

    def _adopt(self, plan: dict, keep: bool = False) -> None:
        """Run `plan` from now on. `keep` (inference): blocks this worker no longer owns
        stay in memory - the device's flash copy - so a later switch back moves nothing;
        training drops them (their parameters would go stale)."""
        self.plan = plan
        self.stages = [(s["blocks"][0], s["blocks"][1], list(s["devices"]), list(s["shares"]))
                       for s in plan["stages"]]
        self.S = len(self.stages)
        self.M = plan["microbatches"]
        self.my_stage = None
        for s, (l, r, devs, sh) in enumerate(self.stages):
            if self.device in devs:
                self.my_stage = s
        owned = set()
        if self.my_stage is not None:
            l, r, _, _ = self.stages[self.my_stage]
            owned = set(range(l, r))
            missing = owned - set(self.blocks)
            if missing:
                raise RuntimeFault(f"worker {self.device}: plan needs blocks {sorted(missing)} that never arrived")
            self.module = nn.Sequential(*[self.blocks[b] for b in range(l, r)])
            self.module.eval()   # inference semantics for BN/dropout also in training (frozen statistics)
        else:
            self.module = None
        for b in list(self.blocks):
            if b not in owned and not keep:
                del self.blocks[b]
                self.opt_state.pop(b, None)
        self._edges_cache: dict = {}

    def groups(self, training: bool):
        src = ([self.source], [1.0])
        g = [src] + [(st[2], st[3]) for st in self.stages]
        if not training:
            g.append(src)
        return g

    def boundary_block(self, k: int) -> int:
        """Index into `shapes` of the tensor crossing boundary k (0: input, S: output)."""
        return 0 if k == 0 else self.stages[k - 1][1]

    def links(self, k: int, m: int, training: bool):
        """Overlaps for boundary k (group k -> group k+1) with micro-batch size m."""
        key = (k, m, training)
        if key not in self._edges_cache:
            g = self.groups(training)
            a, b = g[k], g[k + 1]
            self._edges_cache[key] = overlaps(a[0], sample_edges(m, a[1]), b[0], sample_edges(m, b[1]))
        return self._edges_cache[key]

    def my_range(self, s: int, m: int) -> tuple[int, int]:
        _, _, devs, sh = self.stages[s]
        e = sample_edges(m, sh)
        i = devs.index(self.device)
        return e[i], e[i + 1]

    # ------------------------------------------------------------------ moving pieces
    def scatter(self, k: int, j: int, m: int, x: torch.Tensor, x_lo: int, training: bool, tagbase=TAG_FWD) -> None:
        """Send the samples of x (global range starting at x_lo) over boundary k to
        the next group's members (local hand-off if the receiver is this device)."""
        for a, b, lo, hi in self.links(k, m, training):
            if a != self.device:
                continue
            piece = x[lo - x_lo: hi - x_lo]
            if b == self.device:
                self.local[(k, j, lo)] = piece
            else:
                self.send_tensor(b, piece, tagbase + k)

    def gather(self, k: int, j: int, m: int, training: bool) -> torch.Tensor:
        """Receive this device's samples of micro-batch j crossing boundary k."""
        bb = self.boundary_block(k)
        posted, local = [], []
        for a, b, lo, hi in self.links(k, m, training):
            if b != self.device:
                continue
            if a == self.device:
                local.append((lo, self.local.pop((k, j, lo))))
            else:
                posted.append((lo, irecv_tensor((hi - lo,) + self.shapes[bb], self.dtypes[bb],
                                                self.ranks[a], TAG_FWD + k)))
        got = wait_tensors([p for _, p in posted])
        for (lo, _), t in zip(posted, got):
            self.recv_bytes += t.numel() * t.element_size()
            local.append((lo, t))
        local.sort(key=lambda p: p[0])
        return local[0][1] if len(local) == 1 else torch.cat([t for _, t in local])

    def flops(self, s: int, n: int) -> float:
        l, r = self.stages[s][0], self.stages[s][1]
        return n * (self.fp[r] - self.fp[l])

    # ------------------------------------------------------------------ inference
    def op_infer(self, cmd: dict) -> None:
        rid, batch = cmd["rid"], cmd["batch"]
        M = self.M
        m = batch // M
        t0 = now()
        if self.is_source:
            if "x_meta" in cmd:   # the input follows the command as a raw tensor message
                shape, dt = cmd["x_meta"]
                x = wait_tensors([irecv_tensor(tuple(shape), DTYPES[dt], 0, TAG_INPUT)])[0]
            else:
                x = cmd["x"]
            remote = []
            for j in range(M):
                self.scatter(0, j, m, x[j * m:(j + 1) * m], 0, False)
                for a, b, lo, hi in self.links(self.S, m, False):
                    if a != self.device:
                        remote.append((j, lo, hi, a))
            entry = {"rid": rid, "t0": t0, "pieces": {}, "need": sum(
                1 for a, b, lo, hi in self.links(self.S, m, False)) * M, "lock": threading.Lock()}
            self.current_entry = entry
            self.collect_q.put((entry, remote))
        if self.my_stage is not None:
            s = self.my_stage
            lo_, hi_ = self.my_range(s, m)
            for j in range(M):
                if hi_ <= lo_:
                    continue
                x = self.gather(s, j, m, False)
                t = now()
                with torch.no_grad():
                    y = self.module(x)
                self.clock.stretch(t, self.flops(s, hi_ - lo_))
                if s == self.S - 1 and self.is_source:
                    self._add_piece(self.current_entry, j, lo_, y)
                else:
                    self.scatter(s + 1, j, m, y, lo_, False)

    def _add_piece(self, entry: dict, j: int, lo: int, t: torch.Tensor) -> None:
        with entry["lock"]:
            entry["pieces"][(j, lo)] = t
            done = len(entry["pieces"]) == entry["need"]
        if done:
            out = torch.cat([entry["pieces"][k] for k in sorted(entry["pieces"])])
            with self.reply_lock:
                self.pending.add(isend_obj({"rid": entry["rid"], "y": out, "t0": entry["t0"], "t1": now()},
                                           0, TAG_REPLY))

    def _collect_loop(self) -> None:
        """Source only: receive answer pieces in request order (several requests in flight)."""
        try:
            while True:
                item = self.collect_q.get()
                if item is None:
                    with self.reply_lock:
                        send_obj({"rid": None}, 0, TAG_REPLY)
                    return
                entry, remote = item
                bb = len(self.shapes) - 1
                posted = [(j, lo, irecv_tensor((hi - lo,) + self.shapes[bb], self.dtypes[bb], self.ranks[a],
                                               TAG_FWD + self.S)) for j, lo, hi, a in remote]
                for j, lo, p in posted:
                    t = wait_tensors([p])[0]
                    self.recv_bytes += t.numel() * t.element_size()
                    self._add_piece(entry, j, lo, t)
        except Exception as e:  # surface to the coordinator instead of dying silently
            try:
                with self.reply_lock:
                    send_obj({"rid": None, "error": f"{self.device}: {e}"}, 0, TAG_REPLY)
            except Exception:
                pass

    # ------------------------------------------------------------------ training
    def op_train(self, cmd: dict) -> None:
        if self.faults is not None and "v" in cmd:   # [faults] snapshot at the iteration boundary
            self.faults.begin_iteration(self, cmd["v"])
        self._op_train(cmd)
        if self.faults is not None and "v" in cmd:   # [faults]
            self.faults.end_iteration(cmd["v"])

    def _op_train(self, cmd: dict) -> None:
        t0 = now()
        batch = cmd["batch"]
        M, S = self.M, self.S
        m = batch // M
        if self.is_source:
            x = cmd["x"]
            for j in range(M):
                self.scatter(0, j, m, x[j * m:(j + 1) * m], 0, True)
        s = self.my_stage
        if s is not None:
            lo_, hi_ = self.my_range(s, m)
            n = hi_ - lo_
            saved = {}
            y_all = cmd.get("y")
            denom = cmd["denom"]

            def fwd(j):
                x = self.gather(s, j, m, True)
                if s > 0:
                    x.requires_grad_(True)
                t = now()
                y = self.module(x)
                if s == S - 1:
                    lab = y_all[j * m + lo_: j * m + hi_]
                    y = F.cross_entropy(y.reshape(-1, y.shape[-1]), lab.reshape(-1), reduction="sum") / denom
                self.clock.stretch(t, self.flops(s, n))
                if s < S - 1:
                    self.scatter(s + 1, j, m, y.detach(), lo_, True)
                saved[j] = (x, y)

            def bwd(j):
                x, y = saved.pop(j)
                if s == S - 1:
                    t = now()
                    y.backward()
                else:
                    g = self.gather_grad(s, j, m, lo_)
                    t = now()
                    y.backward(g)
                self.clock.stretch(t, 2 * self.flops(s, n))
                if s > 0:
                    self.scatter_grad(s, j, m, x.grad, lo_)

            if n > 0:
                warm = min(S - s - 1, M)
                for j in range(warm):
                    fwd(j)
                for j in range(M - warm):
                    fwd(warm + j)
                    bwd(j)
                for j in range(M - warm, M):
                    bwd(j)
            self.allreduce_and_step(s)
        self.flush()
        self.ack({"op": "train", "device": self.device, "t0": t0, "t1": now()})

    def gather_grad(self, s: int, j: int, m: int, my_lo: int) -> torch.Tensor:
        """Gradient of my stage output, from the next stage's members (boundary s+1)."""
        k = s + 1
        bb = self.boundary_block(k)
        posted = []
        for a, b, lo, hi in self.links(k, m, True):
            if a == self.device:   # I sent them samples [lo, hi) forward; the gradient comes back
                posted.append((lo, irecv_tensor((hi - lo,) + self.shapes[bb], torch.float32,
                                                self.ranks[b], TAG_BWD + k)))
        got = wait_tensors([p for _, p in posted])
        for t in got:
            self.recv_bytes += t.numel() * t.element_size()
        pieces = sorted(zip([lo for lo, _ in posted], got), key=lambda p: p[0])
        return pieces[0][1] if len(pieces) == 1 else torch.cat([t for _, t in pieces])

    def scatter_grad(self, s: int, j: int, m: int, g: torch.Tensor, my_lo: int) -> None:
        k = s   # boundary into my stage
        for a, b, lo, hi in self.links(k, m, True):
            if b != self.device:
                continue
            self.send_tensor(a, g[lo - my_lo: hi - my_lo], TAG_BWD + k)

    def allreduce_and_step(self, s: int) -> None:
        params = [(b, name, p) for b in sorted(self.blocks) for name, p in self.blocks[b].named_parameters()]
        for _, _, p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        devs = self.stages[s][2]
        if len(devs) > 1 and params:
            flat = torch.cat([p.grad.reshape(-1) for _, _, p in params])
            self.ring_allreduce(flat, devs)
            off = 0
            for _, _, p in params:
                k = p.numel()
                p.grad.copy_(flat[off:off + k].view_as(p))
                off += k
        with torch.no_grad():
            for b, name, p in params:
                d = p.grad
                if self.momentum:
                    st = self.opt_state.setdefault(b, {})
                    buf = st.get(name)
                    if buf is None:
                        buf = st[name] = d.clone()
                    else:
                        buf.mul_(self.momentum).add_(d)
                    d = buf
                p.add_(d, alpha=-self.lr)
                p.grad = None

    def ring_allreduce(self, flat: torch.Tensor, devs: list[str]) -> None:
        """Sum `flat` over the group in place: reduce-scatter then all-gather around the
        ring in group order, 2(g-1) steps of one chunk each (the cost model's formula)."""
        g = len(devs)
        p = devs.index(self.device)
        nxt, prv = devs[(p + 1) % g], devs[(p - 1) % g]
        chunks = list(torch.tensor_split(flat, g))
        for phase in (0, 1):
            for t in range(g - 1):
                si = (p - t) % g if phase == 0 else (p + 1 - t) % g
                ri = (p - t - 1) % g if phase == 0 else (p - t) % g
                self.send_tensor(nxt, chunks[si].clone(), TAG_RING)
                got = wait_tensors([irecv_tensor(chunks[ri].shape, flat.dtype, self.ranks[prv], TAG_RING)])[0]
                self.recv_bytes += got.numel() * got.element_size()
                if phase == 0:
                    chunks[ri].add_(got)
                else:
                    chunks[ri].copy_(got)

    # ------------------------------------------------------------------ probe / stats
    def op_probe(self, cmd: dict) -> None:
        """Paced test flows: [(src, dst, nbytes, count)], all starting at cmd['t0'].
        With cmd['ack'] false nothing is acknowledged: the pacer's transfer report (the
        heartbeat's `xfer`) carries the measurement (live bandwidth probes)."""
        t0 = cmd.get("t0") or now()
        sleep_until(t0)
        rates = {}
        for i, (src, dst, nbytes, count) in enumerate(cmd["flows"]):
            if src == self.device:
                buf = torch.zeros(int(nbytes), dtype=torch.uint8)
                for _ in range(count):
                    self.send_tensor(dst, buf, TAG_PROBE + 1000 * i)
        for i, (src, dst, nbytes, count) in enumerate(cmd["flows"]):
            if dst == self.device:
                for _ in range(count):
                    wait_tensors([irecv_tensor((int(nbytes),), torch.uint8, self.ranks[src], TAG_PROBE + 1000 * i)])
                rates[i] = nbytes * count / (now() - t0)
        self.flush()
        if cmd.get("ack", True):
            self.ack({"op": "probe", "device": self.device, "rates": rates})

    def op_stats(self, cmd: dict) -> None:
        self.flush()
        snap = self.clock.snapshot()
        snap.update(device=self.device, sent_bytes=self.sent_bytes, recv_bytes=self.recv_bytes, op="stats")
        if cmd.get("reset"):
            self.clock.reset()
            self.sent_bytes = self.recv_bytes = 0.0
        self.ack(snap)

    def op_checkpoint(self, cmd: dict) -> None:   # [faults] parameters + optimizer state per block
        self.flush()
        self.ack({"op": "checkpoint", "state": {
            b: ({k: v.detach().clone() for k, v in m.state_dict().items()},
                {k: v.clone() for k, v in self.opt_state.get(b, {}).items()}) for b, m in self.blocks.items()}})

    def op_params(self, cmd: dict) -> None:
        self.flush()
        self.ack({"op": "params", "params": {b: {k: v.detach().clone() for k, v in m.state_dict().items()}
                                             for b, m in self.blocks.items()}})

    def op_reset_calendar(self, cmd: dict) -> None:
        if self.net.cal is not None:
            self.net.cal.reset()
        self.ack({"op": "reset_calendar"})


# ---------------------------------------------------------------------- entry point

def _watch_parent(pid: int) -> None:
    """Exit if the process that spawned us disappears (no orphans after a crash)."""
    def loop():
        while True:
            time.sleep(1.0)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os._exit(3)
            except PermissionError:
                pass
    threading.Thread(target=loop, daemon=True).start()


def _tune_malloc() -> None:
    """Keep freed activation buffers in the heap instead of returning them to the OS.

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


def run_worker(device: str, timeout: float = 60.0, scenario=None) -> int:
    """Join the group (env vars), serve until stopped. Raises RuntimeFault on failure."""
    if scenario is not None:
        from dora_rl.scenario import load_scenario
        sc = load_scenario(scenario)
        if device not in sc.cluster.index:
            raise RuntimeFault(f"device {device!r} is not in scenario {sc.name!r}; "
                               f"known devices: {', '.join(sc.cluster.names)}")
    missing = [v for v in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE") if v not in os.environ]
    if missing:
        raise RuntimeFault(f"worker {device}: environment variable(s) {', '.join(missing)} not set; a worker joins "
                           "the coordinator's group via MASTER_ADDR, MASTER_PORT, RANK (>= 1) and WORLD_SIZE")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if rank < 1:
        raise RuntimeFault(f"worker {device}: RANK must be >= 1 (rank 0 is the coordinator), got {rank}")
    if os.environ.get("DORA_PARENT_PID"):
        _watch_parent(int(os.environ["DORA_PARENT_PID"]))
    fx = None
    if os.environ.get("DORA_HB_PORT"):   # [faults] heartbeats + rejoin orders (faults.py)
        from dora_rl.runtime.faults import WorkerFaults
        fx = WorkerFaults(device)
    torch.set_num_threads(1)
    _tune_malloc()
    addr = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    try:
        dist.init_process_group("gloo", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=timeout))
    except Exception as e:  # noqa: BLE001  (timeouts and connection errors come as several types)
        raise RuntimeFault(f"worker {device}: cannot reach the coordinator at {addr} within {timeout:g} s "
                           f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    try:
        hello = {"device": device}
        resumed = {}
        if fx is not None:   # [faults] a re-executed survivor reports the blocks it kept
            from dora_rl.runtime.faults import worker_resume
            resumed = worker_resume()
            hello.update(blocks=sorted(resumed.get("blocks", {})), version=resumed.get("version", -1))
        send_obj(hello, 0, TAG_ACK)
        cfg = recv_obj(0, TAG_CTRL)
        if cfg.get("op") == "error":
            raise RuntimeFault(cfg["message"])
        w = Worker(device, rank, world)
        w.setup(cfg)
        if fx is not None:   # [faults]
            w.faults, fx.worker = fx, w
            w.blocks.update(resumed.get("blocks", {}))
            w.opt_state.update(resumed.get("opt_state", {}))
        w.serve()
    except RuntimeFault:
        if fx is not None:   # [faults] a peer died: keep heartbeating, wait for the rejoin order (re-exec)
            fx.wait_for_order(timeout)
        raise
    except Exception as e:  # noqa: BLE001
        if fx is not None:   # [faults]
            fx.wait_for_order(timeout)
        raise RuntimeFault(f"worker {device}: lost the coordinator or a peer ({type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else ''})") from None
    finally:
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001
            pass
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="dora worker")
    p.add_argument("--device", required=True)
    p.add_argument("--scenario", default=None)
    p.add_argument("--timeout", type=float, default=60.0)
    a = p.parse_args(argv)
    signal.signal(signal.SIGINT, lambda *_: os._exit(130))
    try:
        return run_worker(a.device, a.timeout, a.scenario)
    except RuntimeFault as e:
        sys.stderr.write(f"dora: error: {' '.join(str(e).split())}\n")
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
