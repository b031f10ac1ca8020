"""Live adapter benchmark: the default live adapter (`ppo`, the shipped agents; `pareto`
when they are missing) on smart_home with every default (`--slowdown auto`), on real
bandwidth traces (pensieve's Norway 3G logs, one per run), beside the same adapter
simulated on the cost model over the same trace in the same (dilated) time.

Per run: faults declared (no worker is killed, so every one is false), every request
answered exactly once, saturation, the fraction of QoE-violating intervals live and
simulated. Targets: 0 false faults, every request answered once, violating fractions
within 0.1 of the simulation.

    PYTHONPATH=. python bench/bench_live.py      # writes bench/results/live.json
    DORA_BENCH_LIVE_RUNS=20 DORA_BENCH_LIVE_SECONDS=30 (defaults) set the size
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def adapter_name(sc) -> str:
    from dora_rl.adapter import load_agent_policy
    from dora_rl.errors import AgentError
    try:
        load_agent_policy(sc)
        return "ppo"
    except AgentError:
        return "pareto"


def traces(n: int) -> list[str]:
    from dora_rl.cluster.traces import traces_root
    files = sorted(p.name for p in (Path(traces_root()) / "norway_3g").iterdir() if p.suffix == ".log")
    return [f"norway_3g/{files[i % len(files)]}" for i in range(n)]


def simulated(base, name: str, spec: str, X: float, time_scale: float, duration: float) -> float:
    """Violating-interval fraction of `name` simulated on the dilated scenario over `spec`
    replayed as the live run replays it (trace time = run time x time_scale / X)."""
    from dora_rl.adapter import make_trace, simulate
    from dora_rl.cluster.traces import BandwidthTrace
    sc = base.dilated(X)
    tr, _ = make_trace(sc, spec, duration_s=max(60.0, duration * time_scale))
    k = X / time_scale
    t0 = float(tr.times[0])
    st = BandwidthTrace((tr.times - t0) * k, tr.mbps, period=tr.period * k, source=tr.source)
    log = simulate(sc, name, st, duration, 1.0, adapter_options={"compose": False})
    return log.summary()["violation_frac"], kinds(log.rows)


def kinds(rows) -> dict:
    """Intervals violating each target (latency, throughput, battery)."""
    return {k: sum(1 for r in rows if any(v.startswith(k) for v in r.get("violations", ())))
            for k in ("latency", "throughput", "battery")}


def run(results: dict) -> dict:
    from dora_rl.errors import DoraError
    from dora_rl.runtime.live import run_live
    from dora_rl.scenario import load_scenario
    n = int(os.environ.get("DORA_BENCH_LIVE_RUNS", "20"))
    duration = float(os.environ.get("DORA_BENCH_LIVE_SECONDS", "30"))
    base = load_scenario("smart_home")
    name = adapter_name(base)
    rows = []
    for spec in traces(n):
        t = time.monotonic()
        with tempfile.TemporaryDirectory() as tmp:
            try:
                out = run_live("smart_home", name, duration=duration, trace=spec, live=False, out_dir=tmp)
                live_kinds = kinds(json.loads(Path(out["log"]).read_text())["rows"])
            except DoraError as e:   # a failed run is a row, not the end of the bench
                rows.append({"trace": spec, "error": f"{type(e).__name__}: {e}"})
                print(f"{spec}: {rows[-1]['error']}", flush=True)
                continue
        s = out["summary"]
        sim, sim_kinds = simulated(base, name, spec, s["slowdown"], s["time_scale"], duration)
        row = {"trace": spec, "slowdown": s["slowdown"], "requests": s["requests"], "answered_once": s["answered_once"],
               "false_faults": len(s["faults"]), "fault_devices": [f["devices"] for f in s["faults"]],
               "saturated": s["saturated"], "violation_frac_live": s["violation_frac"],
               "violation_frac_sim": sim, "diff": abs(s["violation_frac"] - sim),
               "violating_by_target_live": live_kinds, "violating_by_target_sim": sim_kinds,
               "latency_p50_device_ms": s["latency_ms"].get("p50"), "switches": s["switches"],
               "seconds": time.monotonic() - t}
        rows.append(row)
        print(f"{spec[10:50]:40s} X {row['slowdown']:5.0f} req {row['requests']:3d} once {row['answered_once']} "
              f"faults {row['false_faults']} sat {bool(row['saturated'])} viol live {row['violation_frac_live']:.2f} "
              f"sim {sim:.2f}  live {live_kinds} sim {sim_kinds}", flush=True)
    ok = [r for r in rows if "error" not in r]
    results["live"] = {
        "adapter": name, "runs": len(rows), "completed": len(ok), "duration_s": duration,
        "false_faults": sum(r["false_faults"] for r in ok),
        "all_answered_once": all(r["answered_once"] for r in ok) and len(ok) == len(rows),
        "saturated_runs": sum(1 for r in ok if r["saturated"]),
        "within_0.1_of_sim": sum(1 for r in ok if r["diff"] <= 0.1),
        "load_average": os.getloadavg()[0], "rows": rows,
        "targets": {"false_faults": 0, "answered_once": True, "violation_diff": 0.1}}
    return results


if __name__ == "__main__":
    res = run({})
    out = ROOT / "bench" / "results" / "live.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1, default=str) + "\n")
    print("wrote", out)
