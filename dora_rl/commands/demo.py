"""`dora demo`: the main job in one command, on the smart-home preset.

1. profile the scenario's model; 2. compare every planner (table + Pareto plot);
3. run the dora plan on emulated torch workers and set the measurement beside the
prediction (when the runtime is available). Results go to --out (default demo_out/)."""

from __future__ import annotations

from pathlib import Path

from dora_rl.commands.common import console


def add_commands(sub) -> None:
    d = sub.add_parser("demo", help="profile, plan, compare and run the smart-home preset end to end")
    d.add_argument("--scenario", default="smart_home", help="preset or YAML (default smart_home)")
    d.add_argument("--out", default="demo_out", help="folder for the plan, plot and JSON (default demo_out/)")
    d.add_argument("--requests", type=int, default=6, help="requests to execute on the emulated workers")
    d.add_argument("--slowdown", default="auto", metavar="auto|X",
                   help="time dilation of the emulated runs (as `dora run --slowdown`; default auto: the smallest "
                        "at which this CPU keeps up, from its measured block times)")
    d.add_argument("--no-run", action="store_true", help="skip executing the plan on workers")
    d.add_argument("--adapter", default="ppo",
                   help="adapter for the live step (default ppo: the shipped agents; pareto when they are missing)")
    d.add_argument("--live-seconds", type=float, default=120.0,
                   help="run seconds of the adapter on live workers at the end (0: skip; default 120: at the "
                        "usual dilations of 40-150x, 0.8-3 s of device time, 11-40 requests)")
    d.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    import json

    from dora_rl.commands.basic import print_metrics, print_plan
    from dora_rl.planners import run_planner
    from dora_rl.runtime.dilation import choose, parse_slowdown
    from dora_rl.scenario import load_scenario
    slowdown = parse_slowdown(args.slowdown)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scen = load_scenario(args.scenario)
    prof = scen.profile
    console.rule(f"[bold]1. {scen.name}: {prof.name}, {len(scen.cluster.devices)} devices")
    console.print(f"{prof.name}: {prof.n_blocks} blocks, {prof.total_flops / 2e9:.2f} GMACs/sample, "
                  f"{prof.total_params / 1e6:.1f} MB of parameters; devices: "
                  + ", ".join(f"{d.name} ({d.gflops:g} GFLOP/s)" for d in scen.cluster.devices))
    console.rule("[bold]2. every planner on the same cost model")
    from argparse import Namespace

    from dora_rl.commands.planning import cmd_compare

    plot = out / f"{scen.name}_compare.png"
    cmd_compare(Namespace(scenario=scen, planners=None, json=False, plot=str(plot)))
    res = run_planner("dora", scen)
    res.plan.save(out / f"{scen.name}_dora_plan.json")
    console.rule("[bold]3. the dora plan")
    print_plan(scen, res.plan)
    print_metrics(scen, res.metrics)
    summary = {"scenario": scen.name, "plan": res.plan.to_dict(), "predicted": res.metrics.to_dict()}
    if not args.no_run:
        from dora_rl.commands.common import table
        from dora_rl.runtime.measure import measure

        X = choose(scen, res.plan, slowdown=slowdown).factor
        console.rule(f"[bold]4. executing the plan on emulated torch workers (time dilated {X:g}x)")
        console.print("[dim]one worker process per device in one torch.distributed (gloo) group; compute is "
                      "stretched to each device's speed, transfers paced to each link and shared medium; the whole "
                      f"scenario runs {X:g}x slower so this CPU keeps up (results below in device time)[/dim]")
        with console.status(f"running {args.requests} requests..."):
            run = measure(scen.dilated(X), res.plan, requests=args.requests, throughput_phase=False)
        pr, me = run["predicted"], run["measured"]
        run["slowdown"] = X
        console.print(table("predicted (cost model) vs measured (workers), device time",
                            ["", "predicted", "measured p50"],
                            [["latency ms", pr["latency_ms"] / X, me["latency_ms"]["p50"] / X]]))
        if me.get("saturated"):
            console.print(f"[yellow]warning: emulation saturated on {', '.join(me['saturated'])}[/yellow]")
        summary["run"] = run
    if not args.no_run and args.live_seconds > 0 and not scen.workload.training:   # [live]
        from dora_rl.adapter import load_agent_policy
        from dora_rl.errors import AgentError
        from dora_rl.runtime.live import run_live
        if args.adapter == "ppo":
            try:
                load_agent_policy(scen)
            except AgentError as e:
                console.print(f"[yellow]no shipped agent for {scen.name} ({e}); the live step runs pareto[/yellow]")
                args.adapter = "pareto"
        console.rule(f"[bold]5. the {args.adapter} adapter on live workers ({args.live_seconds:g} s, bandwidth "
                     "following the scenario's trace)")
        console.print("[dim]the scenario time-dilated (compute, links, SLO, request rate, trace time); the "
                      "trace replayed 10x faster than device time; the monitor fed by the workers' measured "
                      "transfers[/dim]")
        live = run_live(scen, args.adapter, duration=args.live_seconds, slowdown=slowdown, out_dir=out,
                        console=console)
        s = live["summary"]
        console.print(f"{s['requests']} requests over {s['device_time_s']:.2g} s of device time ({args.live_seconds:g} "
                      f"s of run at dilation {s['slowdown']:g}x), each answered once: {s['answered_once']}; "
                      f"switches {s['switches']}; QoE-violating intervals {s['violation_frac']:.0%}")
        summary["live"] = {**s, "log": live["log"], "timeline": live["png"]}
    (out / f"{scen.name}_demo.json").write_text(json.dumps(summary, indent=1, default=str))
    console.print(f"\nwritten: {out}/ (plan JSON, comparison plot, demo JSON"
                  f"{', live adapter log + timeline' if 'live' in summary else ''})")
    return 0


