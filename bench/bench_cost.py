"""Cost-model speed and physics: plans of 8 stages over a 50-block profile on 8 devices
scored per second on one core (target >= 20,000), the time to profile resnet50 (< 5 s),
and the physics laws (docs/cost-model.md "Laws") checked on 3000 fuzzed scenario/plan
pairs each (target: 0 violations), and the time to build a cluster's candidate routes at
8-128 devices with each search's trees built for every source at once and by one heap
search per source (the same routes; `VECTOR_DEVICES` is where the first gets faster)."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

import numpy as np


def _instance():
    from dora_rl.cluster import random_cluster
    from dora_rl.cost import CostModel
    from dora_rl.plan import Plan
    from dora_rl.scenario import QoE, Scenario, Workload
    from dora_rl.synthetic import random_profile

    rng = np.random.default_rng(0)
    prof = random_profile(rng, n_blocks=50)
    cl = random_cluster(rng, n_devices=8)
    scen = Scenario("bench", {"profile": "synthetic"}, prof, cl,
                    Workload("inference", 8, 4, 5.0, cl.names[0]), QoE(500, 5, 2, "latency"))
    cm = CostModel(scen)
    plans = []
    for _ in range(200):
        cuts = sorted(rng.choice(np.arange(1, 50), 7, replace=False).tolist())
        bounds = [0, *cuts, 50]
        devs = rng.permutation(cl.names).tolist()
        plans.append(Plan.make([(bounds[i], bounds[i + 1], [devs[i]]) for i in range(8)], 4))
    # a hybrid variant: 4 stages x 2 devices each
    hybrid = []
    for _ in range(200):
        cuts = sorted(rng.choice(np.arange(1, 50), 3, replace=False).tolist())
        bounds = [0, *cuts, 50]
        devs = rng.permutation(cl.names).tolist()
        hybrid.append(Plan.make([(bounds[i], bounds[i + 1], devs[2 * i:2 * i + 2], [0.6, 0.4]) for i in range(4)], 4))
    return cm, plans, hybrid


def _rate(cm, plans, validate, repeats=7):
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for p in plans:
            cm.evaluate(p, validate=validate)
        rates.append(len(plans) / (time.perf_counter() - t0))
    return statistics.median(rates)


def _laws(results: dict, cases: int = 3000) -> None:
    from dora_rl.cost.laws import LAWS, fuzz

    total = 0
    for law in LAWS:
        r = fuzz(law, cases, seed=2026)
        v = {k: r[k] for k in ("latency", "throughput", "energy")}
        results[f"law_{law}"] = {"cases": r["cases"], "violations": v, "traded": r["traded"],
                                 "examples": r["examples"]}
        total += sum(v.values())
        print(f"  law {law:14s} {r['cases']} cases, violations {v}, traded (not laws) {r['traded']}")
    results["law_violations_total"] = total


def _routes(results: dict) -> None:
    from dora_rl.cost import routes
    from dora_rl.synthetic import random_scenario

    keep = routes.VECTOR_DEVICES
    out = {}
    try:
        for n in (8, 12, 16, 24, 32, 64, 128):
            cluster = random_scenario(np.random.default_rng([2028, n]), max_devices=n, min_devices=n,
                                      n_blocks=10).cluster
            row, nets = {}, {}
            for how, at in (("vectorised", 0), ("per_source", 10**9)):
                routes.VECTOR_DEVICES = at
                times = []
                for _ in range(1 if n >= 128 else 5):
                    t0 = time.perf_counter()
                    nets[how] = routes.Network(cluster)
                    times.append(time.perf_counter() - t0)
                row[f"{how}_ms"] = round(statistics.median(times) * 1e3, 2)
            row["same_routes"] = nets["vectorised"].routes == nets["per_source"].routes
            row["ratio"] = round(row["per_source_ms"] / row["vectorised_ms"], 2)
            out[str(n)] = row
            print(f"  routes {n:3d} devices: per source {row['per_source_ms']:9.1f} ms, vectorised "
                  f"{row['vectorised_ms']:9.1f} ms ({row['ratio']}x), same routes {row['same_routes']}")
    finally:
        routes.VECTOR_DEVICES = keep
    results["route_build"] = {"vector_devices": keep, "by_devices": out}


def run(results: dict) -> None:
    _laws(results)
    _routes(results)
    cm, plans, hybrid = _instance()
    for p in plans[:3]:
        cm.evaluate(p)  # warm
    results["plans_per_s_8stages_validated"] = _rate(cm, plans, True)
    results["plans_per_s_8stages_prevalidated"] = _rate(cm, plans, False)
    results["plans_per_s_hybrid_4x2_validated"] = _rate(cm, hybrid, True)
    # cold: a fresh CostModel per pass, so no plan's boundaries are cached from a previous
    # pass (the figures above re-score the same 200 plans 7 times, warm caches)
    from dora_rl.cost import CostModel as _CM

    cold = []
    for _ in range(7):
        fresh = _CM(cm.scenario)
        t0 = time.perf_counter()
        for p in hybrid:
            fresh.evaluate(p)
        cold.append(len(hybrid) / (time.perf_counter() - t0))
    results["plans_per_s_hybrid_4x2_cold"] = statistics.median(cold)
    train = cm.scenario.replace(workload=cm.workload.__class__("training", 8, 4, None, cm.workload.source, "adam"))
    from dora_rl.cost import CostModel

    results["plans_per_s_8stages_training_validated"] = _rate(CostModel(train), plans, True)
    results["target_plans_per_s"] = 20000
    # profiling resnet50 in a fresh process (includes torch's one-off FlopCounterMode warm-up)
    code = ("import time; from dora_rl.profile.profiler import profile_module; "
            "from dora_rl.profile.zoo import build_model;"
            "m,x=build_model('resnet50',device='meta'); t=time.perf_counter(); profile_module(m,x,'resnet50');"
            "a=time.perf_counter()-t; t=time.perf_counter(); profile_module(m,x,'resnet50'); "
            "print(a, time.perf_counter()-t)")
    cold, warm = map(float, subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                           check=True).stdout.split())
    results["profile_resnet50_cold_s"] = cold
    results["profile_resnet50_warm_s"] = warm
    results["target_profile_s"] = 5.0
    for k, v in results.items():
        if k == "route_build":
            continue
        print(f"  {k:42s} {v:,.4g}" if isinstance(v, float) else f"  {k:42s} {v}")


if __name__ == "__main__":
    r: dict = {}
    run(r)
