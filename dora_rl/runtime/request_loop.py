"""The inference request loop of the coordinator (`RequestStream`, behind `Runtime.infer`).

One loop serves every kind of stream: `n` requests or `duration` seconds, open-loop
arrivals at `rate` or a closed loop of at most `window` in flight, given `inputs` or
generated ones, a planned switch after `switch_at` requests, and a `control(t)` callback
(the live adapter) whose plans are switched to at request boundaries. Failures go
through the runtime's fault policy (faults.py): with `FailFast` they end the stream;
with `Resilience` a lost worker is recovered and the requests in flight are issued
again, so that every admitted request is answered exactly once."""

from __future__ import annotations

import queue
from collections import deque

import torch

from dora_rl.errors import PlanError, RuntimeFault
from dora_rl.plan import Plan
from dora_rl.runtime.comm import TAG_INPUT, isend_tensor
from dora_rl.runtime.emulation import now, sleep_until
from dora_rl.runtime.results import InferenceResult, stream_energy


def send_input(rt, dev: str, cmd: dict, x: torch.Tensor) -> None:
    """The source's infer command with its input: a float/int tensor goes as a raw
    tensor message after the command (no pickling, no copies; the worker receives
    it straight into its buffer), anything else pickled inside the command."""
    dt = str(x.dtype).removeprefix("torch.")
    if dt in ("float32", "float64", "int64") and not x.requires_grad:
        cmd["x_meta"] = (tuple(int(d) for d in x.shape), dt)
        rt._cmd(dev, cmd)
        try:
            rt.pending.add(isend_tensor(x, rt.ranks[dev], TAG_INPUT, 0.0))
        except RuntimeError as e:       # gloo refuses a send to a peer that is gone
            rt.resilience.comm_failed(e)
    else:
        cmd["x"] = x
        rt._cmd(dev, cmd)


