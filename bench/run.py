"""`make bench`: run every benchmark module, print its table, write bench/results/*.json.

Each bench/bench_*.py exposes `run(results: dict)`, fills `results` with its figures
(medians and ratios measured in this run) and prints a table; this script adds the
machine facts and saves one JSON per module plus bench/results/all.json."""

from __future__ import annotations

import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODULES = ["bench_cost", "bench_sim", "bench_planners", "bench_learning", "bench_runtime", "bench_adapter",
           "bench_faults", "bench_fidelity", "bench_live", "bench_docs"]


def main(argv: list[str]) -> int:
    only = set(argv)
    sys.path.insert(0, str(HERE))
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    summary = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                           "platform": platform.platform()}, "when": time.strftime("%Y-%m-%d %H:%M:%S")}
    failed = []
    for name in MODULES:
        if only and name not in only and name.removeprefix("bench_") not in only:
            continue
        if not (HERE / f"{name}.py").is_file():
            continue
        print(f"\n=== {name} ===", flush=True)
        results: dict = {}
        t0 = time.perf_counter()
        try:
            importlib.import_module(name).run(results)
        except Exception as e:  # a broken benchmark must not hide the others' figures
            failed.append(name)
            results["error"] = f"{type(e).__name__}: {e}"
            print(f"{name} failed: {results['error']}", flush=True)
        results["seconds"] = time.perf_counter() - t0
        (out_dir / f"{name.removeprefix('bench_')}.json").write_text(json.dumps(results, indent=1, default=str))
        summary[name.removeprefix("bench_")] = results
    (out_dir / "all.json").write_text(json.dumps(summary, indent=1, default=str))
    print(f"\nresults in {out_dir}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
