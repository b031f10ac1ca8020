"""Benchmark of the `dora` partitioner against the `oracle` and of its planning time.

    PYTHONPATH=. python bench/bench_planners.py            # table + bench/results/planners.json
    PYTHONPATH=. python bench/bench_planners.py --quick    # smaller sets (smoke run)

`run(results)` fills `results["planners"]` (another script calls it):
- `timing`: dora planning time (s; median and max over seeds, inference and training
  alternating, no QoE targets so nothing prunes early) for devices x blocks, with the
  regime used (exact / approximate) — targets: 6 x 32 < 0.3 s, 8 x 50 < 2 s, one core;
- `equality`: dora vs oracle objective on seeded small instances WITHOUT shared media
  (inference and training, both objectives, random and no QoE): equal within 1e-9 relative;
- `contention`: the same with shared WiFi media: relative gap (dora - oracle) / oracle,
  median and worst (the DP carries per-medium loads, so the target is 0);
- `approximation`: the chain approximation (forced) vs the exact DP on mid instances, gap.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from dora_rl.cost import CostModel
from dora_rl.planners.dp import best_candidate, search
from dora_rl.planners.oracle import oracle_search
from dora_rl.synthetic import random_scenario

OUT = Path(__file__).resolve().parent / "results" / "planners.json"


def _small(seed: int, shared: bool, max_devices: int = 5, max_blocks: int = 10):
    rng = np.random.default_rng(seed)
    kind = "training" if seed % 2 else "inference"
    objective = "energy" if (seed // 2) % 2 else "latency"
    qoe = "none" if seed % 5 == 0 else "random"
    return random_scenario(rng, max_devices=max_devices, n_blocks=int(rng.integers(2, max_blocks + 1)),
                           kind=kind, objective=objective, shared_media=shared, qoe=qoe)


def compare_set(n: int, shared: bool, seed0: int) -> dict:
    """dora vs oracle on n seeded instances."""
    equal, both_none, gaps, mism = 0, 0, [], []
    t_dora = t_oracle = 0.0
    for i in range(n):
        sc = _small(seed0 + i, shared)
        cost = CostModel(sc)
        t0 = time.perf_counter()
        res = search(sc, cost)
        b = best_candidate(res.candidates, sc.qoe.objective)
        t_dora += time.perf_counter() - t0
        t0 = time.perf_counter()
        ob, _ = oracle_search(sc, cost)
        t_oracle += time.perf_counter() - t0
        dv = None if b is None else b.metrics.objective(sc.qoe.objective)
        ov = None if ob is None else ob[0]
        if dv is None and ov is None:
            equal += 1
            both_none += 1
            continue
        if dv is not None and ov is not None:
            gap = (dv - ov) / ov if ov else 0.0
            gaps.append(gap)
            if abs(gap) <= 1e-9:
                equal += 1
                continue
        mism.append({"seed": seed0 + i, "dora": dv, "oracle": ov, "exact": res.space.exact})
    return {"instances": n, "equal": equal, "both_infeasible": both_none, "compared": len(gaps),
            "gap_median": statistics.median(gaps) if gaps else None,
            "gap_worst": max(gaps) if gaps else None, "mismatches": mism[:20],
            "dora_s": t_dora, "oracle_s": t_oracle}


def timing(devices, blocks, seeds: int = 3) -> list[dict]:
    rows = []
    for B in blocks:
        for n in devices:
            ts, regime = [], set()
            for s in range(seeds):
                rng = np.random.default_rng(1000 * n + B + s)
                kind = "training" if s % 2 else "inference"
                sc = random_scenario(rng, min_devices=n, max_devices=n, n_blocks=B, kind=kind, qoe="none")
                cost = CostModel(sc)
                t0 = time.perf_counter()
                res = search(sc, cost)
                ts.append(time.perf_counter() - t0)
                regime.add("exact" if res.space.exact else "approx")
            rows.append({"devices": n, "blocks": B, "median_s": statistics.median(ts), "max_s": max(ts),
                         "regime": "/".join(sorted(regime))})
    return rows


def approximation_gap(n: int, seed0: int = 50_000) -> dict:
    """Forced chain approximation vs exact DP on instances of 5 devices x 10 blocks."""
    gaps, missed = [], 0
    for i in range(n):
        rng = np.random.default_rng(seed0 + i)
        sc = random_scenario(rng, min_devices=5, max_devices=5, n_blocks=10, qoe="random")
        cost = CostModel(sc)
        obj = sc.qoe.objective
        ex = best_candidate(search(sc, cost).candidates, obj)
        ap = best_candidate(search(sc, cost, exact=False).candidates, obj)
        if ex is None:
            continue
        if ap is None:
            missed += 1
            continue
        e, a = ex.metrics.objective(obj), ap.metrics.objective(obj)
        gaps.append((a - e) / e if e else 0.0)
    return {"instances": n, "compared": len(gaps), "approx_found_nothing": missed,
            "gap_median": statistics.median(gaps) if gaps else None,
            "gap_worst": max(gaps) if gaps else None}


def run(results: dict, quick: bool = False) -> dict:
    n = 40 if quick else 200
    out = {}
    out["timing"] = timing([2, 4, 6, 8, 10, 12, 16], [16, 32, 50], seeds=2 if quick else 4)
    out["targets"] = {
        "6x32_s": max(r["max_s"] for r in out["timing"] if r["devices"] == 6 and r["blocks"] == 32),
        "8x50_s": max(r["max_s"] for r in out["timing"] if r["devices"] == 8 and r["blocks"] == 50),
        "16x50_s": max(r["max_s"] for r in out["timing"] if r["devices"] == 16 and r["blocks"] == 50),
    }
    out["equality"] = compare_set(n, shared=False, seed0=0)
    out["contention"] = compare_set(n, shared=True, seed0=100_000)
    out["approximation"] = approximation_gap(20 if quick else 60)
    results["planners"] = out
    report(out)
    return out


def _fmt(x, pct=False):
    if x is None:
        return "-"
    return f"{100 * x:.3f}%" if pct else f"{x:.3f}"


def main() -> None:
    res = run({}, quick="--quick" in sys.argv)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {os.path.relpath(OUT)}")


def report(res: dict) -> None:
    print("dora planning time (s), no QoE pruning, one core")
    print(f"{'devices':>7} {'blocks':>6} {'median':>8} {'max':>8}  regime")
    for r in res["timing"]:
        print(f"{r['devices']:>7} {r['blocks']:>6} {r['median_s']:>8.3f} {r['max_s']:>8.3f}  {r['regime']}")
    t = res["targets"]
    print(f"targets: 6x32 {t['6x32_s']:.3f} s (< 0.3), 8x50 {t['8x50_s']:.3f} s (< 2), 16x50 {t['16x50_s']:.3f} s")
    for key, title in (("equality", "no shared media"), ("contention", "shared media")):
        e = res[key]
        print(f"dora vs oracle ({title}): {e['equal']}/{e['instances']} equal "
              f"({e['both_infeasible']} infeasible for both), gap median {_fmt(e['gap_median'], True)}, "
              f"worst {_fmt(e['gap_worst'], True)}; dora {e['dora_s']:.1f} s, oracle {e['oracle_s']:.1f} s")
    a = res["approximation"]
    print(f"chain approximation vs exact (5 devices x 10 blocks): gap median {_fmt(a['gap_median'], True)}, "
          f"worst {_fmt(a['gap_worst'], True)} over {a['compared']}; approx found nothing on {a['approx_found_nothing']}")


if __name__ == "__main__":
    main()
