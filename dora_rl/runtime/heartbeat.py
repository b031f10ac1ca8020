"""The heartbeat side channel of the fault-tolerant runtime: `HeartbeatServer` (coordinator)
and `WorkerFaults` (worker).

Every worker sends a heartbeat over a small TCP side channel (not the gloo group) every
`HB_PERIOD` seconds; the coordinator reads silence as a hung or unreachable worker
(faults.py). The channel also carries the workers' transfer measurements (bytes, seconds
per paced message) to the live adapter loop, and the recovery orders: a survivor told to
rejoin freezes, dumps the weights it holds at the resume point to a local file, marks its
descriptors close-on-exec and re-executes itself (same pid) with the new
MASTER_PORT/RANK/WORLD_SIZE; `worker_resume` reads the dump back after the re-exec.
`NoWorkerFaults` is what a worker without fault tolerance holds (every hook a no-op)."""

from __future__ import annotations

import copy
import fcntl
import json
import os
import socket
import socketserver
import sys
import tempfile
import threading
import time
from collections import deque

import torch

from dora_rl.runtime.emulation import now

HB_PERIOD = 0.25


# ====================================================================== coordinator side
class HeartbeatServer:
    """Coordinator side: one line-based JSON TCP server. A worker sends
    {"device", "gen", "xfer": [[dst, bytes, seconds], ...]} every HB_PERIOD and gets
    {"gen", "rejoin": {...} | null} back."""

    def __init__(self, addr: str = "127.0.0.1"):
        self.last: dict[str, float] = {}
        self.gen_of: dict[str, int] = {}
        self.orders: dict[str, dict] = {}
        self.xfers: deque = deque(maxlen=100_000)   # (t, src, dst, bytes, seconds)
        self.lock = threading.Lock()
        srv = self

        class H(socketserver.StreamRequestHandler):
            def handle(self):
                try:
                    self._serve()
                except (OSError, ValueError):
                    return   # the worker went away (killed or re-executed)

            def _serve(self):
                for line in self.rfile:
                    msg = json.loads(line)
                    dev = msg.get("device")
                    t = now()
                    with srv.lock:
                        srv.last[dev] = t
                        srv.gen_of[dev] = int(msg.get("gen", 0))
                        for dst, b, s in msg.get("xfer", ()):
                            srv.xfers.append((t, dev, dst, b, s))
                        order = srv.orders.get(dev)
                    self.wfile.write((json.dumps({"rejoin": order}) + "\n").encode())
                    self.wfile.flush()

        class S(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = S((addr, 0), H)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()

    def reset(self, devices, t: float | None = None) -> None:
        """Start the silence clock of `devices` now (after a (re)start)."""
        t = now() if t is None else t
        with self.lock:
            for d in devices:
                self.last[d] = max(self.last.get(d, 0.0), t)

    def silent(self, devices, limit: float) -> list[str]:
        """Devices not heard from for `limit` seconds. None while the channel itself was
        stalled (two or more workers and no heartbeat from any for limit / 2: this
        process was not scheduled, e.g. a loaded CPU or a long pickling in the
        coordinator): silence then says nothing about the workers."""
        t = now()
        devices = list(devices)
        with self.lock:
            heard = [self.last[d] for d in devices if d in self.last]
            if len(devices) > 1 and heard and t - max(heard) > limit / 2:
                return []
            return [d for d in devices if t - self.last.get(d, t) > limit]

    def order(self, orders: dict[str, dict]) -> None:
        with self.lock:
            self.orders = dict(orders)

    def at_gen(self, devices, gen: int) -> bool:
        with self.lock:
            return all(self.gen_of.get(d, -1) >= gen for d in devices)

    def take_transfers(self) -> list:
        with self.lock:
            out = list(self.xfers)
            self.xfers.clear()
        return out

    def close(self) -> None:
        try:
            self.server.shutdown()
            self.server.server_close()
        except OSError:   # the socket is already closed
            pass


# ====================================================================== worker side
class NoWorkerFaults:
    """Worker side without fault tolerance: the hooks `Worker` calls do nothing."""

    version = 0

    def gate(self, op: str) -> None:
        pass

    def done(self) -> None:
        pass

    def begin_iteration(self, w, v: int) -> None:
        pass

    def end_iteration(self, v: int) -> None:
        pass


class WorkerFaults:
    """Worker side: heartbeats, transfer reports, freeze + dump + re-exec on a rejoin order.
    Installed by `run_worker` when DORA_HB_PORT is set."""

    def __init__(self, device: str):
        self.device = device
        self.gen = int(os.environ.get("DORA_GEN", "0"))
        self.worker = None
        self.lock = threading.Lock()
        self.frozen = False
        self.busy: str | None = None
        self.snap = None             # (version, {b: module}, {b: opt_state}) at the start of the running iteration
        self.version = int(os.environ.get("DORA_VERSION", "0"))
        addr = os.environ.get("DORA_HB_ADDR") or os.environ.get("MASTER_ADDR", "127.0.0.1")
        self.addr = (addr, int(os.environ["DORA_HB_PORT"]))
        threading.Thread(target=self._loop, daemon=True).start()

    # ---------------------------------------------------------------- hooks used by worker.py
    def gate(self, op: str) -> None:
        """Before each command: block forever once frozen (a re-exec is coming)."""
        while True:
            with self.lock:
                if not self.frozen:
                    self.busy = op
                    return
            time.sleep(3600)

    def wait_for_order(self, timeout: float) -> None:
        """The main loop failed (a peer died): freeze and give the coordinator `timeout`
        seconds to order a rejoin (the heartbeat thread re-executes the process)."""
        with self.lock:
            self.frozen = True
            if self.busy == "train":
                pass   # the snapshot is the state to keep
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            time.sleep(0.1)

    def done(self) -> None:
        with self.lock:
            self.busy = None

    def begin_iteration(self, w, v: int) -> None:
        self.snap = (v, {b: copy.deepcopy(m) for b, m in w.blocks.items()}, copy.deepcopy(w.opt_state))

    def end_iteration(self, v: int) -> None:
        self.version = v + 1

    # ---------------------------------------------------------------- heartbeat thread
    def _loop(self) -> None:
        sock, rf = None, None
        while True:
            try:
                if sock is None:
                    sock = socket.create_connection(self.addr, timeout=5)
                    rf = sock.makefile("rb")
                msg = {"device": self.device, "gen": self.gen, "xfer": self._xfers()}
                sock.sendall((json.dumps(msg) + "\n").encode())
                line = rf.readline()
                if not line:
                    raise OSError("closed")
                order = json.loads(line).get("rejoin")
                if order and int(order["gen"]) > self.gen:
                    self._rejoin(order)
            except (OSError, ValueError):
                try:
                    if sock is not None:
                        sock.close()
                except OSError:
                    pass
                sock = None
            time.sleep(HB_PERIOD)

    def _xfers(self) -> list:
        w = self.worker
        net = getattr(w, "net", None) if w is not None else None
        obs = getattr(net, "observed", None)
        out = []
        if obs:
            names = w.names
            while obs:
                try:
                    j, b, s = obs.popleft()
                except IndexError:
                    break
                out.append([names[j], b, s])
        return out

    def _rejoin(self, order: dict) -> None:
        with self.lock:
            self.frozen = True
            busy = self.busy
        w = self.worker
        want = int(order.get("version", 0))
        blocks, opt, ver = {}, {}, -1
        if w is not None:
            if busy != "train" and self.version == want:
                blocks, opt, ver = dict(w.blocks), dict(w.opt_state), self.version
            elif self.snap is not None and self.snap[0] == want:
                _, blocks, opt = self.snap
                ver = want
        fd, path = tempfile.mkstemp(prefix=f"dora_resume_{self.device}_", suffix=".pt",
                                    dir=order.get("dir") or None)
        os.close(fd)
        torch.save({"version": ver, "blocks": blocks, "opt_state": opt}, path)
        for f in os.listdir("/proc/self/fd"):
            fdn = int(f)
            if fdn > 2:
                try:
                    fcntl.fcntl(fdn, fcntl.F_SETFD, fcntl.fcntl(fdn, fcntl.F_GETFD) | fcntl.FD_CLOEXEC)
                except OSError:
                    pass
        env = dict(os.environ, MASTER_PORT=str(order["port"]), RANK=str(order["rank"]),
                   WORLD_SIZE=str(order["world"]), DORA_GEN=str(order["gen"]), DORA_RESUME=path,
                   DORA_VERSION=str(max(ver, 0)))
        sys.stdout.flush()
        sys.stderr.flush()
        argv = list(getattr(sys, "orig_argv", None) or [sys.executable] + sys.argv)
        os.execve(sys.executable, [sys.executable] + argv[1:], env)


def worker_resume() -> dict:
    """The state a re-executed worker brought along ({} on a first start)."""
    path = os.environ.get("DORA_RESUME")
    if not path or not os.path.exists(path):
        return {}
    try:
        st = torch.load(path, weights_only=False)
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass
    return st
