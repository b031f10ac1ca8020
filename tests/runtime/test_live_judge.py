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
