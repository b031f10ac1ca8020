"""Fidelity benchmark: the cost model's prediction vs real execution on this host.

For each case: `dora calibrate` (time every block on each of 2 pinned one-thread workers,
all at once), plan with `dora`, run the plan on the workers with compute at real speed
and transfers paced to the calibrated links (`dora run --no-emulate`), calibrate again,
and compare the predicted latency (inference; the measurement is the p50 of the
requests) or iteration time (training, p50) with the measurement. The prediction is the
mean of the plan's predictions on the two calibrations: the host's own speed drifts by
10-30 % within minutes on a VM, and the two calibrations bracket the run in time. The
error against the first calibration alone (what `dora calibrate` then `dora run` gives)
is reported beside it (`error_before_only`, and `host_drift` between the two).
Cases: resnet18, mobilenet_v2, vit_b16 inference and resnet18 training, 2 workers (this
machine has 2 cores; use 3 where the cores allow). Targets (issue 15): median error
<= 10 %, worst <= 20 %. The load average is recorded: other processes on the cores
distort real execution and are not in the model.

    PYTHONPATH=. python bench/bench_fidelity.py     # writes bench/results/fidelity.json
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CASES = [("resnet18", False), ("mobilenet_v2", False), ("vit_b16", False), ("resnet18", True)]
TARGET_MEDIAN, TARGET_WORST = 0.10, 0.20
REPEATS, REQUESTS, ITERATIONS = 9, 20, 5   # calibration rounds; requests or iterations measured


def _load() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def one(model: str, training: bool, workers: int, tmp: Path) -> dict:
    from dora_rl.cost import CostModel
    from dora_rl.planners import get_planner
    from dora_rl.runtime.calibrate import calibrate
    from dora_rl.runtime.measure import measure
    from dora_rl.scenario import load_scenario

    t0 = time.monotonic()
    load0 = _load()
    tag = f"{model}_{'train' if training else 'infer'}"
    sc = load_scenario(calibrate(model, workers, tmp / tag, training=training, repeats=REPEATS)["scenario"])
    plan = get_planner("dora").plan(sc, CostModel(sc))
    out = measure(sc, plan, requests=REQUESTS, iterations=ITERATIONS, warmup=1, emulate=False, pace=True,
                  throughput_phase=False, timeout=300)
    # the same calibration again after the run: the host's own speed drifts (a VM's
    # neighbours), and the mean of the two brackets the run in time
    after = load_scenario(calibrate(model, workers, tmp / f"{tag}_after", training=training,
                                    repeats=REPEATS)["scenario"])
    before_ms = out["predicted"]["latency_ms"]
    after_ms = CostModel(after).evaluate(plan).latency_ms
    pred = (before_ms + after_ms) / 2
    meas = out["measured"]["latency_ms"]["p50"]
    return {"model": model, "kind": "training" if training else "inference", "workers": workers,
            "plan": [(s["blocks"], s["devices"]) for s in out["plan"]["stages"]],
            "microbatches": out["plan"]["microbatches"], "predicted_ms": pred,
            "predicted_before_ms": before_ms, "predicted_after_ms": after_ms, "host_drift": after_ms / before_ms - 1,
            "measured_p50_ms": meas, "measured_mean_ms": out["measured"]["latency_ms"]["mean"],
            "error": (meas - pred) / pred, "abs_error": abs(meas - pred) / pred,
            "error_before_only": (meas - before_ms) / before_ms,
            "load_avg_before": load0, "load_avg_after": _load(), "bench_s": time.monotonic() - t0}


def run(results: dict) -> None:
    from dora_rl.errors import DoraError
    from dora_rl.runtime.calibrate import host_cores

    workers = max(2, min(3, len(host_cores())))
    rows = []
    with tempfile.TemporaryDirectory(prefix="dora_fidelity_") as d:
        for model, training in CASES:
            try:
                row = one(model, training, workers, Path(d))
            except (DoraError, RuntimeError, OSError) as e:   # report the case, keep the others
                row = {"model": model, "kind": "training" if training else "inference", "failed": str(e)}
            rows.append(row)
            if "failed" in row:
                print(f"{model:13s} {row['kind']:9s} failed: {row['failed']}", flush=True)
            else:
                print(f"{model:13s} {row['kind']:9s} pred {row['predicted_ms']:8.1f} ms  meas p50 "
                      f"{row['measured_p50_ms']:8.1f} ms  err {row['error'] * 100:+6.1f}%  (before only "
                      f"{row['error_before_only'] * 100:+6.1f}%, host drift {row['host_drift'] * 100:+5.1f}%)  "
                      f"load {row['load_avg_before']:.1f}->{row['load_avg_after']:.1f}  plan {row['plan']}", flush=True)
    errs = [r["abs_error"] for r in rows if "abs_error" in r]
    med = statistics.median(errs) if errs else None
    worst = max(errs) if errs else None
    once = [abs(r["error_before_only"]) for r in rows if "abs_error" in r]
    results["fidelity"] = {"rows": rows, "workers": workers, "cores": len(host_cores()),
                           "median_abs_error": med, "worst_abs_error": worst,
                           "before_only": {"median_abs_error": statistics.median(once) if once else None,
                                           "worst_abs_error": max(once, default=None)},
                           "target_median": TARGET_MEDIAN, "target_worst": TARGET_WORST,
                           "met": bool(errs) and med <= TARGET_MEDIAN and worst <= TARGET_WORST}
    if errs:
        print(f"median |error| {med * 100:.1f}% (target <= {TARGET_MEDIAN * 100:.0f}%), worst {worst * 100:.1f}% "
              f"(target <= {TARGET_WORST * 100:.0f}%); calibrated before the run only: median "
              f"{statistics.median(once) * 100:.1f}%, worst {max(once) * 100:.1f}%", flush=True)


if __name__ == "__main__":
    res: dict = {}
    run(res)
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "fidelity.json").write_text(json.dumps(res, indent=1, default=str))
