"""How a live control interval is judged on latency: by the requests it served.

Why not by the answers that arrive in it: at high dilation a control interval is far
shorter than one request (at dilation 200 a 1 s interval is 5 ms of device time, a
request ~100 ms), so most intervals receive no answer and a verdict made from 0-1
answers is quantised noise, not a measurement (`dora demo` showed 46 % of intervals
violating from 7 requests). The simulation judges an interval by the plan that serves
it (violated when any part of it is served by a plan that misses the SLO); the live
equivalent is the requests in service during it. An interval [a, b) is judged by the
latencies of every request issued before b and answered after a - a request still
unanswered counts the time it has waited so far, a lower bound - and violates latency
when their p95 exceeds the SLO. A request slower than the SLO so marks every interval
it spent in the system, whatever the dilation. The verdict is provisional while
requests of the interval are unanswered (the live view, which judges every interval
again at each new one) and final once the run has drained (the log, `finalize`). An
interval with no request in service (the pipeline idle) has no latency and does not
violate it."""

from __future__ import annotations

import bisect
import math

import numpy as np

LATENCY = "latency"
THROUGHPUT = "throughput"
WINDOW_ANSWERS = 10.0       # answers expected in the served-rate window (`served`)


def in_service(spans, a: float, b: float, t_now: float) -> list[float]:
    """Latencies (s) of the requests in service during [a, b). `spans`: (t_issue,
    t_answer or None) per request, on the clock of a and b; one not yet answered counts
    its wait until `t_now`."""
    out = []
    for ti, ta in spans:
        end = t_now if ta is None else ta
        if ti < b and end > a:
            out.append(end - ti)
    return out


def percentile_ms(lat_s: list[float], q: float) -> float | None:
    """The q-th percentile of latencies in seconds, in ms (None for none)."""
    return float(np.percentile(lat_s, q) * 1e3) if lat_s else None


def latency_verdict(lat_s: list[float], slo_ms: float | None) -> list[str]:
    """The latency violation of an interval whose in-service requests took `lat_s`
    (empty list: none)."""
    p95 = percentile_ms(lat_s, 95)
    if slo_ms is None or p95 is None or p95 <= slo_ms:
        return []
    return [f"{LATENCY}: p95 {p95:.0f} ms of the {len(lat_s)} request(s) in service > SLO {slo_ms:.0f} ms"]


def judge(row: dict, spans, a: float, b: float, t_now: float, slo_ms: float | None) -> None:
    """Set `row`'s latency figures and verdict for the interval [a, b) from the requests
    in service (module doc); other targets' violations are kept."""
    lat = in_service(spans, a, b, t_now)
    row["in_service"] = len(lat)
    row["latency_ms"], row["latency_p50_ms"] = percentile_ms(lat, 95), percentile_ms(lat, 50)
    viol = [v for v in row.get("violations", ()) if not v.startswith(LATENCY)]
    row["violations"] = latency_verdict(lat, slo_ms) + viol
    row["ok"] = not row["violations"]


def finalize(rows: list[dict], spans, t_now: float, slo_ms: float | None) -> None:
    """Judge every row again once every request is answered (the final verdict)."""
    for r in rows:
        judge(r, spans, r["t"], r["t_end"], t_now, slo_ms)


def served(answers: list[float], t: float, interval: float, need: float, offered_rate: float,
           slo_ms: float | None, pauses=()) -> tuple[float, bool, list[str]]:
    """The served-rate part of the throughput target at the end `t` of an interval, from
    the answer instants `answers` (run seconds): (throughput, judged, violations). The
    rate is counted over a window of at least `WINDOW_ANSWERS` (10) answers expected at
    the rate offered (min(need, offered_rate)): win = min(max(interval, 10 / offered), t)
    (without a throughput target, `need` 0: the interval, as before, and never judged);
    judged once a full window can hold answers (t >= win + SLO); violated when fewer than
    0.8 x the rate offered in the window were served (less the window's share of admission
    `pauses` - a switch's drain admits nothing). `answers` are those received by `t`.

    Why ten: it is a count. A window of n periods of a stream answered at exactly the
    offered rate holds n answers; if each answer is early or late by less than half a
    period, at most one crosses each end, so it holds at least n - 2, which is 0.8 n or
    more only from n = 10. With three expected answers of the need (before session 15) a
    stream keeping pace failed whenever the phase left it 2 of 3 (`dora demo`: 22 of 116
    intervals, requests answered every 2.05 s as they came; 0 with ten)."""
    offered = min(need, offered_rate) if need else offered_rate
    win = min(max(interval, WINDOW_ANSWERS / offered if need and offered > 0 else interval), max(t, 1e-6))
    thr = sum(1 for ta in answers if ta >= t - win) / win          # `answers`: those received by t
    judged = bool(need) and t >= win + (slo_ms or 0.0) / 1e3
    offered *= max(0.0, win - overlap(pauses, t - win, t)) / win
    if judged and thr < 0.8 * offered * (1.0 - 1e-9):    # (at the bound exactly: met)
        return thr, judged, [f"{THROUGHPUT}: served {thr:.3g} req/s < 0.8 x offered {offered:.3g} req/s over the "
                             f"last {win:.0f} s"]
    return thr, judged, []


