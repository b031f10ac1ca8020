"""The emulated runtime's column of bench_sim.py: the measured gain of a scheduled plan over
FIFO on real worker processes (time-dilated), beside the simulator's predicted gain.

Why its own module: bench_sim.py's other columns run in seconds on the simulator; this one
runs minutes of torch workers per instance and has its own budget, recorded fallbacks
(`--runtime NAME` results in bench/results/) and long-run settings."""

from __future__ import annotations

import statistics


def _runtime_gain(scen, cm, plan, row, repeats: int = 2, requests: int = 8, iterations: int = 3,
                  budget_s: float = 300.0, warmup: int = 1, slowdown: float | None = None) -> dict:
    """The emulated runtime's gain of the scheduled plan over FIFO (module doc): both
    plans at the larger of their auto dilations (or `slowdown`), inference at one common
    offered rate (0.4x the slower plan's predicted capacity, so requests rarely queue: the
    simulator judges one request), FIFO and scheduled alternating `repeats` times, each
    run `warmup` untimed then `iterations` timed iterations (or `requests` requests)."""
    import dataclasses
    import os

    from dora_rl.cost import CostModel
    from dora_rl.errors import RuntimeFault
    from dora_rl.runtime.dilation import choose
    from dora_rl.runtime.measure import measure
    from dora_rl.schedule import Schedule

    fifo = dataclasses.replace(plan, schedule=None)
    sd = row["schedule"]
    sched = dataclasses.replace(fifo, microbatches=row["microbatches"][1],
                                schedule=Schedule.from_dict(sd))
    auto = max(choose(scen, p, timeout=max(120.0, budget_s)).factor for p in (fifo, sched))
    X = slowdown or auto
    sc = scen.dilated(X)
    dm = CostModel(sc)
    rate = None if cm.training else 0.4 * min(dm.evaluate(p, validate=False).throughput for p in (fifo, sched))
    n = (iterations if cm.training else requests) + warmup
    est = 2 * repeats * n * max(max(dm.evaluate(p, validate=False).latency_ms for p in (fifo, sched)) / 1e3,
                                0.0 if rate is None else 1.0 / rate)
    if est > budget_s:
        raise RuntimeFault(f"at the auto dilation {X:.3g}x the runs would take ~{est:.0f} s here (budget "
                           f"{budget_s:.0f} s, $DORA_BENCH_SIM_RUNTIME_BUDGET)")
    got = {"fifo": [], "scheduled": []}
    saturated = {"fifo": [], "scheduled": []}
    load = [os.getloadavg()[0]]
    for _ in range(repeats):
        for key, p in (("fifo", fifo), ("scheduled", sched)):
            out = measure(sc, p, requests=requests, iterations=iterations, warmup=warmup, rate=rate,
                          throughput_phase=False, timeout=max(120.0, 10.0 * X, 2.0 * est / (2 * repeats)))
            got[key].append(out["measured"]["latency_ms"]["p50"] / X)   # device time
            saturated[key].append(out["measured"]["saturated"])
            load.append(os.getloadavg()[0])
    gains = [f / s for f, s in zip(got["fifo"], got["scheduled"])]
    g = statistics.median(gains)
    return {"slowdown": X, "auto_slowdown": auto, "warmup": warmup, "iterations": iterations, "repeats": repeats,
            "saturated": saturated, "runtime_fifo_ms": got["fifo"], "runtime_scheduled_ms": got["scheduled"],
            "runtime_gains": gains, "runtime_gain": g, "sim_gain": row["speedup"],
            "gap_pp": 100 * abs((g - 1) - (row["speedup"] - 1)), "load_avg": load}


# instances whose dilated iteration takes minutes on this host (edge_cluster: BERT-base
# training, ~8 min per iteration at the auto dilation under a load of 8): one timed
# iteration per plan, no warm-up, one run each; run alone by `--runtime NAME` (module end)
LONG_RUNS = {"edge_cluster": {"repeats": 1, "iterations": 1, "warmup": 0}}
RECORDED = "sim_runtime_{}.json"    # bench/results/: what `--runtime NAME` measured


def runtime_column(rows, instances, repeats: int = 3, requests: int = 8, iterations: int = 3,
                   slowdown: float | None = None) -> dict:
    """The runtime column for `instances` [(row name, scen, cm, plan)]; prints it. An
    instance whose dilated runs would outlast the budget is listed as not run, with why,
    and with the figure `--runtime NAME` recorded for it, if any."""
    import json
    import os
    from pathlib import Path

    out = []
    by = {r["instance"]: r for r in rows}
    from dora_rl.errors import RuntimeFault

    for name, scen, cm, plan in instances:
        opts = {"repeats": repeats, "requests": requests, "iterations": iterations, **LONG_RUNS.get(name, {})}
        try:
            r = _runtime_gain(scen, cm, plan, by[name], slowdown=slowdown, **opts,
                              budget_s=float(os.environ.get("DORA_BENCH_SIM_RUNTIME_BUDGET", 300)))
        except RuntimeFault as e:   # e.g. the dilation this CPU needs makes one iteration outlast the timeout
            rec = Path(__file__).resolve().parent / "results" / RECORDED.format(name)
            row = {"instance": name, "skipped": str(e)}
            if rec.is_file():
                row["recorded"] = json.loads(rec.read_text())
            out.append(row)
            print(f"runtime {name:18s} not run: {e}", flush=True)
            if "recorded" in row:
                g = row["recorded"]
                print(f"runtime {name:18s} recorded {g.get('when')}: gain {g['runtime_gain']:.3f} sim "
                      f"{g['sim_gain']:.3f} gap {g['gap_pp']:.1f} pp (X {g['slowdown']})", flush=True)
            continue
        r["instance"] = name
        out.append(r)
        runs = [round(g, 3) for g in r["runtime_gains"]]
        print(f"runtime {name:18s} X {r['slowdown']:6.3g}  FIFO {r['runtime_fifo_ms']} ms  sched "
              f"{r['runtime_scheduled_ms']} ms  gain {r['runtime_gain']:.3f} (runs {runs})"
              f"  sim {r['sim_gain']:.3f}  gap {r['gap_pp']:.1f} pp  load {[round(x, 1) for x in r['load_avg']]}",
              flush=True)
    return {"runtime": out, "runtime_within_5pp": [r["instance"] for r in out if r.get("gap_pp", 99) <= 5.0]}
