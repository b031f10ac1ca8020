"""The coordinator's worker group (`WorkerGroup`, the base of `Runtime`): the gloo process
group with its workers, command/acknowledgement messaging, and shutdown.

`Runtime` (coordinator.py) spawns the workers and deploys plans; this base class forms
the group (`_init_group`, `_hello`), sends commands (`_cmd`), waits for
acknowledgements (`_ack`) and the source's answers (`_reply_loop`), always with a
timeout and a check of the worker processes, and stops every worker on `close` (also
at interpreter exit). Failures go through the runtime's fault policy (fault_policy.py)."""

from __future__ import annotations

import atexit
import contextlib
import datetime
import subprocess
import threading
from pathlib import Path

import torch.distributed as dist

from dora_rl.errors import RuntimeFault
from dora_rl.runtime.comm import TAG_ACK, TAG_CTRL, TAG_REPLY, isend_obj, recv_obj, send_obj
from dora_rl.runtime.emulation import now

_LIVE: set = set()
IDLE_S = 24 * 3600.0   # gloo timeout of a spawned group: an idle worker waits for commands this long


def _kill_all_live() -> None:
    for rt in list(_LIVE):
        rt._kill()


atexit.register(_kill_all_live)




class WorkerGroup:
    """Process group and messaging of a `Runtime` (which sets every attribute used here:
    `sc`, `names`, `ranks`, `procs`, `pending`, `replies`, `resilience`, `timeout`, ...)."""

    def _track(self) -> None:
        """Stop this group's workers at interpreter exit, whatever happens."""
        _LIVE.add(self)

    def _worker_log(self, p) -> str:
        try:
            lines = Path(p.log_path).read_text(errors="replace").strip().splitlines()
            err = [ln for ln in lines if "error" in ln.lower()]
            return (err or lines or ["(no output)"])[-1][:400]
        except OSError:
            return "(no log)"

    def _check_procs(self) -> None:
        """Raise (the fault policy's error) if a worker died or stopped heartbeating."""
        self.resilience.check_workers()

    def _init_group(self, world: int) -> None:
        err: list = []

        def init():
            try:
                # [netns] this thread's sockets (store, gloo) live in the hub namespace
                with self.netns.entered_hub() if self.netns is not None else contextlib.nullcontext():
                    # gloo's own timeout would end an idle wait (a dilated run outlasts it): the
                    # coordinator bounds every wait itself (`_wait_for`, the request loop)
                    dist.init_process_group("gloo", init_method=f"tcp://{self.addr}:{self.port}", rank=0,
                                            world_size=world, timeout=datetime.timedelta(seconds=max(
                                                self.timeout, IDLE_S)))
            except Exception as e:   # handed to the caller, which raises it as a RuntimeFault
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
        self.hello = {}
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
                self.hello[dev] = hello
        missing = [d for d in self.names if d not in seen]
        if bad or missing:
            msg = bad[0][1] if bad else f"no worker for device(s) {', '.join(missing)}"
            for r in range(1, world):
                send_obj({"op": "error", "message": msg}, r, TAG_CTRL)
            raise RuntimeFault(msg)
        self.ranks = seen
        self.rank_of = seen

    def _reply_loop(self) -> None:
        src = self.ranks[self.sc.source]
        while True:
            try:
                msg = recv_obj(src, TAG_REPLY)
            except Exception as e:   # handed to the request loop as an error reply (a RuntimeFault there)
                self.replies.put({"rid": None, "error": f"lost the source worker ({e})"})
                return
            self.replies.put(msg)
            if msg.get("rid") is None:
                return

    # ------------------------------------------------------------------ control
    def _cmd(self, dev: str, obj: dict) -> None:
        try:
            self.pending.add(isend_obj(obj, self.ranks[dev], TAG_CTRL))
        except RuntimeError as e:       # gloo refuses a send to a peer that is gone
            self.resilience.comm_failed(e)

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
        """Worker `dev`'s acknowledgement; a failed or missing one is the fault policy's
        error (`FailFast`: RuntimeFault; `Resilience`: WorkerLost for whoever died)."""
        try:
            return self._ack_or_fault(dev)
        except self.resilience.recoverable:
            raise
        except RuntimeFault as e:
            raise self.resilience.ack_failed(e) from None

    def _ack_or_fault(self, dev: str) -> dict:
        th_res: list = []

        def rx():
            try:
                th_res.append(recv_obj(self.ranks[dev], TAG_ACK))
            except Exception as e:   # handed to the waiting thread, which raises it as a RuntimeFault
                th_res.append(e)
        th = threading.Thread(target=rx, daemon=True)
        th.start()
        self._wait_for(th, 0.5, True, f"worker {dev} did not answer within {self.timeout:g} s")
        if isinstance(th_res[0], Exception):
            raise RuntimeFault(f"lost worker {dev}: {th_res[0]}")
        return th_res[0]

    # ------------------------------------------------------------------ shutdown
    def close(self) -> None:
        self.resilience.closing()
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
            except (RuntimeError, OSError):   # a peer already gone: _kill() below ends the rest
                pass
        self._kill()
        if self.pg:
            try:
                dist.destroy_process_group()
            except Exception:
                pass
            self.pg = False
        _LIVE.discard(self)
        if self.netns is not None:   # [netns] after the workers are gone
            self.netns.close()
            self.netns = None
        if self.tmp:
            import shutil
            shutil.rmtree(self.tmp, ignore_errors=True)
        self.resilience.closed()

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
