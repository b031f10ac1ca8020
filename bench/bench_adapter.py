"""Runtime adapter benchmark: every adapter on real bandwidth traces, side by side.

For each test bed (SCENARIOS: `smart_home` as is and `traffic_analytics@uplink1.5`, the
preset with headroom on its uplink; why in docs/adapter.md, "Benchmark") and each of 6
real traces (4 Norway 3G, 2 FCC broadband, scaled so their mean is `mean_frac` x the
medium's nominal rate), simulate `static`, `replan`, `pareto`, `ppo` (when an AdaptEnv
agent is shipped) and the offline `oracle` for DURATION_S seconds with 1 s control
intervals, and report per adapter: fraction of intervals violating QoE, the floor (the
oracle's fraction: no plan or time-share complies) and the excess over it, energy
relative to the oracle (total, and on the intervals where both comply), switches, and
decision time per interval (mean / p95 / max, wall clock, excluding the switch itself;
`replan`'s includes its DP on cache misses).

Targets (issue): pareto (and ppo) violation <= 0.5 x static's and <= replan's; energy
within 15% of the oracle; decision < 20 ms.

    PYTHONPATH=. .venv/bin/python bench/bench_adapter.py              # -> bench/results/adapter.json
    PYTHONPATH=. .venv/bin/python bench/bench_adapter.py --traces 2 --duration 120   # quick, not saved
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
# The adaptation test beds (docs/adapter.md, "Benchmark"). Each replays every trace
# scaled so its mean is `mean_frac` x the dynamic medium's nominal rate, where the
# nominal rate is the preset's times `medium_x` (the medium and every link on it scaled
# together, as bandwidth dynamics are applied: Cluster.with_medium_mbps).
#
# smart_home: the preset as is, traces at mean = nominal (what its own dynamics spec
#   says). The nominal-optimal plan needs >= ~0.55 x nominal; time-shares of the
#   single-device plans comply down to ~0.40 x; below that nothing does (the floor).
# traffic_analytics@uplink1.5: the preset's devices with the 5G/WiFi uplink (medium
#   and its three links) at 1.5 x the preset's rates (450 Mbps medium, 300 Mbps links),
#   traces at mean = that nominal. The preset itself is not a test bed for adaptation:
#   its 4 x 224^2 RGB frames at 15/s need ~289 Mbps of the 300 Mbps uplink for the
#   input alone, every plan ships that input over the uplink, so NO plan complies below
#   ~0.96 x nominal and the nominal-optimal plan is already the most robust one (a
#   switch can only save energy, never a violation). With headroom the nominal-optimal
#   plan (the roadside box alone, one 300 Mbps link) needs >= ~0.97 x nominal while the
#   two Jetsons (two links) comply down to ~0.65 x, time-shares in between.
SCENARIOS = {
    "smart_home": {"preset": "smart_home", "medium_x": 1.0, "mean_frac": 1.0},
    "traffic_analytics@uplink1.5": {"preset": "traffic_analytics", "medium_x": 1.5, "mean_frac": 1.0},
}
# the previous bench configuration, kept as a reference (`--reference`): the presets
# with traces at 1.5 x nominal. There the nominal plan is as robust as any (traffic) or
# nothing but its fractions can move (smart_home): every adapter sits on the floor.
REFERENCE = {
    "smart_home(mean1.5)": {"preset": "smart_home", "medium_x": 1.0, "mean_frac": 1.5},
    "traffic_analytics(mean1.5)": {"preset": "traffic_analytics", "medium_x": 1.0, "mean_frac": 1.5},
}
DURATION_S = 300.0
INTERVAL_S = 1.0
ADAPTERS = ["static", "replan", "pareto", "ppo", "oracle"]


def bench_scenario(cfg: dict):
    """The preset with its dynamic medium (and that medium's links) at `medium_x` x nominal."""
    from dora_rl.runtime.adapter.compose import conditions
    from dora_rl.scenario import load_scenario

    scen = load_scenario(cfg["preset"])
    x = float(cfg.get("medium_x", 1.0))
    if x != 1.0:
        m = scen.dynamic_medium()
        scen = conditions(scen, {m: scen.cluster.media[m].mbps * x})
    return scen


def _energy_common(log, oracle) -> float | None:
    both = [(r["energy_j"], o["energy_j"]) for r, o in zip(log.rows, oracle.rows) if r["ok"] and o["ok"]]
    if not both:
        return None
    e, eo = sum(a for a, _ in both), sum(b for _, b in both)
    return e / eo if eo > 0 else None


def run(results: dict, *, scenarios: dict | None = None, traces: list[str] | None = None,
        duration_s: float = DURATION_S, adapters: list[str] | None = None, verbose: bool = True) -> dict:
    from dora_rl.errors import AgentError
    from dora_rl.runtime.adapter import get_adapter, simulate

    scenarios = SCENARIOS if scenarios is None else scenarios
    traces = TRACES if traces is None else traces
    adapters = ADAPTERS if adapters is None else adapters
    out = {"duration_s": duration_s, "interval_s": INTERVAL_S, "scenario_configs": scenarios, "traces": traces,
           "scenarios": {}}
    for sc, cfg in scenarios.items():
        scen = bench_scenario(cfg)
        per_trace = []
        for tr in traces:
            logs, notes = {}, {}
            for name in adapters:
                try:
                    ad = get_adapter(name, scen)
                except AgentError as e:
                    notes[name] = f"skipped: {e}"
                    continue
                t0 = time.perf_counter()
                logs[name] = simulate(scen, ad, tr, duration_s, INTERVAL_S, mean_frac=cfg["mean_frac"], seed=0)
                logs[name].wall_s = time.perf_counter() - t0
                logs[name].dp_s = list(getattr(ad, "stats", {}).get("dp_s", []))
            orc = logs["oracle"]
            eo = orc.summary()["energy_j"]
            floor = orc.summary()["violation_frac"]
            row = {"trace": tr, "floor": floor, "adapters": {}, "notes": notes}
            for name, log in logs.items():
                sm = log.summary()
                row["adapters"][name] = {
                    "violation_frac": sm["violation_frac"],
                    "floor": floor,
                    "excess_violation": sm["violation_frac"] - floor,
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
            if verbose:
                print(_line(sc, row), flush=True)
        out["scenarios"][sc] = {"per_trace": per_trace, "mean": _means(per_trace)}
    out["targets"] = _targets(out)
    out["targets_summary"] = _targets_summary(out["targets"])
    results["adapter"] = out
    return out


KEYS = ("violation_frac", "floor", "excess_violation", "energy_vs_oracle", "energy_vs_oracle_common", "switches",
        "decide_ms_mean", "decide_ms_p95", "decide_ms_max")


def _means(per_trace) -> dict:
    names = list(dict.fromkeys(n for r in per_trace for n in r["adapters"]))
    out = {}
    for n in names:
        vals = [r["adapters"][n] for r in per_trace if n in r["adapters"]]
        out[n] = {k: (float(np.mean([v[k] for v in vals if v[k] is not None]))
                      if any(v[k] is not None for v in vals) else None) for k in KEYS}
        out[n]["decide_ms_p95"] = float(max(v["decide_ms_p95"] for v in vals))    # worst trace, not the mean
        out[n]["decide_ms_max"] = float(max(v["decide_ms_max"] for v in vals))
    return out


def _targets(out) -> dict:
    """Per scenario x trace x adaptive adapter. Violations are judged raw (the issue's
    wording) and as excess over the floor (the oracle's violation fraction: intervals
    where no plan or time-share complies, which no adapter can avoid);
    `half_static_reachable` says whether the raw target is reachable at all (the floor is
    at most half of static's fraction)."""
    t = {}
    eps = 1e-12
    for sc, d in out["scenarios"].items():
        for r in d["per_trace"]:
            a = r["adapters"]
            for name in ("pareto", "ppo"):
                if name not in a:
                    continue
                key = f"{sc}/{Path(r['trace']).name[:24]}/{name}"
                v, vs, vr = a[name]["violation_frac"], a["static"]["violation_frac"], a["replan"]["violation_frac"]
                xs, xp = a["static"]["excess_violation"], a[name]["excess_violation"]
                t[key] = {"viol_le_half_static": v <= 0.5 * vs + eps,
                          # can any adapter meet it? not where the oracle's floor alone exceeds it
                          "half_static_reachable": r["floor"] <= 0.5 * vs + eps,
                          "excess_le_half_static_excess": xp <= 0.5 * xs + eps,
                          "viol_le_replan": v <= vr + eps,
                          "energy_within_15pct_oracle": (a[name]["energy_vs_oracle"] or 9) <= 1.15,
                          "energy_within_15pct_oracle_common": (a[name]["energy_vs_oracle_common"] or 9) <= 1.15,
                          "decide_lt_20ms_p95": a[name]["decide_ms_p95"] < 20.0}
    return t


def _targets_summary(t: dict) -> dict:
    keys = sorted({k for v in t.values() for k in v})
    return {k: f"{sum(v[k] for v in t.values())}/{len(t)}" for k in keys}


def _line(sc, row) -> str:
    parts = [f"{sc:17s} {Path(row['trace']).name[:22]:22s} floor={row['floor']:.3f}"]
    for n, a in row["adapters"].items():
        ec = a["energy_vs_oracle_common"]
        parts.append(f"{n}: v={a['violation_frac']:.3f} E/o={a['energy_vs_oracle']:.3f}"
                     f"/{'-' if ec is None else f'{ec:.3f}'} sw={a['switches']} d95={a['decide_ms_p95']:.1f}ms")
    return " | ".join(parts)


def table(out) -> str:
    """Markdown table: one row per scenario x trace x adapter, then the means."""
    lines = ["| scenario | trace | adapter | violating intervals | floor (oracle) | excess over floor | "
             "energy / oracle (total) | energy / oracle (both compliant) | switches | decide ms mean / p95 / max |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for sc, d in out["scenarios"].items():
        for r in d["per_trace"] + [{"trace": "MEAN", "adapters": d["mean"]}]:
            for n, a in r["adapters"].items():
                ec = a["energy_vs_oracle_common"]
                lines.append(f"| {sc} | {Path(r['trace']).name[:28]} | {n} | {a['violation_frac']:.3f} | "
                             f"{a['floor']:.3f} | {a['excess_violation']:+.3f} | "
                             f"{a['energy_vs_oracle']:.3f} | {'-' if ec is None else f'{ec:.3f}'} | "
                             f"{a['switches']:.1f} | {a['decide_ms_mean']:.2f} / {a['decide_ms_p95']:.2f} / "
                             f"{a['decide_ms_max']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--traces", type=int, default=len(TRACES), help="first N traces (dev runs)")
    ap.add_argument("--duration", type=float, default=DURATION_S)
    ap.add_argument("--adapters", default=",".join(ADAPTERS))
    ap.add_argument("--scenarios", default=None, help="comma-separated keys of SCENARIOS / REFERENCE")
    ap.add_argument("--reference", action="store_true", help="also run the previous configuration (REFERENCE)")
    ap.add_argument("--out", default=None, help="JSON path (default bench/results/adapter.json on a full run)")
    args = ap.parse_args()
    allcfg = {**SCENARIOS, **REFERENCE}
    scen = dict(SCENARIOS)
    if args.reference:
        scen.update(REFERENCE)
    if args.scenarios:
        scen = {k: allcfg[k] for k in args.scenarios.split(",")}
    res: dict = {}
    out = run(res, scenarios=scen, traces=TRACES[:args.traces], duration_s=args.duration,
              adapters=args.adapters.split(","))
    full = args.traces == len(TRACES) and args.duration == DURATION_S
    path = Path(args.out) if args.out else (ROOT / "bench" / "results" / "adapter.json" if full else None)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(res, indent=1) + "\n")     # the layout bench/run.py writes
    print(table(out))
    print(json.dumps(out["targets_summary"]))
    if path is not None:
        print(f"wrote {path}")
