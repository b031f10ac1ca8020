"""Ablations of the learned planner: the network alone, searches on top, and their controls.

Every learned figure sits beside the same search started from a uniform policy and from
the fastest single device, `dora`, the best baseline and the oracle (where it runs), and
the network alone beside its own lookahead terms ranked without it (`lookahead_greedy`), on
held-out instances (seeds training never used), plus larger clusters (16/32/64 devices x
50/100/200 blocks). Rows per method: QoE-compliant share where any method finds a
compliant plan, geo-mean objective / oracle (held-out) or / best found (large), over the
instances where both plans are compliant, median decision time. Then searches at equal
time budgets: wins / losses / ties of network-guided search against polish from the
fastest device and against `dora`. The network-guided search the target is checked on is
`restart` (GUIDED: polish from the greedy plan, then from plans sampled from the policy,
until the budget); `uniform_restart`, the same search from a uniform policy, is its control.
`dora` takes no budget (an exact DP runs to its end), so on the large sets the guided search
is also run with `dora`'s own measured time on that instance as its budget
(`net_restart_at_dora_time`; the bench's budget where `dora` gave no plan): the duel the
target "at an equal time budget ... against `dora`" is checked on. The duel at the bench's
fixed budget stays beside it (until session 33 the check used it: `dora` then had up to
16 x the guided search's time).

The decision-time rows the time targets compare (`net_greedy`, `fastest_polish`, `dora` on the
large sets) are timed TIMED_RUNS times per instance, each run on a fresh Instance (a fresh
CostModel for `dora`, set up as for its first run), the network's and polish's runs
interleaved; a row's `ms` is the median of its runs (`ms_runs`), and its first run, the one
timing the bench took until session 39, is kept as `ms_first` (summaries: `median_ms_first`;
checks: the targets on those single timings beside the ones on the medians). `dora`'s
median is also the budget of `net_restart_at_dora_time`. Why: single timings of a few
milliseconds moved a size's median from 5.8 to 7.2 ms between two runs of the same code
(card 16 x 50, session 38: one instance timed at 8.3 ms, 4.9-5.1 in every other run).

    PYTHONPATH=. python bench/bench_ablation.py --agent runs/dora_rl__PartitionStage-v0 --n 200 --per-size 10"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")     # one core: a spinning BLAS pool costs 10x on a loaded machine

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dora_rl.learning.stage_card import PLAN_MS_64x200_MAX  # the card checks the same target

BASELINES = ("local", "offload", "neurosurgeon", "even", "proportional", "pipeedge", "data_parallel", "random")
SIZES = ((16, 50), (16, 100), (16, 200), (32, 50), (32, 100), (32, 200), (64, 50), (64, 100), (64, 200))
BUDGETED = ("sample", "beam", "restart")      # the searches given the bench's budget
# the network-guided search the equal-budget target is checked on (chosen before measuring it)
GUIDED = "net_restart"
AT_DORA = f"{GUIDED}_at_dora_time"      # the guided search given dora's own time on the instance
TIMED = ("net_greedy", "fastest_polish", "dora")     # the rows the time targets compare
TIMED_RUNS = 3              # timings per instance of the TIMED rows (the median is the row's)
LARGE_SEED = 777_001        # never a training seed (training uses generator seed 0)
TARGETS = {"heldout_compliance_min": 0.97, "heldout_geo_oracle_max": 1.02, "large_compliance_min": 0.90,
           "large_geo_best_max": 1.05, "time_vs_polish_fastest_max": 1 / 3, "time_vs_dora_max": 0.1,
           "ms_64x200_max": PLAN_MS_64x200_MAX}


def _res(plan_metrics_u, objective, seconds):
    _, m, u = plan_metrics_u
    return {"obj": m.objective(objective), "ok": bool(m.qoe_ok), "feasible": bool(m.feasible), "ms": seconds * 1e3}


def _runs(row: dict, ms: list[float]) -> None:
    """A TIMED row's runs (ms, its first run first): `ms` becomes their median."""
    row["ms_runs"] = [round(x, 3) for x in ms]
    row["ms_first"], row["ms"] = ms[0], statistics.median(ms)


