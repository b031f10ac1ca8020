"""The coordinator's side of training (behind `Runtime.train` and `Runtime.state_dict`).

An iteration is one `train` command to every participant (the source gets the inputs,
the last stage the labels); the workers run 1F1B, all-reduce and step
(worker_training.py) and acknowledge. The loop asks the runtime's fault policy for
extra command fields and tells it when an iteration completed (`Resilience` snapshots
and checkpoints there); an iteration interrupted by a recoverable fault is re-run after
the recovery, so no update is lost or applied twice."""

from __future__ import annotations

import torch

from dora_rl.errors import PlanError, RuntimeFault
from dora_rl.plan import Plan
from dora_rl.runtime.emulation import now
from dora_rl.runtime.results import TrainResult, stream_energy


def make_batch(rt, it: int, batch: int):
    """Iteration `it`'s synthetic (inputs, labels), the same for every run with this seed."""
    x = rt.make_input(10_000_000 + it, batch)
    out_shape = rt.shapes[-1]
    g = torch.Generator().manual_seed(rt.seed * 7_919 + it)
    y = torch.randint(0, int(out_shape[-1]), (batch,) + tuple(out_shape[:-1]), generator=g)
    return x, y


def train(rt, iterations: int, *, data=None, switch_at: int | None = None,
          switch_plan: Plan | None = None) -> TrainResult:
    """Run `iterations` on the workers of runtime `rt` (see `Runtime.train`)."""
    if not rt.sc.workload.training:
        raise RuntimeFault(f"scenario {rt.sc.name!r} is an inference workload; use infer()")
    if switch_plan is not None:
        rt.check_plan(switch_plan)
    pending_switch = switch_at if switch_plan is not None else None
    batch = rt.sc.workload.batch
    rt.stats(reset=True)
    times, switch_info = [], {}
    wall = 0.0
    it = 0
    while it < iterations:
        try:
            if pending_switch is not None and it == pending_switch:
                ts = now()
                info = rt._deploy(switch_plan)
                pending_switch = None
                switch_info = {"drain_s": 0.0, "move_s": info["seconds"], "total_s": now() - ts,
                               "moved_blocks": info["moved_blocks"], "transfers": info["transfers"]}
            x, y = data[it] if data is not None else make_batch(rt, it, batch)
            t0 = now()
            train_step(rt, it, x, y, **rt.resilience.step_fields())
            rt.resilience.iteration_done()
            dt = now() - t0
            times.append(dt)
            wall += dt
            it += 1
        except rt.resilience.recoverable as e:
            rec = rt.recover(e.devices)
            rec["resumed_iteration"] = it
            pending_switch = None      # the recovery re-planned on the survivors
    st = rt.stats()
    rt.pending.wait()
    devs = rt.participants()
    res = TrainResult(iterations, times, stream_energy(rt.sc, st, wall, devs) / max(iterations, 1),
                      {d: st[d]["busy_s"] for d in rt.names},
                      {d: (st[d]["saturated"], st[d]["excess_s"]) for d in rt.names if st[d]["saturated"]},
                      faults=list(rt.resilience.faults))
    if switch_info:
        res.switch_s = switch_info["total_s"]
        res.switch = switch_info
    return res


def train_step(rt, it: int, x, y, **extra) -> float:
    """One iteration on the workers: the source gets x, the last stage y (plus any
    `extra` command fields); returns its wall time once every participant acked."""
    if x.shape[0] % rt.plan.microbatches:
        raise PlanError(f"plan: microbatches={rt.plan.microbatches} must divide the batch ({x.shape[0]})")
    last = set(rt.plan.stages[-1].devices)
    t0 = now()
    devs = rt.participants()
    for dev in devs:
        cmd = {"op": "train", "it": it, **extra, "batch": int(x.shape[0]), "denom": int(y.numel())}
        if dev == rt.sc.source:
            cmd["x"] = x
        if dev in last:
            cmd["y"] = y
        rt._cmd(dev, cmd)
    for dev in devs:
        rt._ack(dev)
    return now() - t0


def gather_state(rt) -> dict:
    """The current parameters, assembled from the workers (one owner per block)."""
    sd = {}
    bnames = [n for n, _ in rt.model.named_children()]
    for dev in rt.participants():
        rt._cmd(dev, {"op": "params"})
        got = rt._ack(dev)["params"]
        for b, bsd in got.items():
            for k, v in bsd.items():
                sd.setdefault(f"{bnames[b]}.{k}", v)
    return sd