def overlap(spans, a: float, b: float) -> float:
    """Seconds of [a, b) covered by the (start, end) `spans` (disjoint)."""
    return sum(max(0.0, min(b, e) - max(a, s)) for s, e in spans)


def at_request_instants(rows: list[dict], issues: list[float], interval: float, slo_ms: float | None, *,
                        scenario, plans: list[dict], medium: str, need: float | None = None,
                        offered_rate: float | None = None, pauses=()) -> None:
    """Judge a *simulated* log the way a live one is judged, at the live run's request
    instants: the requests are replayed through the discrete-event simulator on the
    serving plans and the true bandwidth of each interval (`replayed_spans`), and every
    interval is then judged by the requests in service during it (`finalize`). With
    `offered_rate` (the live run's, with its `need` and admission `pauses`) the served
    rate is judged too, as live (`served`, on the simulated answer instants; the
    simulation's own capacity verdict is kept beside it). The rows (`t`, `pids`,
    `fractions`, `bw_true_mbps`, `latency_ms`, `violations`) are changed in place; other
    targets' violations are kept. What stays different is what the adapters decided,
    each on its own bandwidth estimates."""
    for r in rows:
        r["t_end"] = r["t"] + interval
    spans = replayed_spans(rows, issues, interval, scenario, plans, medium)
    finalize(rows, spans, float("inf"), slo_ms)
    if offered_rate is None:
        return
    answers = sorted(ta for _, ta in spans)
    for r in rows:
        got = answers[:bisect.bisect_right(answers, r["t_end"])]
        _, _, viol = served(got, r["t_end"], interval, need or 0.0, offered_rate, slo_ms, pauses)
        r["violations"] = [v for v in r["violations"] if not v.startswith(f"{THROUGHPUT}: served")] + viol
        r["ok"] = not r["violations"]


def replayed_spans(rows: list[dict], issues: list[float], interval: float, scenario, plans: list[dict],
                   medium: str) -> list[tuple[float, float]]:
    """(issue, answer) of each request issued at `issues` (run seconds) to a simulated
    run whose interval k (`rows[k]`, `interval` seconds from k x interval) is served by
    its main plan (`pids`, `fractions`; `plans` [{"id", ...plan}]) on the bandwidth
    `bw_true_mbps` of `medium`: the requests go through the discrete-event simulator
    (`sim.replay`), the network's capacities following the rows' bandwidth interval by
    interval. A request is served by the plan of its issue interval; consecutive ones on
    one plan are replayed together, so each waits for the devices its predecessors hold
    (a stage serves one micro-batch at a time) and shares the media with their transfers,
    and each transfer runs at the bandwidth of the moments it runs in (a dip after a
    request's transfers are done does not slow it). This is what the live workers do
    (docs/runtime.md "Live vs simulated"). A request whose row has no finite latency
    (no plan serves) is left out."""
    from dora_rl.plan import Plan
    from dora_rl.runtime.live_twin import RequestReplay

    by_id = {p["id"]: Plan.from_dict({k: v for k, v in p.items() if k != "id"}) for p in plans}

    def plan_of(r: dict):
        lat = r.get("latency_ms")
        if not (isinstance(lat, (int, float)) and math.isfinite(lat)) or not r.get("pids"):
            return None
        return by_id[max(zip(r["fractions"], r["pids"]))[1]]

    return RequestReplay(scenario, medium, issues, interval).spans([(plan_of(r), r["bw_true_mbps"]) for r in rows])