def learned_rows(agent, scenario, budget_ms: float, runs: int = 1) -> dict:
    """Network alone, network + searches, uniform policy + searches, the network's lookahead
    terms alone (greedy), fastest device + polish.

    Each timed method plans on a fresh Instance (its own CostModel, whose transfer caches
    start cold; the cluster's routes are shared, built once and charged to no method), so a
    method is not sped up by the caches the methods run before it filled: until session 10
    the network alone ran first on one shared Instance and the polish from the fastest
    device last, on caches every earlier search had warmed."""
    from dora_rl.envs.instance import Instance
    from dora_rl.learning.stage_search import LookaheadActor, UniformActor, decode
    from dora_rl.learning.stage_training import fastest_plan

    def timed(actor, mode, **kw):       # (result, seconds) of a search on a fresh Instance, env included
        inst = Instance(scenario, scenario.cluster.n)
        t0 = time.perf_counter()
        r = decode(actor, agent.env_for(inst), mode, **kw)
        return r, time.perf_counter() - t0

    def from_fastest():     # (start, its seconds, polished, seconds of both) on a fresh Instance, or None
        inst = Instance(scenario, scenario.cluster.n)
        env = agent.env_for(inst)
        t0 = time.perf_counter()
        f = fastest_plan(inst)
        t_f = time.perf_counter() - t0
        if f is None:
            return None
        r = decode(actors["net"], env, "polish", start=f)
        return f, t_f, r, time.perf_counter() - t0

    obj = scenario.qoe.objective
    out = {}
    actors = {"net": agent.actor(), "uniform": UniformActor(), "lookahead": LookaheadActor()}
    modes = {"net": ("greedy", "polish", "rollout", "sample", "beam", "restart"),
             "uniform": ("greedy", "polish", "rollout", "restart"), "lookahead": ("greedy",)}
    for who, actor in actors.items():
        for mode in modes[who]:
            r, sec = timed(actor, mode, budget_ms=budget_ms if mode in BUDGETED else None)
            out[f"{who}_{mode}"] = _res(r, obj, sec)
    got = from_fastest()
    f = got and got[0]
    if got is None:        # no single device holds the model: the fastest-device control has no start
        for k in ("fastest", "fastest_polish", "fastest_polish_at_budget"):
            out[k] = {"error": "no single device holds the model"}
    else:
        out["fastest"], out["fastest_polish"] = _res(f, obj, got[1]), _res(got[2], obj, got[3])
    if runs > 1:        # the TIMED rows again, interleaved, each on a fresh Instance (module docstring)
        net_ms, pol_ms = [out["net_greedy"]["ms"]], [out["fastest_polish"]["ms"]] if got else []
        for _ in range(runs - 1):
            net_ms.append(timed(actors["net"], "greedy")[1] * 1e3)
            if got:
                pol_ms.append(from_fastest()[3] * 1e3)
        _runs(out["net_greedy"], net_ms)
        if got:
            _runs(out["fastest_polish"], pol_ms)
    # equal budgets: network + polish and fastest + polish, each given the same time
    for who, start in (("net", None), ("fastest", f)):
        if who == "fastest" and got is None:
            continue
        r, sec = timed(actors["net"], "polish", budget_ms=budget_ms, start=start)
        out[f"{who}_polish_at_budget"] = _res(r, obj, sec)
    return out


def guided_at(agent, scenario, budget_ms: float) -> dict:
    """The guided search (GUIDED) on a fresh Instance with `budget_ms`, timed as the other rows."""
    from dora_rl.envs.instance import Instance
    from dora_rl.learning.stage_search import decode

    t0 = time.perf_counter()
    env = agent.env_for(Instance(scenario, scenario.cluster.n))
    r = decode(agent.actor(), env, GUIDED.split("_", 1)[1], budget_ms=budget_ms)
    return _res(r, scenario.qoe.objective, time.perf_counter() - t0)


