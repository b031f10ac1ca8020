"""Failure detection and recovery for the runtime (`ResilientRuntime`).

Detection (within ~1 s for a dead process, `hb_timeout` (3 s) for a hung one):

- process poll: the coordinator polls its worker processes at every wait (0.1 s);
- heartbeats: every worker sends a heartbeat over a small TCP side channel (not the
  gloo group) every 0.25 s; a worker silent for `hb_timeout` is dead (hung, SIGSTOP,
  unreachable device). The channel also carries the workers' transfer measurements
  (bytes, seconds per paced message) to the live adapter loop, and the recovery orders;
- per-request deadlines: a request unanswered for `request_deadline` seconds (an
  iteration: `timeout`) triggers a check and, when nobody is found dead, a rebuild
  with every worker.

Recovery: gloo cannot drop a member from a group, so the group is rebuilt. The
coordinator re-plans on the survivors (the `dora` planner, or a callback such as the
live adapter, on the scenario with the dead devices removed; a dead *source* is
fatal), picks a new port and world, and orders every survivor (heartbeat reply) to
rejoin: the survivor freezes, dumps the weights it holds at the resume point to a
local file, marks its descriptors close-on-exec and re-executes itself (same pid) with
the new MASTER_PORT/RANK/WORLD_SIZE. Its old gloo sockets close, which unblocks
every pending receive on the coordinator; the coordinator destroys its group and
forms the new one. Survivors keep the blocks they still own (reported in their
hello), the coordinator ships the rest from its own copy.

Inference: every admitted request is answered exactly once: requests in flight when
the fault hit are re-issued after recovery, late or duplicate answers are dropped by id.
Training: the coordinator keeps parameters + optimizer state at every iteration
boundary (fetched from the workers after each iteration, `checkpoint=True`); workers
snapshot their blocks at the start of each iteration. After a fault every device is
put back to the last completed iteration and the interrupted one is re-run: no
update lost or applied twice, so the final parameters equal the fault-free run's.

Not supported with `network="netns"` (the side channel lives in the root namespace)."""

from __future__ import annotations

import copy
import fcntl
import json
import os
import queue
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque

import torch
import torch.distributed as dist

from dora_rl.errors import PlanError, RuntimeFault
from dora_rl.plan import Plan
from dora_rl.runtime.comm import TAG_ACK, TAG_CTRL, Pending, recv_obj, send_obj
from dora_rl.runtime.coordinator import PKG_ROOT, InferenceResult, Runtime, TrainResult, free_port
from dora_rl.runtime.emulation import now, sleep_until
from dora_rl.scenario import Scenario

HB_PERIOD = 0.25


class WorkerLost(RuntimeFault):
    """One or more workers died or stopped answering (`devices`; empty: unknown)."""

    def __init__(self, devices, why: str = ""):
        self.devices = set(devices)
        super().__init__(f"lost worker(s) {', '.join(sorted(self.devices)) or '?'}: {why}")


def without_devices(scenario: Scenario, dead) -> Scenario:
    """The scenario with devices `dead` (and their links) removed."""
    from dora_rl.cluster.model import Cluster
    d = scenario.cluster.to_dict()
    d["devices"] = [x for x in d["devices"] if x["name"] not in dead]
    d["links"] = [ln for ln in d["links"] if ln["a"] not in dead and ln["b"] not in dead]
    return scenario.replace(cluster=Cluster.from_dict(d))


def dora_replan(scenario: Scenario) -> Plan:
    from dora_rl.cost import CostModel
    from dora_rl.planners import get_planner
    return get_planner("dora").plan(scenario, CostModel(scenario))


def parse_fail(spec: str) -> tuple[str, float]:
    """'DEVICE@SECONDS' -> (device, seconds)."""
    dev, sep, t = str(spec).rpartition("@")
    try:
        sec = float(t)
    except ValueError:
        sec = -1.0
    if not sep or not dev or not sec >= 0:
        raise PlanError(f"--fail expects DEVICE@SECONDS (e.g. jetson@10), got {spec!r}")
    return dev, sec


# ====================================================================== side channel
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
        t = now()
        with self.lock:
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
        except Exception:  # noqa: BLE001
            pass


# ====================================================================== worker side
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


