"""`dora simulate SCENARIO PLAN.json`: the discrete-event simulator of a plan under its
schedule (the plan's own, FIFO, or the scheduler's), beside the analytic prediction."""

from __future__ import annotations

from dora_rl.commands.basic import print_plan
from dora_rl.commands.common import console, print_json, table, write_output


def add_commands(sub) -> None:
    p = sub.add_parser("simulate", help="simulate a plan event by event (contention, 1F1B, all-reduce) under a "
                                        "network schedule")
    p.add_argument("scenario", help="preset name or scenario YAML path")
    p.add_argument("plan", help="plan JSON file (its optional `schedule` section is used unless --schedule is given)")
    p.add_argument("--schedule", choices=("fifo", "auto"), default=None,
                   help="fifo: no priorities, one all-reduce after the drain; auto: the scheduler searches "
                        "micro-batches, priorities, buckets and warm-up on the simulator (default: the plan's own "
                        "schedule, FIFO if it has none)")
    p.add_argument("--json", action="store_true", help="print {simulated, analytic, plan, ...} as JSON")
    p.add_argument("--timeline", metavar="FILE.png", help="draw the per-resource timeline (devices and media)")
    p.add_argument("--out", metavar="PLAN.json", help="write the plan with the schedule it used")
    p.set_defaults(func=cmd_simulate)


def cmd_simulate(args) -> int:
    from dora_rl.cost import CostModel
    from dora_rl.plan import Plan
    from dora_rl.scenario import load_scenario
    from dora_rl.schedule import FIFO
    from dora_rl.sim import schedule_plan, simulate

    scen = load_scenario(args.scenario)
    cm = CostModel(scen)
    plan = Plan.load(args.plan)
    fifo = None
    if args.schedule == "auto":
        s = schedule_plan(cm, plan)
        plan, fifo = s.plan, s.fifo
        res = simulate(cm, plan, timeline=bool(args.timeline), validate=False)
    else:
        sched = FIFO if args.schedule == "fifo" else plan.schedule
        res = simulate(cm, plan, sched, timeline=bool(args.timeline))
    if res.schedule is not plan.schedule:
        import dataclasses

        plan = dataclasses.replace(plan, schedule=res.schedule)
    analytic = cm.evaluate(plan, validate=False)
    if args.json:
        out = {"simulated": res.to_dict(), "plan": plan.to_dict(),
               "analytic": {"latency_ms": analytic.latency_ms, "throughput": analytic.throughput,
                            "energy_j": analytic.energy_j}}
        if fifo is not None:
            out["fifo"] = fifo.to_dict()
        print_json(out)
    else:
        _print(scen, plan, res, analytic, fifo)
    if args.out:
        write_output(args.out, plan.save, "plan")
        if not args.json:
            console.print(f"plan with its schedule written to {args.out}")
    if args.timeline:
        write_output(args.timeline, lambda p: plot_timeline(scen, res, p), "timeline")
        if not args.json:
            console.print(f"timeline written to {args.timeline}")
    return 0


def _print(scen, plan, res, analytic, fifo) -> None:
    print_plan(scen, plan)
    what = "iteration" if res.training else "request"
    unit = res.to_dict()["throughput_unit"]
    rows = [["latency", f"{res.latency_ms:.2f} ms / {what}", f"{analytic.latency_ms:.2f}"],
            ["throughput", f"{res.throughput:.4g} {unit}", f"{analytic.throughput:.4g}"],
            ["energy", f"{res.energy_j:.4g} J / {what}", f"{analytic.energy_j:.4g}"]]
    if fifo is not None:
        rows.insert(0, ["latency under FIFO", f"{fifo.latency_ms:.2f} ms / {what}", ""])
    console.print(table("simulated", ["", "simulator", "analytic"], rows, justify_right_from=99))
    s = res.schedule
    prio = "; ".join(f"{m}: {' > '.join(c)}" for m, c in s.priorities) or "none (fair sharing)"
    console.print(table("schedule", ["", ""], [["micro-batches", str(plan.microbatches)], ["priorities", prio],
                                                ["all-reduce", f"{s.buckets} bucket(s), start {s.allreduce_start}"],
                                                ["extra warm-up", str(s.extra_warmup)]], justify_right_from=99))


def plot_timeline(scen, res, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(dict.fromkeys(r for r, *_ in res.timeline))
    colour = {"F": "C0", "B": "C1", "act": "C2", "grad": "C3", "ar": "C4"}
    fig, ax = plt.subplots(figsize=(9, 0.5 * len(rows) + 1.5))
    for res_name, t0, t1, label in res.timeline:
        kind = label.rstrip("0123456789.")
        ax.broken_barh([(t0 * 1e3, max(t1 - t0, 0) * 1e3)], (rows.index(res_name) - 0.4, 0.8),
                       color=colour.get(kind, "grey"), alpha=0.6, edgecolor="black", linewidth=0.3)
    ax.set_yticks(range(len(rows)), rows)
    ax.invert_yaxis()
    ax.set_xlabel("time (ms)")
    ax.set_title(f"{scen.name}: simulated timeline ({res.latency_ms:.1f} ms; blue forward, orange backward, "
                 "green activations, red gradients, purple all-reduce)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