class RequestStream:
    """One call of `Runtime.infer` (its arguments are documented there); `run()` serves
    the stream and returns its `InferenceResult`."""

    def __init__(self, rt, n: int | None = None, *, rate: float | None = None, window: int | None = None,
                 inputs=None, keep_outputs: bool = False, switch_at: int | None = None,
                 switch_plan: Plan | None = None, batch: int | None = None, duration: float | None = None,
                 control=None, interval: float = 1.0, on_answer=None, on_issue=None, on_pause=None):
        if rt.sc.workload.training:
            raise RuntimeFault(f"scenario {rt.sc.name!r} is a training workload; use train()")
        if n is None and duration is None:
            raise RuntimeFault("infer: give n or duration")
        self.rt = rt
        self.n, self.duration = n, duration
        self.rate, self.window = rate, window
        self.inputs, self.keep_outputs, self.on_answer, self.on_issue = inputs, keep_outputs, on_answer, on_issue
        self.control, self.interval, self.on_pause = control, interval, on_pause
        self.batch = batch or rt.sc.workload.batch
        if self.batch % rt.plan.microbatches:
            raise PlanError(f"plan: microbatches={rt.plan.microbatches} must divide the batch ({self.batch})")
        if switch_plan is not None:
            rt.check_plan(switch_plan)
        # a planned switch; cancelled by a recovery (which re-plans on the survivors)
        self.switch_at = switch_at if switch_plan is not None else None
        self.switch_plan = switch_plan
        self.first_issue: dict[int, float] = {}
        self.inflight: dict[int, float] = {}     # rid -> issue time (this attempt)
        self.retry: deque = deque()
        self.reissued_ids: set = set()
        self.lat: dict = {}
        self.outs: dict = {}
        self.order: list = []
        self.dup = 0
        self.reissued = 0
        self.nxt = 0                              # next new request id
        self.switch_info: dict = {}

    # ---------------------------------------------------------------- the loop
    def run(self) -> InferenceResult:
        rt = self.rt
        rt.stats(reset=True)
        self.t_begin = now()
        self.t_arrivals = self.t_begin            # origin of the arrival times (moves on a planned switch)
        self.last_answer = self.t_begin
        self.next_ctl = self.t_begin + self.interval
        while True:
            try:
                if not self._step():
                    break
            except rt.resilience.recoverable as e:
                lost = sorted(self.inflight)
                self.inflight.clear()
                rec = rt.recover(e.devices)
                self.retry.extend(lost)
                self.reissued += len(lost)
                rec["reissued"] = lost
                self.switch_at = None
        wall = now() - self.t_begin
        st = rt.stats()
        rt.pending.wait()
        return self._result(wall, st)

    def _step(self) -> bool:
        """One move of the loop; False when every request is answered."""
        rt = self.rt
        if self.control is not None and now() >= self.next_ctl:
            new = self._control()
            if new is not None:
                self._control_switch(new)
        if self.retry:
            w = self.window or (len(rt.plan.stages) + 1)
            if len(self.inflight) < w:
                rid = self.retry.popleft()
                self.reissued_ids.add(rid)
                self._issue(rid)
            else:
                self._wait_one(0.1)
            return True
        if self._budget_left():
            if self.switch_at is not None and self.nxt == self.switch_at:
                self._planned_switch()
            if self.rate:
                due = self.t_arrivals + self.nxt / self.rate
                if now() < due:
                    if self.inflight:
                        self._wait_one(min(0.1, max(0.001, due - now())))
                    else:
                        sleep_until(min(due, now() + 0.1))
                        rt._check_procs()
                    return True
            w = self.window if self.window else (None if self.rate else len(rt.plan.stages) + 1)
            if w is not None and len(self.inflight) >= w:
                self._wait_one(0.1)
                return True
            if self.batch % rt.plan.microbatches:
                raise PlanError(f"plan: microbatches={rt.plan.microbatches} must divide the batch ({self.batch})")
            self._issue(self.nxt)
            self.nxt += 1
            self._take_ready()
            return True
        if not self.inflight:
            return False
        self._wait_one(0.1)
        return True

    def _control(self):
        self.next_ctl = now() + self.interval
        return self.control(now() - self.t_begin)

    def _control_switch(self, new: Plan) -> None:
        """`control` asked for `new`: stop admitting, drain, switch. The control intervals
        go on during the drain (each a decision: the latest one counts, None cancels the
        switch). Open-loop arrivals resume at once after it, at the same rate: the
        arrivals the drain held back are not issued in a burst (a backlog that would
        outlast the switch by far at a high utilisation). `on_pause(t0, t1)` hears the pause."""
        rt, ts = self.rt, now()
        while self.inflight:
            self._wait_one(0.1)
            if now() >= self.next_ctl:
                new = self._control()
                if new is None:
                    break
        if new is not None:
            info = rt.switch(new)
            self.switch_info = {"total_s": now() - ts, **info}
        if self.rate:
            self.t_arrivals = max(self.t_arrivals, now() - self.nxt / self.rate)
        if self.on_pause is not None:
            self.on_pause(ts - self.t_begin, now() - self.t_begin)

    def _budget_left(self) -> bool:
        if self.n is not None:
            return self.nxt < self.n
        return now() - self.t_begin < self.duration

    def _planned_switch(self) -> None:
        """`switch_at`: stop admitting, drain, switch to `switch_plan`, resume (open-loop
        arrivals resume after the switch)."""
        ts = now()
        while self.inflight:
            self._wait_one(0.1)
        td = now()
        info = self.rt._deploy(self.switch_plan)
        self.switch_at = None
        self.switch_info = {"drain_s": td - ts, "move_s": info["seconds"], "total_s": now() - ts,
                            "moved_blocks": info["moved_blocks"], "transfers": info["transfers"]}
        if self.rate:
            self.t_arrivals += now() - ts

    # ---------------------------------------------------------------- requests and answers
    def _issue(self, rid: int) -> None:
        rt = self.rt
        x = self.inputs[rid] if self.inputs is not None else rt.make_input(rid, self.batch)
        t = now()
        self.first_issue.setdefault(rid, t)
        self.inflight[rid] = t
        if self.on_issue is not None:
            self.on_issue(rid, t)
        for dev in rt.participants():
            cmd = {"op": "infer", "rid": rid, "batch": int(x.shape[0])}
            if dev == rt.sc.source:
                send_input(rt, dev, cmd, x)
            else:
                rt._cmd(dev, cmd)

    def _wait_one(self, timeout: float) -> bool:
        """Take one answer within `timeout` seconds; on none, check the workers and the
        pipeline's progress (the fault policy decides what is overdue)."""
        rt = self.rt
        try:
            msg = rt.replies.get(timeout=timeout)
        except queue.Empty:
            rt._check_procs()
            if self.inflight:
                rt.resilience.unanswered(min(self.inflight.values()), self.last_answer)
            return False
        self._handle(msg)
        return True

    def _take_ready(self) -> None:
        while True:
            try:
                msg = self.rt.replies.get_nowait()
            except queue.Empty:
                return
            self._handle(msg)

    def _handle(self, msg: dict) -> None:
        rt = self.rt
        if msg.get("rid") is None:
            rt.resilience.pipeline_failed(msg.get("error", "the source worker stopped answering"))
        rid = msg["rid"]
        if rid in self.lat or rid not in self.inflight:
            rt.resilience.duplicate(rid)      # late or duplicate answer: dropped by id (or fatal)
            self.dup += 1
            return
        del self.inflight[rid]
        self.order.append(rid)
        t0 = self.first_issue[rid] if rid in self.reissued_ids else msg["t0"]   # re-issued: from its admission
        self.lat[rid] = msg["t1"] - t0
        self.last_answer = now()
        if self.keep_outputs:
            self.outs[rid] = msg["y"]
        if self.on_answer is not None:
            self.on_answer(rid, self.lat[rid], msg["t1"])

    def _result(self, wall: float, st: dict) -> InferenceResult:
        rt = self.rt
        n = self.nxt
        devs = rt.participants()
        res = InferenceResult(n=n, latencies_s=self.lat, outputs=self.outs, wall_s=wall,
                              throughput=n / wall if wall > 0 else 0.0,
                              energy_j=stream_energy(rt.sc, st, wall, devs) / max(n, 1),
                              busy_s={d: st[d]["busy_s"] for d in rt.names},
                              saturated={d: (st[d]["saturated"], st[d]["excess_s"]) for d in rt.names
                                         if st[d]["saturated"]},
                              answered=self.order, duplicates=self.dup, reissued=self.reissued,
                              faults=list(rt.resilience.faults))
        if self.switch_info:
            res.switch_s = self.switch_info["total_s"]
            res.switch = self.switch_info
        return res
