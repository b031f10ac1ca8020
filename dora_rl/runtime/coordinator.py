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
raises `RuntimeFault` (the default fault policy, `FailFast`; faults.py's `Resilience`
recovers instead); workers are always stopped (also on errors and Ctrl-C). This module
holds the process group and the plans (start, deploy, switch, prestage, probes,
shutdown); the request loop is in request_loop.py, training in training.py, the results in
results.py."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import tempfile
import threading

import torch
import torch.distributed as dist

from dora_rl.cost import CostModel
from dora_rl.errors import PlanError, RuntimeFault
from dora_rl.plan import Plan
from dora_rl.resources import import_root
from dora_rl.runtime import request_loop, training
from dora_rl.runtime.comm import TAG_CTRL, free_port, send_obj
from dora_rl.runtime.emulation import now
from dora_rl.runtime.fault_policy import FailFast
from dora_rl.runtime.group import WorkerGroup
from dora_rl.runtime.results import InferenceResult, TrainResult
from dora_rl.scenario import Scenario

__all__ = ["Runtime", "InferenceResult", "TrainResult", "moves_between", "free_port"]

PKG_ROOT = str(import_root())
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


class Runtime(WorkerGroup):
    """Coordinator of one run. `emulate=False` computes at this machine's real speed;
    `pace` (default: `emulate`) paces transfers to the links and media either way.
    `network="netns"`: workers in network namespaces, links/media shaped by the kernel
    (`tc` htb) instead of the pacing calendar (root only; `netns.py`). `resilience`: the
    fault policy (default `FailFast`; `faults.Resilience` survives lost workers).
    `live_bandwidth`: media bandwidths can change during the run (`set_bandwidth`)."""

    def __init__(self, scenario: Scenario, *, emulate: bool = True, timeout: float = 60.0,
                 lr: float = 0.01, momentum: float = 0.0, seed: int = 0,
                 spawn: bool = True, spawn_devices: list[str] | None = None,
                 master_addr: str = "127.0.0.1", master_port: int | None = None,
                 network: str = "pace", resilience: FailFast | None = None, live_bandwidth: bool = False,
                 pace: bool | None = None):
        if not isinstance(scenario.model, str):
            raise RuntimeFault(f"scenario {scenario.name!r}: the runtime needs a zoo model (weights are built "
                               "from the zoo); a profile-only model cannot be executed")
        self.sc = scenario
        self.cost = CostModel(scenario)
        self.emulate = emulate
        self.pace = emulate if pace is None else bool(pace)
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
        self.replies: queue.Queue = queue.Queue()
        self.started = False
        self.pg = False
        # [netns] network="netns": workers in network namespaces, kernel (tc) shaping; see netns.py
        if network not in ("pace", "netns"):
            raise RuntimeFault("network must be 'pace' (in-process pacing) or 'netns' (kernel shaping), "
                               f"got {network!r}")
        if network == "netns" and not spawn:
            raise RuntimeFault("network='netns' starts the workers itself (inside their namespaces); spawn=False is "
                               "not supported with it")
        self.network = network
        self.netns = None
        self.hello: dict[str, dict] = {}     # each worker's hello (a rejoining one: the blocks it kept)
        # [live] per-medium bandwidth factors the workers' pacing reads (set_bandwidth); None: fixed
        self.media_scale = [1.0] * len(scenario.cluster.media_names) if live_bandwidth else None
        self.resilience = resilience or FailFast()    # what a failure does (fault_policy.py, faults.py)
        self.resilience.attach(self)
        self.pending = self.resilience.new_pending()

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
        self.levels(plan)   # a schedule naming a flow class or medium the plan lacks: ScheduleError
        return plan

    def levels(self, plan: Plan) -> dict:
        """The plan schedule's priorities as flow class -> {medium index: rank} (the
        simulator's check, `dora_rl.sim.program.flow_levels`); {} without a schedule."""
        if plan.schedule is None or not plan.schedule.priorities:
            return {}
        from dora_rl.sim.program import build, flow_levels
        lv = flow_levels(self.cost, build(self.cost, plan, 1), plan.schedule)
        return {c: r for c, r in lv.items() if r}

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
        self._track()
        try:
            self.resilience.starting()
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
        self.resilience.started()

    def _spawn(self, dev: str, rank: int, world: int) -> None:
        threads, _ = self._threads(dev)
        env = dict(os.environ, MASTER_ADDR=self.addr, MASTER_PORT=str(self.port), RANK=str(rank),
                   WORLD_SIZE=str(world), DORA_PARENT_PID=str(os.getpid()), OMP_NUM_THREADS=str(threads),
                   PYTHONPATH=PKG_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        log = open(os.path.join(self.tmp, f"worker-{rank}.log"), "wb")
        pre = []
        if self.netns is not None and dev in self.netns.dev_ns:   # [netns] start inside the device's namespace
            pre = self.netns.exec_prefix(dev)
            env.update(self.netns.worker_env(dev))
        self.resilience.worker_env(env)
        p = subprocess.Popen(pre + [sys.executable, "-m", "dora_rl.runtime.worker", "--device", dev,
                                    "--timeout", str(self.timeout)], env=env, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)
        p.log_path = log.name
        log.close()
        self.procs.append(p)
        self.resilience.spawned(dev, p)

    def _setup(self) -> None:
        cl = self.sc.cluster
        net = {"bw": cl.bw_l, "lat": cl.lat_l, "hops": [[list(h) for h in row] for row in cl.hops],
               "medium_bps": cl.medium_bps.tolist(), "iface_bps": cl.interface_bps(),
               "iface_links": cl.interface_links()}
        cal = os.path.join(self.tmp, "calendar.bin")
        from dora_rl.runtime.emulation import Calendar, calendar_slots, set_medium_scale
        if self.media_scale is not None:   # [live] before the workers open the calendar
            set_medium_scale(cal, self.media_scale)
        Calendar(cal, calendar_slots(cl.n, len(cl.media_names)), create=True).close()
        for dev, r in self.ranks.items():
            threads, cpus = self._threads(dev)
            cfg = {"op": "setup", "names": self.names, "ranks": self.ranks, "source": self.sc.source,
                   "times": self.cost.device_times(cl.index[dev]), "shapes": self.shapes, "dtypes": self.dtypes,
                   "emulate": self.emulate, "pace": self.pace, "net": net, "calendar": cal,
                   "network": self.network, "threads": threads, "cpus": cpus,
                   "lr": self.lr, "momentum": self.momentum}
            send_obj(cfg, r, TAG_CTRL)
        self.reply_thread = threading.Thread(target=self._reply_loop, daemon=True)
        self.reply_thread.start()

    def _threads(self, dev: str) -> tuple[int, list | None]:
        """(torch threads, cores) a device's worker runs with: those its measured profile
        was taken with, else one thread, unpinned."""
        dp = self.sc.measured.get(dev)
        return (dp.threads, dp.cpus) if dp is not None else (1, None)

    def participants(self, plan: Plan | None = None) -> list[str]:
        plan = plan or self.plan
        devs = set(plan.devices) | {self.sc.source}
        return [d for d in self.names if d in devs]

    def _deploy(self, plan: Plan, first: bool = False) -> dict:
        t0 = now()
        if self.netns is not None:    # [netns] the schedule's priorities as htb classes, before any traffic
            from dora_rl.runtime.netns_media import pair_priorities
            self.netns.set_priorities(pair_priorities(self.cost, plan, self.sc.cluster))
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
        """Adopt a new plan between requests/iterations (nothing in flight); a fault
        the policy recovers from re-plans instead (`recovered` in the answer)."""
        self.check_plan(plan)
        try:
            return self._deploy(plan)
        except self.resilience.recoverable as e:
            self.recover(e.devices)
            return {"seconds": 0.0, "moved_blocks": [], "transfers": 0, "recovered": True}

    def recover(self, dead: set) -> dict:
        """Continue without the workers of `dead` (the fault policy's recovery)."""
        return self.resilience.recover(dead)

    def regroup(self, scenario: Scenario, survivors: list[str], procs: list, port: int) -> None:
        """Form a new process group of the coordinator and `survivors` (already
        re-executed with the new rank, world and `port`), on `scenario` (theirs)."""
        try:
            dist.destroy_process_group()
        except (RuntimeError, ValueError):   # the group is already gone with its peers
            pass
        self.pg = False
        self.pending = self.resilience.new_pending()
        self.replies = queue.Queue()
        self.sc = scenario
        self.cost = CostModel(scenario)
        self.names = list(survivors)
        self.spawn_devices = list(survivors)
        self.procs = list(procs)
        self.port = port
        world = len(survivors) + 1
        self._init_group(world)
        self._hello(world)
        self._setup()

    def set_bandwidth(self, medium: str, factor: float) -> None:
        """Scale `medium` (and its links) to `factor` x nominal, live (needs `live_bandwidth`)."""
        if self.media_scale is None:
            raise RuntimeFault("set_bandwidth: start the runtime with live_bandwidth=True")
        from dora_rl.runtime.emulation import set_medium_scale
        self.media_scale[self.sc.cluster.media_names.index(medium)] = float(factor)
        set_medium_scale(os.path.join(self.tmp, "calendar.bin"), self.media_scale)

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
        self._cmd(dev, {"op": "plan", "plan": plan.to_dict(), "levels": self.levels(plan),
                        "keep": not self.sc.workload.training, **fields})

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

    def infer(self, n: int | None = None, *, rate: float | None = None, window: int | None = None, inputs=None,
              keep_outputs: bool = False, switch_at: int | None = None, switch_plan: Plan | None = None,
              batch: int | None = None, duration: float | None = None, control=None, interval: float = 1.0,
              on_answer=None, on_issue=None, on_pause=None) -> InferenceResult:
        """Run `n` requests (or admit them for `duration` seconds). `rate`: open-loop
        arrivals per second; `window`: at most that many in flight (closed loop);
        neither: window = stages + 1. `inputs[i]`: request i's input (default
        `make_input`). With `switch_at=k`, after admitting k requests: stop admitting,
        drain, switch to `switch_plan`, resume. `control(t) -> Plan | None` is called
        every `interval` seconds at a request boundary; a plan it returns is switched to
        (drain, move). `on_answer(rid, latency_s, t_answer)` hears every answer and
        `on_issue(rid, t_issue)` every issue (a re-issue too); `on_pause(t0, t1)` each
        admission pause of a `control` switch (seconds since the stream began).
        With a resilient fault policy every request is answered exactly once even if
        workers die (request_loop.py)."""
        return request_loop.RequestStream(self, n, rate=rate, window=window, inputs=inputs, keep_outputs=keep_outputs,
                                      switch_at=switch_at, switch_plan=switch_plan, batch=batch, duration=duration,
                                      control=control, interval=interval, on_answer=on_answer,
                                      on_issue=on_issue, on_pause=on_pause).run()

    # ------------------------------------------------------------------ training
    def make_batch(self, it: int, batch: int):
        return training.make_batch(self, it, batch)

    def train(self, iterations: int, *, data=None, switch_at: int | None = None,
              switch_plan: Plan | None = None) -> TrainResult:
        """Run training iterations (1F1B, DP all-reduce, SGD). `data`: list of (x, y);
        `switch_at=k`: switch to `switch_plan` before iteration k (training.py)."""
        return training.train(self, iterations, data=data, switch_at=switch_at, switch_plan=switch_plan)

    def state_dict(self) -> dict:
        """The current parameters: the coordinator's checkpoint when the fault policy
        keeps one, else assembled from the workers (one owner per block)."""
        saved = self.resilience.saved_state()
        return saved if saved is not None else training.gather_state(self)

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
