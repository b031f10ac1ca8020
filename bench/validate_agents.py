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

`--heldout N` scores the card's held-out set instead (`held_out_scenarios(N)`, the
network-alone row of bench_ablation.py, without its other rows): for the record after a
choice is made on validation, never to make it.

`--relative` needs no oracle, so it reaches the large family and the small family's 7-8
device instances: the agents on `--n` instances of `--family` at `--seed`, each agent's
compliant count over the instances where any of them complies, and the geo-mean of its
objective over the first agent's where both comply (the sessions' validation sets: small
seed 2 n 400, large seeds 1 n 60 and 2 n 150).

    PYTHONPATH=. python bench/validate_agents.py trained_agents/dora_rl__Partition-v0 runs/dora_rl__PartitionStage-v0
    PYTHONPATH=. python bench/validate_agents.py --relative --family large --seed 2 --n 150 A B

`--objective-term LW,EW` scores the agents with their objective term fixed at those
weights (`stage_agent.fix_objective_term`): how the shipped agent's were chosen (session 31).
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


def _oracle(i: int, scenario, timeout: float) -> tuple:
    from dora_rl.learning.evaluation import reference_results

    return i, reference_results(scenario, ("oracle",), timeout=timeout)["oracle"]


def oracle_rows(scenarios, path: Path, timeout: float = 60, jobs: int = 1) -> dict:
    """{index: oracle result} for the (index, scenario) pairs `scenarios` (cached in `path`),
    `jobs` processes at a time (each oracle keeps its own time limit)."""
    from dora_rl.learning.stage_collect import run_tasks

    if path.exists():
        return {int(k): v for k, v in json.loads(path.read_text()).items()}
    out = {}
    run_tasks(_oracle, ((i, sc, timeout) for i, sc in scenarios), float("inf"), jobs,
              lambda r: out.__setitem__(*r))
    out = dict(sorted(out.items()))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out) + "\n")
    return out


def greedy_on_env(env):
    """plan(agent, i) -> (qoe_ok, objective): the network alone on the env's instance i."""
    from dora_rl.learning.search import greedy_complete

    def plan(agent, i):
        env.reset(seed=0, options={"scenario": env.source.instance(i)})
        _, m, _ = greedy_complete(agent.actor(), [env])[0]
        return bool(m.qoe_ok), m.objective(env.inst.objective)
    return plan


def greedy_on_scenarios(scenarios):
    """plan(agent, i) -> (qoe_ok, objective): the network alone on scenarios[i], as the
    ablation bench's network-alone row plans it."""
    from dora_rl.cost.model import CostModel
    from dora_rl.learning.evaluation import agent_result

    def plan(agent, i):
        r = agent_result(agent, scenarios[i], CostModel(scenarios[i]), 1, 0, "greedy")
        return bool(r["qoe_ok"]), r["objective"]
    return plan


def load(agent_path: str, objective_term=None):
    """The agent at `agent_path`, with its objective term fixed at `objective_term` (a
    (latency, energy) pair, `fix_objective_term`) when given: to choose those weights here."""
    from dora_rl.learning.agents import load_agent
    from dora_rl.learning.stage_agent import fix_objective_term

    agent = load_agent(agent_path)
    if objective_term:      # before the agent's actor is first built (it copies the weights)
        fix_objective_term(agent.model, objective_term)
    return agent


def score(agent_path: str, plan, oracle: dict, objective_term=None) -> dict:
    """The network alone (greedy, `plan`) on every instance where the oracle's plan complies."""
    agent = load(agent_path, objective_term)
    ok, ratios = [], []
    for i, o in sorted(oracle.items()):
        if "error" in o or not o["qoe_ok"]:
            continue
        qoe_ok, objective = plan(agent, i)
        ok.append(qoe_ok)
        if qoe_ok:
            ratios.append(objective / o["objective"])
    return {"agent": agent_path, "n": len(ok), "compliance": round(sum(ok) / len(ok), 4) if ok else None,
            "geo_ratio": round(statistics.geometric_mean(ratios), 4) if ratios else None,
            "n_ratio": len(ratios)}


