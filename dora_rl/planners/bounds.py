"""Lower bounds on what any plan can achieve, printed beside planner results.

Every bound holds for every plan of the cost model (docs/planners.md derives them),
so a planner's figure at or near a bound is provably (near-)optimal. Notation:
W = total compute per request / iteration = back x batch x total FLOPs (back = 1 for
inference, 3 for training: forward + 2x backward), R = sum of every device's rate.

- `latency_work_ms`: L >= fill + (M-1) T >= M max_s u_s >= max_d busy_d >= W / R
  (the whole cluster working flat out, no communication).
- `latency_first_block_ms`: the first micro-batch crosses every block once:
  fill >= back x m x F / R, plus nothing else (kept for M > 1 it is weaker; listed for clarity).
- `latency_ms`: the max of the latency bounds.
- `throughput_max`: capacity <= R / W x batch (training, samples/s) or R / W (inference, req/s).
- `energy_work_j`: sum_d (active_d - idle_d) busy_d >= W x min_d (active_d - idle_d) / rate_d.
- `energy_idle_j`: the source always participates: idle_src x period, period >= 1/request_rate
  (inference with a rate), else >= W / R.
- `energy_j`: energy_work_j + energy_idle_j.
"""

from __future__ import annotations

from dora_rl.cost import CostModel
from dora_rl.scenario import Scenario


def lower_bounds(scenario: Scenario, cost: CostModel | None = None) -> dict:
    """{name: value} lower bounds (latency in ms, energy in J per request/iteration) and an
    upper bound on throughput (`throughput_max`)."""
    cost = cost or CostModel(scenario)
    wl = cost.workload
    back = 3.0 if cost.training else 1.0
    F = cost.fp[-1]
    W = back * wl.batch * F
    R = sum(cost.rate)
    m = wl.batch / wl.microbatches
    lat_work = W / R
    lat_first = back * m * F / R
    lat = max(lat_work, lat_first)
    e_work = W * min((cost.active_w[d] - cost.idle_w[d]) / cost.rate[d] for d in range(cost.n))
    if not cost.training and wl.request_rate:
        period = max(1.0 / wl.request_rate, lat_work)
    else:
        period = lat_work
    e_idle = cost.idle_w[cost.src] * period
    tput = (wl.batch * R / W) if cost.training else (R / W)
    return {
        "latency_ms": lat * 1e3,
        "latency_work_ms": lat_work * 1e3,
        "latency_first_block_ms": lat_first * 1e3,
        "throughput_max": tput,
        "energy_j": e_work + e_idle,
        "energy_work_j": e_work,
        "energy_idle_j": e_idle,
    }
