"""Modelled time in the emulation (docs/runtime.md, "Modelled time"): a thread that acts
late after a modelled event acts at that event, within the slack; compute sections and
paced chunks are timed from it; a backlogged urgent sender keeps its priority mark; a
device interface speeds up with its medium's live factor, as its links do."""

from __future__ import annotations

import os

from dora_rl.runtime.emulation import (
    PRIO_GRACE_S,
    SLACK_S,
    Calendar,
    ComputeClock,
    NetEmulator,
    advance,
    calendar_slots,
    now,
    set_medium_scale,
    settle,
    vtime,
)


def test_vtime_absorbs_lateness_within_the_slack_only():
    settle()
    m = now() - 1.0            # a modelled event one second ago (the thread's clock only moves forward)
    advance(m)
    assert vtime(m + 0.5 * SLACK_S) == m                     # late by half the slack: at the event
    assert vtime(m + 2 * SLACK_S) == m + 2 * SLACK_S         # too late: at the real time
    advance(m - 0.5)                                         # an older event does not move it back
    assert vtime(m + 0.01) == m
    settle()                                                 # a command arrived: forget it
    assert vtime(m + 0.01) == m + 0.01


def test_a_late_compute_section_ends_model_seconds_after_its_modelled_start():
    settle()
    clock = ComputeClock(emulate=True)
    prev_end = now() - 0.02    # the previous section ended 20 ms ago (< SLACK_S): this one starts then
    advance(prev_end)
    t0 = now()
    clock.stretch(t0, 0.03)
    assert clock.credited_s == t0 - prev_end                 # the 20 ms the host was late
    assert vtime(prev_end + 0.03) == prev_end + 0.03         # the thread's modelled time: start + model
    assert clock.busy_s == 0.03 and clock.saturated == 0


def _net(tmp_path):
    n = 2
    net = {"bw": [[4e6] * n for _ in range(n)], "lat": [[0.001] * n for _ in range(n)],
           "hops": [[[(0, 1)] for _ in range(n)] for _ in range(n)], "medium_bps": [4e6]}
    path = os.path.join(tmp_path, "cal.bin")
    Calendar(path, calendar_slots(n, 1), create=True).close()
    return NetEmulator(net, path)


def test_a_message_is_paced_from_its_offer_time(tmp_path):
    em = _net(tmp_path)
    settle()
    offered = now() - 0.01     # offered 10 ms ago; the sender thread woke late
    advance(offered)
    deliver = em.pace(0, 1, 16_000, {})
    # one chunk of 16000 B (<= 16 kB: one piece) on an idle calendar: 16000 / 4e6 = 4 ms from
    # the offer, + 1 ms latency
    assert abs(deliver - (offered + 0.004 + 0.001)) < 1e-9
    em.close()


def test_a_backlogged_urgent_sender_keeps_its_mark_past_its_chunk(tmp_path):
    em = _net(tmp_path)
    slot = em._mark_slot(0, 0)
    settle()
    # 4000 B: one chunk (<= 16 kB); nothing queued behind: marked to the chunk's end
    end = em.pace(0, 1, 4_000, {}, {0: 0}) - 0.001
    assert abs(em.cal.read(slot) - end) < 1e-9
    settle()
    end = em.pace(0, 1, 4_000, {"backlog": True}, {0: 0}) - 0.001   # another message waits: + grace
    assert abs(em.cal.read(slot) - (end + PRIO_GRACE_S)) < 1e-9
    em.close()


def test_real_compute_is_not_backdated():
    # --no-emulate: a section runs at this machine's speed; what the thread does next
    # happens after it, even when its input was delivered within the slack before
    settle()
    delivered = now() - 0.01
    advance(delivered)
    clock = ComputeClock(emulate=False)
    t0 = now()
    clock.stretch(t0, 1.0)
    t1 = now()
    assert vtime(t1) >= t0 > delivered and clock.credited_s == 0.0


def test_an_interface_scales_with_its_medium_factor(tmp_path):
    # two devices on one medium: pair 4e6 B/s, medium 8e6, each interface as fast as its one
    # link (4e6). The live factor 2 doubles the link (8e6) and, as the cost model's
    # with_medium_mbps has it, the interfaces (8e6); the medium (16e6) does not bind.
    # 16000 B: 16000 / 8e6 = 2 ms from the offer + 1 ms latency (with the interfaces kept at
    # their nominal 4e6: 4 ms + 1 ms)
    n = 2
    net = {"bw": [[4e6] * n for _ in range(n)], "lat": [[0.001] * n for _ in range(n)],
           "hops": [[[(0, 1)] for _ in range(n)] for _ in range(n)], "medium_bps": [8e6],
           "iface_bps": [4e6, 4e6], "iface_links": [[(4e6, 0)], [(4e6, 0)]]}
    path = os.path.join(tmp_path, "cal.bin")
    set_medium_scale(path, [2.0])
    Calendar(path, calendar_slots(n, 1), create=True).close()
    em = NetEmulator(net, path)
    settle()
    offered = now()
    advance(offered)
    deliver = em.pace(0, 1, 16_000, {})
    assert abs(deliver - (offered + 0.002 + 0.001)) < 1e-9
    em.close()


def test_interface_links_are_the_fastest_link_law():
    from dora_rl.cluster.model import Cluster
    # a: 100 Mbps on w and 40 Mbps wired -> 12.5e6 B/s; at w x 0.25 the wired link (5e6) is faster
    cl = Cluster.from_dict({"devices": [{"name": "a", "gflops": 1}, {"name": "b", "gflops": 1},
                                        {"name": "c", "gflops": 1}],
                            "links": [{"a": "a", "b": "b", "mbps": 100, "medium": "w"},
                                      {"a": "a", "b": "c", "mbps": 40}],
                            "media": {"w": {"mbps": 100}}})
    assert cl.interface_links()[0] == [(12.5e6, 0), (5e6, -1)]
    assert cl.interface_bps() == [12.5e6, 12.5e6, 5e6]
    assert cl.with_medium_mbps("w", 25).interface_bps()[0] == 5e6



def test_chunks_are_one_size_for_every_message_and_small_ones_go_whole():
    from dora_rl.runtime.emulation import chunk_bytes
    # a dilated WiFi at 250 kB/s (2 ms = 500 B): a 600 kB input in 16 kB chunks, a 4 kB answer
    # whole (it waits for at most one of the input's chunks: 16384 / 250e3 = 65.5 ms, then
    # 4000 / 250e3 = 16 ms), a 100 kB boundary in 16 kB chunks too (fair between the two)
    assert chunk_bytes(250e3, 602_112) == chunk_bytes(250e3, 100_000) == 16384.0
    assert chunk_bytes(250e3, 4_000) == 4000.0
    # a fast link (25 MB/s): ~2 ms chunks, 50 kB
    assert chunk_bytes(25e6, 602_112) == 50_000.0
