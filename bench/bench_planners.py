"""Benchmark of the `dora` partitioner against the `oracle` and of its planning time.

    PYTHONPATH=. python bench/bench_planners.py            # table + bench/results/planners.json
    PYTHONPATH=. python bench/bench_planners.py --quick    # smaller sets (smoke run)

`run(results)` fills `results["planners"]` (another script calls it):
- `timing`: dora planning time (s; median and max over seeds, inference and training
  alternating, no QoE targets so nothing prunes early) for devices x blocks, with the
  regime used (exact / approximate) — targets: 6 x 32 < 0.3 s, 8 x 50 < 2 s, one core;
- `exactness`: devices 2-6 x blocks x kind: dora (default regime) equal to the oracle or
  not, its regime, both times;
- `equality`: dora vs oracle objective on seeded small instances (2-6 devices) WITHOUT shared media
  (inference and training, both objectives, random and no QoE; exact space forced): equal within 1e-9 relative;
- `contention`: the same with shared WiFi media: relative gap (dora - oracle) / oracle,
  median and worst (the DP carries per-medium loads, so the target is 0);
- `relays`: the same on sparse topologies (`synthetic.sparse_scenario`: a spanning tree
  of the links, 3-6 devices, a third with shared media), where routes pass through
  relays (participants: idle power, radio, battery); it counts the instances whose best
  plan has a relay and the candidates with one (target: 0 gap);
- `approximation`: the chain approximation (forced) vs the exact DP on mid instances, gap;
- `large`: 16 / 32 / 64 devices x 50 / 100 / 200 blocks: `dora` (run_planner) time and
  objective vs the local search from the fastest device alone (targets: 16x50 <= 0.5 s,
  64x200 <= 5 s, never worse than that local search, never "no plan" when it finds one);
- `past_exact`: 7-8 devices: dora's gap to the best plan any method found (dora, local
  search from every start, the baselines, and up to 10 blocks the exact DP forced, i.e.
  the optimum) - targets median <= 1 %, worst <= 5 %; `past_exact_sparse`: the same on
  sparse topologies (relays).
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
from dora_rl.synthetic import random_scenario, sparse_scenario

OUT = Path(__file__).resolve().parent / "results" / "planners.json"
EXACT_REF_BLOCKS = 10   # past_exact: up to this many blocks the forced exact DP is one of the methods


def _small(seed: int, shared: bool, max_devices: int = 6, max_blocks: int = 10, sparse: bool = False):
    rng = np.random.default_rng(seed)
    kind = "training" if seed % 2 else "inference"
    objective = "energy" if (seed // 2) % 2 else "latency"
    qoe = "none" if seed % 5 == 0 else "random"
    n = int(rng.integers(2 if not sparse else 3, max_devices + 1))
    top = max_blocks if n <= 4 else (8 if n == 5 else 5)      # stay in the exact regime at 5-6 devices
    sc = random_scenario(rng, min_devices=n, max_devices=n, n_blocks=int(rng.integers(2, top + 1)),
                         kind=kind, objective=objective, shared_media=shared, qoe=qoe)
    return sparse_scenario(rng, sc, extra_links=int(rng.integers(0, 2))) if sparse else sc


def relays(cost: CostModel, stages, metrics) -> list[int]:
    """Devices a plan's routes pass through that neither serve a stage nor are the source."""
    members = {d for s in stages for d in s[2]} | {cost.src}
    return [d for d in metrics.participants if d not in members]