def relative(agent_paths: list, plans: list) -> list:
    """Agents against one another: `plans[a][i]` = agent a's (qoe_ok, objective) on instance
    i; per agent its compliant count where any agent complies, and its geo-mean objective /
    the first agent's where both comply."""
    n = len(plans[0])
    any_ok = [i for i in range(n) if any(r[i][0] for r in plans)]
    rows = []
    for p, r in zip(agent_paths, plans):
        ratios = [r[i][1] / plans[0][i][1] for i in any_ok if r[i][0] and plans[0][i][0]]
        rows.append({"agent": p, "n": len(any_ok), "compliant": sum(r[i][0] for i in any_ok),
                     "geo_vs_first": round(statistics.geometric_mean(ratios), 4) if ratios else None,
                     "n_ratio": len(ratios)})
    return rows


def main(argv=None) -> int:
    import torch

    from dora_rl.learning import stage_training as st

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("agents", nargs="+")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--max-devices", type=int, default=6)
    ap.add_argument("--heldout", type=int, metavar="N", help="score the card's held-out set of N instances instead")
    ap.add_argument("--relative", action="store_true", help="no oracle: the agents against one another")
    ap.add_argument("--family", choices=("small", "large"), default="small", help="with --relative")
    ap.add_argument("--jobs", type=int, default=1, help="processes building an oracle cache")
    ap.add_argument("--objective-term", metavar="LW,EW", type=lambda v: [float(x) for x in v.split(",")],
                    help="score the agents with their objective term fixed at these (latency, energy) weights")
    ap.add_argument("--out", default=None, help="JSON file (default bench/results/validation.json or heldout.json)")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    results = ROOT / "bench" / "results"
    if a.relative:
        plan = greedy_on_env(st.make_env(st.FAMILIES[a.family], a.seed))
        agents = [load(p, a.objective_term) for p in a.agents]
        rows = relative(a.agents, [[plan(agent, i) for i in range(a.n)] for agent in agents])
        for r in rows:
            print(f"{r['agent']}: compliant {r['compliant']} of {r['n']}, geo-mean / first {r['geo_vs_first']} "
                  f"(n={r['n_ratio']})")
        out = Path(a.out or results / f"relative_{a.family}_s{a.seed}_n{a.n}.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"family": a.family, "seed": a.seed, "n": a.n, "rows": rows}, indent=1) + "\n")
        return 0
    if a.heldout:
        from dora_rl.learning.evaluation import held_out_scenarios

        scenarios = held_out_scenarios(a.heldout, max_devices=a.max_devices)
        oracle = oracle_rows(enumerate(scenarios), results / f"heldout_oracle_n{a.heldout}_d{a.max_devices}.json",
                             timeout=120, jobs=a.jobs)
        plan = greedy_on_scenarios(scenarios)
    else:
        env = st.make_env(st.FAMILIES["small"], a.seed)
        pairs = ((i, env.source.instance(i)) for i in range(a.n))
        oracle = oracle_rows(((i, inst.scenario) for i, inst in pairs if inst.n <= a.max_devices),
                             results / f"validation_oracle_s{a.seed}_n{a.n}_d{a.max_devices}.json", jobs=a.jobs)
        plan = greedy_on_env(env)
    rows = [score(p, plan, oracle, a.objective_term) for p in a.agents]
    for r in rows:
        print(f"{r['agent']}: compliant {r['compliance']} (n={r['n']}), geo-mean / oracle {r['geo_ratio']} "
              f"(n={r['n_ratio']})")
    out = Path(a.out or results / ("heldout.json" if a.heldout else "validation.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"seed": None if a.heldout else a.seed, "n": a.heldout or a.n,
                               "max_devices": a.max_devices, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
