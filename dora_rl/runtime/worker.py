"""A runtime worker: one process per device, one rank of the `torch.distributed` group
(`Worker`, `run_worker`, `python -m dora_rl.runtime.worker`).

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
to the device's modelled speed (`emulation.py`). This module holds the worker's core
(settings, plan adoption, the command loop, probes and statistics) and its entry point;
the sample hand-off across stages is in worker_pipeline.py, the `infer` command in
worker_inference.py, the `train` command in worker_training.py, the heartbeat and
rejoin machinery of the fault-tolerant runtime in heartbeat.py."""

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
from torch import nn

from dora_rl.errors import RuntimeFault
from dora_rl.profile.timing import tune_malloc
from dora_rl.runtime.comm import (
    TAG_ACK,
    TAG_CTRL,
    TAG_PROBE,
    TAG_WEIGHTS,
    Pending,
    Transmitter,
    flow_class,
    irecv_tensor,
    isend_obj,
    recv_obj,
    send_obj,
    wait_tensors,
)
from dora_rl.runtime.emulation import ComputeClock, NetEmulator, now, sleep_until
from dora_rl.runtime.heartbeat import NoWorkerFaults
from dora_rl.runtime.worker_inference import DTYPES, InferenceOps
from dora_rl.runtime.worker_pipeline import PipelineOps
from dora_rl.runtime.worker_training import TrainingOps

__all__ = ["DTYPES", "Worker", "run_worker", "main"]


class Worker(PipelineOps, InferenceOps, TrainingOps):
    """One device's worker: holds its blocks and the running plan, executes commands."""

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
        self.faults = NoWorkerFaults()   # heartbeat.WorkerFaults when fault tolerance is on
        self.my_stage = None
        self.ranks_of: dict = {}         # flow class -> {medium index: rank} of the plan's schedule

    # ------------------------------------------------------------------ setup
    def setup(self, cfg: dict) -> None:
        self.cfg = cfg
        self.names = cfg["names"]
        self.idx = self.names.index(self.device)
        self.ranks = cfg["ranks"]
        self.source = cfg["source"]
        self.is_source = self.device == self.source
        self.times = cfg["times"]   # this device's modelled seconds per block range (CostModel.device_times)
        self.shapes = [tuple(s) for s in cfg["shapes"]]
        self.dtypes = [DTYPES[d] for d in cfg["dtypes"]]
        self.emulate = cfg["emulate"]
        pace = cfg.get("pace", self.emulate)   # transfers paced to the links (also at real compute speed)
        _threads_and_cores(cfg.get("threads", 1), cfg.get("cpus"))
        if cfg.get("network") == "netns":   # [netns] the kernel (tc) shapes the bytes: no calendar, latency floor
            from dora_rl.runtime.netns import KernelNet
            self.net = KernelNet(cfg["net"])
        else:
            self.net = NetEmulator(cfg["net"], cfg["calendar"] if pace else None)
        self.clock = ComputeClock(self.emulate)
        self.tx = Transmitter(self.net, self.idx, self.ranks, self.names, pace)
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
        self.tx.send(dst_dev, t, tag, self.ranks_of.get(flow_class(tag, self.my_stage)))

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
            self.faults.gate(op)   # freeze point for a rejoin (heartbeat.py)
            handler(cmd)
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
        if "version" in cmd:   # fault tolerance: the iteration the re-deployed blocks are at
            self.faults.version = cmd["version"]
        sends.wait()
        self.ranks_of = cmd.get("levels") or {}   # the schedule's ranks (FIFO without)
        self._adopt(plan, keep=bool(cmd.get("keep")))
        self.ack({"op": "plan", "device": self.device, "seconds": now() - t0,
                  "blocks": sorted(self.blocks)})

    def _adopt(self, plan: dict, keep: bool = False) -> None:
        """Run `plan` from now on. `keep` (inference): blocks this worker no longer owns
        stay in memory - the device's flash copy - so a later switch back moves nothing;
        training drops them (their parameters would go stale)."""
        self.plan = plan
        self.schedule = plan.get("schedule") or {}
        self.stages = [(s["blocks"][0], s["blocks"][1], list(s["devices"]), list(s["shares"]))
                       for s in plan["stages"]]
        self.S = len(self.stages)
        self.M = plan["microbatches"]
        self.my_stage = None
        for s, (_, _, devs, _) in enumerate(self.stages):
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


    def op_params(self, cmd: dict) -> None:
        self.flush()
        self.ack({"op": "params", "params": {b: {k: v.detach().clone() for k, v in m.state_dict().items()}
                                             for b, m in self.blocks.items()}})

    def op_reset_calendar(self, cmd: dict) -> None:
        if self.net.cal is not None:
            self.net.cal.reset()
        self.ack({"op": "reset_calendar"})


# ---------------------------------------------------------------------- entry point


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


def _threads_and_cores(threads: int, cpus) -> None:
    """Run torch with the thread count the device's profile was measured with, pinned to
    the cores it was measured on (where the OS allows it)."""
    torch.set_num_threads(int(threads))
    if cpus and hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, set(cpus))
        except OSError:
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
    if os.environ.get("DORA_HB_PORT"):   # [faults] heartbeats + rejoin orders (heartbeat.py)
        from dora_rl.runtime.heartbeat import WorkerFaults
        fx = WorkerFaults(device)
    torch.set_num_threads(1)
    tune_malloc()
    addr = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    try:
        # a spawned worker (its coordinator watched) may sit idle for a whole dilated run:
        # gloo's timeout must not end it (the coordinator bounds every wait)
        op_timeout = max(timeout, 24 * 3600.0) if os.environ.get("DORA_PARENT_PID") else timeout
        dist.init_process_group("gloo", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=op_timeout))
    except Exception as e:   # gloo reports timeouts and refused connections as several types
        raise RuntimeFault(f"worker {device}: cannot reach the coordinator at {addr} within {timeout:g} s "
                           f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    try:
        hello = {"device": device}
        resumed = {}
        if fx is not None:   # [faults] a re-executed survivor reports the blocks it kept
            from dora_rl.runtime.heartbeat import worker_resume
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
    except Exception as e:   # any failure of a collective: the coordinator decides (a RuntimeFault)
        if fx is not None:   # [faults]
            fx.wait_for_order(timeout)
        raise RuntimeFault(f"worker {device}: lost the coordinator or a peer ({type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else ''})") from None
    finally:
        try:
            dist.destroy_process_group()
        except (RuntimeError, ValueError):   # the group is already gone with its peers
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
