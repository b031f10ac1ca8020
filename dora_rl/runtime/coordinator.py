"""The coordinator (rank 0): starts or waits for one worker per device, deploys a plan
(shipping each worker only the weights of the blocks it owns), streams inference
requests or training iterations through the workers, switches plans at request /
iteration boundaries, and measures what happened.

    with Runtime(scenario) as rt:
        rt.start(plan)
        res = rt.infer(50, rate=5)            # InferenceResult: latencies, outputs, energy
        rt.switch(other_plan)                 # drain, move only blocks whose owner changes
        tr = rt.train(5)                      # TrainResult: iteration times

Every wait has a timeout; a dead worker, an unreachable worker or a bad device name
raises `RuntimeFault`; workers are always stopped (also on errors and Ctrl-C)."""

from __future__ import annotations

import atexit
import datetime
import os
import queue
import socket
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from dora_rl.cost import CostModel
from dora_rl.errors import PlanError, RuntimeFault
from dora_rl.plan import Plan
from dora_rl.resources import import_root
from dora_rl.runtime.comm import (TAG_ACK, TAG_CTRL, TAG_INPUT, TAG_REPLY, Pending, isend_obj, isend_tensor, recv_obj,
                                  send_obj)
from dora_rl.runtime.emulation import energy_j, now, sleep_until
from dora_rl.scenario import Scenario

PKG_ROOT = str(import_root())
_LIVE: set = set()


def _kill_all_live() -> None:
    for rt in list(_LIVE):
        rt._kill()


atexit.register(_kill_all_live)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scale_scenario(scenario: Scenario, slowdown: float) -> Scenario:
    """The scenario with every device's compute rate divided by `slowdown` (emulation
    on a CPU slower than the modelled devices: the modelled time must dominate)."""
    if slowdown == 1.0:
        return scenario
    if not slowdown > 0:
        raise PlanError(f"--slowdown must be a positive number, got {slowdown!r}")
    d = scenario.cluster.to_dict()
    for dev in d["devices"]:
        dev["gflops"] = dev["gflops"] / slowdown
    from dora_rl.cluster.model import Cluster
    return scenario.replace(cluster=Cluster.from_dict(d))


def moves_between(old: Plan | None, new: Plan, bw, held: dict[str, set] | None = None) -> list[tuple[int, str, str]]:
    """(block, from_device, to_device) for every block a device of `new` owns that it
    did not own under `old` and does not still hold (`held`: blocks each worker kept
    from earlier plans - valid for inference, where weights never change); the sender
    is the old owner with the fastest route."""
    held = held or {}
    if old is None:
        return []
    own_old: dict[int, list[str]] = {}
    for s in old.stages:
        for b in range(s.start, s.end):
            own_old[b] = list(s.devices)
    out = []
    for s in new.stages:
        for b in range(s.start, s.end):
            for d in s.devices:
                if d not in own_old[b] and b not in held.get(d, ()):
                    src = max(own_old[b], key=lambda o: bw(o, d))
                    out.append((b, src, d))
    return out


def _pct(xs, q):
    return float(np.percentile(np.asarray(xs), q)) if len(xs) else float("nan")


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

    def to_dict(self) -> dict:
        xs = [t * 1e3 for t in self.iter_s]
        return {"iterations": self.iterations, "iteration_ms": {"mean": float(np.mean(xs)), "p50": _pct(xs, 50),
                                                                 "p95": _pct(xs, 95)},
                "energy_j": self.energy_j, "busy_s": self.busy_s,
                "saturated": {d: {"sections": a, "excess_s": b} for d, (a, b) in self.saturated.items()},
                "switch_s": self.switch_s, "switch": self.switch}


