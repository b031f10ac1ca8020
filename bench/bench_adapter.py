"""Runtime adapter benchmark: every adapter on real bandwidth traces, side by side.

For each scenario (smart_home, traffic_analytics) and each of 6 real traces (4 Norway
3G, 2 FCC broadband, scaled so their mean is `MEAN_FRAC[scenario]` x the medium's
nominal rate), simulate `static`, `replan`, `pareto`, `ppo` (when an AdaptEnv agent is
shipped) and the offline `oracle` for DURATION_S seconds with 1 s control intervals,
and report per adapter: fraction of intervals violating QoE, energy relative to the
oracle (total, and on the intervals where both comply), switches, and decision time
per interval (mean / p95 / max, wall clock, excluding the switch itself; `replan`'s
includes its DP on cache misses).

Targets (issue): pareto (and ppo) violation <= 0.5 x static's and <= replan's; energy
within 15% of the oracle; decision < 20 ms.

    PYTHONPATH=. .venv/bin/python bench/bench_adapter.py   # -> bench/results/adapter.json
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TRACES = [
    "norway_3g/bus.ljansbakken-oslo-report.2010-09-28_1407CEST.log",
    "norway_3g/car.snaroya-smestad-report.2011-02-14_2032CET.log",
    "norway_3g/ferry.nesoddtangen-oslo-report.2010-09-21_1001CEST.log",
    "norway_3g/tram.ljabru-jernbanetorget-report.2010-12-09_1334CET.log",
    "fcc_broadband/trace_10730_http---www.facebook.com",
    "fcc_broadband/trace_11332_http---www.facebook.com",
]
SCENARIOS = ["smart_home", "traffic_analytics"]
# Both presets are tight: no plan complies below ~0.76 (smart_home) / ~0.9 (traffic)
# x nominal. Replayed at mean = nominal, real traces sit below that a large part of the
# time and every adapter, the oracle too, violates there; the traces are therefore
# scaled to a mean of 1.5 x nominal so bandwidth moves across the compliance threshold
# (it still binds: see the oracle's own violation fraction in the table).
MEAN_FRAC = {"smart_home": 1.5, "traffic_analytics": 1.5}
DURATION_S = 300.0
INTERVAL_S = 1.0
ADAPTERS = ["static", "replan", "pareto", "ppo", "oracle"]


def _energy_common(log, oracle) -> float | None:
    both = [(r["energy_j"], o["energy_j"]) for r, o in zip(log.rows, oracle.rows) if r["ok"] and o["ok"]]
    if not both:
        return None
    e, eo = sum(a for a, _ in both), sum(b for _, b in both)
    return e / eo if eo > 0 else None


def run(results: dict) -> dict:
    from dora_rl.errors import AgentError
    from dora_rl.runtime.adapter import get_adapter, simulate
    from dora_rl.scenario import load_scenario

    out = {"duration_s": DURATION_S, "interval_s": INTERVAL_S, "mean_frac": MEAN_FRAC, "traces": TRACES,
           "scenarios": {}}
    for sc in SCENARIOS:
        scen = load_scenario(sc)
        per_trace = []
        for tr in TRACES:
            logs, notes = {}, {}
            for name in ADAPTERS:
                try:
                    ad = get_adapter(name, scen)
                except AgentError as e:
                    notes[name] = f"skipped: {e}"
                    continue
                t0 = time.perf_counter()
                logs[name] = simulate(scen, ad, tr, DURATION_S, INTERVAL_S, mean_frac=MEAN_FRAC[sc], seed=0)
                logs[name].wall_s = time.perf_counter() - t0
                logs[name].dp_s = list(getattr(ad, "stats", {}).get("dp_s", []))
            orc = logs["oracle"]
            eo = orc.summary()["energy_j"]
            row = {"trace": tr, "adapters": {}, "notes": notes}
            for name, log in logs.items():
                sm = log.summary()
                row["adapters"][name] = {
                    "violation_frac": sm["violation_frac"],
                    "energy_j": sm["energy_j"],
                    "energy_vs_oracle": sm["energy_j"] / eo if eo else None,
                    "energy_vs_oracle_common": _energy_common(log, orc),
                    "switches": sm["switches"],
                    "decide_ms_mean": sm["decide_ms_mean"],
                    "decide_ms_p95": sm["decide_ms_p95"],
                    "decide_ms_max": sm["decide_ms_max"],
                    "dp_ms_mean": float(np.mean(log.dp_s) * 1e3) if log.dp_s else None,
                    "latency_ms_p95": sm["latency_ms_p95"],
                    "served_frac": sm["served_frac"],
                    "wall_s": log.wall_s,
                }
            per_trace.append(row)
            print(_line(sc, row), flush=True)
        out["scenarios"][sc] = {"per_trace": per_trace, "mean": _means(per_trace)}
    out["targets"] = _targets(out)
    results["adapter"] = out
    return out


def _means(per_trace) -> dict:
    names = sorted({n for r in per_trace for n in r["adapters"]})
    out = {}
    for n in names:
        vals = [r["adapters"][n] for r in per_trace if n in r["adapters"]]
        out[n] = {k: (float(np.mean([v[k] for v in vals if v[k] is not None]))
                      if any(v[k] is not None for v in vals) else None)
                  for k in ("violation_frac", "energy_vs_oracle", "energy_vs_oracle_common", "switches",
                            "decide_ms_mean", "decide_ms_p95", "decide_ms_max")}
    return out


def _targets(out) -> dict:
    t = {}
    for sc, d in out["scenarios"].items():
        for r in d["per_trace"]:
            a = r["adapters"]
            for name in ("pareto", "ppo"):
                if name not in a:
                    continue
                key = f"{sc}/{Path(r['trace']).name[:24]}/{name}"
                v, vs, vr = a[name]["violation_frac"], a["static"]["violation_frac"], a["replan"]["violation_frac"]
                t[key] = {"viol_le_half_static": v <= 0.5 * vs + 1e-12, "viol_le_replan": v <= vr + 1e-12,
                          "energy_within_15pct_oracle": (a[name]["energy_vs_oracle"] or 9) <= 1.15,
                          "energy_within_15pct_oracle_common": (a[name]["energy_vs_oracle_common"] or 9) <= 1.15,
                          "decide_lt_20ms_p95": a[name]["decide_ms_p95"] < 20.0}
    return t


def _line(sc, row) -> str:
    parts = [f"{sc:17s} {Path(row['trace']).name[:22]:22s}"]
    for n, a in row["adapters"].items():
        ec = a["energy_vs_oracle_common"]
        parts.append(f"{n}: v={a['violation_frac']:.3f} E/o={a['energy_vs_oracle']:.3f}"
                     f"/{'-' if ec is None else f'{ec:.3f}'} sw={a['switches']} d95={a['decide_ms_p95']:.1f}ms")
    return " | ".join(parts)


def table(out) -> str:
    """Markdown table: one row per scenario x trace x adapter."""
    lines = ["| scenario | trace | adapter | QoE-violating intervals | energy / oracle (total) | "
             "energy / oracle (both compliant) | switches | decide ms mean / p95 / max |",
             "|---|---|---|---|---|---|---|---|"]
    for sc, d in out["scenarios"].items():
        for r in d["per_trace"] + [{"trace": "MEAN", "adapters": d["mean"]}]:
            for n, a in r["adapters"].items():
                ec = a["energy_vs_oracle_common"]
                lines.append(f"| {sc} | {Path(r['trace']).name[:28]} | {n} | {a['violation_frac']:.3f} | "
                             f"{a['energy_vs_oracle']:.3f} | {'-' if ec is None else f'{ec:.3f}'} | "
                             f"{a['switches']:.1f} | {a['decide_ms_mean']:.2f} / {a['decide_ms_p95']:.2f} / "
                             f"{a['decide_ms_max']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    res: dict = {}
    out = run(res)
    p = ROOT / "bench" / "results" / "adapter.json"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(out, indent=1) + "\n")
    print(table(out))
    print(f"wrote {p}")
