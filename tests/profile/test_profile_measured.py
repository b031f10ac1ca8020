"""Measured device profiles: the format, the fit, the cost model's use of them
(worked example 3 of docs/cost-model.md, recomputed by hand) and the bad-input errors."""

import json

import pytest

from dora_rl.cost import CostModel
from dora_rl.errors import ProfileError, ScenarioError
from dora_rl.plan import Plan
from dora_rl.profile.measured import FORMAT, DeviceProfile
from dora_rl.scenario import Scenario
from tests.toy import HOME, LAB, toy_profile

BLOCKS = ["b0", "b1", "b2", "b3"]


def write(tmp_path, name="phone.json", **kw):
    d = {"format": FORMAT, "model": "toy", "n_blocks": 4, "blocks": BLOCKS, "batch_sizes": [1, 2],
         "forward_s": [[0.012, 0.020], [0.030, 0.050], [0.010, 0.018], [0.002, 0.003]], "threads": 1}
    d.update(kw)
    p = tmp_path / name
    p.write_text(json.dumps(d))
    return p


def with_profile(base: dict, device: str, path) -> dict:
    devs = [dict(d, profile=str(path.name)) if d["name"] == device else d for d in base["devices"]]
    return {**base, "devices": devs}


def test_fit_is_the_line_through_the_timings():
    dp = DeviceProfile.from_dict(json.loads(json.dumps({
        "format": FORMAT, "model": "toy", "n_blocks": 2, "blocks": ["a", "b"], "batch_sizes": [1, 2, 4],
        "forward_s": [[3.0, 5.0, 9.0], [4.0, 3.0, 2.0]]})))
    fixed, per = dp.fit()
    assert fixed[0] == pytest.approx(1.0) and per[0] == pytest.approx(2.0)    # 1 + 2 n exactly
    assert fixed[1] == pytest.approx(2.0) and per[1] == 0.0                   # falling: noise -> flat at the minimum
    one = DeviceProfile("toy", ["a"], [4], [[2.0]])
    assert one.fit() == ([0.0], [0.5])                                        # one batch size: through the origin


def test_worked_example_3_inference(tmp_path):
    """HOME plan A with the phone's measured times: fixed 4+10 ms, per sample 8+20 ms."""
    write(tmp_path)
    sc = Scenario.from_dict(with_profile(HOME, "phone", tmp_path / "phone.json"), base_dir=tmp_path,
                            profile=toy_profile())
    m = CostModel(sc).evaluate(Plan.from_dict({"microbatches": 1, "stages": [
        {"blocks": [0, 2], "devices": ["phone"]}, {"blocks": [2, 4], "devices": ["laptop"]}]}))
    c0 = (0.004 + 0.010) + 2 * (0.008 + 0.020)          # 0.070 s instead of 2 * 6e9 / 1e11 = 0.120 s
    assert m.stage_compute_s[0] == pytest.approx(c0)
    assert m.stage_compute_s[1] == pytest.approx(0.016)  # the laptop still uses FLOPs / gflops
    assert m.latency_ms == pytest.approx((0.070 + 0.016 + 0.022 + 0.0028) * 1e3)   # 110.8 ms
    assert m.throughput == pytest.approx(1 / 0.070)
    phone = 5 * 0.070 + 0.5 * (0.5 - 0.070) + 0.1 * 0.208
    assert m.energy_by_device[0] == pytest.approx(phone)   # 0.5858 J


def test_worked_example_3_training(tmp_path):
    """LAB with jetA measured at batch 2 only: per sample 10+15 ms forward, 15+25 ms backward."""
    write(tmp_path, "jetA.json", batch_sizes=[2], forward_s=[[0.01], [0.02], [0.01], [0.01]],
          train_forward_s=[[0.02], [0.03], [0.5], [0.5]], backward_s=[[0.03], [0.05], [0.5], [0.5]])
    sc = Scenario.from_dict(with_profile(LAB, "jetA", tmp_path / "jetA.json"), base_dir=tmp_path,
                            profile=toy_profile())
    m = CostModel(sc).evaluate(Plan.from_dict({"microbatches": 4, "stages": [
        {"blocks": [0, 2], "devices": ["jetA"]}, {"blocks": [2, 4], "devices": ["jetB", "jetC"]}]}))
    u0 = 2 * (0.01 + 0.015) + 2 * (0.015 + 0.025)        # 0.05 forward + 0.08 backward
    # x1 = 0.0005 + 2 x 100 kB / 1e8 (jetA's send interface carries both flows) = 0.0025 s, twice
    it = u0 + 0.06 + 0.005 + 3 * u0 + 0.031               # fill + steady state + all-reduce = 0.616 s
    assert m.stage_compute_s[0] == pytest.approx(0.05)
    assert m.latency_ms == pytest.approx(it * 1e3)
    assert m.busy_s[0] == pytest.approx(4 * u0)
    assert m.energy_by_device[0] == pytest.approx(10 * 0.52 + 2 * (0.616 - 0.52) + 0.05 * 1.6)   # 5.472 J


