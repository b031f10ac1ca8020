"""Runtime adapter benchmark: every adapter on real bandwidth traces of the VALIDATION split, side by side.

For each test bed (SCENARIOS: `smart_home` as is and `traffic_analytics@uplink1.5`, the
preset with headroom on its uplink; why in docs/adapter.md, "Benchmark") and each of
N_TRACES real traces of the validation split (dora_rl/envs/adapt_sim.trace_split:
sha1(name) mod 5 == 0; AdaptEnv never trains on them; half Norway 3G, half FCC broadband,
scaled so their mean is `mean_frac` x the medium's nominal rate), simulate `static`,
`replan`, `pareto`, `ppo` (when an AdaptEnv agent is shipped) and the offline `oracle` for
DURATION_S seconds with 1 s control intervals, and report per adapter: fraction of
intervals violating QoE, the floor (the oracle's fraction), energy (J, and relative to the
oracle), switches, the QoE utility (adapt_obs.qoe_utility: mean over intervals of
1[QoE met] - 0.5 x power / the initial plan's power; AdaptEnv's reward), the share of
intervals the learned agent decided (`agent_decided_frac`), and decision time per interval
(mean / p95 / max, wall clock).

Targets (issue 13): agent_decided_frac >= 0.95; ppo's mean utility >= pareto's x 1.05 and
>= pareto's on >= 2/3 of the traces; violating intervals and energy each <= pareto's on
>= 2/3 of the traces; decision p95 <= 10 ms.

    PYTHONPATH=. DORA_TRACES=../shared/data/traces/pensieve .venv/bin/python bench/bench_adapter.py
    ... bench_adapter.py --adapters static,replan,pareto,oracle --out /tmp/rules.json    # split a run,
    ... bench_adapter.py --adapters ppo --merge /tmp/rules.json                          # then merge
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

N_TRACES = 12


def validation_traces(n: int = N_TRACES) -> list[str]:
    """n traces of the validation split, alternating Norway 3G and FCC (sorted within each)."""
    from dora_rl.envs.adapt_sim import trace_split

    _, val = trace_split()
    nor = [v for v in val if v.startswith("norway_3g/")]
    fcc = [v for v in val if v.startswith("fcc_broadband/")]
    out = [x for pair in zip(nor, fcc) for x in pair] + nor[len(fcc):] + fcc[len(nor):]
    return out[:n]


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
#   its 4 x 224^2 RGB float32 frames at 10/s need ~193 Mbps of the camera's 200 Mbps
#   radio for the input alone, every plan ships that input over the uplink, so nothing
#   complies much below nominal and the nominal-optimal plan is already the most robust
#   one (a switch can only save energy, never a violation). With headroom the
#   nominal-optimal plan (one Jetson alone, 15.9 W) needs >= ~0.91 x nominal while the
#   two Jetsons (18.5 W) or the roadside box (22.4 W) comply down to ~0.66 x,
#   time-shares in between (docs/adapter.md, "Benchmark").
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
DURATION_S = 180.0
INTERVAL_S = 1.0
ADAPTERS = ["static", "replan", "pareto", "ppo", "oracle"]


def bench_scenario(cfg: dict):
    """The preset with its dynamic medium (and that medium's links) at `medium_x` x nominal."""
    from dora_rl.envs.adapt_sim import test_bed

    x = float(cfg.get("medium_x", 1.0))
    return test_bed(cfg["preset"] + (f"@uplink{x:g}" if x != 1.0 else ""))


def p_ref(scen) -> float:
    """The utility's reference power: the initial `dora` plan's at nominal bandwidth."""
    from dora_rl.adapter import get_adapter
    from dora_rl.adapter.compose import score
    from dora_rl.cost import CostModel

    return score(CostModel(scen), 0, get_adapter("static", scen).plans[0]).power


def _energy_common(log, oracle) -> float | None:
    both = [(r["energy_j"], o["energy_j"]) for r, o in zip(log.rows, oracle.rows) if r["ok"] and o["ok"]]
    if not both:
        return None
    e, eo = sum(a for a, _ in both), sum(b for _, b in both)
    return e / eo if eo > 0 else None


def _row(log, orc, pref: float) -> dict:
    from dora_rl.adapter.observation import qoe_utility

    sm = log.summary()
    eo = orc.summary()["energy_j"] if orc is not None else None
    return {
        "violation_frac": sm["violation_frac"],
        "violating_intervals": int(sum(not r["ok"] for r in log.rows)),
        "energy_j": sm["energy_j"],
        "energy_vs_oracle": sm["energy_j"] / eo if eo else None,
        "energy_vs_oracle_common": _energy_common(log, orc) if orc is not None else None,
        "switches": sm["switches"],
        "utility": float(np.mean([qoe_utility(r["ok"], r["energy_j"], log.interval_s, pref) for r in log.rows])),
        "agent_decided_frac": sm.get("agent_decided_frac"),
        "decide_ms_mean": sm["decide_ms_mean"],
        "decide_ms_p95": sm["decide_ms_p95"],
        "decide_ms_max": sm["decide_ms_max"],
        "latency_ms_p95": sm["latency_ms_p95"],
        "wall_s": log.wall_s,
    }


def run(results: dict, *, scenarios: dict | None = None, traces: list[str] | None = None,
        duration_s: float = DURATION_S, adapters: list[str] | None = None, verbose: bool = True,
        merge: dict | None = None, options: dict | None = None) -> dict:
    """Simulate every adapter on every test bed x trace; `merge`: a previous run's output whose
    adapters are kept (the oracle's log is re-used for the energy ratios only if it ran here);
    `options`: per adapter name, keyword options for get_adapter (e.g. {"ppo": {"agent": path}})."""
    from dora_rl.adapter import get_adapter, simulate
    from dora_rl.errors import AgentError

    scenarios = SCENARIOS if scenarios is None else scenarios
    traces = validation_traces() if traces is None else traces
    adapters = ADAPTERS if adapters is None else adapters
    out = {"duration_s": duration_s, "interval_s": INTERVAL_S, "scenario_configs": scenarios, "traces": traces,
           "scenarios": {}, "load_average": {"start": list(os.getloadavg())}}
    for sc, cfg in scenarios.items():
        scen = bench_scenario(cfg)
        pref = p_ref(scen)
        old = {r["trace"]: r for r in ((merge or {}).get("scenarios", {}).get(sc, {}).get("per_trace", []))}
        per_trace = []
        for tr in traces:
            logs, notes = {}, {}
            for name in adapters:
                try:
                    ad = get_adapter(name, scen, **(options or {}).get(name, {}))
                except AgentError as e:
                    notes[name] = f"skipped: {e}"
                    continue
                t0 = time.perf_counter()
                logs[name] = simulate(scen, ad, tr, duration_s, INTERVAL_S, mean_frac=cfg["mean_frac"], seed=0)
                logs[name].wall_s = time.perf_counter() - t0
            row = dict(old.get(tr) or {"trace": tr, "adapters": {}, "notes": {}})
            row["adapters"] = dict(row["adapters"])
            row["notes"] = {**row.get("notes", {}), **notes}
            for name, log in logs.items():
                row["adapters"][name] = _row(log, logs.get("oracle"), pref)
            if "oracle" in row["adapters"]:
                row["floor"] = row["adapters"]["oracle"]["violation_frac"]
                eo = row["adapters"]["oracle"]["energy_j"]
                for a in row["adapters"].values():
                    a["energy_vs_oracle"] = a["energy_j"] / eo if eo else None
            per_trace.append(row)
            if verbose:
                print(_line(sc, row), flush=True)
        out["scenarios"][sc] = {"per_trace": per_trace, "mean": _means(per_trace)}
    out["load_average"]["end"] = list(os.getloadavg())     # decision times are wall clock on a shared machine
    out["targets"] = _targets(out)
    results["adapter"] = out
    return out


KEYS = ("violation_frac", "violating_intervals", "energy_j", "energy_vs_oracle", "switches", "utility",
        "agent_decided_frac", "decide_ms_mean", "decide_ms_p95", "decide_ms_max")


def _means(per_trace) -> dict:
    names = list(dict.fromkeys(n for r in per_trace for n in r["adapters"]))
    out = {}
    for n in names:
        vals = [r["adapters"][n] for r in per_trace if n in r["adapters"]]
        out[n] = {k: (float(np.mean([v[k] for v in vals if v.get(k) is not None]))
                      if any(v.get(k) is not None for v in vals) else None) for k in KEYS}
        out[n]["decide_ms_p95"] = float(max(v["decide_ms_p95"] for v in vals))    # worst trace, not the mean
        out[n]["decide_ms_max"] = float(max(v["decide_ms_max"] for v in vals))
    return out


def _targets(out) -> dict:
    """Issue 13's targets for `ppo` against `pareto`, per test bed and over all traces."""
    eps = 1e-9
    rows = [(sc, r) for sc, d in out["scenarios"].items() for r in d["per_trace"]
            if "ppo" in r["adapters"] and "pareto" in r["adapters"]]
    if not rows:
        return {}
    res = {}
    for label, sel in [("all", rows)] + [(sc, [x for x in rows if x[0] == sc]) for sc in out["scenarios"]]:
        if not sel:
            continue
        pp = [r["adapters"]["ppo"] for _, r in sel]
        pa = [r["adapters"]["pareto"] for _, r in sel]
        n = len(sel)
        u_pp, u_pa = float(np.mean([a["utility"] for a in pp])), float(np.mean([a["utility"] for a in pa]))
        adf = [a["agent_decided_frac"] for a in pp if a["agent_decided_frac"] is not None]
        res[label] = {
            "traces": n,
            "agent_decided_frac": float(np.mean(adf)) if adf else None,
            "agent_decided_ge_95pct": bool(adf) and float(np.mean(adf)) >= 0.95,
            "utility_ppo": u_pp, "utility_pareto": u_pa,
            "utility_gain": (u_pp - u_pa) / abs(u_pa) if u_pa else None,
            "utility_gain_ge_5pct": u_pp >= u_pa + 0.05 * abs(u_pa),
            "utility_ge_pareto_traces": sum(a["utility"] >= b["utility"] - eps for a, b in zip(pp, pa)),
            "violations_le_pareto_traces": sum(a["violating_intervals"] <= b["violating_intervals"]
                                               for a, b in zip(pp, pa)),
            "energy_le_pareto_traces": sum(a["energy_j"] <= b["energy_j"] * (1 + eps) for a, b in zip(pp, pa)),
            "decide_ms_p95": float(max(a["decide_ms_p95"] for a in pp)),
        }
        t = res[label]
        t["utility_ge_pareto_2_3"] = t["utility_ge_pareto_traces"] >= 2 * n / 3
        t["violations_le_pareto_2_3"] = t["violations_le_pareto_traces"] >= 2 * n / 3
        t["energy_le_pareto_2_3"] = t["energy_le_pareto_traces"] >= 2 * n / 3
        t["decide_p95_le_10ms"] = t["decide_ms_p95"] <= 10.0
    return res


def _line(sc, row) -> str:
    parts = [f"{sc:17s} {Path(row['trace']).name[:22]:22s} floor={row.get('floor', float('nan')):.3f}"]
    for n, a in row["adapters"].items():
        adf = a.get("agent_decided_frac")
        parts.append(f"{n}: v={a['violating_intervals']} E={a['energy_j']:.0f} u={a['utility']:.4f} "
                     f"sw={a['switches']} d95={a['decide_ms_p95']:.1f}ms" + ("" if adf is None else f" ag={adf:.2f}"))
    return " | ".join(parts)


def table(out) -> str:
    """Markdown table: one row per scenario x trace x adapter, then the means."""
    lines = ["| scenario | trace | adapter | violating intervals | energy J | energy / oracle | switches | "
             "QoE utility | agent decided | decide ms mean / p95 / max |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for sc, d in out["scenarios"].items():
        for r in d["per_trace"] + [{"trace": "MEAN", "adapters": d["mean"]}]:
            for n, a in r["adapters"].items():
                eo, adf = a.get("energy_vs_oracle"), a.get("agent_decided_frac")
                lines.append(f"| {sc} | {Path(r['trace']).name[:28]} | {n} | {a['violating_intervals']:.1f} | "
                             f"{a['energy_j']:.0f} | {'-' if eo is None else f'{eo:.3f}'} | {a['switches']:.1f} | "
                             f"{a['utility']:.4f} | {'-' if adf is None else f'{adf:.3f}'} | "
                             f"{a['decide_ms_mean']:.2f} / {a['decide_ms_p95']:.2f} / {a['decide_ms_max']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--traces", type=int, default=N_TRACES, help="first N validation traces")
    ap.add_argument("--duration", type=float, default=DURATION_S)
    ap.add_argument("--adapters", default=",".join(ADAPTERS))
    ap.add_argument("--scenarios", default=None, help="comma-separated keys of SCENARIOS / REFERENCE")
    ap.add_argument("--reference", action="store_true", help="also run the previous configuration (REFERENCE)")
    ap.add_argument("--merge", default=None, help="a previous run's JSON whose other adapters are kept")
    ap.add_argument("--out", default=None, help="JSON path (default bench/results/adapter.json on a full run)")
    ap.add_argument("--agent", default=None, help="the AdaptEnv agent folder `ppo` loads (default: the shipped one)")
    args = ap.parse_args()
    allcfg = {**SCENARIOS, **REFERENCE}
    scen = dict(SCENARIOS)
    if args.reference:
        scen.update(REFERENCE)
    if args.scenarios:
        bad = [k for k in args.scenarios.split(",") if k not in allcfg]
        if bad:
            sys.stderr.write(f"bench_adapter: unknown scenario(s) {', '.join(bad)}; known: {', '.join(allcfg)}\n")
            raise SystemExit(2)
        scen = {k: allcfg[k] for k in args.scenarios.split(",")}
    from dora_rl.errors import TraceError

    try:
        traces = validation_traces(args.traces)
    except TraceError as e:
        sys.stderr.write(f"bench_adapter: {e}\n")
        raise SystemExit(2) from None
    if not traces:
        sys.stderr.write("bench_adapter: no real traces found (set DORA_TRACES to the pensieve traces folder)\n")
        raise SystemExit(2)
    prev = json.loads(Path(args.merge).read_text())["adapter"] if args.merge else None
    res: dict = {}
    out = run(res, scenarios=scen, traces=traces, duration_s=args.duration, adapters=args.adapters.split(","),
              merge=prev, options={"ppo": {"agent": args.agent}} if args.agent else None)
    full = args.traces == N_TRACES and args.duration == DURATION_S
    path = Path(args.out) if args.out else (ROOT / "bench" / "results" / "adapter.json" if full else None)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(res, indent=1) + "\n")     # the layout bench/run.py writes
    print(table(out))
    print(json.dumps(out["targets"], indent=1))
    print(f"load average (1/5/15 min) at start {out['load_average']['start']}, at end {out['load_average']['end']}")
    if path is not None:
        print(f"wrote {path}")
