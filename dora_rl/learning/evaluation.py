"""`evaluate_agent`: the learned planner against the oracle, `dora` and the baselines.

Per scenario: the agent's plan (greedy with masks or rollout search, `search`; or best
of `samples`), its objective,
QoE compliance and `utility` (the training reward), and every reference planner's plan
scored by the same cost model. The summary gives, per reference planner:

- `median_ratio`: median of agent objective / planner objective over the scenarios
  where both plans are QoE-compliant (1.0 = as good; < 1 = the agent is better);
- `win_or_tie`: share of scenarios where the agent's plan is at least as good by the
  order every planner uses (QoE-compliant first, then objective, 0.1% tolerance);
- `n_both`: how many scenarios the ratio is taken over;

- `median_utility`: the planner's median `utility` (the training reward: objective
  relative to the best single-device plan, minus QoE penalties) over the scenarios it
  returns a plan for - the score on which "better than every baseline's median" is
  judged (the agent's is `median_utility` at the top level);

and `qoe_compliance`: of the scenarios where some planner found a QoE-compliant plan,
the share where the agent's plan is compliant too."""

from __future__ import annotations

import math
import signal
import statistics
import time
from contextlib import contextmanager

import numpy as np

from dora_rl.errors import DoraError
from dora_rl.scenario import Scenario

BASELINES = ("local", "offload", "neurosurgeon", "even", "proportional", "pipeedge", "data_parallel", "random")
REFERENCES = ("oracle", "dora") + BASELINES
HELD_OUT_SEED = 20_251_123


def held_out_scenarios(n: int, seed: int = HELD_OUT_SEED, max_devices: int = 6) -> list[Scenario]:
    """`n` seeded synthetic instances (never seen in training: a different seed) on which
    some plan fits in memory."""
    from dora_rl.envs.instance import Instance
    from dora_rl.synthetic import random_scenario

    out, i = [], 0
    while len(out) < n:
        sc = random_scenario(np.random.default_rng([seed, i]), max_devices=max_devices)
        sc.name = f"heldout_{i}"
        i += 1
        if Instance(sc, max(8, max_devices)).completable:
            out.append(sc)
    return out


@contextmanager
def _time_limit(seconds: float | None):
    if not seconds or not hasattr(signal, "SIGALRM"):
        yield
        return

    def _raise(signum, frame):
        raise TimeoutError(f"took longer than {seconds:g} s")

    old = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _key(row: dict):
    return (not row["qoe_ok"], not row["feasible"], row["objective"])