def test_a_member_with_no_sample_costs_nothing(tmp_path):
    write(tmp_path)
    d = with_profile({**HOME, "workload": {**HOME["workload"], "batch": 1}}, "tv", tmp_path / "phone.json")
    sc = Scenario.from_dict(d, base_dir=tmp_path, profile=toy_profile())
    cm = CostModel(sc)
    c, per = cm.stage_compute(0, 4, [1, 2], cm.realized(1, [0.5, 0.5]), 1)
    assert per[1] == 0.0 and per[0] == pytest.approx(1 * 10e9 / 5e11)


def test_profile_for_another_model_or_block_count_names_both(tmp_path):
    write(tmp_path, model="resnet18")
    with pytest.raises(ScenarioError) as e:
        Scenario.from_dict(with_profile(HOME, "phone", tmp_path / "phone.json"), base_dir=tmp_path,
                           profile=toy_profile())
    assert "resnet18" in str(e.value) and "'toy'" in str(e.value)
    write(tmp_path, n_blocks=3, blocks=BLOCKS[:3], forward_s=[[0.1, 0.2]] * 3)
    with pytest.raises(ScenarioError) as e:
        Scenario.from_dict(with_profile(HOME, "phone", tmp_path / "phone.json"), base_dir=tmp_path,
                           profile=toy_profile())
    assert "3 blocks" in str(e.value) and "4 blocks" in str(e.value)


def test_training_needs_backward_times(tmp_path):
    write(tmp_path, "jetA.json")
    with pytest.raises(ScenarioError, match="--training"):
        Scenario.from_dict(with_profile(LAB, "jetA", tmp_path / "jetA.json"), base_dir=tmp_path,
                           profile=toy_profile())


@pytest.mark.parametrize("bad", [{"format": "x"}, {"forward_s": [[0.1]] * 4}, {"batch_sizes": [0, 2]},
                                 {"forward_s": [[0.1, -1.0]] * 4}, {"train_forward_s": [[0.1, 0.2]] * 4}])
def test_bad_profiles_are_typed_errors(tmp_path, bad):
    write(tmp_path, **bad)
    with pytest.raises(ProfileError):
        DeviceProfile.load(tmp_path / "phone.json")


def test_missing_profile_file_is_a_scenario_error(tmp_path):
    with pytest.raises(ScenarioError, match="does not exist"):
        Scenario.from_dict(with_profile(HOME, "phone", tmp_path / "nope.json"), base_dir=tmp_path,
                           profile=toy_profile())


def test_slowed_scales_measured_times_and_round_trips(tmp_path):
    write(tmp_path)
    sc = Scenario.from_dict(with_profile(HOME, "phone", tmp_path / "phone.json"), base_dir=tmp_path,
                            profile=toy_profile())
    plan = Plan.from_dict({"microbatches": 1, "stages": [{"blocks": [0, 4], "devices": ["phone"]}]})
    c = CostModel(sc).evaluate(plan).stage_compute_s[0]
    assert CostModel(sc.slowed(10)).evaluate(plan).stage_compute_s[0] == pytest.approx(10 * c)
    again = Scenario.from_dict(sc.to_dict(), profile=toy_profile())     # absolute path kept
    assert CostModel(again).evaluate(plan).stage_compute_s[0] == pytest.approx(c)


@pytest.mark.parametrize("kind", ["inference", "training"])
def test_reference_reads_measured_times(tmp_path, kind):
    """The instance's reference (the best single-device latency, found by bounding each
    device by its compute time) equals the least over every device when a device's times
    are measured: the phone measured at 1 ms a block, the best device, where its FLOPs
    alone would bound it above the laptop's latency (inference); jetA's measured forward +
    backward (training)."""
    from dora_rl.envs.instance import Instance

    if kind == "inference":
        write(tmp_path, forward_s=[[0.001, 0.001]] * 4)
        sc = Scenario.from_dict(with_profile(HOME, "phone", tmp_path / "phone.json"), base_dir=tmp_path,
                                profile=toy_profile())
    else:
        write(tmp_path, "jetA.json", batch_sizes=[2], forward_s=[[0.01], [0.02], [0.01], [0.01]],
              train_forward_s=[[0.002], [0.003], [0.001], [0.001]], backward_s=[[0.003], [0.005], [0.001], [0.001]])
        sc = Scenario.from_dict(with_profile(LAB, "jetA", tmp_path / "jetA.json"), base_dir=tmp_path,
                                profile=toy_profile())
    inst = Instance(sc, sc.cluster.n)
    assert inst.cost.timed is not None and inst.objective == "latency"
    every = [inst.cost.evaluate_stages([(0, inst.B, [d], [1.0])], 1).latency_ms for d in range(inst.n)]
    assert inst.ref_obj == min(every)
    if kind == "inference":
        assert min(every) == every[0]
