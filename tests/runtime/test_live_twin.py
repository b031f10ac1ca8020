"""The live run's twin (runtime/live_twin.py): the live requests replayed through the
simulator tell when each is answered and what the monitor hears, and a probe goes out only
when the live loop would send one."""

import pytest

from dora_rl.adapter import Monitor
from dora_rl.plan import Plan
from dora_rl.runtime.live_twin import LiveMonitorFeed, RequestReplay
from tests.toy import HOME, scenario

LAPTOP = Plan.make([(0, 4, ["laptop"])], 1)


def test_replayed_transfers_are_what_a_worker_reports():
    # the whole toy model on the laptop, WiFi at 80 Mbps (1e7 B/s): one request at 0 sends its
    # 200 kB input phone -> laptop in [0, 20 ms) and gets its 8 kB answer in [62, 62.8 ms)
    # (compute 22-62); a worker reports each from its first byte to its last
    rp = RequestReplay(scenario(HOME), "wifi", [0.0], 1.0)
    got = rp.transfers([(LAPTOP, 80.0)] * 3, 0.0, 1.0)
    assert [(a, b, n) for a, b, n, _, _ in got] == [("phone", "laptop", 200e3), ("laptop", "phone", 8e3)]
    assert [x[3] for x in got] == pytest.approx([0.020, 0.0008])
    assert [x[4] for x in got] == pytest.approx([0.020, 0.0628])
    assert rp.transfers([(LAPTOP, 80.0)] * 3, 0.05, 1.0)[0][1] == "phone"     # only the answer ended in it
    assert rp.spans([(LAPTOP, 80.0)] * 3)[0][1] == pytest.approx(0.0648)


def test_the_twin_monitor_hears_the_transfers_and_probes_only_when_the_live_loop_would():
    sc = scenario(HOME)
    # 80 Mbps: the request's two transfers end at 0.020 and 0.0628 s (interval [0, 1)), so
    # the medium was heard at 0.0628; the live loop probes at a control instant once it
    # heard nothing for 2 s (probe_after_s) and nothing is in flight: not at 1 or 2 (0.94 s,
    # 1.94 s of silence), at 3 (2.94 s)
    mon, feed = Monitor(sc.cluster), LiveMonitorFeed(sc, "wifi", [0.0], 1.0)
    for t in (0.0, 1.0):
        feed(mon, lambda tau: 80.0, 80.0, t, 1.0, LAPTOP, 80.0)
    assert mon.last_seen["wifi"] == pytest.approx(0.0628)
    feed(mon, lambda tau: 80.0, 80.0, 2.0, 1.0, LAPTOP, 80.0)
    assert mon.last_seen["wifi"] == 3.0 and feed.probe_t == 3.0
    # 0.08 Mbps (1e4 B/s): the input takes 20 s; at 3 nothing was heard for 3 s, but the
    # request is in flight on a plan that crosses the WiFi: no probe (it would queue behind it)
    mon, feed = Monitor(sc.cluster), LiveMonitorFeed(sc, "wifi", [0.0], 1.0)
    for t in (0.0, 1.0, 2.0):
        feed(mon, lambda tau: 0.08, 80.0, t, 1.0, LAPTOP, 0.08)
    assert mon.last_seen["wifi"] == 0.0 and feed.probe_t == -float("inf")


def test_a_twin_asked_every_interval_answers_as_a_fresh_replay():
    # the replay caches runs that ended within the rows they saw; asked with one more row
    # each interval (as the live twin is), every answer must equal a fresh replay's
    import random

    rnd = random.Random(3)
    sc = scenario(HOME)
    other = Plan.make([(0, 2, ["phone"]), (2, 4, ["laptop"])], 1)
    issues = sorted(rnd.uniform(0, 12) for _ in range(40))
    rows, rp = [], RequestReplay(sc, "wifi", issues, 1.0)
    for k in range(14):
        rows.append((rnd.choice([LAPTOP, other]), rnd.choice([0.5, 8.0, 80.0])))
        fresh = RequestReplay(sc, "wifi", issues, 1.0)
        assert rp.spans(rows) == fresh.spans(rows)
        assert rp.transfers(rows, k, k + 1) == fresh.transfers(rows, k, k + 1)
    assert rp._runs     # the cache was used
