"""`dora run` (execute a plan on worker processes, emulating the cluster, and compare
with the cost model) and `dora worker` (one worker; joins via env vars)."""

from __future__ import annotations

from rich.console import Console

from dora_rl.commands.common import console, fmt, print_json, table
from dora_rl.errors import PlanError, RuntimeFault

err_console = Console(stderr=True, soft_wrap=True)


def add_commands(sub) -> None:
    p = sub.add_parser("run", help="execute a plan on torch workers (emulated cluster) and compare with the cost model",
                       description="Spawn one worker per device (one torch.distributed gloo group), run the plan, "
                                   "report measured latency/throughput/energy beside the cost model's prediction.")
    p.add_argument("scenario", help="preset name or scenario YAML")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--plan", help="plan JSON file")
    g.add_argument("--planner", default=None, help="planner name (default: dora)")
    p.add_argument("--schedule", choices=("fifo", "auto"), default=None,
                   help="network schedule to execute: fifo = none (first come, first served; one all-reduce after "
                        "the drain); auto = the scheduler's for this plan (docs/simulator.md); default: the plan's "
                        "own `schedule` section, FIFO if it has none")
    p.add_argument("--requests", type=int, default=30, help="requests per phase (inference)")
    p.add_argument("--iterations", type=int, default=5, help="timed iterations (training)")
    p.add_argument("--rate", type=float, default=None,
                   help="offered request rate in device time (default: the scenario's, "
                        "capped at 0.8x predicted capacity)")
    p.add_argument("--slowdown", default="auto", metavar="auto|X",
                   help="time dilation: run X times slower in every respect (device speeds and link rates / X; "
                        "link latencies, the SLO, the request period and trace time x X) so this CPU keeps up; "
                        "results are reported in device time and dilated time. auto (default): the smallest X at "
                        "which no worker saturates, from this machine's measured block times (cached)")
    p.add_argument("--strict", action="store_true", help="refuse a saturated run (a worker slower than its "
                                                         "modelled device): exit 2 instead of a warning")
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
                   help="seconds to run the adapter (default: 120 simulated with --simulate, 30 live: run seconds, "
                        "i.e. dilated; the device time covered is duration / slowdown)")
    p.add_argument("--device-seconds", type=float, default=None, metavar="S",
                   help="live adapter: run at least S seconds of device time (the run time grows with the "
                        "dilation: max(--duration, S x slowdown); e.g. 0.5 holds ~7 requests on smart_home)")
    p.add_argument("--time-scale", type=float, default=10.0,
                   help="live adapter: trace seconds per second of device time (trace time is dilated with the "
                        "rest: run time x time-scale / slowdown; default 10)")
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
    from dora_rl.cost import CostModel
    from dora_rl.planners import get_planner
    return get_planner(what).plan(scenario, CostModel(scenario))