def reference_rows(scenario, names, timeout: float) -> dict:
    from dora_rl.learning.evaluation import reference_results

    refs = reference_results(scenario, names, timeout, oracle_max_devices=6)
    return {k: ({"obj": v["objective"], "ok": bool(v["qoe_ok"]), "feasible": bool(v["feasible"]),
                 "ms": v["seconds"] * 1e3} if "error" not in v else {"error": v["error"]}) for k, v in refs.items()}


def _better(a, b) -> int:
    """+1 if a is better than b, -1 worse, 0 tie, in the order every planner prefers plans
    (dora_rl/cost/qoe.py:preference): QoE-compliant first, then feasible (fits in memory),
    then the objective within 0.1 %."""
    ka, kb = (not a["ok"], not a.get("feasible", True)), (not b["ok"], not b.get("feasible", True))
    if ka != kb:
        return 1 if ka < kb else -1
    if a["obj"] < b["obj"] * 0.999:
        return 1
    return -1 if b["obj"] < a["obj"] * 0.999 else 0


def summarize(rows: list[dict], yard: str) -> dict:
    """Per method: compliance where some method is compliant, geo-mean ratio to `yard`
    ('oracle' or 'best') where both are compliant, median ms."""
    methods = sorted({k for r in rows for k in r["m"]})
    out = {}
    for r in rows:
        ok = [v for v in r["m"].values() if "error" not in v and v["ok"]]
        r["best"] = min(v["obj"] for v in ok) if ok else None
        r["any_ok"] = bool(ok)
    for k in methods + ["best_baseline"]:
        comp, ratios, ms, first, n_ok = [], [], [], [], 0
        for r in rows:
            v = r["m"].get(k) if k != "best_baseline" else _best_baseline(r)
            if v is None:
                continue
            if "error" in v:                  # no plan (e.g. dora: "no compliant plan"): a miss
                if r["any_ok"] and not v["error"].startswith("skipped"):
                    comp.append(False)
                continue
            if r["any_ok"]:
                comp.append(v["ok"])
            ref = r["best"] if yard == "best" else (r["m"].get("oracle") or {}).get("obj")
            ref_ok = r["any_ok"] if yard == "best" else (r["m"].get("oracle") or {}).get("ok")
            if v["ok"] and ref_ok and ref:
                ratios.append(v["obj"] / ref)
            ms.append(v["ms"])
            first.append(v.get("ms_first", v["ms"]))
            n_ok += v["ok"]
        out[k] = {"compliance": round(sum(comp) / len(comp), 4) if comp else None, "n_compliant_exists": len(comp),
                  "geo_ratio": round(statistics.geometric_mean(ratios), 4) if ratios else None,
                  "n_ratio": len(ratios), "median_ms": round(statistics.median(ms), 2) if ms else None}
        if k in TIMED and ms:
            out[k]["median_ms_first"] = round(statistics.median(first), 2)
    return out


def _best_baseline(r):
    cands = [r["m"][b] for b in BASELINES if b in r["m"] and "error" not in r["m"][b]]
    if not cands:
        return None
    return min(cands, key=lambda v: (not v["ok"], v["obj"]))


def duels(rows: list[dict], a: str, b: str) -> dict:
    w = l_ = t = 0
    for r in rows:
        x, y = r["m"].get(a), r["m"].get(b)
        if not x or not y or ("error" in x and "error" in y):
            continue
        c = -1 if "error" in x else (1 if "error" in y else _better(x, y))
        w += c > 0
        l_ += c < 0
        t += c == 0
    return {"wins": w, "losses": l_, "ties": t}