# ====================================================================== coordinator side
class ResilientRuntime(Runtime):
    """A Runtime that survives worker failures (see the module docstring).

    `replan(scenario_without_dead) -> Plan` chooses the plan on the survivors (default:
    the dora planner); `on_recover(info)` is told about every recovery.
    `fail_at(device, seconds)` kills a worker on purpose (SIGKILL) after that many
    seconds. `faults` lists what happened: device, detected_s (kill -> detection, when
    the kill was ours), recover_s, reissued requests, resumed iteration, new plan."""

    def __init__(self, scenario: Scenario, *, replan=None, on_recover=None, hb_timeout: float = 3.0,
                 request_deadline: float = 15.0, checkpoint: bool = True, max_recoveries: int = 8, **kw):
        if kw.get("network", "pace") != "pace":
            raise RuntimeFault("fault tolerance needs network='pace' (the heartbeat side channel does not "
                               "cross network namespaces yet)")
        if kw.get("spawn") is False:
            raise RuntimeFault("fault tolerance needs spawn=True (the coordinator polls its worker processes)")
        super().__init__(scenario, **kw)
        self.pending = Pending(on_error=self._comm_failed)
        self.replan = replan or dora_replan
        self.on_recover = on_recover
        self.hb_timeout = hb_timeout
        self.request_deadline = request_deadline
        self.checkpoint = checkpoint
        self.max_recoveries = max_recoveries
        self.hb: HeartbeatServer | None = None
        self.gen = 0
        self.version = 0               # training iterations completed (global)
        self.opt_ckpt: dict = {}
        self.dead: set = set()
        self.proc_of: dict[str, subprocess.Popen] = {}
        self.kill_t: dict[str, float] = {}
        self.faults: list[dict] = []
        self.hello: dict[str, dict] = {}
        self.timers: list[threading.Timer] = []
        self.t_started = None

    # ---------------------------------------------------------------- lifecycle
    def start(self, plan: Plan) -> None:
        self.hb = HeartbeatServer(self.addr)
        try:
            super().start(plan)
        except BaseException:
            self.hb.close()
            raise
        self.hb.reset(self.names)
        self.t_started = now()

    def _spawn(self, dev: str, rank: int, world: int) -> None:
        env = dict(os.environ, MASTER_ADDR=self.addr, MASTER_PORT=str(self.port), RANK=str(rank),
                   WORLD_SIZE=str(world), DORA_PARENT_PID=str(os.getpid()), OMP_NUM_THREADS="1",
                   DORA_HB_PORT=str(self.hb.port), DORA_HB_ADDR=self.addr, DORA_GEN="0",
                   PYTHONPATH=PKG_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        env.pop("DORA_RESUME", None)
        log = open(os.path.join(self.tmp, f"worker-{rank}.log"), "wb")
        p = subprocess.Popen([sys.executable, "-m", "dora_rl.runtime.worker", "--device", dev,
                              "--timeout", str(self.timeout)], env=env, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)
        p.log_path = log.name
        log.close()
        self.procs.append(p)
        self.proc_of[dev] = p

    def fail_at(self, device: str, seconds: float) -> None:
        """Kill `device`'s worker (SIGKILL) `seconds` from now."""
        if device not in self.proc_of:
            raise RuntimeFault(f"--fail: no worker for device {device!r}; devices: {', '.join(self.proc_of)}")
        tm = threading.Timer(seconds, self.kill_worker, args=(device,))
        tm.daemon = True
        tm.start()
        self.timers.append(tm)

    def kill_worker(self, device: str, sig=signal.SIGKILL) -> None:
        p = self.proc_of.get(device)
        if p is not None and p.poll() is None and device not in self.dead:
            self.kill_t[device] = now()
            try:
                os.kill(p.pid, sig)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        for tm in self.timers:
            tm.cancel()
        # SIGSTOPped workers would ignore the stop message and SIGTERM
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.kill(p.pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
        super().close()
        for p in self.proc_of.values():
            if p.poll() is None:
                p.kill()
                p.wait(timeout=3)
        if self.hb is not None:
            self.hb.close()

    def _setup(self) -> None:
        # [live] the per-medium bandwidth factor table the workers' pacing reads (emulation.set_medium_scale)
        from dora_rl.runtime.emulation import set_medium_scale
        self.scale_path = os.path.join(self.tmp, "calendar.bin")
        if not hasattr(self, "media_scale"):
            self.media_scale = [1.0] * len(self.sc.cluster.media_names)
        set_medium_scale(self.scale_path, self.media_scale)
        super()._setup()

    def set_bandwidth(self, medium: str, factor: float) -> None:
        """Scale `medium` (and its links) to `factor` x nominal, live."""
        from dora_rl.runtime.emulation import set_medium_scale
        self.media_scale[self.sc.cluster.media_names.index(medium)] = float(factor)
        set_medium_scale(self.scale_path, self.media_scale)

    # ---------------------------------------------------------------- detection
    def _check_procs(self) -> None:
        gone = {d for d, p in self.proc_of.items() if d not in self.dead and p.poll() is not None}
        if gone:
            raise WorkerLost(gone, "process exited")
        if self.hb is not None and self.started and not getattr(self, "_rejoining", False):
            hung = self.hb.silent([d for d in self.names if d not in self.dead], self.hb_timeout)
            if hung:
                raise WorkerLost(hung, f"no heartbeat for {self.hb_timeout:g} s")

    def _ack(self, dev: str) -> dict:
        """A receive that fails (peer reset, closed pair) is a fault, not an error: find
        out who died (the process may not have been reaped yet) and raise WorkerLost so
        the caller recovers, instead of the plain RuntimeFault of the base runtime."""
        try:
            return super()._ack(dev)
        except WorkerLost:
            raise
        except RuntimeFault as e:
            dead = self.detect()
            if dead:
                raise WorkerLost(dead, str(e)) from None
            raise

    def _cmd(self, dev: str, obj: dict) -> None:
        try:
            super()._cmd(dev, obj)
        except RuntimeError as e:       # gloo refuses a send to a peer that is gone
            self._comm_failed(e)

    def _comm_failed(self, e: Exception) -> None:
        """A send that fails (closed pair, reset peer) is a fault like a failed receive:
        raise WorkerLost for whoever died, so the caller recovers; a failure with every
        worker alive is a RuntimeFault, never a raw gloo error."""
        dead = self.detect()
        if dead:
            raise WorkerLost(dead, str(e)) from None
        raise RuntimeFault(f"communication failed with every worker alive: {e}") from None

    def detect(self, grace: float = 1.5) -> set:
        """Who is dead? Polls processes and heartbeats for up to `grace` seconds."""
        end = now() + grace
        while True:
            try:
                self._check_procs()
            except WorkerLost as e:
                return e.devices
            if now() >= end:
                return set()
            time.sleep(0.05)

    def _hello(self, world: int) -> None:
        seen: dict[str, int] = {}
        self.hello = {}
        for r in range(1, world):
            h = recv_obj(r, TAG_ACK)
            dev = h.get("device")
            if dev not in self.names or dev in seen:
                msg = f"unexpected worker {dev!r} at rank {r} (expected one of {', '.join(self.names)})"
                for q in range(1, world):
                    send_obj({"op": "error", "message": msg}, q, TAG_CTRL)
                raise RuntimeFault(msg)
            seen[dev] = r
            self.hello[dev] = h
        self.ranks = seen
        self.rank_of = seen

    # ---------------------------------------------------------------- recovery
    def recover(self, dead: set) -> dict:
        """Rebuild the group without `dead`, re-plan on the survivors, redeploy."""
        t0 = now()
        if len(self.faults) >= self.max_recoveries:
            raise RuntimeFault(f"giving up after {len(self.faults)} recoveries")
        if self.sc.source in dead:
            raise RuntimeFault(f"the source device {self.sc.source!r} failed: requests enter and answers leave "
                               "there, so the run cannot continue (fatal)")
        det = {d: t0 - self.kill_t[d] for d in dead if d in self.kill_t}
        for d in dead:
            p = self.proc_of.get(d)
            if p is not None and p.poll() is None:
                try:
                    os.kill(p.pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
                p.kill()
                p.wait(timeout=5)
        self.dead |= set(dead)
        survivors = [d for d in self.names if d not in self.dead]
        new_sc = self.sc if not dead else without_devices(self.sc, dead)
        plan = self.replan(new_sc)
        self.gen += 1
        port, world = free_port(), len(survivors) + 1
        orders = {d: {"gen": self.gen, "port": port, "rank": i + 1, "world": world, "version": self.version,
                      "dir": self.tmp} for i, d in enumerate(survivors)}
        self._rejoining = True
        try:
            self.hb.order(orders)
            deadline = now() + self.timeout
            while not self.hb.at_gen(survivors, self.gen):     # every survivor re-executed
                gone = [d for d in survivors if self.proc_of[d].poll() is not None]
                if gone:
                    raise RuntimeFault(f"worker(s) {', '.join(gone)} died while rejoining")
                if now() > deadline:
                    raise RuntimeFault(f"survivors did not rejoin within {self.timeout:g} s")
                time.sleep(0.02)
            time.sleep(0.05)
            try:
                dist.destroy_process_group()
            except Exception:  # noqa: BLE001
                pass
            self.pg = False
            self.pending = Pending(on_error=self._comm_failed)
            self.replies = queue.Queue()
            self.sc = new_sc
            from dora_rl.cost import CostModel
            self.cost = CostModel(new_sc)
            self.names = list(survivors)
            self.spawn_devices = list(survivors)
            self.procs = [self.proc_of[d] for d in survivors]
            self.port = port
            self._init_group(world)
            self._hello(world)
            self._setup()
        finally:
            self._rejoining = False
            self.hb.order({})
        self.hb.reset(survivors, now())
        info = self._redeploy(self.check_plan(plan))
        rec = {"devices": sorted(dead), "detected_s": det, "recover_s": now() - t0, "gen": self.gen,
               "plan": plan.to_dict(), "kept_blocks": info["kept"], "shipped_blocks": info["shipped"],
               "version": self.version}
        self.faults.append(rec)
        if self.on_recover is not None:
            self.on_recover(rec, self)
        return rec

    def _redeploy(self, plan: Plan) -> dict:
        kept, shipped = {}, {}
        for dev in self.names:
            need = set()
            for s in plan.stages:
                if dev in s.devices:
                    need = set(range(s.start, s.end))
            h = self.hello.get(dev, {})
            have = set(h.get("blocks", ())) if h.get("version", -1) == self.version else set()
            ship = sorted(need - have)
            kept[dev], shipped[dev] = sorted(need & have), ship
            self._send_plan(dev, plan, weights={b: self.model[b] for b in ship},
                            opt={b: self.opt_ckpt.get(b, {}) for b in ship}, version=self.version)
        self._plan_acks()     # records what the survivors hold now
        self.plan = plan
        return {"kept": kept, "shipped": shipped}

    def switch(self, plan: Plan) -> dict:
        """Like Runtime.switch; a fault during the switch recovers (on a re-plan)."""
        self.check_plan(plan)
        try:
            return self._deploy(plan)
        except WorkerLost as e:
            self.recover(e.devices)
            return {"seconds": 0.0, "moved_blocks": [], "transfers": 0, "recovered": True}

    # ---------------------------------------------------------------- inference
    def infer(self, n: int | None = None, *, rate: float | None = None, window: int | None = None,
              keep_outputs: bool = False, batch: int | None = None, duration: float | None = None,
              control=None, interval: float = 1.0, on_answer=None, **_ignored) -> InferenceResult:
        """Serve `n` requests (or for `duration` seconds), every one answered exactly once
        even if workers die. `control(t) -> Plan | None` is called every `interval`
        seconds at a request boundary; a plan it returns is switched to (drain, move)."""
        if self.sc.workload.training:
            raise RuntimeFault(f"scenario {self.sc.name!r} is a training workload; use train()")
        if n is None and duration is None:
            raise RuntimeFault("infer: give n or duration")
        batch = batch or self.sc.workload.batch
        win = window
        first_issue: dict[int, float] = {}
        inflight: dict[int, float] = {}     # rid -> issue time (this attempt)
        retry: deque = deque()
        lat, outs, order = {}, {}, []
        dup = 0
        reissued = 0
        nxt = 0                              # next new request id
        t_begin = now()
        next_ctl = t_begin + interval
        switch_info: dict = {}

        def budget_left() -> bool:
            if n is not None:
                return nxt < n
            return now() - t_begin < duration

        def handle(msg) -> None:
            nonlocal dup
            if msg.get("rid") is None:
                raise WorkerLost(self.detect(), msg.get("error", "the pipeline failed"))
            rid = msg["rid"]
            if rid in lat or rid not in inflight:
                dup += 1                     # late or duplicate answer: drop by id
                return
            del inflight[rid]
            order.append(rid)
            t0 = first_issue[rid] if rid in reissued_ids else msg["t0"]   # a re-issued one: from its admission
            lat[rid] = msg["t1"] - t0
            if keep_outputs:
                outs[rid] = msg["y"]
            if on_answer is not None:
                on_answer(rid, lat[rid], msg["t1"])

        def wait_one(timeout: float) -> bool:
            try:
                msg = self.replies.get(timeout=timeout)
            except queue.Empty:
                self._check_procs()
                if inflight and now() - min(inflight.values()) > self.request_deadline:
                    raise WorkerLost(self.detect(), f"request unanswered for {self.request_deadline:g} s")
                return False
            handle(msg)
            return True

        def issue(rid: int) -> None:
            x = self.make_input(rid, batch)
            t = now()
            first_issue.setdefault(rid, t)
            inflight[rid] = t
            for dev in self.participants():
                cmd = {"op": "infer", "rid": rid, "batch": int(x.shape[0])}
                if dev == self.sc.source:
                    cmd["x"] = x
                self._cmd(dev, cmd)

        reissued_ids: set = set()
        while True:
            try:
                if control is not None and now() >= next_ctl:
                    next_ctl = now() + interval
                    new = control(now() - t_begin)
                    if new is not None:
                        ts = now()
                        while inflight:
                            wait_one(0.1)
                        info = self.switch(new)
                        switch_info = {"total_s": now() - ts, **info}
                if retry:
                    w = win or (len(self.plan.stages) + 1)
                    if len(inflight) < w:
                        rid = retry.popleft()
                        reissued_ids.add(rid)
                        issue(rid)
                    else:
                        wait_one(0.1)
                    continue
                if budget_left():
                    if rate:
                        due = t_begin + nxt / rate
                        if now() < due:
                            if inflight:
                                wait_one(min(0.1, max(0.001, due - now())))
                            else:
                                sleep_until(min(due, now() + 0.1))
                                self._check_procs()
                            continue
                    w = win if win else (None if rate else len(self.plan.stages) + 1)
                    if w is not None and len(inflight) >= w:
                        wait_one(0.1)
                        continue
                    if batch % self.plan.microbatches:
                        raise PlanError(f"plan: microbatches={self.plan.microbatches} must divide the batch ({batch})")
                    issue(nxt)
                    nxt += 1
                    while True:   # take what is ready
                        try:
                            handle(self.replies.get_nowait())
                        except queue.Empty:
                            break
                    continue
                if not inflight:
                    break
                wait_one(0.1)
            except WorkerLost as e:
                lost = sorted(inflight)
                inflight.clear()
                self.recover(e.devices)
                for rid in lost:
                    retry.append(rid)
                reissued += len(lost)
                self.faults[-1]["reissued"] = lost
        wall = now() - t_begin
        st = self.stats()
        self.pending.wait()
        res = self._inference_result(nxt, lat, outs, order, wall, st, switch_info)
        res.duplicates = dup
        res.reissued = reissued
        res.faults = list(self.faults)
        return res

    # ---------------------------------------------------------------- training
    def _take_checkpoint(self) -> None:
        """Copy every participant's blocks (and optimizer state) to the coordinator.
        All-or-nothing: a worker lost half-way leaves the previous checkpoint intact,
        so the copy never mixes iterations (recovery ships blocks from it and replays
        the iteration on top of the survivors' start-of-iteration snapshots)."""
        devs = self.participants()
        for dev in devs:
            self._cmd(dev, {"op": "checkpoint"})
        states = [self._ack(dev)["state"] for dev in devs]
        for state in states:
            for b, (sd, opt) in state.items():
                self.model[b].load_state_dict(sd)
                self.opt_ckpt[b] = opt

    def train(self, iterations: int, *, data=None, **_ignored) -> TrainResult:
        """Run iterations; a fault rolls every device back to the last completed
        iteration (coordinator checkpoint + worker snapshots) and re-runs it."""
        if not self.sc.workload.training:
            raise RuntimeFault(f"scenario {self.sc.name!r} is an inference workload; use infer()")
        batch = self.sc.workload.batch
        self.stats(reset=True)
        times, wall = [], 0.0
        it = 0
        while it < iterations:
            try:
                x, y = data[it] if data is not None else self.make_batch(it, batch)
                t0 = now()
                self._train_step(it, x, y, v=self.version)
                if self.checkpoint:
                    self._take_checkpoint()
                self.version += 1
                dt = now() - t0
                times.append(dt)
                wall += dt
                it += 1
            except WorkerLost as e:
                self.recover(e.devices)
                self.faults[-1]["resumed_iteration"] = it
        res = self._train_result(iterations, times, wall)
        res.faults = list(self.faults)
        return res

    def state_dict(self) -> dict:
        if self.checkpoint and self.sc.workload.training:
            return {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        return super().state_dict()