def with_schedule(scenario, plan, how: str | None):
    """`plan` with the schedule `--schedule` asks for (None: its own)."""
    import dataclasses
    if how == "fifo":
        return dataclasses.replace(plan, schedule=None)
    if how == "auto":
        from dora_rl.cost import CostModel
        from dora_rl.sim import schedule_plan
        return schedule_plan(CostModel(scenario), plan).plan
    return plan


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
    from dora_rl.runtime.dilation import parse_slowdown
    from dora_rl.runtime.measure import measure
    from dora_rl.scenario import load_scenario
    fails = [parse_fail(f) for f in args.fail]
    slowdown = parse_slowdown(args.slowdown)
    if args.duration is not None and not args.duration > 0:
        raise PlanError(f"--duration must be a positive number of seconds, got {args.duration:g}")
    if args.device_seconds is not None and not args.device_seconds > 0:
        raise PlanError(f"--device-seconds must be a positive number of seconds, got {args.device_seconds:g}")
    if args.adapter and not args.simulate:   # [live] the adapter on live workers
        return _run_live(args, fails, slowdown)
    if fails:
        if args.simulate:
            raise PlanError("--fail kills live workers; it cannot be combined with --simulate")
        return _run_with_faults(args, fails, slowdown)
    if args.simulate or args.adapter:
        if not (args.simulate and args.adapter):
            raise PlanError("--simulate needs --adapter NAME (the adapter to simulate over a bandwidth trace)")
        from dora_rl.adapter import run_simulation_cli
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
    base = load_scenario(args.scenario)
    plan = with_schedule(base, _plan_for(base, args.plan or args.planner or "dora"), args.schedule)
    switch = _plan_for(base, args.switch_to) if args.switch_to else None
    dil = _dilation(args, base, plan, 1.0 if args.no_emulate and slowdown == "auto" else slowdown, switch)
    X = dil.factor
    sc = base.dilated(X)
    out = measure(sc, plan, requests=args.requests, iterations=args.iterations, emulate=not args.no_emulate,
                  rate=args.rate / X if args.rate else None, timeout=args.timeout, switch_plan=switch,
                  network=args.network, pace=True)
    out["slowdown"] = X
    out["dilation"] = dil.to_dict()
    out["device_time"] = device_time(out, X)
    _saturation(args, out, out["measured"].get("saturated") or {})
    if args.json:
        print_json(out)
        return _strict(args, out)
    pr, me = out["predicted"], out["measured"]
    lat = me["latency_ms"]
    unit = "iteration" if sc.workload.training else "request"
    rows = [[f"latency per {unit} (ms)", pr["latency_ms"], lat["mean"], lat["p50"], lat["p95"]],
            [f"throughput ({out['unit']})", pr["throughput"], me.get("throughput", float("nan")), "", ""],
            [f"energy per {unit} (J)", pr["energy_j"], me["energy_j"], "", ""]]
    dt = out["device_time"]
    rows += [[f"latency per {unit} (ms), device time", dt["predicted_latency_ms"], dt["latency_ms"]["mean"],
              dt["latency_ms"]["p50"], dt["latency_ms"]["p95"]],
             [f"throughput ({out['unit']}), device time", dt["predicted_throughput"], dt.get("throughput", ""), "",
              ""]] if X != 1 else []
    console.print(table(f"dora run {sc.name} ({'emulated' if out['emulated'] else 'real speed'}"
                        f"{', kernel-shaped network (netns)' if args.network == 'netns' else ''}"
                        f", time dilated {fmt(X)}x{' (auto)' if dil.auto else ''}: first rows in dilated time)",
                        ["", "predicted", "measured (mean)", "p50", "p95"], rows))
    console.print(f"plan: {[(s['blocks'], s['devices']) for s in out['plan']['stages']]}, "
                  f"microbatches {out['plan']['microbatches']}, schedule "
                  f"{out['plan'].get('schedule') or 'FIFO'}; latency error (p50 vs predicted) "
                  f"{out['latency_error'] * 100:.1f}%")
    if me.get("switch"):
        console.print(f"plan switch: {me['switch']['total_s'] * 1e3:.1f} ms "
                      f"(drain {me['switch']['drain_s'] * 1e3:.1f} ms, moved blocks {me['switch']['moved_blocks']})")
    return _strict(args, out)


def _run_live(args, fails, slowdown) -> int:   # [live]
    from dora_rl.runtime.live import run_live
    res = run_live(args.scenario, args.adapter, duration=args.duration or 30.0, slowdown=slowdown,
                   rate=args.rate, trace=args.trace, time_scale=args.time_scale, fail=fails,
                   out_dir=args.out or "runs/live", live=not args.json, console=console, timeout=args.timeout,
                   device_s=args.device_seconds)
    s = res["summary"]
    _saturation(args, s, s.get("saturated") or {})
    if args.json:
        print_json(s)
        return _strict(args, s)
    console.print(f"time dilated {fmt(s['slowdown'])}x: {res['summary']['device_time_s']:.3g} s of device time; "
                  f"{s['requests']} requests, answered exactly once: {s['answered_once']}; switches {s['switches']}; "
                  f"QoE-violating intervals {s['violation_frac']:.0%}; latency at device speed p50 "
                  f"{s['latency_ms']['p50']:.1f} ms p95 {s['latency_ms']['p95']:.1f} ms")
    for f in s["faults"]:
        console.print(f"fault: {', '.join(f['devices'])} lost, detected in "
                      + ", ".join(f"{v:.2f} s" for v in f["detected_s"].values())
                      + f", recovered in {f['recover_s']:.1f} s, {len(f.get('reissued', []))} request(s) re-issued")
    console.print(f"log: {res['log']}  timeline: {res['png']}")
    return _strict(args, s)


