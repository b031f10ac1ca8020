"""The discrete-event simulator on the worked examples of docs/cost-model.md (tests/toy.py):
equal to the analytic model where one flow runs at a time, and hand-computed where
they differ (docs/simulator.md)."""

from __future__ import annotations

import pytest

from dora_rl.cost import CostModel
from dora_rl.errors import ScheduleError
from dora_rl.plan import Plan
from dora_rl.schedule import Schedule
from dora_rl.sim import simulate
from tests.toy import HOME, LAB, scenario


@pytest.fixture(scope="module")
def home():
    return CostModel(scenario(HOME))


@pytest.fixture(scope="module")
def lab():
    return CostModel(scenario(LAB))


def lab_plan(M):
    return Plan.make([(0, 2, ["jetA"]), (2, 4, ["jetB", "jetC"], [0.5, 0.5])], M)


def test_two_stage_chain_equals_the_analytic_model(home):
    # plan A of worked example 1: one flow at a time, so the simulator's sum is the model's:
    # 0.120 + 0.016 + (0.002 + 200 kB / 1e7) + (0.002 + 8 kB / 1e7) = 160.8 ms; energy 3.7212 J
    plan = Plan.make([(0, 2, ["phone"]), (2, 4, ["laptop"])], 1)
    r, m = simulate(home, plan), home.evaluate(plan)
    assert r.latency_ms == pytest.approx(160.8) == pytest.approx(m.latency_ms)
    assert r.energy_j == pytest.approx(3.7212)
    assert r.throughput == pytest.approx(1 / 0.120)    # the phone's stage


def test_split_stage_answers_do_not_collide(home):
    # plan B: phone computes 0.040 s, sends 200 kB to laptop and tv at once: they share the
    # 1e7 B/s channel (5e6 each) -> both land at 0.040 + 0.040 + 0.002 = 0.082 s. The laptop
    # finishes at 0.098 and its 4 kB answer is alone on the channel (0.0004 + 0.002); the tv
    # finishes at 0.114, its answer lands at 0.114 + 0.0004 + 0.002 = 0.1164 s. The analytic
    # model charges both answers as concurrent (0.0008 + 0.002): 116.8 ms.
    plan = Plan.make([(0, 1, ["phone"]), (1, 4, ["laptop", "tv"], [0.5, 0.5])], 1)
    assert simulate(home, plan).latency_ms == pytest.approx(116.4)
    assert home.evaluate(plan).latency_ms == pytest.approx(116.8)


def test_training_one_microbatch_equals_the_analytic_model(lab):
    # M = 1 (m = 8): u0 = 3 * 8 * 6e9 / 2e11 = 0.72 s, u1 = 3 * 4 * 4e9 / 2e11 = 0.24 s; jetA
    # sends 400 kB to jetB and to jetC at once through its one 1e8 B/s send interface:
    # 0.0005 + 800 kB / 1e8 = 0.0085 s, the gradients back through its receive interface
    # likewise; all-reduce 2 x (0.0005 + 1.5 MB / 1e8) = 0.031 s (jetB -> jetC and back use
    # separate directions): 0.72 + 0.24 + 2 x 0.0085 + 0.031 = 1.008 s
    r = simulate(lab, lab_plan(1))
    assert r.latency_ms == pytest.approx(1008.0) == pytest.approx(lab.evaluate(lab_plan(1)).latency_ms)


def test_training_1f1b_hides_the_small_stage(lab):
    # M = 4 (one 100 kB sample to each member, 0.0005 + 200 kB / 1e8 = 0.0025 s through jetA's
    # interface): jetA runs F0 F1 (0.06 s each); stage 1 gets mb 0 at 0.0625, runs F0 B0
    # (0.02 + 0.04) and the gradients land at 0.125; from then on jetA never waits: B0 F2 B1
    # F3 B2 B3 = 4 x 0.12 + 2 x 0.06 -> drain at 0.125 + 0.6 = 0.725 s; then the all-reduce
    # (0.031 s): 0.756 s. The analytic fill + steady state: 0.18 + 0.06 + 2 x 0.0025 + 3 x
    # 0.18 + 0.031 = 0.816 s.
    assert simulate(lab, lab_plan(4)).latency_ms == pytest.approx(756.0)
    assert lab.evaluate(lab_plan(4)).latency_ms == pytest.approx(816.0)


