"""A live interval is judged on latency by the requests in service during it (live_judge)."""

from dora_rl.runtime.live_judge import finalize, in_service, judge, latency_verdict, overlap


def test_a_request_is_in_service_in_every_interval_it_spans():
    # one request issued at 0.5, answered at 3.2 (2.7 s): in service in [0,1), [1,2), [2,3), [3,4)
    spans = [(0.5, 3.2)]
    for a in (0.0, 1.0, 2.0, 3.0):
        assert in_service(spans, a, a + 1.0, t_now=10.0) == [3.2 - 0.5]
    assert in_service(spans, 4.0, 5.0, t_now=10.0) == []        # answered before the interval
    assert in_service([(6.0, 7.0)], 4.0, 5.0, t_now=10.0) == []  # issued after it


def test_an_unanswered_request_counts_its_wait_so_far():
    # issued at 1.0, not answered, judged at 4.5: waited 3.5 s
    assert in_service([(1.0, None)], 4.0, 5.0, t_now=4.5) == [3.5]


def test_verdict_is_the_p95_of_the_requests_in_service_against_the_slo():
    # latencies 0.1 and 0.2 s: p95 (linear) = 0.1 + 0.95 x 0.1 = 0.195 s = 195 ms
    assert latency_verdict([0.1, 0.2], 190.0)[0].startswith("latency: p95 195 ms of the 2 request(s)")
    assert latency_verdict([0.1, 0.2], 200.0) == []
    assert latency_verdict([], 1.0) == []              # nothing in service: nothing violated
    assert latency_verdict([5.0], None) == []          # no SLO


def test_final_judgement_replaces_the_provisional_latency_verdict_and_keeps_the_others():
    # an interval [0, 1) with one request issued at 0.2, still waiting at 1.0 (0.8 s so far < SLO 1 s):
    # provisionally ok; answered at 2.4 (2.2 s > 1 s): finally violated. A throughput violation stays.
    row = {"t": 0.0, "t_end": 1.0, "violations": ["throughput: served 0 req/s"], "ok": False}
    spans = {0: [0.2, None]}
    judge(row, spans.values(), 0.0, 1.0, 1.0, 1000.0)
    assert row["violations"] == ["throughput: served 0 req/s"] and row["latency_ms"] == 800.0
    spans[0][1] = 2.4
    finalize([row], spans.values(), 3.0, 1000.0)
    assert row["violations"][0].startswith("latency: p95 2200 ms") and row["violations"][1].startswith("throughput")
    assert not row["ok"] and row["in_service"] == 1


def test_overlap_of_pauses_with_a_window():
    # pauses [1, 3) and [5, 6) inside the window [2, 5.5): 1 + 0.5 = 1.5 s
    assert overlap([(1.0, 3.0), (5.0, 6.0)], 2.0, 5.5) == 1.5


def test_a_simulated_request_takes_the_mean_latency_of_the_intervals_it_spans():
    from dora_rl.runtime.live_judge import request_latency
    # intervals of 1 s with modelled latencies 2, 2, 4, 4, ... s; a request issued at 1.0:
    # round 1: L = 2 (its issue interval) -> spans [1, 3): (2 + 4) / 2 = 3
    # round 2: [1, 4): (2 + 4 + 4) / 3 = 10/3; round 3: [1, 4.333): (2 + 4 + 4 + 4/3) / (10/3) = 3.4
    lat = [2.0, 2.0] + [4.0] * 10
    assert abs(request_latency(lat, 1.0, 1.0, rounds=3) - 3.4) < 1e-9
    assert request_latency([1.5] * 5, 1.0, 0.5) == 1.5          # constant bandwidth: the interval's latency


def test_simulated_rows_judged_at_the_live_request_instants():
    from dora_rl.runtime.live_judge import at_request_instants
    # 6 intervals of 1 s, modelled latency 0.5 s except interval 3 (2.0 s); SLO 1 s.
    # Requests at 0.2 (0.5 s: in service in [0,1) only) and 3.1 (latency 2.0 from its issue
    # interval, then the mean over its span: [3.1, 5.1) -> (0.9 x 2 + 1.1 x 0.5) / 2 = 1.175,
    # [3.1, 4.275) -> (1.8 + 0.275 x 0.5) / 1.175 = 1.649, ... always > 1 s, so it is in service
    # in [3,4) and [4,5) and violates both); [1,2) and [2,3) have no request in service: ok.
    rows = [{"t": float(k), "latency_ms": 2000.0 if k == 3 else 500.0, "violations": [], "ok": True}
            for k in range(6)]
    at_request_instants(rows, [0.2, 3.1], 1.0, 1000.0)
    assert [r["ok"] for r in rows[:3]] == [True, True, True]
    assert not rows[3]["ok"] and not rows[4]["ok"]


def test_a_simulated_request_waits_for_the_pipeline():
    from dora_rl.runtime.live_judge import queued_spans
    # intervals of 1 s; every plan takes 1.5 s per request and serves 0.5 req/s (a
    # service interval of 1 / 0.5 = 2 s). Requests at 0.0, 0.5, 1.0 enter at
    # e0 = 0.0, e1 = max(0.5, 0.0 + 2) = 2.0, e2 = max(1.0, 2.0 + 2) = 4.0 and are answered
    # 1.5 s after they enter: 1.5, 3.5, 5.5 -> latencies 1.5, 3.0, 4.5 s
    lat, cap = [1.5] * 8, [0.5] * 8
    spans = queued_spans(lat, cap, 1.0, [0.0, 0.5, 1.0])
    assert [round(b - a, 9) for a, b in spans] == [1.5, 3.0, 4.5]
    # 4 req/s (0.25 s): the request at 0.5 finds the bottleneck free (0.0 + 0.25 < 0.5)
    assert [round(b - a, 9) for a, b in queued_spans(lat, [4.0] * 8, 1.0, [0.0, 0.5])] == [1.5, 1.5]
    # capacity unknown (None): no wait
    assert [round(b - a, 9) for a, b in queued_spans(lat, [None] * 8, 1.0, [0.0, 0.5])] == [1.5, 1.5]


