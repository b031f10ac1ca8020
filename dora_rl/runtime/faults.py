"""Failure detection and recovery for the runtime: the fault policies a `Runtime` holds
(`FailFast`, `Resilience`) and `ResilientRuntime` (a Runtime holding `Resilience`).

The coordinator calls its policy at every point where a failure can show (a worker
process exits, a receive or send fails, a request goes unanswered, an iteration is
interrupted); `FailFast` turns each into a `RuntimeFault` that ends the run, `Resilience`
into `WorkerLost`, which the request and training loops answer with `recover`.

Detection (within ~1 s for a dead process, `hb_timeout` (3 s; the live adapter scales it
with the dilation) for a hung one). A fault always names its devices: a worker is lost
only when its process is gone or its heartbeats stopped; a slow pipeline with every
worker alive is waited for (up to the run's timeout), never "recovered":

- process poll: the coordinator polls its worker processes at every wait (0.1 s);
- heartbeats (heartbeat.py): every worker sends a heartbeat over a small TCP side
  channel (not the gloo group) every 0.25 s; a worker silent for `hb_timeout` is dead (hung, SIGSTOP,
  unreachable device). The channel also carries the workers' transfer measurements
  (bytes, seconds per paced message) to the live adapter loop, and the recovery orders;
- per-request deadlines: a request unanswered for `request_deadline` seconds (an
  iteration: `timeout`) triggers a check of the processes and heartbeats; when nobody
  is found dead, nothing happens (until the run's timeout: RuntimeFault).

Recovery: gloo cannot drop a member from a group, so the group is rebuilt. The
coordinator re-plans on the survivors (the `dora` planner, or a callback such as the
live adapter (`replan`), on the scenario with the dead devices removed; a dead *source* is
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

import os
import signal
import subprocess
import threading
import time

from dora_rl.errors import RuntimeFault
from dora_rl.plan import Plan
from dora_rl.runtime.comm import Pending, free_port
from dora_rl.runtime.coordinator import Runtime
from dora_rl.runtime.emulation import now
from dora_rl.runtime.fault_policy import FailFast, WorkerLost
from dora_rl.runtime.heartbeat import HeartbeatServer
from dora_rl.scenario import Scenario


def replan_with_dora(scenario: Scenario) -> Plan:
    """The default re-planning after a fault: the `dora` planner on the survivors' scenario."""
    from dora_rl.cost import CostModel
    from dora_rl.planners import get_planner
    return get_planner("dora").plan(scenario, CostModel(scenario))