def test_allreduce_during_backward_and_buckets(lab):
    # stage 1's last backward ends at 0.5475 (its last input lands at 0.4875): the all-reduce
    # started then ends at 0.5785, inside jetA's backwards: iteration 0.725 s
    early = simulate(lab, lab_plan(4), Schedule(allreduce_start="backward"))
    assert early.latency_ms == pytest.approx(725.0)
    # two buckets after the drain: each 1.5 MB ring, 2 steps of (0.0005 + 0.75 MB / 1e8) = 0.016 s
    two = simulate(lab, lab_plan(4), Schedule(buckets=2))
    assert two.latency_ms == pytest.approx(725.0 + 32.0)


def test_priorities_let_the_downstream_transfer_go_first(home):
    # [0,1) on the laptop, [1,4) on the tv, M = 2 (1 sample each), input born on the phone.
    # act0 (100 kB) of mb 0 runs [0, 0.010], lands 0.012; mb 1's input follows [0.010, ...).
    # The laptop computes mb 0 in 0.004 s and sends act1 (200 kB) at 0.016, while 40 kB of
    # mb 1's input remain.
    # FIFO (fair): both at 5e6: act0.1 ends 0.024 (lands 0.026), act1.0 then alone: 160 kB ->
    #   0.040 (lands 0.042); laptop F1 0.026-0.030, act1.1 waits for act1.0 and runs
    #   [0.040, 0.060] (lands 0.062); tv F0 0.042-0.074, F1 0.074-0.106, answer 4 kB:
    #   0.106 + 0.0004 + 0.002 = 0.1084 s.
    # act1 before act0: act1.0 [0.016, 0.036] (lands 0.038); act0.1's last 40 kB [0.036, 0.040]
    #   (lands 0.042); F1 0.042-0.046; act1.1 [0.046, 0.066] (lands 0.068); tv F0 0.038-0.070,
    #   F1 0.070-0.102; answer lands 0.102 + 0.0024 = 0.1044 s.
    plan = Plan.make([(0, 1, ["laptop"]), (1, 4, ["tv"])], 2)
    assert simulate(home, plan).latency_ms == pytest.approx(108.4)
    sched = Schedule(priorities=(("wifi", ("act2", "act1", "act0")),))
    assert simulate(home, plan, sched).latency_ms == pytest.approx(104.4)


def test_schedule_names_are_checked_against_the_plan(home):
    plan = Plan.make([(0, 1, ["laptop"]), (1, 4, ["tv"])], 2)
    with pytest.raises(ScheduleError, match="unknown medium 'ether'"):
        simulate(home, plan, Schedule(priorities=(("ether", ("act0",)),)))
    with pytest.raises(ScheduleError, match="'grad1' does not cross"):
        simulate(home, plan, Schedule(priorities=(("wifi", ("act0", "act1", "act2", "grad1")),)))
    with pytest.raises(ScheduleError, match="missing act2"):
        simulate(home, plan, Schedule(priorities=(("wifi", ("act1", "act0")),)))