def test_queueing_marks_the_intervals_of_a_backlog():
    from dora_rl.runtime.live_judge import at_request_instants
    # the case above judged against an SLO of 2 s: the request at 0.5 waits 1.5 s and
    # takes 3.0 s in all, in service over [0.5, 3.5): intervals [0,1) .. [3,4) have it
    # (p95 of {1.5, 3.0} and more > 2 s); [4,5) and [5,6) hold only the third request (4.5 s)
    def rows_at(cap):
        return [{"t": float(k), "latency_ms": 1500.0, "throughput": cap, "violations": [], "ok": True}
                for k in range(8)]
    rows = rows_at(0.5)
    at_request_instants(rows, [0.0, 0.5, 1.0], 1.0, 2000.0)
    assert [r["ok"] for r in rows] == [False] * 6 + [True, True]
    # the same requests on a pipeline that keeps up (4 req/s): 1.5 s each, nothing violates
    fast = rows_at(4.0)
    at_request_instants(fast, [0.0, 0.5, 1.0], 1.0, 2000.0)
    assert all(r["ok"] for r in fast)


def test_simulated_rows_take_the_latency_of_a_request_in_a_stream():
    from dora_rl.plan import Plan
    from dora_rl.runtime.live_judge import in_a_stream
    from tests.toy import HOME, scenario
    # tests/sim's stream case: the toy model on the laptop, 64.8 ms alone, 66.4 ms with
    # requests 50 ms apart (neighbouring transfers share the WiFi); capacity 25 req/s, so a
    # spacing of 30 ms is taken at the service interval, 40 ms: alone again
    plans = [{"id": 0, **Plan.make([(0, 4, ["laptop"])], 1).to_dict()}]

    def rows():
        return [{"t": 0.0, "pids": [0], "fractions": [1.0], "bw_true_mbps": 80.0, "latency_ms": 64.8}]
    r50, r30 = rows(), rows()
    in_a_stream(r50, scenario(HOME), plans, "wifi", 0.050)
    in_a_stream(r30, scenario(HOME), plans, "wifi", 0.030)
    assert abs(r50[0]["latency_ms"] - 66.4) < 1e-6 and r50[0]["latency_ms_alone"] == 64.8
    assert abs(r30[0]["latency_ms"] - 64.8) < 1e-6


def test_served_rate_is_counted_over_three_expected_answers():
    from dora_rl.runtime.live_judge import served
    # need 0.5 req/s: window max(1, 3 / 0.5) = 6 s, judged from t >= 6 + SLO 1 s = 7;
    # offered 0.5 req/s: violated below 0.8 x 0.5 = 0.4 req/s
    assert served([3.0, 5.0, 7.0], 8.0, 1.0, 0.5, 0.5, 1000.0)[2] == []            # 3 / 6 = 0.5
    thr, judged, viol = served([1.0, 5.0], 8.0, 1.0, 0.5, 0.5, 1000.0)               # [2, 8]: 1 / 6
    assert judged and abs(thr - 1 / 6) < 1e-12 and viol and viol[0].startswith("throughput: served")
    assert served([1.0, 5.0], 6.0, 1.0, 0.5, 0.5, 1000.0)[1:] == (False, [])         # not judged before 7 s
    # a drain [2, 5) admitted nothing: offered 0.5 x 3 / 6 = 0.25, bound 0.2 > 1/6: violated;
    # a drain [2, 6): offered 0.5 x 2 / 6, bound 0.133 < 1/6: met
    assert served([1.0, 5.0], 8.0, 1.0, 0.5, 0.5, 1000.0, [(2.0, 5.0)])[2]
    assert served([1.0, 5.0], 8.0, 1.0, 0.5, 0.5, 1000.0, [(2.0, 6.0)])[2] == []


def test_simulated_answers_are_judged_by_the_served_rate_as_live():
    from dora_rl.runtime.live_judge import at_request_instants
    # 10 intervals of 1 s, 0.5 s per request, requests at 0 and 4 (answered at 0.5 and 4.5);
    # need = offered = 0.5 req/s, SLO 1 s (window 6 s, judged from 7 s). At the ends 7 .. 10
    # of intervals 6 .. 9 the windows [1, 7) .. [4, 10) hold one answer (4.5): 1/6 < 0.4 req/s,
    # all four violate. Without the live run's offered rate, no served-rate verdict
    def rows():
        return [{"t": float(k), "latency_ms": 500.0, "violations": [], "ok": True} for k in range(10)]
    judged, plain = rows(), rows()
    at_request_instants(judged, [0.0, 4.0], 1.0, 1000.0, need=0.5, offered_rate=0.5)
    at_request_instants(plain, [0.0, 4.0], 1.0, 1000.0)
    assert [r["ok"] for r in judged] == [True] * 6 + [False] * 4
    assert all(r["ok"] for r in plain)
