"""`dora calibrate MODEL --workers N`: measure this host and write a scenario of N worker
processes with measured block times (then `dora run DIR/scenario.yaml --no-emulate`)."""

from __future__ import annotations

import sys

from dora_rl.commands.common import console, print_json, table


def add_commands(sub) -> None:
    p = sub.add_parser("calibrate", help="measure this host: a scenario of N local workers with measured block times",
                       description="Time every block of MODEL on this machine once per worker (one thread, pinned to "
                                   "its core where possible) and write DIR/scenario.yaml (devices = the workers, "
                                   "profile: their timings; links at --mbps, paced by the runtime). Then "
                                   "`dora run DIR/scenario.yaml --planner dora --no-emulate` compares prediction "
                                   "and real execution.")
    p.add_argument("model", help="zoo model name (e.g. resnet18)")
    p.add_argument("--workers", type=int, required=True, help="worker processes (devices)")
    p.add_argument("--training", action="store_true", help="a training workload (also times backward)")
    p.add_argument("--mbps", type=float, default=1000.0, help="rate of every link between workers (default 1000)")
    p.add_argument("--batch", type=int, default=None, help="samples per request / global batch (default 4 / 8)")
    p.add_argument("--microbatches", type=int, default=None, help="micro-batches (default 2 / 4)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per block (median)")
    p.add_argument("--out", required=True, help="output folder (scenario.yaml, w<i>.json)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_calibrate)


def cmd_calibrate(args) -> int:
    from dora_rl.runtime.calibrate import calibrate

    res = calibrate(args.model, args.workers, args.out, training=args.training, mbps=args.mbps,
                    batch=args.batch, microbatches=args.microbatches, repeats=args.repeats)
    for w in res["warnings"]:
        sys.stderr.write(f"dora: warning: {w}\n")
    if args.json:
        print_json(res)
        return 0
    rows = [[f"w{i}", str(res["cores"][i]) if res["pinned"] else "-", p] for i, p in enumerate(res["profiles"])]
    console.print(table(f"calibrated {args.model} on this host", ["worker", "core", "profile"], rows,
                        justify_right_from=99))
    console.print(f"scenario: {res['scenario']}\nnext: dora run {res['scenario']} --planner dora --no-emulate")
    return 0