class Runtime:
    """Coordinator of one run. `emulate=False` runs at this machine's real speed.
    `network="netns"`: workers in network namespaces, links/media shaped by the kernel
    (`tc` htb) instead of the pacing calendar (root only; `netns.py`)."""

    def __init__(self, scenario: Scenario, *, emulate: bool = True, timeout: float = 60.0,
                 lr: float = 0.01, momentum: float = 0.0, seed: int = 0,
                 spawn: bool = True, spawn_devices: list[str] | None = None,
                 master_addr: str = "127.0.0.1", master_port: int | None = None,
                 network: str = "pace"):
        if not isinstance(scenario.model, str):
            raise RuntimeFault(f"scenario {scenario.name!r}: the runtime needs a zoo model (weights are built "
                               "from the zoo); a profile-only model cannot be executed")
        self.sc = scenario
        self.cost = CostModel(scenario)
        self.emulate = emulate
        self.timeout = timeout
        self.lr, self.momentum, self.seed = lr, momentum, seed
        self.spawn = spawn
        self.names = scenario.cluster.names
        self.spawn_devices = list(spawn_devices) if spawn_devices is not None else list(self.names)
        self.addr = master_addr
        self.port = master_port or free_port()
        self.procs: list[subprocess.Popen] = []
        self.tmp = ""
        self.plan: Plan | None = None
        self.held: dict[str, set] = {}     # blocks each worker holds (from its plan acks)
        self.ranks: dict[str, int] = {}
        self.pending = Pending()
        self.replies: queue.Queue = queue.Queue()
        self.started = False
        self.pg = False
        # [netns] network="netns": workers in network namespaces, kernel (tc) shaping; see netns.py
        if network not in ("pace", "netns"):
            raise RuntimeFault(f"network must be 'pace' (in-process pacing) or 'netns' (kernel shaping), got {network!r}")
        if network == "netns" and not spawn:
            raise RuntimeFault("network='netns' starts the workers itself (inside their namespaces); spawn=False is "
                               "not supported with it")
        self.network = network
        self.netns = None

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def check_plan(self, plan: Plan) -> Plan:
        self.cost.validate(plan)
        m = self.cost.evaluate(plan)
        if not m.feasible:
            mem = [v for v in m.violations if v.startswith("memory")]
            raise PlanError("plan does not fit: " + "; ".join(mem) + " (give those devices fewer blocks)")
        return plan

    def start(self, plan: Plan) -> None:
        """Start workers, form the group, send settings, deploy `plan`."""
        self.check_plan(plan)
        from dora_rl.profile import build_model
        self.model, ex = build_model(self.sc.model, seed=self.seed)
        self.example = ex
        shapes, dtypes = [tuple(ex.shape[1:])], [str(ex.dtype).replace("torch.", "")]
        with torch.no_grad():
            x = ex
            for blk in self.model:
                x = blk(x)
                shapes.append(tuple(x.shape[1:]))
                dtypes.append(str(x.dtype).replace("torch.", ""))
        self.shapes, self.dtypes = shapes, dtypes
        world = len(self.spawn_devices) + 1
        if dist.is_initialized():
            raise RuntimeFault("a runtime is already running in this process; close() it first "
                               "(one coordinator per process)")
        self.tmp = tempfile.mkdtemp(prefix="dora_rt_")
        _LIVE.add(self)
        try:
            if self.network == "netns":   # [netns]
                from dora_rl.runtime.netns import NetNS
                self.netns = NetNS(self.sc.cluster).build()
                self.addr = self.netns.coord_addr
            if self.spawn:
                for r, dev in enumerate(self.spawn_devices, start=1):
                    self._spawn(dev, r, world)
            self._init_group(world)
            self._hello(world)
            self._setup()
            self._deploy(plan, first=True)
            self.started = True
        except BaseException:
            self.close()
            raise

    def _spawn(self, dev: str, rank: int, world: int) -> None:
        env = dict(os.environ, MASTER_ADDR=self.addr, MASTER_PORT=str(self.port), RANK=str(rank),
                   WORLD_SIZE=str(world), DORA_PARENT_PID=str(os.getpid()), OMP_NUM_THREADS="1",
                   PYTHONPATH=PKG_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        log = open(os.path.join(self.tmp, f"worker-{rank}.log"), "wb")
        pre = []
        if self.netns is not None and dev in self.netns.dev_ns:   # [netns] start inside the device's namespace
            pre = self.netns.exec_prefix(dev)
            env.update(self.netns.worker_env(dev))
        p = subprocess.Popen(pre + [sys.executable, "-m", "dora_rl.runtime.worker", "--device", dev,
                                    "--timeout", str(self.timeout)], env=env, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)
        p.log_path = log.name
        log.close()
        self.procs.append(p)

    def _worker_log(self, p) -> str:
        try:
            lines = Path(p.log_path).read_text(errors="replace").strip().splitlines()
            err = [ln for ln in lines if "error" in ln.lower()]
            return (err or lines or ["(no output)"])[-1][:400]
        except OSError:
            return "(no log)"

    def _check_procs(self) -> None:
        for p in self.procs:
            if p.poll() is not None:
                raise RuntimeFault(f"worker process {p.pid} exited with code {p.returncode}: {self._worker_log(p)}")

    def _init_group(self, world: int) -> None:
        err: list = []

        def init():
            try:
                import contextlib   # [netns] this thread's sockets (store, gloo) live in the hub namespace
                with self.netns.entered_hub() if self.netns is not None else contextlib.nullcontext():
                    dist.init_process_group("gloo", init_method=f"tcp://{self.addr}:{self.port}", rank=0,
                                            world_size=world, timeout=datetime.timedelta(seconds=self.timeout))
            except Exception as e:  # noqa: BLE001
                err.append(e)

        th = threading.Thread(target=init, daemon=True)
        th.start()
        self._wait_for(th, 0.2, self.spawn, f"coordinator: only some of the {world - 1} workers joined "
                                             f"{self.addr}:{self.port} within {self.timeout:g} s")
        if err:
            raise RuntimeFault(f"coordinator: could not form the process group ({err[0]})")
        self.pg = True

    def _hello(self, world: int) -> None:
        seen: dict[str, int] = {}
        bad = []
        for r in range(1, world):
            hello = recv_obj(r, TAG_ACK)
            dev = hello.get("device")
            if dev not in self.sc.cluster.index:
                bad.append((r, f"device {dev!r} is not in scenario {self.sc.name!r}; known devices: "
                               f"{', '.join(self.names)}"))
            elif dev in seen:
                bad.append((r, f"device {dev!r} joined twice (ranks {seen[dev]} and {r})"))
            else:
                seen[dev] = r
        missing = [d for d in self.names if d not in seen]
        if bad or missing:
            msg = bad[0][1] if bad else f"no worker for device(s) {', '.join(missing)}"
            for r in range(1, world):
                send_obj({"op": "error", "message": msg}, r, TAG_CTRL)
            raise RuntimeFault(msg)
        self.ranks = seen
        self.rank_of = seen

    def _setup(self) -> None:
        cl = self.sc.cluster
        net = {"bw": cl.bw_l, "lat": cl.lat_l, "hops": [[list(h) for h in row] for row in cl.hops],
               "medium_bps": cl.medium_bps.tolist()}
        cal = os.path.join(self.tmp, "calendar.bin")
        from dora_rl.runtime.emulation import Calendar
        Calendar(cal, cl.n * cl.n + len(cl.media_names), create=True).close()
        for dev, r in self.ranks.items():
            cfg = {"op": "setup", "names": self.names, "ranks": self.ranks, "source": self.sc.source,
                   "flops_prefix": self.cost.fp, "shapes": self.shapes, "dtypes": self.dtypes,
                   "emulate": self.emulate, "net": net, "calendar": cal, "network": self.network,
                   "flops_per_s": cl.device(dev).flops_per_s, "lr": self.lr, "momentum": self.momentum}
            send_obj(cfg, r, TAG_CTRL)
        self.reply_thread = threading.Thread(target=self._reply_loop, daemon=True)
        self.reply_thread.start()

    def _reply_loop(self) -> None:
        src = self.ranks[self.sc.source]
        while True:
            try:
                msg = recv_obj(src, TAG_REPLY)
            except Exception as e:  # noqa: BLE001
                self.replies.put({"rid": None, "error": f"lost the source worker ({e})"})
                return
            self.replies.put(msg)
            if msg.get("rid") is None:
                return

    # ------------------------------------------------------------------ control
    def _cmd(self, dev: str, obj: dict) -> None:
        self.pending.add(isend_obj(obj, self.ranks[dev], TAG_CTRL))

    def _wait_for(self, th: threading.Thread, poll: float, check_procs: bool, timeout_msg: str) -> None:
        """Wait for a blocking gloo call running in `th`, checking the worker processes
        every `poll` seconds (a dead worker fails fast) and giving up after the timeout."""
        deadline = now() + self.timeout
        while th.is_alive():
            th.join(poll)
            if check_procs:
                self._check_procs()
            if now() > deadline:
                raise RuntimeFault(timeout_msg)

    def _ack(self, dev: str) -> dict:
        th_res: list = []

        def rx():
            try:
                th_res.append(recv_obj(self.ranks[dev], TAG_ACK))
            except Exception as e:  # noqa: BLE001
                th_res.append(e)
        th = threading.Thread(target=rx, daemon=True)
        th.start()
        self._wait_for(th, 0.5, True, f"worker {dev} did not answer within {self.timeout:g} s")
        if isinstance(th_res[0], Exception):
            raise RuntimeFault(f"lost worker {dev}: {th_res[0]}")
        return th_res[0]

    def _reply(self) -> dict:
        deadline = now() + self.timeout
        while True:
            try:
                msg = self.replies.get(timeout=0.5)
            except queue.Empty:
                self._check_procs()
                if now() > deadline:
                    raise RuntimeFault(f"no answer from the pipeline within {self.timeout:g} s") from None
                continue
            if msg.get("rid") is None:
                raise RuntimeFault(msg.get("error", "the source worker stopped answering"))
            return msg

    def participants(self, plan: Plan | None = None) -> list[str]:
        plan = plan or self.plan
        devs = set(plan.devices) | {self.sc.source}
        return [d for d in self.names if d in devs]

    def _deploy(self, plan: Plan, first: bool = False) -> dict:
        t0 = now()
        if first:
            for dev in self.names:
                owned = {}
                for s in plan.stages:
                    if dev in s.devices:
                        owned = {b: self.model[b] for b in range(s.start, s.end)}
                self._send_plan(dev, plan, weights=owned)
            moves = []
        else:
            cl = self.sc.cluster
            # inference: a worker keeps the blocks of earlier plans (weights never change),
            # so switching back to a plan moves nothing; training must move the trained copy
            held = {} if self.sc.workload.training else self.held
            moves = moves_between(self.plan, plan, lambda a, b: cl.bw_l[cl.index[a]][cl.index[b]], held)
            for dev in self.names:
                self._send_plan(dev, plan, moves=moves)
        acks = self._plan_acks()
        self.plan = plan
        moved = {b for b, _, _ in moves}
        return {"seconds": now() - t0, "moved_blocks": sorted(moved), "transfers": len(moves),
                "worker_s": max(a["seconds"] for a in acks)}

    def switch(self, plan: Plan) -> dict:
        """Adopt a new plan between requests/iterations (nothing in flight)."""
        self.check_plan(plan)
        return self._deploy(plan)

    def prestage(self, holdings: dict[str, set]) -> dict:
        """Inference: ship each device the blocks `holdings` gives it (e.g. every block
        of the adapter's candidate plans) before the run, so that later switches are a
        drain only - what the adapter's switch cost assumes for `pareto` and `ppo`.
        Returns {device: blocks shipped}."""
        if self.plan is None or self.sc.workload.training:
            raise RuntimeFault("prestage: start an inference plan first (training moves trained weights instead)")
        ship = {d: sorted(set(bs) - self.held.get(d, set())) for d, bs in holdings.items() if d in self.ranks}
        for dev in self.names:
            self._send_plan(dev, self.plan, weights={b: self.model[b] for b in ship.get(dev, [])})
        self._plan_acks()
        return {d: bs for d, bs in ship.items() if bs}

    def _send_plan(self, dev: str, plan: Plan, **fields) -> None:
        """A worker's plan command. Inference workers keep blocks they stop owning
        (`keep`: a later switch back moves nothing); training workers drop them."""
        self._cmd(dev, {"op": "plan", "plan": plan.to_dict(), "keep": not self.sc.workload.training, **fields})

    def _plan_acks(self) -> list[dict]:
        """Every worker's ack of a plan command; records the blocks each now holds."""
        acks = [self._ack(d) for d in self.names]
        self.pending.wait()
        self.held = {d: set(a.get("blocks", ())) for d, a in zip(self.names, acks)}
        return acks

    def stats(self, reset: bool = False) -> dict:
        for d in self.names:
            self._cmd(d, {"op": "stats", "reset": reset})
        return {d: self._ack(d) for d in self.names}

    # ------------------------------------------------------------------ inference
    def make_input(self, rid: int, batch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + rid)
        shape = (batch,) + tuple(self.shapes[0])
        if self.dtypes[0].startswith("int"):
            return torch.randint(0, 1000, shape, generator=g)
        return torch.randn(shape, generator=g)

    def _send_input(self, dev: str, cmd: dict, x: torch.Tensor) -> None:
        """The source's infer command with its input: a float/int tensor goes as a raw
        tensor message after the command (no pickling, no copies; the worker receives
        it straight into its buffer), anything else pickled inside the command."""
        dt = str(x.dtype).removeprefix("torch.")
        if dt in ("float32", "float64", "int64") and not x.requires_grad:
            cmd["x_meta"] = (tuple(int(d) for d in x.shape), dt)
            self._cmd(dev, cmd)
            self.pending.add(isend_tensor(x, self.ranks[dev], TAG_INPUT, 0.0))
        else:
            cmd["x"] = x
            self._cmd(dev, cmd)

    def infer(self, n: int, *, rate: float | None = None, window: int | None = None, inputs=None,
              keep_outputs: bool = False, switch_at: int | None = None, switch_plan: Plan | None = None,
              batch: int | None = None) -> InferenceResult:
        """Run n requests. `rate`: open-loop arrivals per second; `window`: at most
        that many in flight (closed loop); neither: window = stages + 1. With
        `switch_at=k`, after admitting k requests: stop admitting, drain, switch to
        `switch_plan`, resume."""
        if self.sc.workload.training:
            raise RuntimeFault(f"scenario {self.sc.name!r} is a training workload; use train()")
        batch = batch or self.sc.workload.batch
        if batch % self.plan.microbatches:
            raise PlanError(f"plan: microbatches={self.plan.microbatches} must divide the batch ({batch})")
        if switch_plan is not None:
            self.check_plan(switch_plan)
        if rate is None and window is None:
            window = len(self.plan.stages) + 1
        self.stats(reset=True)
        inflight: set = set()
        lat, outs, order = {}, {}, []
        t_first = None
        switch_info: dict = {}
        t_start = now()

        def take(block: bool) -> None:
            while True:
                if not block:
                    try:
                        msg = self.replies.get_nowait()
                    except queue.Empty:
                        return
                    if msg.get("rid") is None:
                        raise RuntimeFault(msg.get("error", "the source worker stopped answering"))
                else:
                    msg = self._reply()
                rid = msg["rid"]
                if rid not in inflight:
                    raise RuntimeFault(f"request {rid} answered twice or never asked")
                inflight.discard(rid)
                order.append(rid)
                lat[rid] = msg["t1"] - msg["t0"]
                self.t_last = msg["t1"]
                if keep_outputs:
                    outs[rid] = msg["y"]
                if block:
                    return

        for i in range(n):
            if switch_at is not None and i == switch_at and switch_plan is not None:
                ts = now()
                while inflight:           # stop admitting, drain
                    take(True)
                td = now()
                info = self._deploy(switch_plan)
                switch_info = {"drain_s": td - ts, "move_s": info["seconds"], "total_s": now() - ts,
                               "moved_blocks": info["moved_blocks"], "transfers": info["transfers"]}
                if rate:
                    t_start += now() - ts    # arrivals resume after the switch
            if rate:
                sleep_until(t_start + i / rate)
            if window:
                while len(inflight) >= window:
                    take(True)
            x = inputs[i] if inputs is not None else self.make_input(i, batch)
            rid = i
            inflight.add(rid)
            if t_first is None:
                t_first = now()
            for dev in self.participants():
                cmd = {"op": "infer", "rid": rid, "batch": int(x.shape[0])}
                if dev == self.sc.source:
                    self._send_input(dev, cmd, x)
                else:
                    self._cmd(dev, cmd)
            take(False)
        while inflight:
            take(True)
        wall = now() - t_first
        st = self.stats()
        self.pending.wait()
        return self._inference_result(n, lat, outs, order, wall, st, switch_info)

    def _energy(self, st: dict, wall: float, devs: list[str]) -> float:
        cl = self.sc.cluster
        tot = 0.0
        for d in devs:
            dv = cl.device(d)
            tot += energy_j(st[d]["busy_s"], wall, dv.idle_w, dv.active_w,
                            st[d]["sent_bytes"] + st[d]["recv_bytes"], dv.radio_j_per_mb / 1e6)
        return tot

    def _inference_result(self, n, lat, outs, order, wall, st, switch_info) -> InferenceResult:
        devs = self.participants()
        res = InferenceResult(n=n, latencies_s=lat, outputs=outs, wall_s=wall, throughput=n / wall if wall > 0 else 0.0,
                              energy_j=self._energy(st, wall, devs) / max(n, 1),
                              busy_s={d: st[d]["busy_s"] for d in self.names},
                              saturated={d: (st[d]["saturated"], st[d]["excess_s"]) for d in self.names
                                         if st[d]["saturated"]},
                              answered=order)
        if switch_info:
            res.switch_s = switch_info["total_s"]
            res.switch = switch_info
        return res

    # ------------------------------------------------------------------ training
    def make_batch(self, it: int, batch: int):
        x = self.make_input(10_000_000 + it, batch)
        out_shape = self.shapes[-1]
        g = torch.Generator().manual_seed(self.seed * 7_919 + it)
        y = torch.randint(0, int(out_shape[-1]), (batch,) + tuple(out_shape[:-1]), generator=g)
        return x, y

    def train(self, iterations: int, *, data=None, switch_at: int | None = None,
              switch_plan: Plan | None = None) -> TrainResult:
        """Run training iterations (1F1B, DP all-reduce, SGD). `data`: list of (x, y)."""
        if not self.sc.workload.training:
            raise RuntimeFault(f"scenario {self.sc.name!r} is an inference workload; use infer()")
        if switch_plan is not None:
            self.check_plan(switch_plan)
        batch = self.sc.workload.batch
        self.stats(reset=True)
        times, switch_info = [], {}
        wall = 0.0
        for it in range(iterations):
            if switch_at is not None and it == switch_at and switch_plan is not None:
                ts = now()
                info = self._deploy(switch_plan)
                switch_info = {"drain_s": 0.0, "move_s": info["seconds"], "total_s": now() - ts,
                               "moved_blocks": info["moved_blocks"], "transfers": info["transfers"]}
            x, y = data[it] if data is not None else self.make_batch(it, batch)
            dt = self._train_step(it, x, y)
            times.append(dt)
            wall += dt
        res = self._train_result(iterations, times, wall)
        if switch_info:
            res.switch_s = switch_info["total_s"]
            res.switch = switch_info
        return res

    def _train_step(self, it: int, x, y, **extra) -> float:
        """One iteration on the workers: the source gets x, the last stage y (plus any
        `extra` command fields); returns its wall time once every participant acked."""
        if x.shape[0] % self.plan.microbatches:
            raise PlanError(f"plan: microbatches={self.plan.microbatches} must divide the batch ({x.shape[0]})")
        last = set(self.plan.stages[-1].devices)
        t0 = now()
        devs = self.participants()
        for dev in devs:
            cmd = {"op": "train", "it": it, **extra, "batch": int(x.shape[0]), "denom": int(y.numel())}
            if dev == self.sc.source:
                cmd["x"] = x
            if dev in last:
                cmd["y"] = y
            self._cmd(dev, cmd)
        for dev in devs:
            self._ack(dev)
        return now() - t0

    def _train_result(self, iterations: int, times: list[float], wall: float) -> TrainResult:
        st = self.stats()
        self.pending.wait()
        devs = self.participants()
        return TrainResult(iterations, times, self._energy(st, wall, devs) / max(iterations, 1),
                           {d: st[d]["busy_s"] for d in self.names},
                           {d: (st[d]["saturated"], st[d]["excess_s"]) for d in self.names if st[d]["saturated"]})

    def state_dict(self) -> dict:
        """The current parameters, assembled from the workers (one owner per block)."""
        sd = {}
        bnames = [n for n, _ in self.model.named_children()]
        for dev in self.participants():
            self._cmd(dev, {"op": "params"})
            got = self._ack(dev)["params"]
            for b, bsd in got.items():
                for k, v in bsd.items():
                    sd.setdefault(f"{bnames[b]}.{k}", v)
        return sd

    # ------------------------------------------------------------------ probe
    def probe(self, flows: list[tuple[str, str, int, int]]) -> list[float]:
        """Paced flows [(src, dst, nbytes, count)] started together; bytes/s per flow
        as seen by each receiver (checks pacing and medium sharing)."""
        devs = self._probe_devices(flows)
        t0 = now() + 0.3
        for d in devs:
            self._cmd(d, {"op": "probe", "flows": flows, "t0": t0})
        rates = {}
        for d in devs:
            rates.update(self._ack(d)["rates"])
        self.pending.wait()
        return [rates[i] for i in range(len(flows))]

    def probe_async(self, src: str, dst: str, nbytes: int) -> None:
        """Start one paced flow src -> dst and return at once: nothing is acknowledged,
        the workers' transfer reports carry its rate (the live monitor's idle probes).
        Workers run commands in order, so the flow goes between requests."""
        flows = [(src, dst, int(nbytes), 1)]
        for d in self._probe_devices(flows):
            self._cmd(d, {"op": "probe", "flows": flows, "ack": False})

    def _probe_devices(self, flows) -> list[str]:
        """The devices the flows [(src, dst, ...)] touch; RuntimeFault for one not running."""
        devs = sorted({x for f in flows for x in f[:2]})
        for x in devs:
            if x not in self.ranks:
                raise RuntimeFault(f"probe: unknown device {x!r}")
        return devs

    # ------------------------------------------------------------------ shutdown
    def close(self) -> None:
        if self.pg:
            try:
                if self.ranks:
                    for dev in self.names:
                        if dev in self.ranks:
                            self.pending.add(isend_obj({"op": "stop"}, self.ranks[dev], TAG_CTRL))
                    deadline = now() + 5
                    for p in self.procs:
                        try:
                            p.wait(timeout=max(0.1, deadline - now()))
                        except subprocess.TimeoutExpired:
                            pass
            except Exception:  # noqa: BLE001
                pass
        self._kill()
        if self.pg:
            try:
                dist.destroy_process_group()
            except Exception:  # noqa: BLE001
                pass
            self.pg = False
        _LIVE.discard(self)
        if self.netns is not None:   # [netns] after the workers are gone
            self.netns.close()
            self.netns = None
        if self.tmp:
            import shutil
            shutil.rmtree(self.tmp, ignore_errors=True)

    def _kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=3)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=3)
