"""The coordinator's fault policy: the hooks a `Runtime` calls wherever a failure can
show, `FailFast` (the plain runtime: every failure ends the run) and `WorkerLost`.

A `Runtime` holds one policy object and calls it unconditionally: when it spawns a
worker, polls the worker processes, a receive or a send fails, requests go unanswered,
a training iteration starts or ends. `FailFast` turns every failure into a
`RuntimeFault`; `faults.Resilience` overrides the hooks to detect lost workers
(`WorkerLost`, listed in `recoverable`) and recover from them. The loops catch
`policy.recoverable` and call `recover`, so they are written once for both."""

from __future__ import annotations

import subprocess

from dora_rl.errors import RuntimeFault
from dora_rl.runtime.comm import Pending
from dora_rl.runtime.emulation import now


class WorkerLost(RuntimeFault):
    """One or more workers died or stopped answering (`devices`; empty: unknown)."""

    def __init__(self, devices, why: str = ""):
        self.devices = set(devices)
        super().__init__(f"lost worker(s) {', '.join(sorted(self.devices)) or '?'}: {why}")



class FailFast:
    """The plain runtime's fault policy: a dead worker, a failed receive, an unanswered
    pipeline end the run with a `RuntimeFault` (gloo's own errors on a send pass through)."""

    faults: tuple = ()       # recoveries: none
    recoverable: tuple = ()  # the errors `recover` answers (an `except` clause): none

    def attach(self, rt) -> None:
        """Bind to the `Runtime` that holds this policy (called by its constructor)."""
        self.rt = rt

    def new_pending(self) -> Pending:
        return Pending()

    # ---------------------------------------------------------------- lifecycle hooks
    def worker_env(self, env: dict) -> None:
        """Add what a spawned worker needs to its environment `env`."""

    def spawned(self, dev: str, proc: subprocess.Popen) -> None:
        pass

    def starting(self) -> None:
        pass

    def started(self) -> None:
        pass

    def closing(self) -> None:
        pass

    def closed(self) -> None:
        pass

    # ---------------------------------------------------------------- detection
    def check_workers(self) -> None:
        for p in self.rt.procs:
            if p.poll() is not None:
                raise RuntimeFault(f"worker process {p.pid} exited with code {p.returncode}: "
                                   f"{self.rt._worker_log(p)}")

    def ack_failed(self, err: RuntimeFault) -> RuntimeFault:
        """What a failed acknowledgement raises."""
        return err

    def comm_failed(self, err: RuntimeError) -> None:
        """A send gloo refused: its error passes through."""
        raise err

    def unanswered(self, oldest_issue: float, last_answer: float) -> None:
        """Called while requests wait: raise if the pipeline has stalled."""
        if now() - max(oldest_issue, last_answer) > self.rt.timeout:
            raise RuntimeFault(f"no answer from the pipeline within {self.rt.timeout:g} s")

    def pipeline_failed(self, why: str) -> None:
        raise RuntimeFault(why)

    def duplicate(self, rid: int) -> None:
        """An answer to a request not in flight."""
        raise RuntimeFault(f"request {rid} answered twice or never asked")

    def recover(self, dead: set) -> dict:
        raise RuntimeFault(f"lost worker(s) {', '.join(sorted(dead))} (no fault tolerance)")

    # ---------------------------------------------------------------- training
    def step_fields(self) -> dict:
        """Extra fields of a train command."""
        return {}

    def iteration_done(self) -> None:
        pass

    def saved_state(self) -> dict | None:
        """The parameters kept on the coordinator (None: ask the workers)."""
        return None
