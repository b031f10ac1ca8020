"""Run a plan on emulated workers and put the measurements beside the cost model's
prediction for the same plan (what `dora run` and bench/bench_runtime.py report)."""

from __future__ import annotations

import math

from dora_rl.cost import CostModel
from dora_rl.plan import Plan
from dora_rl.runtime.coordinator import Runtime
from dora_rl.scenario import Scenario


def reference_sgd(model: str, batches, lr: float) -> dict:
    """The parameters distributed training must end with: the zoo model `model` (same
    initial weights the workers start from) after plain SGD with cross-entropy on
    `batches` [(x, y)] in one process (tests and bench/bench_faults.py compare to it)."""
    import torch
    import torch.nn.functional as F

    from dora_rl.profile import build_model

    net, _ = build_model(model)
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    for x, y in batches:
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    return net.state_dict()


POOL = 8   # distinct inputs made ahead of a timed phase


def _pool(make, n: int) -> list:
    """n inputs made now: POOL distinct ones, cycled (the same tensors, no copies)."""
    distinct = [make(i) for i in range(min(n, POOL))]
    return [distinct[i % len(distinct)] for i in range(n)]


def measure(scenario: Scenario, plan: Plan, *, requests: int = 30, iterations: int = 5, warmup: int = 2,
            emulate: bool = True, rate: float | None = None, throughput_phase: bool = True,
            timeout: float = 120.0, lr: float = 0.01, switch_plan: Plan | None = None,
            network: str = "pace", pace: bool | None = None) -> dict:
    """Measure `plan` on `scenario` (already scaled, if emulating at a slowdown).

    Inference: a latency phase with open-loop arrivals at `rate` (default: the
    scenario's request_rate, capped at 0.8x the predicted capacity so requests do not
    queue), then a throughput phase with a window of 2 x stages in flight. Training:
    `iterations` timed iterations after `warmup` untimed ones. With `switch_plan`, the
    plan is switched half-way through the latency phase / the timed iterations.
    `emulate=False` computes at real speed; `pace` (default: `emulate`) paces transfers
    to the links either way (`dora run --no-emulate` paces).

    The timed phases' inputs (and training batches) are made before they start, a pool
    of at most POOL distinct ones cycled: making a resnet input costs the coordinator
    2-3 ms of CPU on the cores the workers compute on (a real source, a camera, does not
    take it from the devices), and on a 2-core host that alone put 8-10 ms on a
    114 ms request."""
    cost = CostModel(scenario)
    pred = cost.evaluate(plan)
    pace = emulate if pace is None else pace
    out = {"scenario": scenario.name, "plan": plan.to_dict(), "emulated": emulate, "paced": pace,
           "network": network,
           "predicted": {"latency_ms": pred.latency_ms, "throughput": pred.throughput, "energy_j": pred.energy_j,
                         "feasible": pred.feasible, "qoe_ok": pred.qoe_ok, "violations": pred.violations}}
    # [netns] network
    with Runtime(scenario, emulate=emulate, timeout=timeout, lr=lr, network=network, pace=pace) as rt:
        rt.start(plan)
        if scenario.workload.training:
            if warmup:
                rt.train(warmup)
            res = rt.train(iterations, data=_pool(lambda i: rt.make_batch(i, scenario.workload.batch), iterations),
                           switch_at=iterations // 2 if switch_plan else None, switch_plan=switch_plan)
            d = res.to_dict()
            out["predicted"]["iteration_ms"] = pred.latency_ms
            out["measured"] = {"latency_ms": d["iteration_ms"], "iteration_ms": d["iteration_ms"],
                               "throughput": scenario.workload.batch / (
                sum(res.iter_s) / len(res.iter_s)), "energy_j": res.energy_j, "busy_s": res.busy_s,
                "saturated": d["saturated"], "switch": d["switch"]}
            out["unit"] = "samples/s"
        else:
            cap = pred.throughput
            r = rate or scenario.workload.request_rate or 0.5 * cap
            if math.isfinite(cap):
                r = min(r, 0.8 * cap)
            out["offered_rate"] = r
            if warmup:
                rt.infer(warmup, window=1)
            inputs = _pool(lambda i: rt.make_input(i, scenario.workload.batch), requests)
            res = rt.infer(requests, rate=r, switch_at=requests // 2 if switch_plan else None,
                           switch_plan=switch_plan, inputs=inputs)
            d = res.to_dict()
            m = {"latency_ms": d["latency_ms"], "energy_j": res.energy_j, "busy_s": res.busy_s,
                 "saturated": d["saturated"], "switch": d["switch"], "throughput_at_offered_rate": res.throughput}
            if throughput_phase:
                if switch_plan is not None:
                    rt.switch(plan)
                t = rt.infer(requests, window=2 * len(plan.stages), inputs=inputs)
                m["throughput"] = t.throughput
            out["measured"] = m
            out["unit"] = "requests/s"
    p, mm = out["predicted"]["latency_ms"], out["measured"]["latency_ms"]["p50"]
    out["latency_error"] = abs(mm - p) / p if p > 0 else float("nan")
    return out
