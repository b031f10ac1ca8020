"""The runtime adapter: monitor bandwidth and battery, decide each control interval,
compose and switch plans (docs/adapter.md).

    from dora_rl.adapter import get_adapter, Monitor, simulate
    ad = get_adapter("pareto", scenario)
    mon = Monitor(scenario.cluster)
    mon.observe_transfer("phone", "jetson", nbytes, seconds, t)   # every transfer a worker makes
    dec = ad.decide(mon.state(t))                                 # -> Decision, once per interval
    mon.close_interval()

`run_simulation_cli` runs the trace-driven simulation with the live view and writes
the JSON log and the PNG timeline."""

from __future__ import annotations

from pathlib import Path

from dora_rl.adapter.base import ADAPTERS, Adapter, adapter_names, get_adapter, register_adapter
from dora_rl.adapter.compose import Mix, Scored, best_mix, choose_mix, conditions, lp_mix, make_mix, score
from dora_rl.adapter.learned import AgentPolicy, PPOAdapter, load_agent_policy, register_agent_loader
from dora_rl.adapter.monitor import BandwidthEstimator, Monitor, read_os_battery
from dora_rl.adapter.rules import OracleAdapter, ParetoAdapter, ReplanAdapter, StaticAdapter
from dora_rl.adapter.simulate import Log, make_trace, simulate
from dora_rl.adapter.state import Decision, State


def run_simulation_cli(scenario, adapter_name: str, trace_spec=None, duration: float = 120.0,
                       interval: float = 1.0, out_dir: str | Path = "runs/adapter", live: bool = True, *,
                       mean_frac: float | None = None, seed: int = 0, console=None, **adapter_options) -> dict:
    """Simulate `adapter_name` on `scenario` (a Scenario, preset name or YAML path) over
    `trace_spec` (see make_trace), showing the live view; write `<out_dir>/adapter_log.json`
    and `<out_dir>/adapter_timeline.png`. Returns {summary, log, png}."""
    from dora_rl.adapter.timeline import plot_timeline
    from dora_rl.adapter.view import LiveView
    from dora_rl.scenario import load_scenario

    scen = load_scenario(scenario)
    adapter = get_adapter(adapter_name, scen, **adapter_options)
    with LiveView(live, console) as view:
        log = simulate(scen, adapter, trace_spec, duration, interval, mean_frac=mean_frac, seed=seed,
                       on_interval=view.update)
    out = Path(out_dir)
    jp = log.save(out / "adapter_log.json")
    pp = plot_timeline(log, out / "adapter_timeline.png")
    return {"summary": log.summary(), "log": str(jp), "png": str(pp)}


__all__ = ["ADAPTERS", "Adapter", "AgentPolicy", "BandwidthEstimator", "Decision", "Log", "Mix", "Monitor",
           "OracleAdapter", "PPOAdapter", "ParetoAdapter", "ReplanAdapter", "Scored", "State", "StaticAdapter",
           "adapter_names", "best_mix", "choose_mix", "conditions", "get_adapter", "load_agent_policy", "lp_mix",
           "make_mix", "make_trace", "read_os_battery", "register_adapter", "register_agent_loader",
           "run_simulation_cli", "score", "simulate"]
