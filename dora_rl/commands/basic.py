"""`dora profile MODEL [--measure]` and `dora score SCENARIO PLAN.json`."""

from __future__ import annotations

from dora_rl.commands.common import console, print_json, table
from dora_rl.errors import ProfileError


def add_commands(sub) -> None:
    p = sub.add_parser("profile", help="profile a zoo model (or a profile JSON) block by block")
    p.add_argument("model", help="zoo name (e.g. resnet50) or path to a profile JSON")
    p.add_argument("--json", action="store_true",
                   help="print the profile JSON (the format `model: {profile: FILE}` reads)")
    p.add_argument("--measure", action="store_true",
                   help="time every block on this machine (median of repeats after warm-up) and write a device "
                        "profile (docs/formats.md) that a scenario device names with `profile: FILE`")
    p.add_argument("--threads", type=int, default=1, help="--measure: torch threads (default 1)")
    p.add_argument("--training", action="store_true", help="--measure: also time forward with autograd and backward")
    p.add_argument("--batch", type=int, action="append", default=None, metavar="N",
                   help="--measure: batch size to time at (repeatable; default 1 and 4; the cost model fits a line)")
    p.add_argument("--repeats", type=int, default=7, help="--measure: timed calls per block (median)")
    p.add_argument("--out", default=None, help="--measure: write the device profile here (default: print it)")
    p.set_defaults(func=cmd_profile)

    s = sub.add_parser("score", help="predict latency, throughput, energy, memory and QoE of a plan")
    s.add_argument("scenario", help="preset name (see envs/) or scenario YAML path")
    s.add_argument("plan", help="plan JSON file")
    s.add_argument("--json", action="store_true", help="print the metrics as JSON")
    s.set_defaults(func=cmd_score)


def cmd_profile(args) -> int:
    from dora_rl.profile import get_profile

    if args.measure:
        return _measure(args)
    if args.out or args.training:
        raise ProfileError("--out and --training go with --measure (time the blocks on this machine)")
    prof = get_profile(args.model)
    if args.json:
        print_json(prof.to_dict())
        return 0
    rows = [[i, b.name, b.flops / 2e6, b.param_bytes / 1e6, b.out_bytes / 1e3] for i, b in enumerate(prof.blocks)]
    console.print(table(f"{prof.name}: {prof.n_blocks} blocks, {prof.total_flops / 2e9:.3f} GMACs, "
                        f"{prof.total_params / 1e6:.1f} MB params, input {prof.input_bytes / 1e3:.1f} kB",
                        ["#", "block", "MMACs", "params MB", "out kB"], rows, justify_right_from=2))
    return 0


def _measure(args) -> int:
    from dora_rl.profile.zoo import MODELS, model_names

    if args.model not in MODELS:
        raise ProfileError(f"--measure times a zoo model; {args.model!r} is not one ({', '.join(model_names())})")
    from dora_rl.profile.timing import measure_profile

    dp = measure_profile(args.model, batch_sizes=args.batch or (1, 4), training=args.training,
                         threads=args.threads, repeats=args.repeats)
    if args.out:
        dp.save(args.out)
    if args.json or not args.out:
        print_json(dp.to_dict())
        return 0
    fixed, per = dp.fit()
    rows = [[i, b, fixed[i] * 1e3, per[i] * 1e3] for i, b in enumerate(dp.blocks)]
    console.print(table(f"{dp.model} on this machine ({dp.threads} thread(s)): forward = fixed + n x per-sample",
                        ["#", "block", "fixed ms", "per sample ms"], rows, justify_right_from=2))
    console.print(f"device profile: {args.out}")
    return 0


def cmd_score(args) -> int:
    from dora_rl.cost import CostModel
    from dora_rl.plan import Plan
    from dora_rl.scenario import load_scenario

    scen = load_scenario(args.scenario)
    plan = Plan.load(args.plan)
    metrics = CostModel(scen).evaluate(plan)
    if args.json:
        print_json(metrics.to_dict())
        return 0
    print_plan(scen, plan)
    print_metrics(scen, metrics)
    return 0


def schedule_text(schedule) -> str:
    """One line for a plan's network schedule ('FIFO' for none; docs/formats.md, "Schedule")."""
    if schedule is None or schedule.is_fifo:
        return "FIFO"
    prio = "; ".join(f"{m}: {' > '.join(c)}" for m, c in schedule.priorities) or "fair sharing"
    return (f"priorities {prio}, all-reduce {schedule.buckets} bucket(s) from {schedule.allreduce_start}, "
            f"extra warm-up {schedule.extra_warmup}")


def print_plan(scen, plan, title: str | None = None) -> None:
    rows = [[i, f"[{s.start}, {s.end})", ", ".join(s.devices), ", ".join(f"{w:.3f}" for w in s.shares)]
            for i, s in enumerate(plan.stages)]
    console.print(table(title or f"plan on {scen.name} ({plan.microbatches} micro-batches)",
                        ["stage", "blocks", "devices", "shares"], rows, justify_right_from=99))
    if plan.schedule is not None:
        console.print(f"network schedule: {schedule_text(plan.schedule)}")


def print_metrics(scen, m) -> None:
    d = m.to_dict()
    unit = d["throughput_unit"]
    what = "iteration" if m.training else "request"
    rows = [["latency", f"{m.latency_ms:.2f} ms / {what}"],
            ["throughput", f"{m.throughput:.3g} {unit}"],
            ["energy", f"{m.energy_j:.4g} J / {what}"],
            ["bottleneck", f"{d['bottleneck']} ({d['bottleneck_ms']:.2f} ms per micro-batch)"],
            ["fits in memory", "yes" if m.feasible else "NO"],
            ["QoE met", "yes" if m.qoe_ok else "NO"]]
    console.print(table("metrics", ["", ""], rows, justify_right_from=99))
    dev_rows = []
    for name in d["memory_bytes"]:
        dev_rows.append([name, d["busy_frac"][name] * 100, d["avg_power_w"][name], d["memory_bytes"][name] / 1e9,
                         d["battery_hours"].get(name, float("nan"))])
    console.print(table("devices", ["device", "busy %", "avg W", "memory GB", "battery h"], dev_rows))
    for v in m.violations:
        console.print(f"[red]violation:[/red] {v}")