def _run_with_faults(args, fails, slowdown) -> int:   # [faults] one plan, workers killed on purpose
    from dora_rl.runtime.faults import ResilientRuntime
    from dora_rl.scenario import load_scenario
    base = load_scenario(args.scenario)
    plan = _plan_for(base, args.plan or args.planner or "dora")
    X = _dilation(args, base, plan, slowdown).factor
    sc = base.dilated(X)
    with ResilientRuntime(sc, timeout=args.timeout, hb_timeout=max(5.0, min(30.0, 0.1 * X))) as rt:
        rt.start(plan)
        for dev, at in fails:
            rt.fail_at(dev, at)
        if sc.workload.training:
            res = rt.train(args.iterations)
            out = {"iterations": args.iterations, "iter_ms": [t * 1e3 for t in res.iter_s]}
        else:
            res = rt.infer(args.requests, rate=args.rate / X if args.rate else None)
            out = {"requests": res.n, "answered_once": sorted(res.answered) == list(range(res.n)),
                   "reissued": res.reissued, "duplicates_dropped": res.duplicates, "latency_ms": res.latency_ms,
                   "latency_ms_device": {k: v / X for k, v in res.latency_ms.items()}}
        out["faults"] = [{k: v for k, v in f.items() if k != "plan"} | {"plan": [(s["blocks"], s["devices"]) for s in
                                                                                f["plan"]["stages"]]}
                         for f in rt.faults]
        out["slowdown"] = X
    print_json(out) if args.json else console.print(out)
    return 0


def _dilation(args, base, plan, slowdown, switch=None):
    """The run's dilation (dilation.choose; with a --switch-to plan, the larger of the
    two plans'), announced on stderr; --strict refuses a factor at which a worker is
    predicted to saturate."""
    from dora_rl.runtime.dilation import choose
    dil = choose(base, plan, slowdown=slowdown, rate=args.rate, timeout=args.timeout, announce=err_console.print)
    if switch is not None:
        other = choose(base, switch, slowdown=slowdown, rate=args.rate, timeout=args.timeout,
                       announce=err_console.print)
        dil = other if other.factor > dil.factor else dil
    why = (f" (auto: worst worker {max(dil.ratio, key=dil.ratio.get)} computes "
           f"{max(dil.ratio.values()):.3g}x slower here than on its device; contention {dil.contention:.2g}x on "
           f"{dil.cores} cores; headroom {dil.headroom:g}x)" if dil.auto and dil.ratio else "")
    err_console.print(f"time dilation {fmt(dil.factor)}x{why}")
    if dil.saturated:
        msg = (f"at --slowdown {fmt(dil.factor)} worker(s) "
               + ", ".join(f"{d} (needs {x:.3g})" for d, x in dil.saturated.items())
               + " are predicted to saturate; use --slowdown auto")
        if getattr(args, "strict", False):
            raise RuntimeFault(f"--strict: {msg}")
        err_console.print(f"[yellow]warning:[/yellow] {msg}")
    return dil


def device_time(out: dict, X: float) -> dict:
    """`measure`'s latency and throughput converted to device time (dilated / X)."""
    pr, me = out["predicted"], out["measured"]
    d = {"predicted_latency_ms": pr["latency_ms"] / X, "predicted_throughput": pr["throughput"] * X,
         "latency_ms": {k: v / X for k, v in me["latency_ms"].items() if isinstance(v, (int, float))}}
    if "throughput" in me:
        d["throughput"] = me["throughput"] * X
    return d


def _saturation(args, out: dict, sat: dict) -> None:
    """A saturated run: a warning on stderr and `saturated_warning` in the JSON."""
    if not sat:
        out["saturated_warning"] = None
        return
    msg = ("emulation saturated (this CPU was slower than the modelled device) on: "
           + ", ".join(f"{d} ({v['sections']} sections, +{v['excess_s'] * 1e3:.0f} ms)" for d, v in sat.items())
           + "; the measurement overstates the device's time (raise --slowdown, or use auto)")
    out["saturated_warning"] = msg
    err_console.print(f"[yellow]warning:[/yellow] {msg}")


def _strict(args, out: dict) -> int:
    if getattr(args, "strict", False) and out.get("saturated_warning"):
        raise RuntimeFault(f"--strict: {out['saturated_warning']}")
    return 0


def cmd_worker(args) -> int:
    import os
    import signal

    from dora_rl.runtime.worker import run_worker
    signal.signal(signal.SIGINT, lambda *_: os._exit(130))
    return run_worker(args.device, args.timeout, args.scenario)
