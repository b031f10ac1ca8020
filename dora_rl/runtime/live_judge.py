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

import numpy as np

LATENCY = "latency"
THROUGHPUT = "throughput"


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
    rate is counted over a window of at least three expected answers (per 1 s interval it
    is 0 or 1 at dilated request rates): win = min(max(interval, 3 / need), t); judged
    once a full window can hold answers (t >= win + SLO); violated when fewer than 0.8 x
    the rate offered in the window were served (offered: min(need, offered_rate), less
    the window's share of admission `pauses` - a switch's drain admits nothing).
    `answers` are those received by `t`."""
    win = min(max(interval, 3.0 / need if need else interval), max(t, 1e-6))
    thr = sum(1 for ta in answers if ta >= t - win) / win          # `answers`: those received by t
    judged = bool(need) and t >= win + (slo_ms or 0.0) / 1e3
    offered = min(need, offered_rate) if need else offered_rate
    offered *= max(0.0, win - overlap(pauses, t - win, t)) / win
    if judged and thr < 0.8 * offered:
        return thr, judged, [f"{THROUGHPUT}: served {thr:.3g} req/s < 0.8 x offered {offered:.3g} req/s over the "
                             f"last {win:.0f} s"]
    return thr, judged, []


def overlap(spans, a: float, b: float) -> float:
    """Seconds of [a, b) covered by the (start, end) `spans` (disjoint)."""
    return sum(max(0.0, min(b, e) - max(a, s)) for s, e in spans)


def at_request_instants(rows: list[dict], issues: list[float], interval: float, slo_ms: float | None, *,
                        need: float | None = None, offered_rate: float | None = None, pauses=()) -> None:
    """Judge a *simulated* log the way a live one is judged, at the live run's request
    instants: a request issued at t waits for the pipeline (`queued_spans`: the serving
    plan's capacity on the true bandwidth, the rows' `throughput`, sets the service
    interval), then takes the simulated latency of the intervals it spans
    (`request_latency`: the plans serving them on the true bandwidth, from the cost
    model), and every interval is then judged by the requests in service during it
    (`finalize`). With `offered_rate` (the live run's, with its `need` and admission
    `pauses`) the served rate is judged too, as live (`served`, on the simulated answer
    instants; the simulation's own capacity verdict is kept beside it). The rows (`t`,
    `latency_ms`, `violations`) are changed in place; other targets' violations are
    kept. What stays different is only what the two measure: modelled vs measured
    latency, and the decisions each adapter took on its own estimates."""
    lat_s = [_finite(r["latency_ms"], 1e-3) for r in rows]
    cap = [_finite(r.get("throughput")) for r in rows]
    for r in rows:
        r["t_end"] = r["t"] + interval
    spans = queued_spans(lat_s, cap, interval, issues)
    finalize(rows, spans, float("inf"), slo_ms)
    if offered_rate is None:
        return
    answers = sorted(ta for _, ta in spans)
    for r in rows:
        got = answers[:bisect.bisect_right(answers, r["t_end"])]
        _, _, viol = served(got, r["t_end"], interval, need or 0.0, offered_rate, slo_ms, pauses)
        r["violations"] = [v for v in r["violations"] if not v.startswith(f"{THROUGHPUT}: served")] + viol
        r["ok"] = not r["violations"]


def in_a_stream(rows: list[dict], scenario, plans: list[dict], medium: str, spacing: float) -> None:
    """Scale each *simulated* row's `latency_ms` (the serving plan's one-request latency on
    the true bandwidth) by what a stream adds: the latency of a request among others
    offered `spacing` seconds apart (`sim.stream_latency`: the discrete-event simulator,
    transfers of neighbouring requests sharing the media) over the one-request latency,
    for the row's main plan at its true bandwidth. The spacing is the live run's (its
    offered rate), at least the plan's service interval (1 / capacity): a backlog beyond
    that is `queued_spans`'s wait. Rows are changed in place; `latency_ms_alone` keeps
    the one-request latency."""
    from dora_rl.adapter.compose import conditions
    from dora_rl.cost import CostModel
    from dora_rl.plan import Plan
    from dora_rl.sim.simulate import stream_latency

    by_id = {p["id"]: Plan.from_dict({k: v for k, v in p.items() if k != "id"}) for p in plans}
    cache: dict = {}
    for r in rows:
        lat = _finite(r.get("latency_ms"))
        if lat is None or not r.get("pids"):
            continue
        pid = max(zip(r["fractions"], r["pids"]))[1]
        key = (pid, round(r["bw_true_mbps"], 9))
        if key not in cache:
            cm = CostModel(conditions(scenario, {medium: r["bw_true_mbps"]}, None))
            m = cm.evaluate(by_id[pid], validate=False)
            gap = max(spacing, 1.0 / m.throughput if m.throughput > 0 else spacing)
            alone = m.latency_ms / 1e3
            cache[key] = stream_latency(cm, by_id[pid], gap) / alone if alone > 0 else 1.0
        r["latency_ms_alone"] = lat
        r["latency_ms"] = lat * cache[key]


def _finite(v, scale: float = 1.0) -> float | None:
    return v * scale if isinstance(v, (int, float)) and v == v and abs(v) != float("inf") else None


def queued_spans(lat_s: list, cap: list, interval: float, issues: list[float]) -> list[tuple[float, float]]:
    """(issue, answer) of each request issued at `issues` (run seconds, any order) when
    interval k's serving plan takes `lat_s[k]` seconds per request and serves at most
    `cap[k]` requests per second (its capacity on the true bandwidth; None: unknown, no
    wait). The pipeline takes the requests in issue order, one per service interval of
    its bottleneck (1 / capacity): request i enters at e_i = max(issue_i, e_{i-1} +
    1 / cap(e_{i-1})) (Lindley's recursion) and is answered `request_latency` after it
    enters. A request issued while the bottleneck still holds its predecessor waits, as
    on live workers (each stage serves one micro-batch at a time); without the wait, a
    bandwidth dip that slows the bottleneck below the arrival rate shows no backlog."""
    n = len(lat_s)

    def at(v: list, t: float):
        return v[min(n - 1, max(0, int(t // interval)))] if n else None

    spans, free = [], -float("inf")
    for ti in sorted(issues):
        enter = max(ti, free)
        lat = request_latency(lat_s, interval, enter)
        if lat is None:
            continue
        c = at(cap, enter)
        free = enter + (1.0 / c if c and c > 0 else 0.0)
        spans.append((ti, enter + lat))
    return spans


def request_latency(lat_s: list, interval: float, ti: float, rounds: int = 4) -> float | None:
    """The modelled latency of a request issued at `ti` when interval k's plan takes
    `lat_s[k]` seconds at that interval's bandwidth: the time-weighted mean of the
    intervals it spans, [ti, ti + latency) (a fixed point, from the issue interval's
    latency). A request lives through several intervals - at dilation 200 one
    smart_home request lasts ~25 one-second intervals and the bandwidth trace moves
    within it - and its transfers see those bandwidths, not only the first one."""
    n = len(lat_s)

    def at(t: float):
        return lat_s[min(n - 1, max(0, int(t // interval)))]

    lat = at(ti)
    for _ in range(rounds):
        if lat is None:
            return None
        a, b, acc, w = ti, ti + lat, 0.0, 0.0
        k = int(a // interval)
        while k * interval < b:
            seg = min(b, (k + 1) * interval) - max(a, k * interval)
            v = lat_s[min(n - 1, max(0, k))]
            if seg > 0 and v is not None:
                acc, w = acc + v * seg, w + seg
            k += 1
        lat = acc / w if w > 0 else lat
    return lat
