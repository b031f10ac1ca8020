"""Fault benchmark: a worker killed at a random time, 10 runs (inference) + 3 runs
(training). Inference: tiny_cnn on a 4-device emulated cluster, a 2-stage plan
(source a, stage 2 on b or c or d), 40 requests at 15 req/s, the stage device killed
(SIGKILL) at a random time in [0.3, 2.5] s. Checks every request answered exactly
once and the run finishing; reports detection time (kill -> detected), recovery
time (detected -> serving again on the re-planned survivors), re-issued requests.
Training: 6 SGD iterations with a random non-source device killed; final parameters
vs single-process SGD.

    PYTHONPATH=. python bench/bench_faults.py      # writes bench/results/faults.json
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dora_rl.plan import Plan
from dora_rl.runtime.faults import ResilientRuntime
from dora_rl.runtime.measure import reference_sgd
from dora_rl.scenario import Scenario

RUNS, REQUESTS, RATE, TRAIN_RUNS = 10, 40, 15.0, 3


def scen(kind="inference", batch=4, mb=2):
    wl = {"kind": kind, "batch": batch, "microbatches": mb, "source": "a"}
    if kind == "training":
        wl["optimizer"] = "sgd"
    links = [{"a": x, "b": y, "mbps": 80, "latency_ms": 1, "medium": "w"}
             for i, x in enumerate("abcd") for y in "abcd"[i + 1:]]
    return Scenario.from_dict({"name": "faults", "model": "tiny_cnn", "workload": wl,
                               "devices": [{"name": n, "gflops": 0.5, "memory_gb": 4} for n in "abcd"],
                               "links": links, "media": {"w": {"mbps": 80}}})


def one_inference(seed: int) -> dict:
    rnd = random.Random(seed)
    dev = rnd.choice("bcd")
    at = rnd.uniform(0.3, 2.5)
    t0 = time.time()
    row = {"seed": seed, "killed": dev, "at_s": at}
    try:
        with ResilientRuntime(scen(), timeout=30) as rt:
            rt.start(Plan.make([(0, 3, ["a"]), (3, 7, [dev])], microbatches=2))
            rt.fail_at(dev, at)
            res = rt.infer(REQUESTS, rate=RATE)
            f = rt.faults[0] if rt.faults else {}
            row.update(finished=True, answered=len(res.answered),
                       exactly_once=sorted(res.answered) == list(range(REQUESTS)),
                       duplicates_dropped=res.duplicates, reissued=res.reissued, recoveries=len(rt.faults),
                       detect_s=f.get("detected_s", {}).get(dev), recover_s=f.get("recover_s"),
                       new_plan=[(s["blocks"], s["devices"]) for s in f["plan"]["stages"]] if f else None)
    except Exception as e:
        row.update(finished=False, error=f"{type(e).__name__}: {e}")
    row["wall_s"] = time.time() - t0
    return row


def one_training(seed: int) -> dict:
    rnd = random.Random(1000 + seed)
    dev = rnd.choice("bc")
    at = rnd.uniform(0.1, 0.5)
    lr, its = 0.05, 6
    row = {"seed": seed, "killed": dev, "at_s": at}
    try:
        with ResilientRuntime(scen("training", batch=8), timeout=30, lr=lr) as rt:
            rt.start(Plan.make([(0, 3, ["a"]), (3, 7, ["b", "c"], [0.5, 0.5])], microbatches=2))
            data = [rt.make_batch(i, 8) for i in range(its)]
            rt.fail_at(dev, at)
            rt.train(its, data=data)
            got = rt.state_dict()
            f = rt.faults[0] if rt.faults else {}
            row.update(finished=True, recoveries=len(rt.faults), resumed_iteration=f.get("resumed_iteration"),
                       detect_s=f.get("detected_s", {}).get(dev), recover_s=f.get("recover_s"))
        ref = reference_sgd("tiny_cnn", data, lr)
        row["max_abs_diff"] = max((ref[k] - got[k]).abs().max().item() for k in ref)
    except Exception as e:
        row.update(finished=False, error=f"{type(e).__name__}: {e}")
    return row


def _stats(xs):
    xs = [x for x in xs if x is not None]
    return {"mean": float(np.mean(xs)), "max": float(np.max(xs))} if xs else None


def run(results: dict) -> dict:
    inf = [one_inference(s) for s in range(RUNS)]
    tr = [one_training(s) for s in range(TRAIN_RUNS)]
    out = {
        "inference": {"runs": inf, "all_finished": all(r["finished"] for r in inf),
                      "all_exactly_once": all(r.get("exactly_once") for r in inf),
                      "runs_with_fault_hit": sum(1 for r in inf if r.get("recoveries")),
                      "detect_s": _stats([r.get("detect_s") for r in inf]),
                      "recover_s": _stats([r.get("recover_s") for r in inf])},
        "training": {"runs": tr, "all_finished": all(r["finished"] for r in tr),
                     "max_abs_diff": max((r.get("max_abs_diff", float("inf")) for r in tr), default=None),
                     "detect_s": _stats([r.get("detect_s") for r in tr]),
                     "recover_s": _stats([r.get("recover_s") for r in tr])},
    }
    results["faults"] = out
    return out


if __name__ == "__main__":
    wrapped: dict = {}
    res = run(wrapped)
    p = ROOT / "bench" / "results" / "faults.json"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(wrapped, indent=1, default=str) + "\n")     # the layout bench/run.py writes
    i, t = res["inference"], res["training"]
    print(f"inference: {len(i['runs'])} runs, finished {i['all_finished']}, exactly once {i['all_exactly_once']}, "
          f"faults hit {i['runs_with_fault_hit']}, detect {i['detect_s']}, recover {i['recover_s']}")
    print(f"training: {len(t['runs'])} runs, finished {t['all_finished']}, max |diff| {t['max_abs_diff']:.2e}, "
          f"detect {t['detect_s']}, recover {t['recover_s']}")
    print(f"written {p}")
