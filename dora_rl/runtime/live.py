"""The runtime adapter on live workers (`dora run SCENARIO --adapter NAME`).

    res = run_live("smart_home", "pareto", duration=30, slowdown=50)

1. The scenario is *time-dilated* by `slowdown` (compute rates, link and medium rates
   divided by it, latencies, the SLO and the request period multiplied by it): this
   CPU keeps up, and every plan's compliance is what it is at real speed, so the
   adapter takes the decisions it would take on the real devices.
2. Workers execute the running plan (`ResilientRuntime`, emulated cluster); requests
   arrive at the scenario's (dilated) rate, capped at 0.8x the capacity of the first plan.
3. Bandwidth follows the scenario's `dynamics` trace (or `trace`): every control
   interval the medium's factor (trace / nominal) is written to the pacing table all
   workers read, so links and the shared medium really slow down or speed up. The
   trace is replayed `time_scale` times faster than real time (default 10: a 30 s run
   covers 300 s of trace).
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

import math
from pathlib import Path

import numpy as np

from dora_rl.errors import PlanError


def _main_plan(dec):
    i = int(np.argmax(dec.fractions))
    return dec.plans[i]


def run_live(scenario, adapter_name: str, *, duration: float = 30.0, interval: float = 1.0,
             slowdown: float = 50.0, rate: float | None = None, trace=None, time_scale: float = 10.0,
             mean_frac: float | None = None, fail=(), out_dir: str | Path = "runs/live", live: bool = True,
             console=None, timeout: float = 120.0, seed: int = 0, request_deadline: float | None = None,
             **adapter_options) -> dict:
    """Run `adapter_name` on live workers for `duration` seconds; returns
    {summary, log, png, faults, requests}."""
    from dora_rl.cost import CostModel
    from dora_rl.runtime.adapter import Monitor, get_adapter
    from dora_rl.runtime.adapter.compose import conditions, make_mix, score, battery_budgets
    from dora_rl.cost.qoe import required_rate
    from dora_rl.runtime.adapter.simulate import Log, battery_violations, make_trace, probe_peer
    from dora_rl.runtime.adapter.timeline import plot_timeline
    from dora_rl.runtime.adapter.view import LiveView
    from dora_rl.runtime.emulation import now
    from dora_rl.runtime.faults import ResilientRuntime
    from dora_rl.scenario import load_scenario

    for key, v in (("duration", duration), ("interval", interval), ("time_scale", time_scale)):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise PlanError(f"--{key.replace('_', '-')} must be a positive number, got {v!r}")
    base = load_scenario(scenario)
    if base.workload.training:
        raise PlanError(f"scenario {base.name!r} is a training workload; the live adapter serves inference")
    sc = base.dilated(slowdown)
    tr, medium = make_trace(sc, trace, mean_frac=mean_frac, seed=seed,
                            duration_s=max(60.0, duration * time_scale))
    nominal = sc.cluster.media[medium].mbps
    adapter_options = {"compose": False, **adapter_options}
    st = {"sc": sc, "ad": get_adapter(adapter_name, sc, **adapter_options)}
    st["ad"].bind(tr, medium, interval)
    # probes as long as at real speed: the dilated links are `slowdown` x slower
    mon = Monitor(sc.cluster, probe_bytes=Monitor.probe_bytes / slowdown)
    dec = st["ad"].decide(mon.state(0.0))
    plan = _main_plan(dec)
    need = required_rate(sc)
    log = Log(base.name, st["ad"].name, tr.source, medium, nominal, float(interval), float(duration),
              sc.qoe.latency_slo_ms, need)
    cap = CostModel(sc).evaluate(plan).throughput
    r = rate or sc.workload.request_rate or 0.5 * cap
    if math.isfinite(cap) and cap > 0:
        r = min(r, 0.8 * cap)
    answers: list = []          # (t_answer, latency_s)
    rows_pids = {}

    def true_mbps(t):
        return float(tr.at(t * time_scale))

    def replan(new_sc):
        # a device died: rebuild the adapter (and monitor) on the survivors, let it choose
        ad = get_adapter(adapter_name, new_sc, **adapter_options)
        ad.bind(tr, medium, interval)
        m2 = Monitor(new_sc.cluster, probe_bytes=mon.probe_bytes)
        for d, v in st["mon"].levels.items():
            if d in m2.levels:
                m2.levels[d] = v
        for mname, e in st["mon"].est.items():
            if mname in m2.est and e.samples:
                for x in e.samples:
                    m2.est[mname].add_rate(x)
        st.update(sc=new_sc, ad=ad, mon=m2)
        return _main_plan(ad.decide(m2.state(now() - st["t0"])))

    st["mon"] = mon
    with ResilientRuntime(sc, timeout=timeout, replan=replan,
                          request_deadline=request_deadline or max(15.0, 20 * (sc.qoe.latency_slo_ms or 1000) / 1e3)
                          ) as rt:
        rt.start(plan)
        if st["ad"].prestage:      # the candidates' weights go out at deployment, as the adapter assumes
            rt.prestage(st["ad"].holdings)
        rt.set_bandwidth(medium, true_mbps(0.0) / nominal)
        for dev, at in fail or ():
            rt.fail_at(dev, at)
        st["t0"] = now()
        st["last"] = 0.0
        st["probe_t"], st["probes"] = -math.inf, 0
        st["dec"] = dec

        def control(t):
            mon = st["mon"]
            t0 = st["t0"]
            t_prev = st["last"]
            dt = max(1e-6, t - t_prev)
            st["last"] = t
            bw_true = true_mbps(t)
            rt.set_bandwidth(medium, bw_true / nominal)
            for (ta, src, dst, b, s) in rt.hb.take_transfers():
                if src in mon.cluster.index and dst in mon.cluster.index:
                    mon.observe_transfer(src, dst, b, s, ta - t0)
            # nothing measured on the medium for a while (no requests, or a plan that keeps
            # off it): a small probe from the source across it; its rate comes back with
            # the heartbeats. At most one per probe_after_s.
            peer = probe_peer(st["sc"], medium)
            if (peer is not None and peer in rt.ranks and mon.needs_probe(medium, t)
                    and t - st["probe_t"] >= mon.probe_after_s):
                rt.probe_async(st["sc"].workload.source, peer, mon.probe_bytes)
                st["probe_t"] = t
                st["probes"] += 1
            # batteries: the power model of the running plan on the true condition
            levels = mon.battery()
            budgets = {}
            try:
                tcost = CostModel(conditions(st["sc"], {medium: true_mbps((t_prev + t) / 2)}, levels))
                sc_run = score(tcost, 0, rt.plan)
                budgets = battery_budgets(tcost)
                mx = make_mix([(sc_run, 1.0)], need, budgets, st["sc"].qoe.latency_slo_ms)
                mon.drain(dict(mx.dev_power), dt)
                power = mx.power
            except Exception:  # noqa: BLE001  (a plan the cost model rejects on this condition)
                power = float("nan")
            recent = [lat for (ta, lat) in answers if ta - t0 >= t_prev]
            state = mon.state(t)
            prev_plan = rt.plan
            dec = st["ad"].decide(state)
            st["dec"] = dec
            new = _main_plan(dec)
            do_switch = new.to_dict() != prev_plan.to_dict()
            # no answer in this interval: the last measured latency (None before the first)
            lat_ms = float(np.percentile(recent, 95) * 1e3) if recent else (log.rows[-1]["latency_ms"]
                                                                            if log.rows else None)
            slo = st["sc"].qoe.latency_slo_ms
            # throughput over a window of >= 3 expected answers (per interval it is 0 or 1
            # at the dilated request rates)
            win = min(max(interval, 3.0 / need if need else interval), max(t, 1e-6))
            thr = sum(1 for (ta, _) in answers if ta - t0 >= t - win) / win
            viol = []
            if slo is not None and lat_ms is not None and lat_ms > slo:
                viol.append(f"latency: {lat_ms:.0f} ms > SLO {slo:.0f} ms")
            # throughput once a full window can hold answers (the first ones arrive after one latency)
            if need and t >= win + (slo or 0.0) / 1e3 and thr < 0.8 * need:
                viol.append(f"throughput: {thr:.2f} < 0.8 x required {need:.2f} over the last {win:.0f} s")
            viol += battery_violations(mon, budgets)
            row = {"t": t_prev, "bw_true_mbps": bw_true, "bw_est_mbps": state.bandwidth.get(medium),
                   "bw_error": state.error.get(medium, 0.0), "battery": levels, "pids": list(dec.pids),
                   "fractions": [round(a, 6) for a in dec.fractions], "label": dec.label, "reason": dec.reason,
                   "switch": bool(do_switch), "switch_s": 0.0, "move_mb": 0.0, "latency_ms": lat_ms,
                   "latency_p50_ms": float(np.percentile(recent, 50) * 1e3) if recent else None,
                   "answered": len(recent), "throughput": thr, "power_w": power,
                   "energy_j": power * dt if math.isfinite(power) else 0.0,
                   "served_frac": min(1.0, thr / need) if need else 1.0,
                   "ok": not viol, "violations": viol, "decide_ms": dec.decide_ms,
                   "predicted": dec.predicted, "plan": rt.plan.to_dict(), "faults": len(rt.faults)}
            for pid, p in zip(dec.pids, dec.plans):
                rows_pids[pid] = p.to_dict()
            log.rows.append(row)
            mon.record(t, bw_true_mbps=bw_true)
            mon.close_interval()
            if view is not None:
                view.update(row, log)
            return new if do_switch else None

        with LiveView(live, console) as view:
            res = rt.infer(duration=duration, rate=r, control=control, interval=interval,
                           on_answer=lambda rid, lat, t1: answers.append((t1, lat)))
        faults = list(rt.faults)
    log.plans = [{"id": pid, **p} for pid, p in sorted(rows_pids.items())]
    log.monitor = st["mon"].series
    out = Path(out_dir)
    jp = log.save(out / "live_log.json")
    pp = plot_timeline(log, out / "live_timeline.png")
    admitted = len(res.answered) if res.answered else 0
    summary = {**log.summary(), "requests": res.n, "answered": admitted,
               "answered_once": sorted(res.answered) == list(range(res.n)), "duplicates_dropped": res.duplicates,
               "reissued": res.reissued, "probes": st["probes"], "offered_rate": r, "slowdown": slowdown,
               "time_scale": time_scale,
               "latency_ms": {k: v / slowdown for k, v in res.latency_ms.items()},
               "faults": [{k: v for k, v in f.items() if k != "plan"} for f in faults]}
    # the log keeps real-time (dilated) numbers; the summary also states them at device speed
    import json
    data = json.loads(jp.read_text())
    data["run"] = summary
    jp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    return {"summary": summary, "log": str(jp), "png": str(pp), "faults": faults}
