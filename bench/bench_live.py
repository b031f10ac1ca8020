"""Live adapter benchmark: the default live adapter (`ppo`, the shipped agents; `pareto`
when they are missing) on smart_home with every default (`--slowdown auto`), on real
bandwidth traces (pensieve's Norway 3G logs, one per run, in file order: no choice),
beside the same adapter simulated on the cost model over the same trace in the same
(dilated) time, with the same interval and adapter options.

Judged alike (runtime/live_judge.py): a live interval by the requests in service during
it (their measured latencies); the simulated run at the live run's request instants with
the same rule: the live run's requests replayed through the discrete-event simulator on
the simulated run's plans and the true bandwidth interval by interval (`replayed_spans`:
each waits for the devices its predecessors hold, shares the medium with their
transfers, and each transfer runs at the bandwidth of its moment). The
simulation's own per-interval verdict (the analytic one: the serving plan's latency at
each interval's bandwidth, no requests) is reported beside it
(`violation_frac_sim_analytic`). Each run covers at least `DEVICE_S` seconds of device
time (its run time grows with the dilation, so a run holds ~the same number of requests
at any dilation: 15 req/s x 0.5 s), and at least `SECONDS` run seconds.

The last `BUSY` runs keep every core busy with another process (one spinning process
per core, started `BUSY_WARMUP_S` before them so the load average - which the auto
dilation reads - has partly seen them), on top of whatever else loads the machine.

Per run: faults declared (no worker is killed, so every one is false), every request
answered exactly once, saturation, the fraction of QoE-violating intervals live and
simulated, by target. Targets: 0 false faults in 20 runs, every request answered
once, violating fractions within 0.1 of the simulation.

    PYTHONPATH=. python bench/bench_live.py      # writes bench/results/live.json
    DORA_BENCH_LIVE_RUNS=20 DORA_BENCH_LIVE_DEVICE_S=0.5 DORA_BENCH_LIVE_SECONDS=30
    DORA_BENCH_LIVE_BUSY=10 DORA_BENCH_LIVE_BUSY_WARMUP_S=30 (defaults) set the size;
    DORA_BENCH_LIVE_KEEP=DIR keeps each run's live and simulated logs there
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
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


def simulated(base, name: str, spec: str, X: float, time_scale: float, duration: float, issues=None):
    """The simulated log of `name` on the dilated scenario over `spec` replayed as the
    live run replays it (trace time = run time x time_scale / X). With the live run's
    request instants `issues`, its monitor hears what the live one hears: the transfers
    of those requests replayed (runtime/live_twin.py `LiveMonitorFeed`)."""
    from dora_rl.adapter import make_trace, simulate
    from dora_rl.cluster.traces import BandwidthTrace
    from dora_rl.runtime.live_twin import LiveMonitorFeed
    sc = base.dilated(X)
    tr, medium = make_trace(sc, spec, duration_s=max(60.0, duration * time_scale))
    k = X / time_scale
    t0 = float(tr.times[0])
    st = BandwidthTrace((tr.times - t0) * k, tr.mbps, period=tr.period * k, source=tr.source)
    feed = LiveMonitorFeed(sc, medium, issues, 1.0) if issues is not None else None
    return simulate(sc, name, st, duration, 1.0, adapter_options={"compose": False}, probe_first=True, observe=feed)


def kinds(rows) -> dict:
    """Intervals violating each target (latency, throughput, battery)."""
    return {k: sum(1 for r in rows if any(v.startswith(k) for v in r.get("violations", ())))
            for k in ("latency", "throughput", "battery")}


class Burners:
    """One spinning process per core (the "every core kept busy" runs); stopped by pid."""

    def __init__(self, n: int):
        self.procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            p.wait(timeout=10)


def one_run(base, name: str, spec: str, device_s: float, duration: float, busy: bool, keep: str | None = None,
            i: int = 0) -> dict:
    from dora_rl.errors import DoraError
    from dora_rl.runtime.live import run_live
    from dora_rl.runtime.live_judge import at_request_instants
    t = time.monotonic()
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        try:
            out = run_live("smart_home", name, duration=duration, device_s=device_s, trace=spec, live=False,
                           out_dir=tmp)
            log = json.loads(Path(out["log"]).read_text())
        except DoraError as e:   # a failed run is a row, not the end of the bench
            return {"trace": spec, "busy_cores": busy, "load_before": load0, "error": f"{type(e).__name__}: {e}"}
    s, rows = out["summary"], log["rows"]
    issues = [ti for ti, _ in log["requests"]]
    sim = simulated(base, name, spec, s["slowdown"], s["time_scale"], log["duration_s"], issues)
    sim_raw = sim.summary()["violation_frac"]
    sim_rows = copy.deepcopy(sim.rows)      # judged like the live run, at its request instants
    at_request_instants(sim_rows, issues, 1.0, log["slo_ms"],
                        scenario=base.dilated(s["slowdown"]), plans=sim.plans, medium=sim.medium, need=log["need"],
                        offered_rate=s["offered_rate"], pauses=s["pauses"])
    sim_frac = sum(1 for r in sim_rows if not r["ok"]) / len(sim_rows)
    if keep:          # both logs, to look at
        Path(keep).mkdir(parents=True, exist_ok=True)
        (Path(keep) / f"run{i:02d}_live.json").write_text(json.dumps(log) + "\n")
        sim.save(Path(keep) / f"run{i:02d}_sim.json")
    return {"trace": spec, "busy_cores": busy, "load_before": load0, "load_after": os.getloadavg()[0],
            "slowdown": s["slowdown"], "contention": s["dilation"]["contention"], "duration_s": log["duration_s"],
            "device_time_s": s["device_time_s"], "requests": s["requests"], "answered_once": s["answered_once"],
            "reissued": s["reissued"], "duplicates": s["duplicates_dropped"],
            "false_faults": len(s["faults"]), "fault_devices": [f["devices"] for f in s["faults"]],
            "saturated": s["saturated"], "intervals_live": len(rows), "intervals_sim": len(sim.rows),
            "idle_intervals_live": sum(1 for r in rows if not r["in_service"]),
            "violation_frac_live": s["violation_frac"], "violation_frac_sim": sim_frac,
            "diff": abs(s["violation_frac"] - sim_frac), "violation_frac_sim_analytic": sim_raw,
            "diff_analytic": abs(s["violation_frac"] - sim_raw), "violating_by_target_live": kinds(rows),
            "violating_by_target_sim": kinds(sim_rows), "violating_by_target_sim_analytic": kinds(sim.rows),
            "switches_live": s["switches"],
            "switches_sim": sim.summary()["switches"], "drain_s": s["drain_s"],
            "latency_p50_device_ms": s["latency_ms"].get("p50"),
            "latency_p95_device_ms": s["latency_ms"].get("p95"), "seconds": time.monotonic() - t}


def run(results: dict) -> dict:
    from dora_rl.runtime.dilation import cores
    from dora_rl.scenario import load_scenario
    n = int(os.environ.get("DORA_BENCH_LIVE_RUNS", "20"))
    device_s = float(os.environ.get("DORA_BENCH_LIVE_DEVICE_S", "0.5"))
    duration = float(os.environ.get("DORA_BENCH_LIVE_SECONDS", "30"))
    n_busy = min(n, int(os.environ.get("DORA_BENCH_LIVE_BUSY", str(n // 2))))
    warmup = float(os.environ.get("DORA_BENCH_LIVE_BUSY_WARMUP_S", "30"))
    base = load_scenario("smart_home")
    name = adapter_name(base)
    rows, burners = [], None
    print(f"{name} on smart_home, {n} runs of >= {device_s:g} s device time (>= {duration:g} s run), "
          f"the last {n_busy} with {cores()} spinning processes", flush=True)
    try:
        for i, spec in enumerate(traces(n)):
            busy = i >= n - n_busy
            if busy and burners is None:
                burners = Burners(cores())
                time.sleep(warmup)
            row = one_run(base, name, spec, device_s, duration, busy, os.environ.get("DORA_BENCH_LIVE_KEEP"), i)
            rows.append(row)
            if "error" in row:
                print(f"{spec}: {row['error']}", flush=True)
                continue
            print(f"{spec[10:46]:36s} busy {int(busy)} load {row['load_before']:4.1f} X {row['slowdown']:4.0f} "
                  f"req {row['requests']:3d} once {int(row['answered_once'])} faults {row['false_faults']} "
                  f"sat {int(bool(row['saturated']))} viol live {row['violation_frac_live']:.2f} "
                  f"sim {row['violation_frac_sim']:.2f} (analytic {row['violation_frac_sim_analytic']:.2f}; live "
                  f"{row['violating_by_target_live']} sim {row['violating_by_target_sim']}) {row['seconds']:.0f} s",
                  flush=True)
    finally:
        if burners is not None:
            burners.stop()
    ok = [r for r in rows if "error" not in r]
    results["live"] = {
        "adapter": name, "runs": len(rows), "completed": len(ok), "device_s": device_s, "min_duration_s": duration,
        "busy_runs": n_busy, "false_faults": sum(r["false_faults"] for r in ok),
        "all_answered_once": all(r["answered_once"] for r in ok) and len(ok) == len(rows),
        "saturated_runs": sum(1 for r in ok if r["saturated"]),
        "within_0.1_of_sim": sum(1 for r in ok if r["diff"] <= 0.1),
        "within_0.1_of_sim_analytic": sum(1 for r in ok if r["diff_analytic"] <= 0.1),
        "max_diff": max((r["diff"] for r in ok), default=None),
        "median_diff": sorted(r["diff"] for r in ok)[len(ok) // 2] if ok else None,
        "slowdown_range": [min(r["slowdown"] for r in ok), max(r["slowdown"] for r in ok)] if ok else None,
        "load_range": [min(r["load_before"] for r in rows), max(r["load_before"] for r in rows)] if rows else None,
        "rows": rows, "targets": {"false_faults": 0, "answered_once": True, "violation_diff": 0.1}}
    lv = results["live"]
    print(f"{lv['completed']}/{lv['runs']} runs: false faults {lv['false_faults']}, all answered once "
          f"{lv['all_answered_once']}, saturated {lv['saturated_runs']}, within 0.1 of the simulation "
          f"{lv['within_0.1_of_sim']}/{lv['completed']} (max diff {lv['max_diff']})", flush=True)
    return results


if __name__ == "__main__":
    res = run({})
    out = ROOT / "bench" / "results" / "live.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1, default=str) + "\n")
    print("wrote", out)