def reference_results(scenario: Scenario, planners=REFERENCES, timeout: float | None = 120.0,
                      oracle_max_devices: int = 6, cost=None) -> dict:
    """Every reference planner on one scenario: {name: {objective, qoe_ok, ...} or {error}}."""
    from dora_rl.cost import CostModel
    from dora_rl.cost.qoe import utility
    from dora_rl.envs.instance import Instance
    from dora_rl.planners import run_planner

    cost = cost or CostModel(scenario)
    obj = scenario.qoe.objective
    ref_obj = Instance(scenario, max(8, scenario.cluster.n), cost).ref_obj
    refs = {}
    for name in planners:
        if name == "oracle" and scenario.cluster.n > oracle_max_devices:
            refs[name] = {"error": f"skipped: more than {oracle_max_devices} devices"}
            continue
        try:
            with _time_limit(timeout):
                r = run_planner(name, scenario, cost)
            refs[name] = {"objective": r.metrics.objective(obj), "qoe_ok": r.metrics.qoe_ok,
                          "feasible": r.metrics.feasible, "seconds": r.seconds,
                          "utility": utility(cost, r.metrics, ref_obj)}
        except DoraError as e:
            refs[name] = {"error": f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"}
        except TimeoutError as e:
            refs[name] = {"error": f"timeout: {e}"}
        except (OverflowError, MemoryError) as e:     # a planner's own crash (dora at 64 x 200) is a result here
            refs[name] = {"error": f"crash: {type(e).__name__}: {str(e)[:160]}"}
    return refs


def evaluate_scenario(agent, scenario: Scenario, planners=REFERENCES, samples: int = 1, seed: int = 0,
                      timeout: float | None = 120.0, oracle_max_devices: int = 6, refs: dict | None = None,
                      search: str = "greedy") -> dict:
    from dora_rl.cost import CostModel

    cost = CostModel(scenario)
    obj = scenario.qoe.objective
    row = {"scenario": scenario.name, "devices": scenario.cluster.n, "blocks": scenario.profile.n_blocks,
           "kind": scenario.workload.kind, "objective_kind": obj}
    row["agent"] = agent_result(agent, scenario, cost, samples, seed, search)
    if refs is None:
        refs = reference_results(scenario, planners, timeout, oracle_max_devices, cost)
    row["planners"] = refs
    _compare(row)
    return row


def agent_result(agent, scenario: Scenario, cost, samples: int, seed: int, search: str = "greedy") -> dict:
    """The agent's best of `samples` rollouts (QoE first, then fit, then objective), timed."""
    from dora_rl.cost.qoe import preference, utility
    from dora_rl.envs.instance import Instance

    obj = scenario.qoe.objective
    inst = Instance(scenario, agent.max_devices, cost)
    t0 = time.perf_counter()
    res = agent.rollouts(scenario, samples, seed, instance=inst, search=search)
    dt = time.perf_counter() - t0
    plan, m, _ = min(res, key=lambda x: preference(x[1], obj))
    return {"objective": m.objective(obj), "qoe_ok": m.qoe_ok, "feasible": m.feasible,
            "utility": utility(cost, m, inst.ref_obj), "seconds": dt, "plan": plan.to_dict()}


def _compare(row: dict) -> None:
    refs = row["planners"]
    ratios = {}
    a = row["agent"]
    for name, r in refs.items():
        if "error" in r:
            continue
        ratios[name] = {"ratio": a["objective"] / r["objective"] if r["objective"] > 0 else math.nan,
                        "both_ok": bool(a["qoe_ok"] and r["qoe_ok"]),
                        "win_or_tie": _key(a)[:2] < _key(r)[:2] or (_key(a)[:2] == _key(r)[:2]
                                                                     and a["objective"] <= r["objective"] * 1.001)}
    row["vs"] = ratios
    row["compliant_exists"] = bool(a["qoe_ok"] or any(r.get("qoe_ok") for r in refs.values()))


def reuse_references(agent, scenarios: list[Scenario], rows: list[dict], samples: int = 1, seed: int = 0,
                     search: str = "greedy") -> dict:
    """Re-plan with the agent only (e.g. with samples=K or search="rollout") and compare against the reference
    planners' results already in `rows` (no oracle/dora re-run)."""
    import copy

    from dora_rl.cost import CostModel

    out = []
    for sc, old in zip(scenarios, rows):
        row = copy.deepcopy(old)
        row["agent"] = agent_result(agent, sc, CostModel(sc), samples, seed, search)
        _compare(row)
        out.append(row)
    return {"rows": out, "summary": summarize(out, tuple(rows[0]["planners"]) if rows else ())}


def summarize(rows: list[dict], planners=REFERENCES) -> dict:
    out = {"n": len(rows)}
    exists = [r for r in rows if r["compliant_exists"]]
    out["qoe_compliance"] = (sum(r["agent"]["qoe_ok"] for r in exists) / len(exists)) if exists else None
    out["n_compliant_exists"] = len(exists)
    out["median_utility"] = statistics.median(r["agent"]["utility"] for r in rows) if rows else None
    out["median_plan_ms"] = statistics.median(r["agent"]["seconds"] * 1e3 for r in rows) if rows else None
    per = {}
    for name in planners:
        both = [r["vs"][name]["ratio"] for r in rows if name in r["vs"] and r["vs"][name]["both_ok"]]
        seen = [r["vs"][name]["win_or_tie"] for r in rows if name in r["vs"]]
        utils = [r["planners"][name]["utility"] for r in rows if "utility" in r["planners"].get(name, {})]
        per[name] = {"median_ratio": statistics.median(both) if both else None, "n_both": len(both),
                     "median_utility": statistics.median(utils) if utils else None, "n_utility": len(utils),
                     "win_or_tie": (sum(seen) / len(seen)) if seen else None, "n": len(seen),
                     "qoe_ok": ((sum(bool(r["planners"][name].get("qoe_ok")) for r in rows) / len(rows))
                                if rows else None)}
    out["vs"] = per
    return out


def evaluate_agent(agent, scenarios: list[Scenario], planners=REFERENCES, samples: int = 1, seed: int = 0,
                   timeout: float | None = 120.0, progress: bool = False, refs_by_name: dict | None = None,
                   search: str = "greedy") -> dict:
    it = scenarios
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(scenarios), desc="evaluate", unit="scenario", leave=False)
    rows = []
    for sc in it:
        refs = (refs_by_name or {}).get(sc.name)
        rows.append(evaluate_scenario(agent, sc, planners, samples, seed, timeout, refs=refs, search=search))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return {"rows": rows, "summary": summarize(rows, planners)}
