"""Rank stage agents (or checkpoints, or seeds of one recipe) on validation instances with the
issue's own metrics, never on the held-out set.

Why: the run's checkpoint selection and the earlier validation checks count QoE compliance
over every instance (most have no compliant plan) and the mean utility of the misses, which
does not track the targets the card reports (compliance where a compliant plan exists,
geo-mean objective / oracle). Session 14 measured two seeds of one recipe 1.6 points of
compliance and 0.029 of geo-mean apart here, as far apart as any two recipes: compare
recipes by several seeds each.

Instances: the small training family's generator at the validation seed (1; training uses
the run's seed, the held-out set 20251123), those with at most `--max-devices` devices
(the oracle's reach). The oracle's plans are cached per (seed, n, max devices) in
bench/results/.

    PYTHONPATH=. python bench/validate_agents.py trained_agents/dora_rl__Partition-v0 runs/dora_rl__PartitionStage-v0
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def oracle_rows(env, n: int, max_devices: int, path: Path) -> dict:
    """{instance index: oracle result} for the family env's instances [0, n) with at most
    `max_devices` devices (cached in `path`)."""
    from dora_rl.learning.evaluation import reference_results

    if path.exists():
        return {int(k): v for k, v in json.loads(path.read_text()).items()}
    out = {}
    for i in range(n):
        inst = env.source.instance(i)
        if inst.n <= max_devices:
            out[i] = reference_results(inst.scenario, ("oracle",), timeout=60)["oracle"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out) + "\n")
    return out


def score(agent_path: str, env, oracle: dict) -> dict:
    """The network alone (greedy) on every instance where the oracle's plan complies."""
    from dora_rl.learning.agents import load_agent
    from dora_rl.learning.search import greedy_complete

    actor = load_agent(agent_path).actor()
    ok, ratios = [], []
    for i, o in sorted(oracle.items()):
        if "error" in o or not o["qoe_ok"]:
            continue
        env.reset(seed=0, options={"scenario": env.source.instance(i)})
        _, m, _ = greedy_complete(actor, [env])[0]
        ok.append(bool(m.qoe_ok))
        if m.qoe_ok:
            ratios.append(m.objective(env.inst.objective) / o["objective"])
    return {"agent": agent_path, "n": len(ok), "compliance": round(sum(ok) / len(ok), 4) if ok else None,
            "geo_ratio": round(statistics.geometric_mean(ratios), 4) if ratios else None,
            "n_ratio": len(ratios)}


def main(argv=None) -> int:
    import torch

    from dora_rl.learning import stage_training as st

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("agents", nargs="+")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--max-devices", type=int, default=6)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "validation.json"))
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    env = st.make_env(st.FAMILIES["small"], a.seed)
    cache = ROOT / "bench" / "results" / f"validation_oracle_s{a.seed}_n{a.n}_d{a.max_devices}.json"
    oracle = oracle_rows(env, a.n, a.max_devices, cache)
    rows = [score(p, env, oracle) for p in a.agents]
    for r in rows:
        print(f"{r['agent']}: compliant {r['compliance']} (n={r['n']}), geo-mean / oracle {r['geo_ratio']} "
              f"(n={r['n_ratio']})")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"seed": a.seed, "n": a.n, "max_devices": a.max_devices, "rows": rows},
                                      indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
