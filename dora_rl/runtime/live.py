"""The runtime adapter on live workers (`dora run SCENARIO --adapter NAME`).

    res = run_live("smart_home", "pareto", duration=30, slowdown=50)

1. The scenario is *time-dilated* by `slowdown` (compute rates, link and medium rates
   divided by it, latencies, the SLO and the request period multiplied by it): this
   CPU keeps up, and every plan's compliance is what it is at real speed, so the
   adapter takes the decisions it would take on the real devices. `slowdown="auto"`
   (the default) picks the smallest factor at which no worker saturates (dilation.py);
   the heartbeat silence that declares a hung worker scales with it (`hb_timeout`).
2. Workers execute the running plan (`ResilientRuntime`, emulated cluster); requests
   arrive at the scenario's (dilated) rate, capped at 0.8x the capacity of the first plan.
3. Bandwidth follows the scenario's `dynamics` trace (or `trace`): at the start of every
   control interval the medium's factor for it (the trace's mean over the interval /
   nominal, as the simulation's rows take it) is written to the pacing table all
   workers read, so links and the shared medium really slow down or speed up. Trace
   time is dilated with the rest: it advances `time_scale` trace seconds per second of
   *device* time (run time / slowdown; default 10: a 30 s run at dilation 50 covers
   6 s of trace).
4. Each interval: the Monitor gets the workers' real transfer measurements (bytes,
   seconds of every paced message, over the heartbeat channel; when the medium carried
   nothing for `probe_after_s`, a probe of 256 kB / slowdown from the source to a peer
   across it, `Runtime.probe_async`), batteries drain by the
   power model of the running plan on the true condition (battery life is judged on
   the monitor's trailing-window average draw, as in the simulation), the adapter decides, and a
   switch happens at a request boundary (drain, move the blocks a device does not
   already hold: workers keep the blocks of earlier plans, so switching back is a drain).
   The live loop runs one plan at a time: adapters plan without composition here
   (`compose=False` unless given), because a time-share's slots would have to be much
   longer than a switch's drain - seconds at the dilated speeds - to be worth running;
   composition is measured in the trace-driven simulation.
5. A worker that dies (or `fail=[(device, seconds)]` kills) is detected, the adapter
   is rebuilt on the survivors and chooses the plan to resume on.
6. The live view shows plan, bandwidth (true / estimated), battery, measured latency
   p50/p95 vs SLO, throughput, switches; at the end `<out>/live_log.json` and
   `<out>/live_timeline.png` (same format as the simulation's)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from dora_rl.adapter import Decision, Monitor, State, get_adapter
from dora_rl.adapter.compose import battery_budgets, conditions, make_mix, score
from dora_rl.adapter.simulate import Log, battery_violations, make_trace, plan_crosses, probe_peer
from dora_rl.adapter.timeline import plot_timeline
from dora_rl.adapter.view import LiveView
from dora_rl.cost import CostModel
from dora_rl.cost.qoe import required_rate
from dora_rl.errors import DoraError, PlanError, RuntimeFault
from dora_rl.plan import Plan
from dora_rl.runtime.dilation import choose
from dora_rl.runtime.emulation import now, sleep_until
from dora_rl.runtime.live_judge import finalize, served
from dora_rl.scenario import Scenario, load_scenario


def _main_plan(dec: Decision) -> Plan:
    i = int(np.argmax(dec.fractions))
    return dec.plans[i]


class LiveRun:
    """One run of an adapter on live workers: the dilated scenario, the trace, the adapter
    and its monitor (both rebuilt on the survivors after a fault), the answers received
    and the log; `run()` starts the workers and serves for `duration` seconds,
    `control(t)` is one control interval, `finish()` writes the log and the timeline."""

    def __init__(self, scenario, adapter_name: str, *, duration: float = 30.0, interval: float = 1.0,
                 slowdown="auto", rate: float | None = None, trace=None, time_scale: float = 10.0,
                 mean_frac: float | None = None, fail=(), out_dir: str | Path = "runs/live", live: bool = True,
                 console=None, timeout: float = 120.0, seed: int = 0, request_deadline: float | None = None,
                 device_s: float | None = None, **adapter_options):
        for key, v in (("duration", duration), ("interval", interval), ("time_scale", time_scale),
                       ("device_s", device_s or 1.0)):
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise PlanError(f"--{key.replace('_', '-')} must be a positive number, got {v!r}")
        self.base = load_scenario(scenario)
        if self.base.workload.training:
            raise PlanError(f"scenario {self.base.name!r} is a training workload; the live adapter serves inference")
        self.adapter_name = adapter_name
        self.duration, self.interval, self.slowdown, self.time_scale = duration, interval, slowdown, time_scale
        self.fail, self.out_dir, self.live, self.console, self.timeout = fail, out_dir, live, console, timeout
        span = max(60.0, duration * time_scale)
        make_trace(self.base, trace, mean_frac=mean_frac, seed=seed, duration_s=span)   # bad input: before measuring
        self.dilation = choose(self.base, None, slowdown=slowdown,
                               announce=console.print if console is not None and live else None)
        self.slowdown = slowdown = self.dilation.factor
        if device_s:      # at least device_s seconds of device time: the run grows with the dilation
            self.duration = duration = max(duration, device_s * slowdown)
        if console is not None and live:
            auto = " (auto)" if self.dilation.auto else ""
            console.print(f"time dilation {slowdown:g}x{auto}: {duration:g} s of run "
                          f"= {duration / slowdown:.3g} s of device time")
        self.sc = self.base.dilated(slowdown)       # the scenario the workers run (the survivors after a fault)
        self.trace, self.medium = make_trace(self.sc, trace, mean_frac=mean_frac, seed=seed, duration_s=span)
        self.nominal = self.sc.cluster.media[self.medium].mbps
        self.adapter_options = {"compose": False, **adapter_options}
        self.adapter = get_adapter(adapter_name, self.sc, **self.adapter_options)
        self.adapter.bind(self.trace, self.medium, interval)
        # probes as long as at real speed: the dilated links are `slowdown` x slower
        self.monitor = Monitor(self.sc.cluster, probe_bytes=Monitor.probe_bytes / slowdown, dilation=slowdown)
        # the workers start on the adapter's initial plan; its first decision waits for a first
        # probe of the bandwidth (`deploy`), as its simulated twin's does (simulate(probe_first))
        self.plan = self.adapter.plans[0] if self.adapter.plans else self.adapter.initial_plan()
        self.plans_seen: dict[int, dict] = {}
        self.need = required_rate(self.sc)
        self.log = Log(self.base.name, self.adapter.name, self.trace.source, self.medium, self.nominal,
                       float(interval), float(duration), self.sc.qoe.latency_slo_ms, self.need,
                       dilation=float(slowdown), live=True)
        lat_s = CostModel(self.sc).evaluate(self.plan).latency_ms / 1e3
        if lat_s > timeout:
            dev = max(self.dilation.need, key=self.dilation.need.get)
            raise RuntimeFault(f"this machine is too slow to emulate {self.base.name!r}: worker {dev} computes "
                               f"{self.dilation.ratio[dev]:.3g}x slower than its device, so the run needs a dilation "
                               f"of {slowdown:.3g}, at which one request takes {lat_s:.3g} s, "
                               f"{lat_s / timeout:.2g}x the --timeout of {timeout:g} s")
        self.hb_timeout = max(5.0, min(30.0, 0.1 * slowdown))   # silence that declares a hung worker
        self.rate = rate
        self.offered_rate = self.offer(self.plan)
        self.request_deadline = request_deadline or max(15.0, 20 * (self.sc.qoe.latency_slo_ms or 1000) / 1e3)
        self.answers: list[tuple[float, float]] = []      # (t_answer, latency_s)
        self.spans: dict[int, list] = {}                  # rid -> [first issue, answer or None], run time
        self.pauses: list[tuple[float, float]] = []       # admission pauses of switches (drains), run time
        self.pause_start: float | None = None             # the start of a drain in progress
        self.t0 = 0.0                                     # the runtime clock at the start of serving
        self.last = 0.0                                   # the start of the current control interval
        self.probe_t, self.probes = -math.inf, 0
        self.bw_now = self.true_mbps(0.0, interval)       # the medium's bandwidth now (set each interval)
        self.crosses: dict[str, bool] = {}                # plan key -> its transfers cross the medium
        self.heard: list[tuple] = []                      # (t, src, dst, bytes, seconds) the monitor was told
        self.rt = None                                    # the ResilientRuntime, while running
        self.asked: Plan | None = None                    # the plan the last interval asked for
        self.view = None                                  # the LiveView, while running

    def offer(self, plan: Plan) -> float:
        """The open-loop request rate: the scenario's (or `rate`), at most 0.8x `plan`'s capacity."""
        cap = CostModel(self.sc).evaluate(plan).throughput
        offered = self.rate or self.sc.workload.request_rate or 0.5 * cap
        return min(offered, 0.8 * cap) if math.isfinite(cap) and cap > 0 else offered

    def true_mbps(self, t: float, dt: float = 0.0) -> float:
        """The trace's bandwidth over run time [t, t + dt) (its time-average, as the
        simulation's rows take it; dt 0: at t): device time / slowdown, replayed
        `time_scale` x faster."""
        pts = t + (np.arange(16) + 0.5) * (dt / 16) if dt > 0 else np.array([t])
        return float(np.mean(self.trace.at(pts / self.slowdown * self.time_scale)))

    # ---------------------------------------------------------------- the run
    def run(self) -> dict:
        """Start the workers, serve for `duration` seconds with `control` every interval,
        then `finish`. Returns {summary, log, png, faults}."""
        from dora_rl.runtime.faults import ResilientRuntime  # torch: imported when a run starts

        with ResilientRuntime(self.sc, timeout=self.timeout, replan=self.replan, hb_timeout=self.hb_timeout,
                              request_deadline=self.request_deadline, on_recover=self.on_recover) as rt:
            self.rt = rt
            rt.start(self.plan)
            self.bw_now = self.true_mbps(0.0, self.interval)      # what the medium runs at until the next interval
            rt.set_bandwidth(self.medium, self.bw_now / self.nominal)
            if self.adapter.prestage:      # the candidates' weights go out at deployment, as the adapter assumes
                rt.prestage(self.adapter.holdings)
            self.deploy(rt)
            for dev, at in self.fail or ():
                rt.fail_at(dev, at)
            self.t0 = now()
            with LiveView(self.live, self.console) as view:
                self.view = view
                res = rt.infer(duration=self.duration, rate=self.offered_rate, control=self.control,
                               interval=self.interval, on_answer=self.on_answer, on_issue=self.on_issue,
                               on_pause=self.pauses_add)
            faults = list(rt.faults)
        return self.finish(res, faults)

    def deploy(self, rt, wait_s: float = 3.0) -> None:
        """The adapter's first decision, on a first measurement: a probe across the medium
        (its rate comes back with the heartbeats, as every later one), then the plan it picks
        is deployed before serving (nothing in flight, the candidates prestaged: a plan
        command, no drain). Without the probe the first decision is made on the nominal prior
        and the first interval switches away from it, draining a request's latency."""
        peer, src = probe_peer(self.sc, self.medium), self.sc.workload.source
        if peer is not None and peer in rt.ranks:
            rt.probe([(src, peer, int(self.monitor.probe_bytes), 1)])
            t_end = now() + wait_s
            while True:       # the probe's report rides the next heartbeat (every 0.25 s)
                got = [x for x in rt.hb.take_transfers() if x[1] in self.monitor.cluster.index
                       and x[2] in self.monitor.cluster.index]
                for (_, a, b, nbytes, secs) in got:
                    self.monitor.observe_transfer(a, b, nbytes, secs, 0.0)
                if got or now() > t_end:
                    break
                sleep_until(now() + 0.05)
            self.probes += 1
        dec = self.adapter.decide(self.monitor.state(0.0))
        self.plans_seen.update({pid: p.to_dict() for pid, p in zip(dec.pids, dec.plans, strict=False)})
        plan = _main_plan(dec)
        if plan.to_dict() != rt.plan.to_dict():
            rt.switch(plan)
        self.plan = plan
        self.offered_rate = self.offer(plan)

    def on_recover(self, rec: dict, rt) -> None:
        """A fault recovered: on the log (device, detection time, run time)."""
        self.log.faults.append({"devices": rec["devices"], "detected_s": rec["detected_s"],
                                "recover_s": rec["recover_s"], "t": now() - self.t0})
        self.asked = None                                 # the survivors run the re-planned plan
        if self.pause_start is not None:                  # a drain cut short by the fault
            self.pauses.append((self.pause_start, now() - self.t0))
            self.pause_start = None

    def on_answer(self, rid: int, latency_s: float, t_answer: float) -> None:
        self.answers.append((t_answer, latency_s))
        ta = t_answer - self.t0
        self.spans[rid] = [ta - latency_s, ta]      # a re-issued request: from its first admission

    def on_issue(self, rid: int, t_issue: float) -> None:
        self.spans.setdefault(rid, [t_issue - self.t0, None])

    def pauses_add(self, t0: float, t1: float) -> None:
        self.pauses.append((t0, t1))
        self.pause_start = None

    def replan(self, new_sc: Scenario) -> Plan:
        """A device died: rebuild the adapter (and monitor) on the survivors, let it choose."""
        ad = get_adapter(self.adapter_name, new_sc, **self.adapter_options)
        ad.bind(self.trace, self.medium, self.interval)
        mon = Monitor(new_sc.cluster, probe_bytes=self.monitor.probe_bytes, dilation=self.monitor.dilation)
        for d, v in self.monitor.levels.items():
            if d in mon.levels:
                mon.levels[d] = v
        for mname, e in self.monitor.est.items():
            if mname in mon.est and e.samples:
                for x in e.samples:
                    mon.est[mname].add_rate(x)
        self.sc, self.adapter, self.monitor = new_sc, ad, mon
        return _main_plan(ad.decide(mon.state(now() - self.t0)))

    # ---------------------------------------------------------------- one interval
    def control(self, t: float) -> Plan | None:
        """One control interval ending at run time t: measurements in, batteries drained,
        the adapter's decision, the log row. Returns the plan to switch to, or None.
        After `duration` (the last answers draining) nothing is logged or switched."""
        if t > self.duration + 1e-9:
            return None
        t_prev, self.last = self.last, t
        dt = max(1e-6, t - t_prev)
        # the interval [t_prev, t) ran at bw_true; the next one runs at the trace's mean over
        # [t, t + interval), set now (a sample at t, held for the interval, lagged the trace
        # by half an interval on average: a dip came up to a second late)
        bw_true, self.bw_now = self.bw_now, self.true_mbps(t, self.interval)
        self.rt.set_bandwidth(self.medium, self.bw_now / self.nominal)
        self.observe(t)
        levels = self.monitor.battery()
        budgets, power = self.drain(bw_true, dt, levels)
        state = self.monitor.state(t)
        asked = (self.asked or self.rt.plan).to_dict()     # the plan running, or being switched to (a drain)
        dec = self.adapter.decide(state)
        new = self.asked = _main_plan(dec)
        do_switch = new.to_dict() != asked
        row = self.row(t_prev, t, dt, state, dec, do_switch, bw_true, levels, budgets, power)
        for pid, p in zip(dec.pids, dec.plans, strict=False):
            self.plans_seen[pid] = p.to_dict()
        self.log.rows.append(row)
        # earlier intervals again, with the answers that arrived since: the view's count of
        # violating intervals is the log's final one as far as the run knows it now
        finalize(self.log.rows, self.spans.values(), t, self.sc.qoe.latency_slo_ms)
        self.monitor.record(t, bw_true_mbps=bw_true)
        self.monitor.close_interval()
        if self.view is not None:
            self.view.update(row, self.log)
        if new.to_dict() == self.rt.plan.to_dict():
            return None                                   # (during a drain: the switch is cancelled)
        if self.pause_start is None:
            self.pause_start = t                          # the drain starts now
        return new

    def observe(self, t: float) -> None:
        """The workers' transfer measurements into the monitor; a probe when the medium
        carried nothing for a while (no requests, or a plan that keeps off it): a small
        transfer from the source across it, whose rate comes back with the heartbeats.
        At most one per probe_after_s, and none while the running plan's transfers are on
        the medium (`medium_busy`)."""
        mon, rt = self.monitor, self.rt
        for (ta, src, dst, b, s) in rt.hb.take_transfers():
            if src in mon.cluster.index and dst in mon.cluster.index:
                mon.observe_transfer(src, dst, b, s, ta - self.t0)
                self.heard.append((ta - self.t0, src, dst, b, s))
        peer = probe_peer(self.sc, self.medium)
        if (peer is not None and peer in rt.ranks and mon.needs_probe(self.medium, t)
                and t - self.probe_t >= mon.probe_after_s and not self.medium_busy()):
            rt.probe_async(self.sc.workload.source, peer, mon.probe_bytes)
            self.probe_t = t
            self.probes += 1

    def medium_busy(self) -> bool:
        """True while requests are in flight on a plan whose transfers cross the medium: at
        high dilation one transfer lasts seconds, so no report may arrive for longer than
        probe_after_s although the medium is in use. A probe then measures a shared medium,
        queues behind the transfers in flight and holds the source's command loop until its
        sends are out (each probe flushes them), delaying the next request: at dilation 120
        a probe every 2 s cut the served rate to 0.04-0.08 req/s of 0.11 offered. The
        simulation probes only when the serving plan sends nothing across the medium."""
        if not any(ans is None for _, ans in self.spans.values()):
            return False
        key = self.rt.plan.key()
        if key not in self.crosses:
            self.crosses[key] = plan_crosses(self.monitor, CostModel(self.sc), self.rt.plan, self.medium)
        return self.crosses[key]

    def drain(self, bw_true: float, dt: float, levels: dict[str, float]) -> tuple[dict[str, float], float]:
        """Batteries drain by the power model of the running plan on the true condition
        (`bw_true`: the bandwidth the interval ran at).
        Returns (battery budgets, the plan's power; NaN when the cost model rejects it)."""
        budgets: dict[str, float] = {}
        try:
            tcost = CostModel(conditions(self.sc, {self.medium: bw_true}, levels))
            sc_run = score(tcost, 0, self.rt.plan)
            budgets = battery_budgets(tcost)
            mx = make_mix([(sc_run, 1.0)], self.need, budgets, self.sc.qoe.latency_slo_ms)
            self.monitor.drain(dict(mx.dev_power), dt)
            power = mx.power
            # the running plan's capacity on the true bandwidth vs the required rate (as the simulation judges it)
            self.model_viol = [v for v in mx.violations if v.startswith("throughput")]
        except DoraError:   # the cost model rejects the running plan on this condition
            power = float("nan")
        return budgets, power

    def row(self, t_prev: float, t: float, dt: float, state: State, dec: Decision, do_switch: bool, bw_true: float,
            levels: dict[str, float], budgets: dict[str, float], power: float) -> dict:
        """The log row of the interval [t_prev, t): what was measured and decided, and the
        QoE violations (latency p95 vs SLO, throughput vs required, battery budgets)."""
        need, interval = self.need, self.interval
        recent = [lat for (ta, lat) in self.answers if ta - self.t0 >= t_prev]
        slo = self.sc.qoe.latency_slo_ms
        # latency: judged by the requests in service during the interval, with every earlier
        # interval, in `control` (live_judge.finalize; provisional until they are answered,
        # final in `finish`)
        # throughput: the running plan's capacity on the true bandwidth below the required
        # rate (as the simulation judges it), or - once a full window can hold answers -
        # the workers serving less than 0.8 x what was offered in it (live_judge.served)
        viol = [f"{v} (on the true bandwidth)" for v in getattr(self, "model_viol", ())]
        pauses = self.pauses + ([(self.pause_start, t)] if self.pause_start is not None else [])
        thr, judged, served_viol = served([ta - self.t0 for ta, _ in self.answers], t, interval, need,
                                          self.offered_rate, slo, pauses)
        viol += served_viol
        viol += battery_violations(self.monitor, budgets)
        row = {"t": t_prev, "t_end": t, "bw_true_mbps": bw_true, "bw_est_mbps": state.bandwidth.get(self.medium),
                "bw_error": state.error.get(self.medium, 0.0), "battery": levels, "pids": list(dec.pids),
                "fractions": [round(a, 6) for a in dec.fractions], "label": dec.label, "reason": dec.reason,
                "switch": bool(do_switch), "switch_s": 0.0, "move_mb": 0.0, "answered": len(recent),
                "throughput": thr, "power_w": power,
                "energy_j": power * dt if math.isfinite(power) else 0.0,
                "served_frac": min(1.0, thr / need) if need else 1.0, "thr_judged": judged or not need,
                "ok": not viol, "violations": viol, "decide_ms": dec.decide_ms,
                "predicted": dec.predicted, "plan": self.rt.plan.to_dict(), "faults": len(self.rt.faults)}
        return row

    # ---------------------------------------------------------------- the outputs
    def finish(self, res, faults: list) -> dict:
        """Write `<out>/live_log.json` (with the run's summary under "run") and
        `<out>/live_timeline.png`. Returns {summary, log, png, faults}."""
        log = self.log
        finalize(log.rows, self.spans.values(), now() - self.t0, self.sc.qoe.latency_slo_ms)
        for p0, p1 in self.pauses:         # a switch's drain, on the interval that asked for it
            for r in log.rows:
                if r["t"] <= p0 < r["t_end"]:
                    r["switch_s"] += p1 - p0
        log.plans = [{"id": pid, **p} for pid, p in sorted(self.plans_seen.items())]
        log.monitor = self.monitor.series
        out = Path(self.out_dir)
        jp = log.save(out / "live_log.json")
        pp = plot_timeline(log, out / "live_timeline.png")
        admitted = len(res.answered) if res.answered else 0
        summary = {**log.summary(), "drain_s": sum(p1 - p0 for p0, p1 in self.pauses),
                   "pauses": [[p0, p1] for p0, p1 in self.pauses],
                   "requests": res.n, "answered": admitted,
                   "answered_once": sorted(res.answered) == list(range(res.n)), "duplicates_dropped": res.duplicates,
                   "reissued": res.reissued, "probes": self.probes, "offered_rate": self.offered_rate,
                   "slowdown": self.slowdown, "dilation": self.dilation.to_dict(), "time_scale": self.time_scale,
                   "device_time_s": self.duration / self.slowdown,
                   "latency_ms": {k: v / self.slowdown for k, v in res.latency_ms.items()},
                   "latency_ms_dilated": dict(res.latency_ms),
                   "saturated": {d: {"sections": n, "excess_s": e} for d, (n, e) in res.saturated.items()},
                   "faults": [{k: v for k, v in f.items() if k != "plan"} for f in faults]}
        # the log keeps real-time (dilated) numbers; the summary also states them at device speed
        data = json.loads(jp.read_text())
        data["run"] = summary
        data["requests"] = sorted(self.spans.values())    # [first issue, answer] per request, run seconds
        data["transfers"] = self.heard                     # what the monitor heard: [t, src, dst, bytes, seconds]
        jp.write_text(json.dumps(data, indent=1, default=str) + "\n")
        return {"summary": summary, "log": str(jp), "png": str(pp), "faults": faults}


def run_live(scenario, adapter_name: str, *, duration: float = 30.0, interval: float = 1.0,
             slowdown="auto", rate: float | None = None, trace=None, time_scale: float = 10.0,
             mean_frac: float | None = None, fail=(), out_dir: str | Path = "runs/live", live: bool = True,
             console=None, timeout: float = 120.0, seed: int = 0, request_deadline: float | None = None,
             device_s: float | None = None, **adapter_options) -> dict:
    """Run `adapter_name` on live workers for `duration` seconds; returns
    {summary, log, png, faults} (see LiveRun)."""
    return LiveRun(scenario, adapter_name, duration=duration, interval=interval, slowdown=slowdown, rate=rate,
                   trace=trace, time_scale=time_scale, mean_frac=mean_frac, fail=fail, out_dir=out_dir, live=live,
                   console=console, timeout=timeout, seed=seed, request_deadline=request_deadline,
                   device_s=device_s, **adapter_options).run()