def test_schedule_json_round_trip_and_bad_entries():
    d = {"microbatches": 2, "stages": [{"blocks": [0, 4], "devices": ["tv"], "shares": [1.0]}],
         "schedule": {"priorities": {"wifi": ["act1", "act0"]}, "allreduce": {"buckets": 2, "start": "backward"},
                      "extra_warmup": 1}}
    plan = Plan.from_dict(d)
    assert plan.schedule == Schedule((("wifi", ("act1", "act0")),), 2, "backward", 1)
    assert Plan.from_dict(plan.to_dict()) == plan
    assert "schedule" not in Plan.make([(0, 4, ["tv"])]).to_dict()      # no schedule: FIFO
    bad = [({"priorities": {"wifi": ["act0", "act0"]}}, "not a permutation: act0"),
           ({"priorities": {"wifi": ["fast"]}}, "'fast' is not a flow class"),
           ({"allreduce": {"start": "soon"}}, "allreduce.start"),
           ({"allreduce": {"buckets": 0}}, "buckets"),
           ({"order": 1}, "unknown key")]
    for sched, msg in bad:
        with pytest.raises(ScheduleError, match=msg):
            Plan.from_dict({**d, "schedule": sched})


def test_measured_block_times_are_the_cost_models(tmp_path):
    # worked example 3: the phone measured (fixed 4 + 10 ms, per sample 8 + 20 ms): c0 = 0.070 s
    # instead of 0.120 s; one flow at a time, so 0.070 + 0.016 + 0.022 + 0.0028 = 110.8 ms
    from dora_rl.scenario import Scenario
    from tests.profile.test_profile_measured import with_profile, write
    from tests.toy import toy_profile

    write(tmp_path)
    sc = Scenario.from_dict(with_profile(HOME, "phone", tmp_path / "phone.json"), base_dir=tmp_path,
                            profile=toy_profile())
    plan = Plan.make([(0, 2, ["phone"]), (2, 4, ["laptop"])], 1)
    assert simulate(CostModel(sc), plan).latency_ms == pytest.approx(110.8)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("kind", ["inference", "training"])
def test_one_flow_at_a_time_equals_the_analytic_model_on_random_instances(seed, kind):
    # a chain of one-device stages with one micro-batch: every transfer runs alone, so the
    # simulator's critical path is the analytic sum (rates min(bw, C / hops) in both)
    import numpy as np

    from dora_rl.cluster import random_cluster
    from dora_rl.scenario import QoE, Scenario, Workload
    from dora_rl.synthetic import random_profile

    rng = np.random.default_rng(seed)
    prof = random_profile(rng, n_blocks=10)
    cl = random_cluster(rng, n_devices=5)
    wl = Workload(kind, 4, 1, 2.0 if kind == "inference" else None, cl.names[int(rng.integers(5))], "sgd")
    cm = CostModel(Scenario("t", {"profile": "synthetic"}, prof, cl, wl, QoE(None, None, None, "latency")))
    devs = rng.permutation(cl.names).tolist()[:4]
    cuts = sorted(rng.choice(np.arange(1, 10), 3, replace=False).tolist())
    b = [0, *cuts, 10]
    plan = Plan.make([(b[i], b[i + 1], [devs[i]]) for i in range(4)], 1)
    r, m = simulate(cm, plan), cm.evaluate(plan)
    assert r.latency_ms == pytest.approx(m.latency_ms, rel=1e-9)
    if kind == "training":
        assert r.energy_j == pytest.approx(m.energy_j, rel=1e-9)


def test_a_shared_interface_and_a_relay():
    from tests.toy import HUB, RELAY

    # HUB: the camera feeds both boards one 100 kB sample each through its one 100 Mbps
    # (1.25e7 B/s) send interface: 0.001 + 200 kB / 1.25e7 = 0.017 s; each board computes
    # 1e10 / 2e11 = 0.05 s; both 4 kB answers share the camera's receive interface:
    # 0.001 + 8 kB / 1.25e7 = 0.00164 s -> 68.64 ms, the analytic figure too
    cm = CostModel(scenario(HUB))
    plan = Plan.make([(0, 4, ["boardA", "boardB"], [0.5, 0.5])], 1)
    assert simulate(cm, plan).latency_ms == pytest.approx(68.64) == pytest.approx(cm.evaluate(plan).latency_ms)
    # RELAY: cam -> phone -> server (1e7 B/s, 2 ms per hop): input 0.004 + 200 kB / 1e7 = 0.024 s,
    # server 2e10 / 5e11 = 0.04 s, answer 0.004 + 8 kB / 1e7 = 0.0048 s -> 68.8 ms; the phone
    # relays 208 kB in and out: 0.1 J/MB x 0.416 MB + idle 0.5 W x 0.5 s = 0.2916 J
    cm = CostModel(scenario(RELAY))
    r = simulate(cm, Plan.make([(0, 4, ["server"])], 1))
    assert r.latency_ms == pytest.approx(68.8)
    assert r.energy_by_device["phone"] == pytest.approx(0.2916)


