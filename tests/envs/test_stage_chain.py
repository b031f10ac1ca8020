"""The balanced chains the group key weighs (dora_rl/envs/stage_chain.py), by hand."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from dora_rl.envs.qoe_bound import QoEBound
from dora_rl.envs.stage_chain import _link_order, balanced_chains


def _inst(rate, reach=None, bnd=None, bw=None):
    """Six blocks of 1 FLOP per sample, one sample per micro-batch (inference), devices of
    `rate` FLOP/s, no link latency; `bnd[r]` bytes cross a boundary after block r - 1."""
    n = len(rate)
    return SimpleNamespace(
        fp=[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0], B=6, batch=1, M=1, back=1.0, training=False,
        rate=np.array(rate, dtype=float), src=n - 1,
        reach=np.array(reach if reach is not None else [[6] * 7] * n),
        bnd_l=np.array(bnd if bnd is not None else [0.0] * 7),
        lat=np.zeros((n, n)), bw=np.array(bw) if bw is not None else np.full((n, n), np.inf))


def balanced_chain(inst, seq, p, duty=None, stretch=(1.0,)):
    """One device order's `balanced_chains` (duty 1 unless given)."""
    return balanced_chains(inst, [seq], p, [np.ones(len(seq)) if duty is None else duty], stretch)[0]


def test_balanced_chain_cuts_where_the_period_is_least():
    """Devices of 1 and 2 FLOP/s: 2 blocks (2 s) and 4 blocks (2 s) balance at T = 2 s. A
    3-byte boundary after block 1 on a 1 B/s link (3 s) rules that cut out: cutting after
    block 0 gives T = max(1, 5 / 2) = 2.5 s, after block 2 max(3, 3 / 2) = 3 s, so the cut
    moves to 1. The fast device at a duty of 0.5 computes as the slow one: 3 and 3 blocks.
    The slow device holding block 0 only: the cut at 1."""
    assert balanced_chain(_inst([1, 2]), [0, 1], 0)[0] == [(0, 2, (0,)), (2, 6, (1,))]
    bw = [[np.inf, 1.0], [1.0, np.inf]]
    assert balanced_chain(_inst([1, 2], bnd=[0, 0, 3, 0, 0, 0, 0], bw=bw), [0, 1], 0)[0] == [(0, 1, (0,)), (1, 6, (1,))]
    assert balanced_chain(_inst([1, 2]), [0, 1], 0, np.array([1.0, 0.5]))[0] == [(0, 3, (0,)), (3, 6, (1,))]
    reach = [[1, 2, 3, 4, 5, 6, 6], [6] * 7]
    assert balanced_chain(_inst([1, 2], reach=reach), [0, 1], 0)[0] == [(0, 1, (0,)), (1, 6, (1,))]
    # from block 2 on, three devices of 1, 1 and 2 FLOP/s: 1 + 1 + 2 blocks at T = 1 s
    assert balanced_chain(_inst([1, 1, 2]), [0, 1, 2], 2)[0] == [(2, 3, (0,)), (3, 4, (1,)), (4, 6, (2,))]
    # a device that holds nothing breaks the chain
    assert balanced_chain(_inst([1, 2], reach=[[0, 1, 2, 3, 4, 5, 6], [6] * 7]), [0, 1], 0) == [None]


def test_link_order_crosses_the_best_links():
    """Source 3; the 100 B/s links run 3 -> 2 -> 0 -> 1 -> 3 (one way), every other is 1 B/s:
    of the 6 orders of {0, 1, 2} that path has the least summed inverse bandwidth."""
    bw = np.ones((4, 4))
    for a, b in ((3, 2), (2, 0), (0, 1), (1, 3)):
        bw[a, b] = 100.0
    assert _link_order(SimpleNamespace(bw=bw, src=3), [0, 1, 2]) == [2, 0, 1]


def test_max_duty_solves_the_battery_target_for_the_busy_share():
    """A 43.2 kJ battery (12 Wh), 0.5 W idle, 5 W active, a 5 h target: it may draw 2.4 W, so
    busy (2.4 - 0.5) / 4.5 = 0.4222 of the time; a device off battery 1; one whose idle
    power alone (3 W) drains it too soon 0."""
    class Bound:
        bj, idle, dyn_w, min_h = np.array([43200.0, np.nan, 43200.0]), np.array([0.5, 1.0, 3.0]), \
            np.array([4.5, 9.0, 1.0]), 5.0
    duty = QoEBound.max_duty(Bound, np.arange(3))
    assert duty == pytest.approx([1.9 / 4.5, 1.0, 0.0], abs=1e-6)
    assert QoEBound.battery_ok_at(Bound, np.array([0]), duty[0] - 1e-4)[0]
    assert not QoEBound.battery_ok_at(Bound, np.array([0]), duty[0] + 1e-3)[0]


def test_stretched_periods_give_the_first_devices_more_and_orders_search_together():
    """At twice the least period (T = 4 s) the 1 FLOP/s device takes 4 blocks and the 2 FLOP/s
    one the other 2; at 4x the first takes all 6 (one stage). Orders of different lengths
    searched together give each its own search's answer."""
    inst = _inst([1, 2, 1])
    assert balanced_chain(inst, [0, 1], 0, stretch=(1.0, 2.0, 4.0)) == [
        [(0, 2, (0,)), (2, 6, (1,))], [(0, 4, (0,)), (4, 6, (1,))], [(0, 6, (0,))]]
    seqs = [[0, 1], [1, 0], [0, 1, 2], [2, 0]]
    got = balanced_chains(inst, seqs, 1, [np.ones(len(q)) for q in seqs])
    assert got == [balanced_chain(inst, q, 1) for q in seqs]
    assert got[2] == [[(1, 2, (0,)), (2, 5, (1,)), (5, 6, (2,))]]      # 5 blocks: T = 1.5 s, 1 + 3 + 1


