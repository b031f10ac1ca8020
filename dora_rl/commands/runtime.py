"""`dora run` (execute a plan on worker processes, emulating the cluster, and compare
with the cost model) and `dora worker` (one worker; joins via env vars)."""

from __future__ import annotations

from dora_rl.commands.common import console, fmt, print_json, table
from dora_rl.errors import PlanError


def add_commands(sub) -> None:
    p = sub.add_parser("run", help="execute a plan on torch workers (emulated cluster) and compare with the cost model",
                       description="Spawn one worker per device (one torch.distributed gloo group), run the plan, "
                                   "report measured latency/throughput/energy beside the cost model's prediction.")
    p.add_argument("scenario", help="preset name or scenario YAML")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--plan", help="plan JSON file")
    g.add_argument("--planner", default=None, help="planner name (default: dora)")
    p.add_argument("--requests", type=int, default=30, help="requests per phase (inference)")
    p.add_argument("--iterations", type=int, default=5, help="timed iterations (training)")
    p.add_argument("--rate", type=float, default=None, help="offered request rate (default: the scenario's, "
                                                            "capped at 0.8x predicted capacity)")
    p.add_argument("--slowdown", type=float, default=1.0,
                   help="divide every device's gflops by X (emulate on a CPU slower than the modelled devices; "
                        "the prediction uses the same scaled speeds)")
    p.add_argument("--no-emulate", action="store_true",
                   help="compute at this machine's real speed (no stretching to the modelled devices); transfers "
                        "are still paced to the links (for a `dora calibrate` scenario: prediction vs real execution)")
    p.add_argument("--network", choices=["pace", "netns"], default="pace",
                   help="how links and media are emulated: pace = in-process pacing calendar (default); netns = one "
                        "network namespace per device, veth pairs, kernel tc/htb shaping (root only; "
                        "see docs/runtime.md)")
    p.add_argument("--switch-to", default=None, metavar="PLANNER_OR_FILE",
                   help="switch to this plan half-way through (a planner name or a plan JSON)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds any single wait may take")
    p.add_argument("--adapter", default=None, help="run the adapter NAME on live workers (bandwidth follows the "
                                                      "scenario's dynamics trace; docs/runtime.md), or with "
                                                      "--simulate over a trace on the cost model (docs/adapter.md)")
    p.add_argument("--simulate", action="store_true", help="simulate the adapter instead of executing on workers")
    p.add_argument("--trace", default=None, help="bandwidth trace for --adapter (file, markov, markov:SEED; default: "
                                                 "the scenario's dynamics)")
    p.add_argument("--duration", type=float, default=None,
                   help="seconds to run the adapter (default: 120 simulated with --simulate, 30 live)")
    p.add_argument("--time-scale", type=float, default=10.0,
                   help="live adapter: replay the trace this many times faster than real time (default 10)")
    p.add_argument("--fail", action="append", default=[], metavar="DEVICE@SECONDS",
                   help="kill that device's worker after SECONDS (repeatable): detected, re-planned on the "
                        "survivors, resumed with every request answered once / no training update lost")
    p.add_argument("--out", default=None, help="output folder for the adapter's log and timeline "
                                               "(default runs/adapter, live: runs/live)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_run)

    w = sub.add_parser("worker", help="run one worker (MASTER_ADDR, MASTER_PORT, RANK>=1, WORLD_SIZE from the env)")
    w.add_argument("--device", required=True, help="the device this worker plays")
    w.add_argument("--scenario", default=None, help="check the device name against this scenario first")
    w.add_argument("--timeout", type=float, default=60.0)
    w.set_defaults(func=cmd_worker)


def _plan_for(scenario, what: str):
    from pathlib import Path

    from dora_rl.plan import Plan
    if what.endswith(".json") or Path(what).exists():
        return Plan.load(what)
    from dora_rl.planners import get_planner
    from dora_rl.cost import CostModel
    return get_planner(what).plan(scenario, CostModel(scenario))


def parse_fail(spec: str) -> tuple[str, float]:
    """--fail 'DEVICE@SECONDS' -> (device, seconds)."""
    dev, sep, t = str(spec).rpartition("@")
    try:
        sec = float(t)
    except ValueError:
        sec = -1.0
    if not sep or not dev or not sec >= 0:
        raise PlanError(f"--fail expects DEVICE@SECONDS (e.g. jetson@10), got {spec!r}")
    return dev, sec


def cmd_run(args) -> int:
    from dora_rl.runtime.measure import measure
    from dora_rl.scenario import load_scenario

    fails = [parse_fail(f) for f in args.fail]
    if args.adapter and not args.simulate:   # [live] the adapter on live workers
        return _run_live(args, fails)
    if fails:
        if args.simulate:
            raise PlanError("--fail kills live workers; it cannot be combined with --simulate")
        return _run_with_faults(args, fails)
    if args.simulate or args.adapter:
        if not (args.simulate and args.adapter):
            raise PlanError("--simulate needs --adapter NAME (the adapter to simulate over a bandwidth trace)")
        from dora_rl.runtime.adapter import run_simulation_cli
        res = run_simulation_cli(args.scenario, args.adapter, args.trace, args.duration or 120.0,
                                 out_dir=args.out or "runs/adapter",
                                 live=not args.json, console=console)
        if args.json:
            print_json(res)
        else:
            console.print(res["summary"])
            console.print(f"log: {res['log']}  timeline: {res['png']}")
        return 0
    for name in ("requests", "iterations"):
        if getattr(args, name) < 1:
            raise PlanError(f"--{name} must be >= 1")
    sc = load_scenario(args.scenario).slowed(args.slowdown)
    plan = _plan_for(sc, args.plan or args.planner or "dora")
    switch = _plan_for(sc, args.switch_to) if args.switch_to else None
    out = measure(sc, plan, requests=args.requests, iterations=args.iterations, emulate=not args.no_emulate,
                  rate=args.rate, timeout=args.timeout, switch_plan=switch, network=args.network, pace=True)
    out["slowdown"] = args.slowdown
    if args.json:
        print_json(out)
        return 0
    pr, me = out["predicted"], out["measured"]
    lat = me["latency_ms"]
    unit = "iteration" if sc.workload.training else "request"
    rows = [[f"latency per {unit} (ms)", pr["latency_ms"], lat["mean"], lat["p50"], lat["p95"]],
            [f"throughput ({out['unit']})", pr["throughput"], me.get("throughput", float("nan")), "", ""],
            [f"energy per {unit} (J)", pr["energy_j"], me["energy_j"], "", ""]]
    console.print(table(f"dora run {sc.name} ({'emulated' if out['emulated'] else 'real speed'}"
                        f"{', kernel-shaped network (netns)' if args.network == 'netns' else ''}"
                        f"{', slowdown ' + fmt(args.slowdown) if args.slowdown != 1 else ''})",
                        ["", "predicted", "measured (mean)", "p50", "p95"], rows))
    console.print(f"plan: {[(s['blocks'], s['devices']) for s in out['plan']['stages']]}, "
                  f"microbatches {out['plan']['microbatches']}; latency error (p50 vs predicted) "
                  f"{out['latency_error'] * 100:.1f}%")
    if me.get("switch"):
        console.print(f"plan switch: {me['switch']['total_s'] * 1e3:.1f} ms "
                      f"(drain {me['switch']['drain_s'] * 1e3:.1f} ms, moved blocks {me['switch']['moved_blocks']})")
    if me.get("saturated"):
        console.print("[yellow]emulation saturated[/yellow] (this CPU is slower than the modelled device) on: "
                      + ", ".join(f"{d} ({v['sections']} sections, +{v['excess_s'] * 1e3:.0f} ms)"
                                  for d, v in me["saturated"].items()) + "; try --slowdown")
    return 0


def _run_live(args, fails) -> int:   # [live]
    from dora_rl.runtime.live import run_live
    res = run_live(args.scenario, args.adapter, duration=args.duration or 30.0, slowdown=args.slowdown,
                   rate=args.rate, trace=args.trace, time_scale=args.time_scale, fail=fails,
                   out_dir=args.out or "runs/live", live=not args.json, console=console, timeout=args.timeout)
    if args.json:
        print_json(res["summary"])
        return 0
    s = res["summary"]
    console.print(f"{s['requests']} requests, answered exactly once: {s['answered_once']}; switches {s['switches']}; "
                  f"QoE-violating intervals {s['violation_frac']:.0%}; latency at device speed p50 "
                  f"{s['latency_ms']['p50']:.1f} ms p95 {s['latency_ms']['p95']:.1f} ms")
    for f in s["faults"]:
        console.print(f"fault: {', '.join(f['devices'])} lost, detected in "
                      + ", ".join(f"{v:.2f} s" for v in f["detected_s"].values())
                      + f", recovered in {f['recover_s']:.1f} s, {len(f.get('reissued', []))} request(s) re-issued")
    console.print(f"log: {res['log']}  timeline: {res['png']}")
    return 0


def _run_with_faults(args, fails) -> int:   # [faults] one plan, workers killed on purpose
    from dora_rl.runtime.faults import ResilientRuntime
    from dora_rl.scenario import load_scenario
    sc = load_scenario(args.scenario).slowed(args.slowdown)
    plan = _plan_for(sc, args.plan or args.planner or "dora")
    with ResilientRuntime(sc, timeout=args.timeout) as rt:
        rt.start(plan)
        for dev, at in fails:
            rt.fail_at(dev, at)
        if sc.workload.training:
            res = rt.train(args.iterations)
            out = {"iterations": args.iterations, "iter_ms": [t * 1e3 for t in res.iter_s]}
        else:
            res = rt.infer(args.requests, rate=args.rate)
            out = {"requests": res.n, "answered_once": sorted(res.answered) == list(range(res.n)),
                   "reissued": res.reissued, "duplicates_dropped": res.duplicates, "latency_ms": res.latency_ms}
        out["faults"] = [{k: v for k, v in f.items() if k != "plan"} | {"plan": [(s["blocks"], s["devices"]) for s in
                                                                                f["plan"]["stages"]]}
                         for f in rt.faults]
    print_json(out) if args.json else console.print(out)
    return 0


def cmd_worker(args) -> int:
    import os
    import signal

    from dora_rl.runtime.worker import run_worker
    signal.signal(signal.SIGINT, lambda *_: os._exit(130))
    return run_worker(args.device, args.timeout, args.scenario)