def test_a_request_in_a_stream_shares_the_medium_with_its_neighbours(home):
    from dora_rl.sim.simulate import stream_latency
    # the whole toy model on the laptop: input 2 x 100 kB phone -> laptop at 1e7 B/s = 20 ms
    # (+ 2 ms), compute 2 x 10 GFLOP / 500 GFLOP/s = 40 ms, answer 8 kB = 0.8 ms (+ 2 ms):
    # 64.8 ms alone. Requests 50 ms apart: request r+1's input [50, 70) meets request r's
    # answer at 62 (both on the 1e7 B/s WiFi: 5e6 each). The answer takes 8 kB / 5e6 = 1.6 ms
    # (not 0.8); the input has 80 kB left at 62, 8 kB go at 5e6 until 63.6 and 72 kB at 1e7:
    # it ends at 70.8, so r+1 computes from 72.8 to 112.8 (0.8 ms late) and its answer,
    # meeting r+2's input the same way, lands 62.8 + 1.6 + 2 = 66.4 ms after its issue:
    # every middle request takes 66.4 ms
    plan = Plan.make([(0, 4, ["laptop"])], 1)
    assert home.evaluate(plan).latency_ms == pytest.approx(64.8)
    assert stream_latency(home, plan, 0.050) * 1e3 == pytest.approx(66.4)
    # 100 ms apart, or 40 ms (r+1's input [40, 60) is over before r's answer at 62): alone
    assert stream_latency(home, plan, 0.100) * 1e3 == pytest.approx(64.8)
    assert stream_latency(home, plan, 0.040) * 1e3 == pytest.approx(64.8)


def test_a_replayed_request_sees_the_bandwidth_of_the_moments_its_transfers_run(home):
    from dora_rl.adapter.compose import conditions
    from dora_rl.sim.program import capacities
    from dora_rl.sim.simulate import replay
    # the whole toy model on the laptop (64.8 ms alone: input 200 kB at 1e7 B/s = 20 ms + 2,
    # compute 40 ms, answer 8 kB = 0.8 ms + 2). The WiFi drops to 20 Mbps (2.5e6 B/s: its
    # links with it) at t:
    # - at 10 ms, during the input: 100 kB went at 1e7, 100 kB go at 2.5e6 = 40 ms -> 50,
    #   delivered 52, compute to 92, answer 8 kB / 2.5e6 = 3.2 ms + 2 -> 97.2 ms
    # - at 60 ms, during the compute: only the answer is slow: 62 + 3.2 + 2 = 67.2 ms
    # - at 70 ms, after the answer went: 64.8 ms
    plan = Plan.make([(0, 4, ["laptop"])], 1)
    slow = capacities(CostModel(conditions(scenario(HOME), {"wifi": 20.0})))
    for t, ms in ((0.010, 97.2), (0.060, 67.2), (0.070, 64.8)):
        assert replay(home, plan, [0.0], [(t, slow)])[0] * 1e3 == pytest.approx(ms)
    # two requests 30 ms apart, the drop at 60 ms: the second's input [30, 50) is fast, but the
    # laptop holds the first until 62, so it computes 62-102 and answers 102 + 3.2 + 2 = 107.2
    assert [x * 1e3 for x in replay(home, plan, [0.0, 0.030], [(0.060, slow)])] == pytest.approx([67.2, 107.2])