def test_linked_path_takes_the_fast_device_on_the_good_link():
    """Devices of 10, 9 and 5 FLOP/s; device 0's link to 1 carries 1 B/s, to 2 100 B/s; 1-byte
    boundaries (the median), 6 FLOP of rest: from device 0, device 1 costs 2 / 9 + 1 / 1 =
    1.22 s and device 2 2 / 5 + 1 / 100 = 0.41 s, so 2 comes next, then 1 (100 B/s from 2)."""
    from dora_rl.envs.stage_chain import _linked_path

    bw = np.full((3, 3), 100.0)
    bw[0, 1] = bw[1, 0] = 1.0
    inst = _inst([10, 9, 5], bnd=[1.0] * 7, bw=bw)
    assert _linked_path(SimpleNamespace(inst=inst, p=0), [0, 1, 2]) == [0, 2, 1]


def test_tightened_recuts_only_chains_with_a_battery_device():
    """No device below a full duty: nothing to re-cut. The 2 FLOP/s device on battery at a
    duty of 0.5 (as fast as the other): cut again at 0.97, 0.93 and 0.88 of that share it
    never takes more blocks than at its full share, and at 0.88 (T = 3.41 s: 3 + 3 blocks
    need 0.88 x 3.41 >= 3) still 3 of the 6."""
    from dora_rl.envs.stage_chain import tightened

    class Full:
        @staticmethod
        def max_duty(ds):
            return np.ones(len(ds))

    class Half:
        @staticmethod
        def max_duty(ds):
            return np.where(np.asarray(ds) == 1, 0.5, 1.0)

    inst, plan = _inst([1, 2]), [(0, 3, (0,)), (3, 6, (1,))]
    assert tightened(inst, Full, plan, 0) == []
    got = tightened(inst, Half, plan, 0)
    assert len(got) == 3 and all([ds for _, _, ds in c] == [(0,), (1,)] for c in got)
    assert all(c[1][1] - c[1][0] <= 3 for c in got) and got[-1] == plan


def test_a_battery_device_may_fill_its_share_of_the_energy_window():
    """Period T = 2 s, a device at full duty and one at 0.5, 8 micro-batches. Inference: the
    window is taken as M T, so the second computes 0.5 x 2 = 1 s per micro-batch. Training
    with a fill of at least 6 s: the window is the iteration, at least 6 + 7 x 2 = 20 s =
    2.5 s per micro-batch, so 0.5 x 2.5 = 1.25 s; with a 2 s fill the iteration's 16 s is 2
    s per micro-batch, 1 s. Never above T."""
    from dora_rl.envs.stage_chain import _busy

    T, U, fill = np.array([[2.0]]), np.array([[1.0, 0.5]]), np.array([6.0])
    inst = _inst([1, 1])
    inst.M = 8
    assert _busy(inst, T, U, fill)[0, :, 0] == pytest.approx([2.0, 1.0])
    inst.training = True
    assert _busy(inst, T, U, fill)[0, :, 0] == pytest.approx([2.0, 1.25])
    assert _busy(inst, T, U, np.array([2.0]))[0, :, 0] == pytest.approx([2.0, 1.0])
    assert _busy(inst, T, np.array([[1.0, 1.0]]), fill)[0, :, 0] == pytest.approx([2.0, 2.0])


def test_boundaries_on_a_shared_medium_share_its_capacity():
    """Under latency: devices 0, 1, 2 of 1 FLOP/s, every link of each on one 2 B/s medium; the source,
    device 3, is wired. 3-byte boundaries after blocks 1 and 3, 1-byte ones elsewhere.
    Without the medium the three take 2 blocks each (T = 2 s). With it each of the chain's
    2 boundaries may carry half of 2 T bytes: below T = 3 s a 3-byte cut does not fit, and
    the cuts at 1 and 3 leave device 2 three blocks (3 s); at T = 3 s device 0 takes 3
    blocks and device 1 the rest. The media term of the period (`_media_period`): 1 byte
    over 2 B/s = 0.5 s for that chain, (3 + 3) / 2 = 3 s for the even one."""
    from dora_rl.envs.stage_chain import Media, _media_period

    inst = _inst([1, 1, 1, 1], bnd=[0.0, 1.0, 3.0, 1.0, 3.0, 1.0, 0.0])
    inst.objective = "latency"
    forced, cap, committed = np.array([[1.0], [1.0], [1.0], [0.0]]), np.array([2.0]), np.zeros(1)
    media = Media(forced, cap, committed, 3, (forced.tolist(), cap.tolist(), committed.tolist()))
    even = [(0, 2, (0,)), (2, 4, (1,)), (4, 6, (2,))]
    assert balanced_chain(inst, [0, 1, 2], 0)[0] == even
    got = balanced_chains(inst, [[0, 1, 2]], 0, [np.ones(3)], media=media)[0][0]
    assert got == [(0, 3, (0,)), (3, 6, (1,))]
    assert _media_period(inst, media, got, 1.0) == pytest.approx(0.5)
    assert _media_period(inst, media, even, 1.0) == pytest.approx(3.0)