def run_set(agent, scenarios, names, timeout, budget_ms, label, old_agent=None, progress=True,
            at_dora_time: bool = False, runs: int = 1) -> list[dict]:
    """Every method's row per scenario; `at_dora_time`: also the guided search given `dora`'s
    own time on the instance (`guided_at`); `runs`: timings of the TIMED rows (`dora`'s only
    where it is the first of `names`, as on the large sets: its repeats then run as its first
    did, on a fresh CostModel with no other planner before it)."""
    from dora_rl.errors import DoraError

    rows = []
    for i, sc in enumerate(scenarios):
        m = learned_rows(agent, sc, budget_ms, runs)
        m.update(reference_rows(sc, names, timeout))
        if runs > 1 and names[0] == "dora" and "error" not in m["dora"]:
            again = [reference_rows(sc, ("dora",), timeout)["dora"] for _ in range(runs - 1)]
            _runs(m["dora"], [m["dora"]["ms"]] + [r["ms"] for r in again if "ms" in r])     # a timeout: not a time
        if at_dora_time:
            m[AT_DORA] = guided_at(agent, sc, (m.get("dora") or {}).get("ms", budget_ms))
        if old_agent is not None:
            t0 = time.perf_counter()
            try:
                plan, met = old_agent.plan(sc, search="greedy")
                m["v1_greedy"] = {"obj": met.objective(sc.qoe.objective), "ok": bool(met.qoe_ok),
                                  "feasible": bool(met.feasible), "ms": (time.perf_counter() - t0) * 1e3}
            except DoraError as e:      # the old agent's refusal (too many devices) is a result, recorded
                m["v1_greedy"] = {"error": f"{type(e).__name__}: {str(e)[:100]}"}
        rows.append({"scenario": sc.name, "devices": sc.cluster.n, "blocks": sc.profile.n_blocks, "m": m})
        if progress:
            print(f"\r{label}: {i + 1}/{len(scenarios)}", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    return rows


def large_scenarios(n: int, B: int, k: int):
    import numpy as np

    from dora_rl.envs.instance import Instance
    from dora_rl.synthetic import random_scenario

    out, i = [], 0
    while len(out) < k:
        sc = random_scenario(np.random.default_rng([LARGE_SEED, n, B, i]), max_devices=n, min_devices=n, n_blocks=B)
        sc.name = f"large_{n}x{B}_{i}"
        i += 1
        if Instance(sc, n).completable:
            out.append(sc)
    return out


def run(agent_path, n: int = 200, per_size: int = 10, timeout: float = 60.0, budget_ms: float = 100.0,
        old_agent_path=None, progress: bool = True, runs: int = TIMED_RUNS) -> dict:
    import torch

    from dora_rl.learning.agents import load_agent
    from dora_rl.learning.evaluation import held_out_scenarios

    torch.set_num_threads(1)
    agent = load_agent(agent_path)
    old = load_agent(old_agent_path) if old_agent_path else None
    t0 = time.time()
    held = held_out_scenarios(n)
    hrows = run_set(agent, held, ("oracle", "dora") + BASELINES, timeout, budget_ms, "held-out", old, progress,
                    runs=runs)
    out = {"agent": str(agent_path), "budget_ms": budget_ms, "targets": TARGETS, "timed_runs": runs,
           "heldout": {"n": len(hrows), "summary": summarize(hrows, "oracle"),
                       "duels": {"net_polish_at_budget vs fastest_polish_at_budget":
                                 duels(hrows, "net_polish_at_budget", "fastest_polish_at_budget"),
                                 f"{GUIDED} vs fastest_polish_at_budget":
                                 duels(hrows, GUIDED, "fastest_polish_at_budget"),
                                 f"{GUIDED} vs uniform_restart": duels(hrows, GUIDED, "uniform_restart"),
                                 "net_greedy vs v1_greedy": duels(hrows, "net_greedy", "v1_greedy")},
                       "rows": hrows}}
    large = {}
    for (nd, B) in SIZES:
        if per_size <= 0:
            break
        scs = large_scenarios(nd, B, per_size)
        rows = run_set(agent, scs, ("dora",) + BASELINES, timeout, budget_ms, f"{nd}x{B}", old, progress,
                       at_dora_time=True, runs=runs)
        s = summarize(rows, "best")
        large[f"{nd}x{B}"] = {"n": len(rows), "summary": s, "rows": rows, "duels": {
            "net_polish_at_budget vs fastest_polish_at_budget": duels(rows, "net_polish_at_budget",
                                                                     "fastest_polish_at_budget"),
            "net_polish_at_budget vs dora": duels(rows, "net_polish_at_budget", "dora"),
            "net_sample vs fastest_polish_at_budget": duels(rows, "net_sample", "fastest_polish_at_budget"),
            f"{GUIDED} vs fastest_polish_at_budget": duels(rows, GUIDED, "fastest_polish_at_budget"),
            f"{GUIDED} vs dora": duels(rows, GUIDED, "dora"),
            f"{AT_DORA} vs dora": duels(rows, AT_DORA, "dora"),
            f"{GUIDED} vs uniform_restart": duels(rows, GUIDED, "uniform_restart"),
            "net_greedy vs v1_greedy": duels(rows, "net_greedy", "v1_greedy")}}
    out["large"] = large
    out["seconds"] = round(time.time() - t0, 1)
    out["checks"] = checks(out)
    return out


def checks(out: dict) -> dict:
    s = out["heldout"]["summary"]["net_greedy"]
    c = {"heldout_net_compliance": s["compliance"], "heldout_net_geo_oracle": s["geo_ratio"],
         "heldout_compliance_met": (s["compliance"] or 0) >= TARGETS["heldout_compliance_min"],
         "heldout_geo_met": (s["geo_ratio"] or 9) <= TARGETS["heldout_geo_oracle_max"], "large": {}}
    for k, v in out["large"].items():
        ss = v["summary"]
        net, pf, dora = ss.get("net_greedy", {}), ss.get("fastest_polish", {}), ss.get("dora", {})
        du = v["duels"]
        # equal budgets: the fixed one against polish from the fastest device, dora's own time
        # against dora (the fixed one for results measured before session 33)
        eq = {"fastest_polish_at_budget": f"{GUIDED} vs fastest_polish_at_budget",
              "dora": f"{AT_DORA} vs dora" if f"{AT_DORA} vs dora" in du else f"{GUIDED} vs dora"}
        wl = {b: (du[k]["wins"], du[k]["losses"]) for b, k in eq.items()}
        c["large"][k] = {
            "compliance": net.get("compliance"), "geo_best": net.get("geo_ratio"),
            "compliance_met": (net.get("compliance") or 0) >= TARGETS["large_compliance_min"],
            "geo_met": (net.get("geo_ratio") or 9) <= TARGETS["large_geo_best_max"],
            **_time_checks(net, pf, dora, "median_ms"),
            "guided_vs_polish_met": wl["fastest_polish_at_budget"][0] > wl["fastest_polish_at_budget"][1],
            "guided_vs_dora_met": wl["dora"][0] > wl["dora"][1]}
        if "median_ms_first" in net:        # the same targets on each row's first timing alone (module docstring)
            c["large"][k]["single_timing"] = _time_checks(net, pf, dora, "median_ms_first")
    return c


def _time_checks(net: dict, pf: dict, dora: dict, key: str) -> dict:
    """The decision-time targets on the summaries' `key` (median_ms, or median_ms_first)."""
    t, p, d = net.get(key), pf.get(key), dora.get(key)
    return {"net_ms": t, "polish_fastest_ms": p, "dora_ms": d,
            "time_vs_polish_met": bool(p) and t <= p / 3,
            "time_vs_dora_met": (t <= d / 10) if d else "dora gave no plan"}


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--agent", required=True)
    ap.add_argument("--old-agent", default=None)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--per-size", type=int, default=10)
    ap.add_argument("--budget-ms", type=float, default=100.0)
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--runs", type=int, default=TIMED_RUNS, help="timings per instance of the decision-time rows")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "ablation.json"))
    a = ap.parse_args()
    res = run(a.agent, a.n, a.per_size, a.timeout, a.budget_ms, a.old_agent, runs=a.runs)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1, default=str) + "\n")
    print(json.dumps({"heldout": res["heldout"]["summary"], "duels": res["heldout"]["duels"],
                      "large": {k: {"summary": v["summary"], "duels": v["duels"]} for k, v in res["large"].items()},
                      "checks": res["checks"]}, indent=1, default=str))