def compare_set(n: int, shared: bool | None, seed0: int, sparse: bool = False) -> dict:
    """dora's DP (exact space forced: this checks the DP, not the regime choice) vs oracle
    on n seeded instances (shared None: alternate with and without shared media; sparse:
    a spanning tree of the links, so routes have relays). Counts the instances whose
    best plan (oracle's, dora's) has a relay, and the candidates dora kept with one."""
    equal, both_none, gaps, mism = 0, 0, [], []
    t_dora = t_oracle = 0.0
    relay_best = relay_cands = cands = 0
    for i in range(n):
        sh = bool((seed0 + i) % 3 == 0) if shared is None else shared
        sc = _small(seed0 + i, sh, sparse=sparse)
        cost = CostModel(sc)
        t0 = time.perf_counter()
        res = search(sc, cost, exact=True)
        b = best_candidate(res.candidates, sc.qoe.objective)
        t_dora += time.perf_counter() - t0
        t0 = time.perf_counter()
        ob, _ = oracle_search(sc, cost)
        t_oracle += time.perf_counter() - t0
        cands += len(res.candidates)
        relay_cands += sum(bool(relays(cost, c.stages, c.metrics)) for c in res.candidates)
        if (ob is not None and relays(cost, ob[1], ob[2])) or (b is not None and relays(cost, b.stages, b.metrics)):
            relay_best += 1
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
            "best_plan_has_relay": relay_best, "candidates": cands, "candidates_with_relay": relay_cands,
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


