"""`dora plan SCENARIO --planner NAME` and `dora compare SCENARIO`."""

from __future__ import annotations

import math

from dora_rl.commands.basic import print_metrics, print_plan, schedule_text
from dora_rl.commands.common import console, print_json, table, write_output
from dora_rl.errors import AgentError, NoFeasiblePlan, PlannerError
from dora_rl.learning import SEARCHES
from dora_rl.schedule import Schedule


def add_commands(sub) -> None:
    p = sub.add_parser("plan", help="plan a scenario with one planner; print the plan and its metrics")
    p.add_argument("scenario", help="preset name or scenario YAML path")
    p.add_argument("--planner", default="dora", help="planner name (see `dora compare`); default dora")
    p.add_argument("--json", action="store_true", help="print {plan, metrics, seconds} as JSON")
    p.add_argument("--out", help="write the plan JSON here (the format `dora score` and `dora run` read)")
    p.add_argument("--seed", type=int, default=None, help="seed for planners that sample (random, ppo)")
    p.add_argument("--agent", default=None,
                   help="ppo: agent folder or env id under trained_agents/ (default: the shipped generalist)")
    p.add_argument("--samples", type=int, default=None,
                   help="ppo: sample K plans and keep the best under the cost model")
    p.add_argument("--search", choices=SEARCHES, default=None,
                   help="ppo: polish (default: the greedy plan + local polish on the cost model), greedy (the "
                        "network alone), rollout (rollout search + polish), sample, beam or restart (guided by the "
                        "policy's probabilities; restart polishes sampled plans until the budget; stage agents)")
    p.add_argument("--budget-ms", type=float, default=None, dest="budget_ms",
                   help="ppo: the search's time budget in ms (> 0; the best plan found by then is kept)")
    p.set_defaults(func=cmd_plan)

    c = sub.add_parser("compare", help="run every planner that applies and compare them in one table")
    c.add_argument("scenario", help="preset name or scenario YAML path")
    c.add_argument("--planners", help="comma-separated subset (default: all)")
    c.add_argument("--json", action="store_true", help="print the rows as JSON")
    c.add_argument("--plot", metavar="FILE.png", help="draw the dora Pareto front with every planner as a point")
    c.set_defaults(func=cmd_compare)


def _options(args) -> dict:
    """Planner options from the command line; a planner that does not take one says so."""
    opts = {k: getattr(args, k) for k in ("seed", "agent", "samples", "search", "budget_ms")
            if getattr(args, k, None) is not None}
    if args.planner != "ppo":
        for k in ("agent", "samples", "search", "budget_ms"):
            if k in opts:
                raise PlannerError(f"--{k.replace('_', '-')} is an option of the ppo planner, not of {args.planner!r}")
        if args.planner != "random":
            opts.pop("seed", None)
    return opts


def cmd_plan(args) -> int:
    from dora_rl.planners import run_planner
    from dora_rl.scenario import load_scenario

    if getattr(args, "budget_ms", None) is not None and not args.budget_ms > 0:
        raise PlannerError(f"--budget-ms must be > 0, got {args.budget_ms:g}")
    scen = load_scenario(args.scenario)
    res = run_planner(args.planner, scen, **_options(args))
    if args.json:
        print_json({"planner": args.planner, "plan": res.plan.to_dict(), "metrics": res.metrics.to_dict(),
                    "planning_s": res.seconds, **res.exactness()})
    else:
        print_plan(scen, res.plan, f"{args.planner} plan on {scen.name} ({res.plan.microbatches} micro-batches, "
                                    f"planned in {res.seconds * 1e3:.1f} ms)")
        print_metrics(scen, res.metrics)
        console.print(exactness_line(res, scen.qoe.objective))
    if args.out:
        write_output(args.out, res.plan.save, "plan")
        if not args.json:
            console.print(f"plan written to {args.out}")
    return 0


def exactness_line(res, objective: str) -> str:
    """One line: exact over the plan space, or approximate with the lower bound and gap."""
    if not res.approximate:
        return "exact: optimal over the documented plan space (docs/planners.md)"
    unit = "ms" if objective == "latency" else "J"
    lb = "-" if res.lower_bound is None else f"{res.lower_bound:.4g} {unit}"
    gap = "-" if res.gap is None else f"{100 * res.gap:.1f}%"
    return (f"approximate: not guaranteed optimal over the plan space; {objective} lower bound {lb}, "
            f"so at most {gap} above the optimum")


def _violated(m) -> str:
    """The targets a plan misses, by name ('latency, battery'), or ''."""
    names = []
    for v in m.violations:
        what = v.split(":")[0]
        if what not in names:
            names.append(what)
    return ", ".join(names)