class Resilience(FailFast):
    """Detects and recovers from worker failures (see the module docstring).

    `replan(scenario_without_dead) -> Plan` chooses the plan on the survivors (default:
    the dora planner); `on_recover(info, rt)` is told about every recovery. `faults`
    lists what happened: device, detected_s (kill -> detection, when the kill was ours),
    recover_s, reissued requests, resumed iteration, new plan."""

    recoverable = (WorkerLost,)

    def __init__(self, *, replan=None, on_recover=None, hb_timeout: float = 3.0, request_deadline: float = 15.0,
                 checkpoint: bool = True, max_recoveries: int = 8):
        self.replan = replan or replan_with_dora
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
        self.timers: list[threading.Timer] = []
        self.t_started = None
        self.rejoining = False
        self.checked_at = -float("inf")   # the last overdue-request check

    def attach(self, rt) -> None:
        if rt.network != "pace":
            raise RuntimeFault("fault tolerance needs network='pace' (the heartbeat side channel does not "
                               "cross network namespaces yet)")
        if not rt.spawn:
            raise RuntimeFault("fault tolerance needs spawn=True (the coordinator polls its worker processes)")
        self.rt = rt

    def new_pending(self) -> Pending:
        return Pending(on_error=self.comm_failed)

    # ---------------------------------------------------------------- lifecycle hooks
    def worker_env(self, env: dict) -> None:
        env.update(DORA_HB_PORT=str(self.hb.port), DORA_HB_ADDR=self.rt.addr, DORA_GEN="0")
        env.pop("DORA_RESUME", None)

    def spawned(self, dev: str, proc: subprocess.Popen) -> None:
        self.proc_of[dev] = proc

    def starting(self) -> None:
        self.hb = HeartbeatServer(self.rt.addr)

    def started(self) -> None:
        self.hb.reset(self.rt.names)
        self.t_started = now()

    def closing(self) -> None:
        for tm in self.timers:
            tm.cancel()
        # SIGSTOPped workers would ignore the stop message and SIGTERM
        for p in self.rt.procs:
            if p.poll() is None:
                try:
                    os.kill(p.pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass

    def closed(self) -> None:
        for p in self.proc_of.values():
            if p.poll() is None:
                p.kill()
                p.wait(timeout=3)
        if self.hb is not None:
            self.hb.close()

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

    # ---------------------------------------------------------------- detection
    def check_workers(self) -> None:
        gone = {d for d, p in self.proc_of.items() if d not in self.dead and p.poll() is not None}
        if gone:
            raise WorkerLost(gone, "process exited")
        if self.hb is not None and self.rt.started and not self.rejoining:
            hung = self.hb.silent([d for d in self.rt.names if d not in self.dead], self.hb_timeout)
            if hung:
                raise WorkerLost(hung, f"no heartbeat for {self.hb_timeout:g} s")

    def ack_failed(self, err: RuntimeFault) -> RuntimeFault:
        """A receive that fails (peer reset, closed pair) is a fault, not an error: find
        out who died (the process may not have been reaped yet) and raise WorkerLost so
        the caller recovers, instead of the plain RuntimeFault."""
        dead = self.detect()
        return WorkerLost(dead, str(err)) if dead else err

    def comm_failed(self, err: Exception) -> None:
        """A send that fails (closed pair, reset peer) is a fault like a failed receive:
        raise WorkerLost for whoever died, so the caller recovers; a failure with every
        worker alive is a RuntimeFault, never a raw gloo error."""
        dead = self.detect()
        if dead:
            raise WorkerLost(dead, str(err)) from None
        raise RuntimeFault(f"communication failed with every worker alive: {err}") from None

    def unanswered(self, oldest_issue: float, last_answer: float) -> None:
        """A request overdue: a fault only if a worker is found gone or silent (a loaded
        CPU is slow, not dead); with every worker alive the pipeline gets the run's
        timeout since its last answer before the run ends (RuntimeFault, never a
        fault without a device)."""
        t = now()
        if t - oldest_issue <= self.request_deadline or t - self.checked_at < self.request_deadline:
            return
        self.checked_at = t
        dead = self.detect()
        if dead:
            raise WorkerLost(dead, f"request unanswered for {self.request_deadline:g} s")
        if t - max(oldest_issue, last_answer) > self.rt.timeout:
            raise RuntimeFault(f"no answer from the pipeline within {self.rt.timeout:g} s with every worker "
                               "alive and heartbeating (raise --timeout, or the dilation: --slowdown)")

    def pipeline_failed(self, why: str) -> None:
        dead = self.detect()
        if not dead:
            raise RuntimeFault(f"{why} (every worker alive)")
        raise WorkerLost(dead, why)

    def duplicate(self, rid: int) -> None:
        """A late or duplicate answer (after a re-issue): dropped by id."""

    def detect(self, grace: float = 1.5) -> set:
        """Who is dead? Polls processes and heartbeats for up to `grace` seconds."""
        end = now() + grace
        while True:
            try:
                self.rt._check_procs()
            except WorkerLost as e:
                return e.devices
            if now() >= end:
                return set()
            time.sleep(0.05)

    # ---------------------------------------------------------------- recovery
    def recover(self, dead: set) -> dict:
        """Rebuild the group without `dead`, re-plan on the survivors, redeploy; returns
        the record appended to `faults`."""
        rt = self.rt
        t0 = now()
        if len(self.faults) >= self.max_recoveries:
            raise RuntimeFault(f"giving up after {len(self.faults)} recoveries")
        if rt.sc.source in dead:
            raise RuntimeFault(f"the source device {rt.sc.source!r} failed: requests enter and answers leave "
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
        survivors = [d for d in rt.names if d not in self.dead]
        new_sc = rt.sc if not dead else rt.sc.without_devices(dead)
        plan = self.replan(new_sc)
        self.gen += 1
        port, world = free_port(), len(survivors) + 1
        orders = {d: {"gen": self.gen, "port": port, "rank": i + 1, "world": world, "version": self.version,
                      "dir": rt.tmp} for i, d in enumerate(survivors)}
        self.rejoining = True
        try:
            self.hb.order(orders)
            deadline = now() + rt.timeout
            while not self.hb.at_gen(survivors, self.gen):     # every survivor re-executed
                gone = [d for d in survivors if self.proc_of[d].poll() is not None]
                if gone:
                    raise RuntimeFault(f"worker(s) {', '.join(gone)} died while rejoining")
                if now() > deadline:
                    raise RuntimeFault(f"survivors did not rejoin within {rt.timeout:g} s")
                time.sleep(0.02)
            time.sleep(0.05)
            rt.regroup(new_sc, survivors, [self.proc_of[d] for d in survivors], port)
        finally:
            self.rejoining = False
            self.hb.order({})
        self.hb.reset(survivors, now())
        info = self._redeploy(rt.check_plan(plan))
        rec = {"devices": sorted(dead), "detected_s": det, "recover_s": now() - t0, "gen": self.gen,
               "plan": plan.to_dict(), "kept_blocks": info["kept"], "shipped_blocks": info["shipped"],
               "version": self.version}
        self.faults.append(rec)
        if self.on_recover is not None:
            self.on_recover(rec, rt)
        return rec

    def _redeploy(self, plan: Plan) -> dict:
        """Deploy `plan` on the rebuilt group: survivors keep the blocks they brought
        (at the current version), the coordinator ships the rest from its copy."""
        rt = self.rt
        kept, shipped = {}, {}
        for dev in rt.names:
            need = set()
            for s in plan.stages:
                if dev in s.devices:
                    need = set(range(s.start, s.end))
            h = rt.hello.get(dev, {})
            have = set(h.get("blocks", ())) if h.get("version", -1) == self.version else set()
            ship = sorted(need - have)
            kept[dev], shipped[dev] = sorted(need & have), ship
            rt._send_plan(dev, plan, weights={b: rt.model[b] for b in ship},
                          opt={b: self.opt_ckpt.get(b, {}) for b in ship}, version=self.version)
        rt._plan_acks()     # records what the survivors hold now
        rt.plan = plan
        return {"kept": kept, "shipped": shipped}

    # ---------------------------------------------------------------- training
    def step_fields(self) -> dict:
        return {"v": self.version}   # workers snapshot their blocks at the iteration boundary

    def iteration_done(self) -> None:
        if self.checkpoint:
            self._take_checkpoint()
        self.version += 1

    def _take_checkpoint(self) -> None:
        """Copy every participant's blocks (and optimizer state) to the coordinator.
        All-or-nothing: a worker lost half-way leaves the previous checkpoint intact,
        so the copy never mixes iterations (recovery ships blocks from it and replays
        the iteration on top of the survivors' start-of-iteration snapshots)."""
        rt = self.rt
        devs = rt.participants()
        for dev in devs:
            rt._cmd(dev, {"op": "checkpoint"})
        states = [rt._ack(dev)["state"] for dev in devs]
        for state in states:
            for b, (sd, opt) in state.items():
                rt.model[b].load_state_dict(sd)
                self.opt_ckpt[b] = opt

    def saved_state(self) -> dict | None:
        if self.checkpoint and self.rt.sc.workload.training:
            return {k: v.detach().clone() for k, v in self.rt.model.state_dict().items()}
        return None


class ResilientRuntime(Runtime):
    """A Runtime that survives worker failures: it holds a `Resilience` (the keyword
    arguments below are its settings) and can change a medium's bandwidth live.

    `fail_at(device, seconds)` kills a worker on purpose (SIGKILL) after that many
    seconds; `faults` lists the recoveries; `hb` is the heartbeat server (the workers'
    transfer reports)."""

    def __init__(self, scenario: Scenario, *, replan=None, on_recover=None, hb_timeout: float = 3.0,
                 request_deadline: float = 15.0, checkpoint: bool = True, max_recoveries: int = 8, **kw):
        res = Resilience(replan=replan, on_recover=on_recover, hb_timeout=hb_timeout,
                         request_deadline=request_deadline, checkpoint=checkpoint, max_recoveries=max_recoveries)
        super().__init__(scenario, resilience=res, live_bandwidth=True, **kw)

    @property
    def faults(self) -> list[dict]:
        return self.resilience.faults

    @property
    def hb(self) -> HeartbeatServer | None:
        return self.resilience.hb

    @property
    def proc_of(self) -> dict[str, subprocess.Popen]:
        return self.resilience.proc_of

    def fail_at(self, device: str, seconds: float) -> None:
        self.resilience.fail_at(device, seconds)

    def kill_worker(self, device: str, sig=signal.SIGKILL) -> None:
        self.resilience.kill_worker(device, sig)

    def detect(self, grace: float = 1.5) -> set:
        return self.resilience.detect(grace)