def exactness_table(devices=(2, 3, 4, 5, 6), blocks=(4, 8, 12), seeds: int = 2) -> list[dict]:
    """devices x blocks x kind: is the `dora` planner (run_planner: exact DP, or past the
    exact budget the approximation + local search) equal to the oracle on every seed
    (random QoE, both objectives), its `approximate` flag, and both times (s, max over seeds)."""
    from dora_rl.errors import NoFeasiblePlan
    from dora_rl.planners import run_planner

    rows = []
    for n in devices:
        for B in blocks:
            for kind in ("inference", "training"):
                same, flags, td, to, both = True, set(), 0.0, 0.0, 0
                for s in range(seeds):
                    rng = np.random.default_rng(30_000 + 100 * n + B + s)
                    sc = random_scenario(rng, min_devices=n, max_devices=n, n_blocks=B, kind=kind, qoe="random",
                                         objective="energy" if s % 2 else "latency")
                    cost = CostModel(sc)
                    t0 = time.perf_counter()
                    try:
                        r = run_planner("dora", sc, cost)
                        dv = r.metrics.objective(sc.qoe.objective) if r.metrics.qoe_ok else None
                        flags.add("approx" if r.approximate else "exact")
                    except NoFeasiblePlan as e:
                        dv = None
                        flags.add("approx" if "approximate" in str(e) else "exact")
                    td = max(td, time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    ob, _ = oracle_search(sc, cost)
                    to = max(to, time.perf_counter() - t0)
                    both += dv is not None and ob is not None
                    if (dv is None) != (ob is None) or (dv is not None and abs(dv - ob[0]) > 1e-9 * abs(ob[0])):
                        same = False
                rows.append({"devices": n, "blocks": B, "kind": kind, "equal_to_oracle": same, "both_found": both,
                             "regime": "/".join(sorted(flags)), "dora_max_s": td, "oracle_max_s": to})
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


def _objective(name, sc, cost):
    """(objective or None, compliant) of planner `name`; None when it reports no plan."""
    from dora_rl.errors import DoraError
    from dora_rl.planners import run_planner

    try:
        r = run_planner(name, sc, cost)
    except DoraError:
        return None, False
    return r.metrics.objective(sc.qoe.objective), r.metrics.qoe_ok


def large_set(devices=(16, 32, 64), blocks=(50, 100, 200), seeds: int = 2) -> list[dict]:
    """dora vs the local search from the fastest device on large instances (QoE random)."""
    from dora_rl.errors import NoFeasiblePlan
    from dora_rl.planners import run_planner
    from dora_rl.planners.local import local_search

    rows = []
    for n in devices:
        for B in blocks:
            for s in range(seeds):
                rng = np.random.default_rng(7000 + 100 * n + B + s)
                kind = "training" if s % 2 else "inference"
                sc = random_scenario(rng, min_devices=n, max_devices=n, n_blocks=B, kind=kind, qoe="random")
                cost = CostModel(sc)
                obj = sc.qoe.objective
                t0 = time.perf_counter()
                try:
                    r = run_planner("dora", sc, cost)
                    dv = r.metrics.objective(obj) if r.metrics.qoe_ok else None
                except NoFeasiblePlan:
                    dv = None
                dt = time.perf_counter() - t0
                ls = local_search(cost, fastest_only=True)
                lv = ls[2].objective(obj) if ls is not None and ls[2].qoe_ok else None
                worse = lv is not None and (dv is None or dv > lv * (1 + 1e-9))
                rows.append({"devices": n, "blocks": B, "kind": kind, "seconds": dt, "dora": dv,
                             "local_search_fastest": lv, "false_no_plan": lv is not None and dv is None,
                             "worse_than_local_search": worse})
    return rows


BASELINES = ("local", "offload", "neurosurgeon", "even", "proportional", "pipeedge", "data_parallel", "random")


def baseline_times(n: int = 16, blocks: int = 50, seeds: int = 2) -> dict:
    """Median and worst planning time (ms) of each baseline at n devices x `blocks`
    blocks, inference and training (tests check only that they plan; time is here)."""
    from dora_rl.errors import NoFeasiblePlan
    from dora_rl.planners import get_planner

    times: dict[str, list[float]] = {b: [] for b in BASELINES}
    for s in range(seeds):
        for kind in ("inference", "training"):
            rng = np.random.default_rng(8000 + s)
            sc = random_scenario(rng, min_devices=n, max_devices=n, n_blocks=blocks, kind=kind, qoe="none")
            cost = CostModel(sc)
            for b in BASELINES:
                t0 = time.perf_counter()
                try:
                    get_planner(b).plan(sc, cost)
                except NoFeasiblePlan:
                    pass
                times[b].append((time.perf_counter() - t0) * 1e3)
    return {b: {"median_ms": statistics.median(v), "max_ms": max(v)} for b, v in times.items()}


def past_exact(n: int, seed0: int = 90_000, sparse: bool = False) -> dict:
    """7-8 devices: dora's gap to the best compliant plan any method found (sparse: on a
    spanning tree of the links plus up to 2 more, where routes pass through relays)."""
    from dora_rl.planners import run_planner
    from dora_rl.planners.local import local_search

    gaps, false_none, exact_ref, with_relay = [], 0, 0, 0
    others = ("oracle", "pipeedge", "offload", "neurosurgeon", "even", "proportional", "data_parallel")
    for i in range(n):
        rng = np.random.default_rng(seed0 + i)
        sc = random_scenario(rng, min_devices=7, max_devices=8, n_blocks=int(rng.integers(6, 17)), qoe="random")
        if sparse:
            sc = sparse_scenario(rng, sc, extra_links=int(rng.integers(0, 3)))
        cost = CostModel(sc)
        dv, dok = _objective("dora", sc, cost)
        if dok:
            r = run_planner("dora", sc, cost)
            with_relay += bool(relays(cost, cost.stage_indices(r.plan), r.metrics))
        found = [v for v, ok in (_objective(p, sc, cost) for p in others) if ok]
        ls = local_search(cost)
        if ls is not None and ls[2].qoe_ok:
            found.append(ls[2].objective(sc.qoe.objective))
        if sc.profile.n_blocks <= EXACT_REF_BLOCKS:      # the exact DP, forced: the true optimum
            b = best_candidate(search(sc, cost, exact=True).candidates, sc.qoe.objective)
            exact_ref += 1
            if b is not None:
                found.append(b.metrics.objective(sc.qoe.objective))
        if dok:
            found.append(dv)
        if not found:
            continue
        best = min(found)
        if not dok:
            false_none += 1
            continue
        gaps.append((dv - best) / best if best else 0.0)
    return {"instances": n, "compared": len(gaps), "false_no_plan": false_none, "exact_reference": exact_ref,
            "dora_plan_has_relay": with_relay,
            "gap_median": statistics.median(gaps) if gaps else None, "gap_worst": max(gaps) if gaps else None}


def run(results: dict, quick: bool = False) -> dict:
    out = {}
    out["timing"] = timing([2, 4, 6, 8, 10, 12, 16], [16, 32, 50], seeds=2 if quick else 4)
    out["targets"] = {
        "6x32_s": max(r["max_s"] for r in out["timing"] if r["devices"] == 6 and r["blocks"] == 32),
        "8x50_s": max(r["max_s"] for r in out["timing"] if r["devices"] == 8 and r["blocks"] == 50),
        "16x50_s": max(r["max_s"] for r in out["timing"] if r["devices"] == 16 and r["blocks"] == 50),
    }
    n_eq = 40 if quick else 400
    out["equality"] = compare_set(n_eq, shared=False, seed0=0)
    out["contention"] = compare_set(n_eq, shared=True, seed0=100_000)
    out["relays"] = compare_set(n_eq, shared=None, seed0=200_000, sparse=True)
    out["exactness"] = exactness_table(blocks=(4, 8, 12, 16) if quick else (4, 8, 12, 16, 24))
    out["approximation"] = approximation_gap(20 if quick else 60)
    out["large"] = large_set(seeds=1 if quick else 2)
    out["past_exact"] = past_exact(10 if quick else 80)
    out["past_exact_sparse"] = past_exact(6 if quick else 40, seed0=95_000, sparse=True)
    out["baseline_ms_16x50"] = baseline_times(seeds=1 if quick else 2)
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
    for key, title in (("equality", "no shared media"), ("contention", "shared media"),
                       ("relays", "sparse topologies")):
        e = res[key]
        print(f"dora vs oracle ({title}): {e['equal']}/{e['instances']} equal "
              f"({e['both_infeasible']} infeasible for both), gap median {_fmt(e['gap_median'], True)}, "
              f"worst {_fmt(e['gap_worst'], True)}; best plan has a relay on {e['best_plan_has_relay']}, "
              f"{e['candidates_with_relay']}/{e['candidates']} candidates; "
              f"dora {e['dora_s']:.1f} s, oracle {e['oracle_s']:.1f} s")
        for mm in e["mismatches"]:
            print(f"  MISMATCH seed {mm['seed']}: dora {mm['dora']} vs oracle {mm['oracle']}")
    print("exactness: dora planner vs oracle, random QoE, 2 seeds; regime, equal?, max time (s) dora / oracle")
    for r in res["exactness"]:
        print(f"{r['devices']:>7} {r['blocks']:>6} {r['kind']:>9} {r['regime']:>6} "
              f"{'equal' if r['equal_to_oracle'] else 'DIFFERS':>7} {r['both_found']:>2} "
              f"{r['dora_max_s']:>8.3f} {r['oracle_max_s']:>8.3f}")
    a = res["approximation"]
    print(f"chain approximation vs exact (5 devices x 10 blocks): gap median {_fmt(a['gap_median'], True)}, "
          f"worst {_fmt(a['gap_worst'], True)} over {a['compared']}; "
          f"approx found nothing on {a['approx_found_nothing']}")
    print("large instances: dora (run_planner, approximate) vs local search from the fastest device")
    print(f"{'devices':>7} {'blocks':>6} {'kind':>9} {'dora s':>7} {'dora':>10} {'LS fastest':>10}")
    for r in res["large"]:
        print(f"{r['devices']:>7} {r['blocks']:>6} {r['kind']:>9} {r['seconds']:>7.2f} {_fmt(r['dora']):>10} "
              f"{_fmt(r['local_search_fastest']):>10}{'  WORSE' if r['worse_than_local_search'] else ''}")
    for key, title in (("past_exact", ""), ("past_exact_sparse", ", sparse topologies")):
        p = res[key]
        print(f"7-8 devices{title}, dora vs the best plan any method found: gap median "
              f"{_fmt(p['gap_median'], True)}, worst {_fmt(p['gap_worst'], True)} over {p['compared']} "
              f"({p['exact_reference']} with the forced exact DP; dora's plan has a relay on "
              f"{p['dora_plan_has_relay']}); false 'no plan' {p['false_no_plan']}")
    print("baselines at 16 devices x 50 blocks (median / worst ms): " + ", ".join(
        f"{b} {t['median_ms']:.0f}/{t['max_ms']:.0f}" for b, t in res["baseline_ms_16x50"].items()))


if __name__ == "__main__":
    main()
