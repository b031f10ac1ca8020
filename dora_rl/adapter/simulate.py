"""Trace-driven simulation of an adapter on the cost model.

`simulate(scenario, adapter, trace, duration_s, interval_s) -> Log` replays a bandwidth
trace on one medium, interval by interval:

1. the adapter sees the *monitor's* state (bandwidth estimated from the transfers of
   the previous interval with its recent overshoot, battery levels) and returns a
   Decision (its wall time is the decision time);
2. a switch takes effect after its weights moved at the TRUE bandwidth plus the drain
   time; until then the old plan/mix keeps serving (the oracle switches for free);
3. what runs is scored with the cost model on the TRUE condition of the interval (the
   trace's time-average over the interval, the batteries' current levels): latency,
   throughput, power; the interval violates QoE if any part of it is served by a plan
   or mix that misses latency or throughput there, or if a battery device's draw
   averaged over the last `battery_window_s` (60 s) exceeds its battery-life budget
   (battery life is a property of the average draw: a time-share's slots or a
   one-interval excursion are judged on the average, as the composition LP plans);
4. batteries drain by the power model (plus the radio energy of moved weights); the
   workers' transfers (the running plan's first boundary flow, measured at 4 points in
   the interval with multiplicative lognormal noise; a 256 kB probe when the medium
   stays idle) feed the bandwidth estimator for the next decision.

The live executor reuses the same pieces: `Monitor.observe_transfer` for every transfer
its workers report, `Monitor.drain`/`poll_os` for batteries, `Monitor.state` +
`Adapter.decide` each interval (docs/adapter.md)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dora_rl.adapter.base import Adapter, get_adapter
from dora_rl.adapter.compose import (
    battery_budgets,
    budget_violations,
    conditions,
    make_mix,
    radio_joules,
    score,
    transfer_seconds,
)
from dora_rl.adapter.monitor import Monitor
from dora_rl.adapter.rules import true_mbps
from dora_rl.cluster.traces import BandwidthTrace, resolve_trace
from dora_rl.cost import CostModel
from dora_rl.cost.qoe import required_rate
from dora_rl.errors import TraceError
from dora_rl.jsonsafe import json_safe
from dora_rl.scenario import Scenario

SAMPLES_PER_INTERVAL = 4


# ------------------------------------------------------------------ traces
def scenario_medium(scenario: Scenario) -> str:
    """The medium a trace drives (Scenario.dynamic_medium), or a TraceError if there is none."""
    medium = scenario.dynamic_medium()
    if medium is None:
        raise TraceError(f"scenario {scenario.name!r} declares no medium; bandwidth dynamics need one")
    return medium


def check_trace(trace: BandwidthTrace) -> BandwidthTrace:
    """Reject traces the adapter cannot replay (BandwidthTrace validates shape, order and
    positivity on construction; this re-checks objects built around it)."""
    if not isinstance(trace, BandwidthTrace):
        raise TraceError(f"expected a BandwidthTrace, got {type(trace).__name__}")
    t, v = np.asarray(trace.times), np.asarray(trace.mbps)
    if t.size == 0:
        raise TraceError(f"{trace.source}: empty trace")
    if np.any(np.diff(t) <= 0):
        raise TraceError(f"{trace.source}: times must be strictly increasing")
    if not np.all(np.isfinite(v)) or np.any(v <= 0):
        raise TraceError(f"{trace.source}: throughput must be positive and finite")
    return trace


def make_trace(scenario: Scenario, spec=None, *, mean_frac: float | None = None, seed: int = 0,
               duration_s: float = 600.0) -> tuple[BandwidthTrace, str]:
    """(trace in Mbps for the medium, medium name) for a spec:

    None -> the scenario's `dynamics.bandwidth`, else a synthetic markov trace;
    a str -> a trace file (absolute, or relative to the traces root, e.g.
    `norway_3g/<file>`), or `markov` / `markov:SEED`; a dict -> a dynamics.bandwidth
    spec (resolve_trace). Files and specs are scaled so their mean is the medium's
    nominal rate. A BandwidthTrace is used as is (already in Mbps).
    `mean_frac` rescales the trace so its mean is mean_frac x nominal (to make
    bandwidth bind)."""
    medium = scenario_medium(scenario)
    if isinstance(spec, dict) and spec.get("medium"):
        medium = spec["medium"]
    if medium not in scenario.cluster.media:
        raise TraceError(f"medium {medium!r} is not declared in scenario {scenario.name!r}")
    nominal = scenario.cluster.media[medium].mbps
    if isinstance(spec, BandwidthTrace):
        tr = check_trace(spec)
    else:
        if spec is None:
            spec = dict((scenario.dynamics or {}).get("bandwidth") or {}) or {
                "medium": medium, "synthetic": "markov", "seed": seed, "duration_s": duration_s}
        elif isinstance(spec, (str, Path)):
            s = str(spec)
            if s == "markov" or s.startswith("markov:"):
                try:
                    sd = int(s.split(":", 1)[1]) if ":" in s else seed
                except ValueError:
                    raise TraceError(f"trace spec {s!r}: expected markov:SEED with an integer seed") from None
                spec = {"medium": medium, "synthetic": "markov", "duration_s": duration_s, "seed": sd}
            else:
                spec = {"medium": medium, "trace": s, "scale": "mean"}
        tr = check_trace(resolve_trace(spec, nominal))
    if mean_frac is not None:
        if not (isinstance(mean_frac, (int, float)) and mean_frac > 0):
            raise TraceError(f"mean_frac must be a positive number, got {mean_frac!r}")
        tr = tr.scaled(nominal * float(mean_frac), "mean")
    return tr, medium


# ------------------------------------------------------------------ log
def latencies(rows: list[dict]) -> np.ndarray:
    """The rows' latencies that were measured (a live interval before the first answer
    has none: None or NaN)."""
    lat = np.array([np.nan if r["latency_ms"] is None else r["latency_ms"] for r in rows], dtype=float)
    return lat[np.isfinite(lat)]


@dataclass
class Log:
    """Per-interval rows + run metadata; `summary()` for the bench, `save()` for JSON."""

    scenario: str
    adapter: str
    trace: str
    medium: str
    nominal_mbps: float
    interval_s: float
    duration_s: float
    slo_ms: float | None
    need: float
    battery_window_s: float | None = None
    dilation: float = 1.0            # a live run's time dilation (1: device time)
    live: bool = False               # measured on workers (row 0's switch is a real one; latency measured)
    faults: list[dict] = field(default_factory=list)   # a live run's faults: devices, detected_s, t
    rows: list[dict] = field(default_factory=list)
    plans: list[dict] = field(default_factory=list)
    monitor: list[dict] = field(default_factory=list)

    def summary(self) -> dict:
        rows = self.rows
        if not rows:
            return {}
        dm = np.array([r["decide_ms"] for r in rows])
        lat = latencies(rows)
        return {
            "intervals": len(rows),
            "violation_frac": float(np.mean([not r["ok"] for r in rows])),
            "energy_j": float(sum(r["energy_j"] for r in rows)),
            "mean_power_w": float(np.mean([r["power_w"] for r in rows])),
            # a simulation's row 0 is the initial deployment; a live run's first plan was
            # deployed before row 0, so a switch there is a real one
            "switches": int(sum(1 for r in (rows if self.live else rows[1:]) if r["switch"])),
            "decide_ms_mean": float(dm.mean()),
            "decide_ms_p95": float(np.percentile(dm, 95)),
            "decide_ms_max": float(dm.max()),
            "latency_ms_p50": float(np.percentile(lat, 50)) if len(lat) else None,
            "latency_ms_p95": float(np.percentile(lat, 95)) if len(lat) else None,
            "served_frac": float(np.mean([r["served_frac"] for r in rows])),
            # the learned adapter's share of intervals where its agent's pick was deployed
            # (reason `agent`; `veto:*` names the safety rule that overrode it); None for the rules
            "agent_decided_frac": _agent_frac([r["reason"] for r in rows]),
        }

    def to_dict(self) -> dict:
        meta = {k: getattr(self, k) for k in ("scenario", "adapter", "trace", "medium", "nominal_mbps",
                                              "interval_s", "duration_s", "slo_ms", "need",
                                              "battery_window_s", "dilation", "live", "faults")}
        return {**meta, "summary": self.summary(), "plans": self.plans, "rows": self.rows, "monitor": self.monitor}

    def save(self, path: str | Path) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(json_safe(self.to_dict()), indent=1) + "\n")
        return p


# ------------------------------------------------------------------ flows
def plan_flows(cost: CostModel, plan) -> list[tuple[str, str, float]]:
    """(src, dst, bytes) of one request's (or micro-batch's) boundary transfers."""
    st = cost.stage_indices(plan)
    m = cost.workload.batch / plan.microbatches
    groups = [([cost.src], [1.0])] + [(s[2], s[3]) for s in st]
    if not cost.training:
        groups.append(([cost.src], [1.0]))
    out = []
    for k in range(len(groups) - 1):
        nbytes = m * cost.bnd[st[k - 1][1]] if k > 0 else m * cost.bnd[0]
        _, _, _, flows = cost.transfer(groups[k][0], groups[k][1], groups[k + 1][0], groups[k + 1][1], nbytes)
        out.extend((cost.names[i], cost.names[j], b) for i, j, b in flows)
    return out


def plan_crosses(mon: Monitor, cost: CostModel, plan, medium: str) -> bool:
    """Whether any of `plan`'s boundary transfers (`plan_flows`) is routed across `medium`
    (the live loop and its twin probe only while such a plan has nothing in flight)."""
    return any(medium in mon.route_media(a, b)[0] for a, b, _ in plan_flows(cost, plan))


# ------------------------------------------------------------------ the loop
def simulate(scenario: Scenario, adapter: Adapter | str, trace=None, duration_s: float = 300.0,
             interval_s: float = 1.0, *, mean_frac: float | None = None, seed: int = 0,
             estimator: str = "harmonic", window: int = 4, error_window: int = 5, noise: float = 0.05,
             battery_window_s: float = 60.0, on_interval=None, adapter_options: dict | None = None,
             probe_first: bool = False, observe=None) -> Log:
    """Replay `trace` (see make_trace for the accepted forms) for `duration_s` seconds,
    deciding every `interval_s` seconds. `on_interval(row, log)` is called after each
    interval (the live view). `probe_first`: the monitor measures one probe at t = 0
    before the first decision, as the live loop does before it serves (runtime/live.py
    `deploy`), without jitter: the live probe crosses an idle network whose emulated rate
    is exact (its first estimate equalled the trace's rate in every bench run); without it
    the first decision is made on the nominal prior. `observe(mon, trace_at, nominal, t, dt,
    plan, bw_true)` replaces what the monitor hears each interval (default: the serving
    plan's transfers sampled 4 times on the true bandwidth, `observe_interval`); the live
    bench's twin feeds it the transfers of the live run's requests replayed
    (runtime/live_twin.py)."""
    for key, v in (("duration_s", duration_s), ("interval_s", interval_s), ("battery_window_s", battery_window_s)):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise TraceError(f"simulate: {key} must be a positive number of seconds, got {v!r}")
    tr, medium = make_trace(scenario, trace, mean_frac=mean_frac, seed=seed, duration_s=max(duration_s, 60.0))
    if isinstance(adapter, str):
        adapter = get_adapter(adapter, scenario, **(adapter_options or {}))
    adapter.bind(tr, medium, interval_s)
    nominal = scenario.cluster.media[medium].mbps
    need = required_rate(scenario)
    log = Log(scenario.name, adapter.name, tr.source, medium, nominal, float(interval_s), float(duration_s),
              scenario.qoe.latency_slo_ms, need, battery_window_s=float(battery_window_s))
    mon = Monitor(scenario.cluster, kind=estimator, window=window, error_window=error_window,
                  battery_window_s=battery_window_s, dilation=float(getattr(scenario, "dilation", 1.0)))
    rng = np.random.default_rng(seed)
    src = scenario.workload.source
    nom_cost = CostModel(scenario)
    flow_cache: dict[int, list] = {}
    probe_dst = probe_peer(scenario, medium)
    active = None          # (pids, fractions) serving now
    if probe_first and probe_dst is not None:
        probe(mon, tr.at, 0.0, nominal, src, probe_dst, rng, 0.0)
    ready_at = 0.0
    n = int(math.ceil(duration_s / interval_s - 1e-9))
    for k in range(n):
        t = k * interval_s
        dt = min(interval_s, duration_s - t)
        bw_true = true_mbps(tr, t, dt)
        state = mon.state(t)
        dec = adapter.decide(state)
        levels = mon.battery()
        tcost = CostModel(conditions(scenario, {medium: bw_true}, levels))
        active, ready_at, fig = run_interval(adapter, scenario, tcost, dec, active, ready_at, t, dt, need, src, mon)
        target, sw_true, energy, lat, viol = fig["target"], fig["sw_true"], fig["energy"], fig["lat"], fig["viol"]
        cap, served = fig["cap"], fig["served"]
        # feed the estimator with what the serving plan actually transferred
        main_pid = max(zip(target[1], target[0], strict=False))[1]
        if main_pid not in flow_cache:
            flow_cache[main_pid] = plan_flows(nom_cost, adapter.plans[main_pid])
        if observe is not None:
            observe(mon, tr.at, nominal, t, dt, adapter.plans[main_pid], bw_true)
        else:
            observe_interval(mon, flow_cache[main_pid], tr.at, t, dt, nominal, medium, rng, noise, src, probe_dst)
        row = {
            "t": t, "bw_true_mbps": bw_true, "bw_est_mbps": state.bandwidth.get(medium),
            "bw_error": state.error.get(medium, 0.0),
            "battery": levels, "pids": list(target[0]), "fractions": [round(a, 6) for a in target[1]],
            "label": dec.label, "reason": dec.reason, "switch": bool(dec.switch and k > 0),
            "switch_s": sw_true, "move_mb": sum(dec.move_bytes.values()) / 1e6 if dec.switch and k > 0 else 0.0,
            "latency_ms": lat, "throughput": cap, "power_w": energy / dt, "energy_j": energy,
            "served_frac": served, "ok": not viol, "violations": viol, "decide_ms": dec.decide_ms,
            "predicted": dec.predicted,
        }
        log.rows.append(row)
        mon.record(t, bw_true_mbps=bw_true)
        mon.close_interval()
        if on_interval is not None:
            on_interval(row, log)
    log.plans = [{"id": i, **p.to_dict()} for i, p in enumerate(adapter.plans)]
    log.monitor = mon.series
    return log


def run_interval(adapter, scenario, tcost, dec, active, ready_at: float, t: float, dt: float, need: float,
                 src: str, mon: Monitor, *, scorer=score):
    """One control interval of the true system under decision `dec`: a switch moves weights
    (radio energy, batteries) and the old mix serves until the new one is ready; then the
    interval's energy, latency, capacity, served share and QoE violations, and the batteries
    drained. Returns (active, ready_at, figures); `simulate` and AdaptEnv both step this
    (AdaptEnv also on a Monitor.fork() per option, with a memoising `scorer`, for what each
    option would have given)."""
    extra_j = 0.0
    drain: dict[str, float] = {}
    sw_true = 0.0
    target = (dec.pids, dec.fractions)
    if active is None or adapter.free_switch or set(target[0]) == set(active[0]):
        active, ready_at = target, t          # first plan, free switch, or back to what serves
    elif dec.switch:
        sw_true = transfer_seconds(tcost, dec.move_bytes, src) + adapter.drain_s
        ready_at = max(ready_at, t) + sw_true
        extra_j = radio_joules(tcost, dec.move_bytes, src)
        for d, b in dec.move_bytes.items():
            for dev in (d, src):
                if dev in mon.levels:
                    drain[dev] = drain.get(dev, 0.0) + b * tcost.radio[tcost.cluster.index[dev]]
    # segments: the old mix serves until ready_at, then the target
    segs = []
    cut = min(max(ready_at, t), t + dt)
    if cut > t:
        segs.append((active, cut - t))
    if t + dt > cut:
        segs.append((target, t + dt - cut))
        active = target
    budgets, slo = battery_budgets(tcost), scenario.qoe.latency_slo_ms
    energy, lat, cap, viol = extra_j, 0.0, 0.0, []
    served = 0.0
    for (pids, fr), d_s in segs:
        parts = [(scorer(tcost, p, adapter.plans[p]), a) for p, a in zip(pids, fr, strict=False)]
        mx = make_mix(parts, need, budgets, slo)
        viol.extend(v for v in mx.violations if v not in viol and not v.startswith("battery:"))
        energy += mx.power * d_s
        lat = max(lat, mx.latency_ms)
        cap += mx.cap * d_s / dt
        served += (min(1.0, mx.cap / need) if need else 1.0) * d_s / dt
        for dev, w in mx.dev_power.items():
            drain[dev] = drain.get(dev, 0.0) + w * d_s
    mon.drain({d: j / dt for d, j in drain.items()}, dt)
    viol += battery_violations(mon, budgets)
    return active, ready_at, {"target": target, "sw_true": sw_true, "energy": energy, "lat": lat, "cap": cap,
                              "served": served, "viol": viol}


def observe_interval(mon: Monitor, flows, trace_at, t: float, dt: float, nominal: float, medium: str, rng,
                     noise: float, src: str, probe_dst) -> None:
    """Feed the Monitor what the serving plan transferred during the interval (SAMPLES_PER_INTERVAL
    transfers timed on the true bandwidth `trace_at(tau)` with log-normal jitter), or an idle
    probe where the medium carries nothing."""
    for j in range(SAMPLES_PER_INTERVAL):
        tau = t + (j + 0.5) * dt / SAMPLES_PER_INTERVAL
        scale = float(trace_at(tau)) / nominal
        jitter = float(rng.lognormal(0.0, noise)) if noise > 0 else 1.0
        sent = False
        for a, b, nbytes in flows:
            media, nominal_route = mon.route_media(a, b)
            if not media:
                continue
            rate = nominal_route * (scale if medium in media else 1.0)  # Mbps
            mon.observe_transfer(a, b, nbytes, nbytes * 8 / (rate * 1e6) * jitter, tau)
            sent = True
            break
        if not sent and probe_dst is not None and mon.needs_probe(medium, tau):
            probe(mon, trace_at, tau, nominal, src, probe_dst, rng, noise, jitter)


def probe(mon: Monitor, trace_at, tau: float, nominal: float, src: str, dst: str, rng, noise: float,
          jitter: float | None = None) -> None:
    """The monitor measures a probe from `src` to `dst` at time `tau` on the true bandwidth
    (`trace_at(tau)` Mbps on a medium of `nominal` Mbps), with log-normal jitter."""
    if jitter is None:
        jitter = float(rng.lognormal(0.0, noise)) if noise > 0 else 1.0
    _, nominal_route = mon.route_media(src, dst)
    rate = nominal_route * float(trace_at(tau)) / nominal
    mon.observe_transfer(src, dst, mon.probe_bytes, mon.probe_bytes * 8 / (rate * 1e6) * jitter, tau)


def _agent_frac(reasons: list[str]) -> float | None:
    learned = any(x == "agent" or x.startswith("veto:") for x in reasons)
    return float(np.mean([x == "agent" for x in reasons])) if learned else None


def battery_violations(mon: Monitor, budgets: dict[str, float]) -> list[str]:
    """Battery-life QoE: each battery device's draw averaged over the monitor's
    trailing window against its budget (the W it may average and still last
    qoe.min_battery_hours from its current level)."""
    return budget_violations(mon.avg_power(), budgets, f" over the last {mon.battery_window_s:g} s")


def probe_peer(scenario: Scenario, medium: str) -> str | None:
    """A device the source can probe across `medium` (None: the source is not on it)."""
    cl = scenario.cluster
    s = cl.index[scenario.workload.source]
    mu = cl.media_names.index(medium)
    for j, d in enumerate(cl.names):
        if j != s and any(m == mu for m, _ in cl.hops[s][j]):
            return d
    return None