def compare(scen, names=None) -> dict:
    """Run planners on one scenario; rows with metrics, planning time, ratios, errors."""
    from dora_rl.cost import CostModel
    from dora_rl.planners import lower_bounds, planner_names, run_planner
    from dora_rl.sim import simulate

    cost = CostModel(scen)
    obj = scen.qoe.objective
    rows = []
    runs = [(n, n, {}) for n in (names or planner_names())]
    if "dora" in (names or planner_names()):   # Dora's partitioner -> network scheduler (docs/simulator.md)
        runs.append(("dora+schedule", "dora", {"schedule": True}))
    for label, name, opts in runs:
        row = {"planner": label}
        try:
            res = run_planner(name, scen, cost, **opts)
        except NoFeasiblePlan as e:
            row.update(status="no feasible plan", error=str(e))
        except (PlannerError, AgentError) as e:
            row.update(status="skipped", error=str(e))
        else:
            m = res.metrics
            row.update(status="ok", plan=res.plan.to_dict(), metrics=m.to_dict(), planning_s=res.seconds,
                       latency_ms=m.latency_ms, throughput=m.throughput, energy_j=m.energy_j,
                       qoe_ok=m.qoe_ok, violated=_violated(m), violations=list(m.violations),
                       objective=m.objective(obj), **res.exactness())
            sim = simulate(cost, res.plan, validate=False)     # under the plan's schedule, FIFO if none
            row.update(sim_latency_ms=sim.latency_ms, sim_energy_j=sim.energy_j,
                       sim_objective=sim.latency_ms if obj == "latency" else sim.energy_j)
        rows.append(row)
    ref = {r["planner"]: r.get("objective") for r in rows}
    for r in rows:
        for other in ("dora", "oracle"):
            if r.get("objective") is not None and ref.get(other):
                r[f"vs_{other}"] = r["objective"] / ref[other]
    return {"scenario": scen.name, "objective": obj, "rows": rows, "lower_bounds": lower_bounds(scen, cost)}


def cmd_compare(args) -> int:
    from dora_rl.scenario import load_scenario

    scen = load_scenario(args.scenario)
    names = [n.strip() for n in args.planners.split(",")] if args.planners else None
    if names:
        from dora_rl.planners import get_planner

        for n in names:
            get_planner(n)  # unknown names fail before any work
    with console.status(f"planning {scen.name} with every planner..."):
        out = compare(scen, names)
    if args.json:
        print_json(out)
        if args.plot:
            write_output(args.plot, lambda p: plot_compare(scen, out, p), "plot")
        return 0
    unit = "samples/s" if scen.workload.training else "req/s"
    what = "iteration" if scen.workload.training else "request"
    cols = ["planner", "latency ms", unit, "energy J", "QoE", "exact", "gap ≤", "plan ms", "×dora", "×oracle",
            "stages", "simulated"]
    rows = []
    for r in out["rows"]:
        if r["status"] != "ok":
            rows.append([r["planner"], "-", "-", "-", "-", "-", "-", "-", "-", "-", r["status"], "-"])
            continue
        qoe = "ok" if r["qoe_ok"] else f"misses {r['violated'] or 'memory'}"
        gap = "-" if r["gap"] is None else f"{100 * r['gap']:.0f}%"
        rows.append([r["planner"], r["latency_ms"], r["throughput"], r["energy_j"], qoe,
                     "no" if r["approximate"] else "yes", gap,
                     r["planning_s"] * 1e3, r.get("vs_dora", math.nan), r.get("vs_oracle", math.nan),
                     len(r["plan"]["stages"]), r["sim_objective"]])
    console.print(table(f"{scen.name}: per {what}, objective = {out['objective']} "
                        "(×ref = objective / ref's; lower is better; exact = optimal over the plan space, "
                        "else gap ≤ objective / lower bound - 1; simulated = the objective on the "
                        "discrete-event simulator, under the plan's schedule; dora+schedule: dora's candidates "
                        "refined by the network scheduler)", cols, rows))
    lb = out["lower_bounds"]
    console.print("lower bounds: " + ", ".join(f"{k} = {v:.4g}" for k, v in lb.items()))
    for r in out["rows"]:
        if r["status"] == "ok" and r["plan"].get("schedule") is not None:
            console.print(f"{r['planner']}: {r['plan']['microbatches']} micro-batches, network schedule "
                          f"{schedule_text(Schedule.from_dict(r['plan']['schedule']))}")
    for r in out["rows"]:
        if r["status"] != "ok":
            console.print(f"[dim]{r['planner']}: {r['error']}[/dim]")
    if args.plot:
        write_output(args.plot, lambda p: plot_compare(scen, out, p), "plot")
        console.print(f"plot written to {args.plot}")
    return 0


def plot_compare(scen, out: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dora_rl.planners import pareto

    fig, ax = plt.subplots(figsize=(7, 4.5))
    try:
        front = sorted((m.latency_ms, m.energy_j) for _, m in pareto(scen))
    except NoFeasiblePlan:
        front = []
    if front:
        xs, ys = zip(*front)
        ax.step(xs, ys, where="post", color="C0", alpha=0.6)
        ax.plot(xs, ys, "o", color="C0", label="dora Pareto set (QoE-compliant)")
    for i, r in enumerate(r for r in out["rows"] if r["status"] == "ok"):
        mk = "o" if r["qoe_ok"] else "x"
        style = {"markerfacecolor": "none", "markersize": 15, "markeredgewidth": 2} if r["planner"] == "oracle" \
            else {"markersize": 9}  # the oracle as a ring, so a planner on the same point stays visible
        ax.plot(r["latency_ms"], r["energy_j"], mk, color=f"C{(i % 9) + 1}", label=r["planner"], **style)
    if scen.qoe.latency_slo_ms:
        ax.axvline(scen.qoe.latency_slo_ms, color="red", ls="--", lw=1, label="latency SLO")
    what = "iteration" if scen.workload.training else "request"
    ax.set_xlabel(f"latency per {what} (ms)")
    ax.set_ylabel(f"energy per {what} (J)")
    ax.set_title(f"{scen.name}: planners vs the Pareto front (x = violates QoE)")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
