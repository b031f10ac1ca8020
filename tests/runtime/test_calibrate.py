"""`dora profile --measure`, `dora calibrate` and `dora run --no-emulate` on tiny_cnn
(structure and bad input only: timings are never asserted, they go to bench/)."""

import json
import os

import pytest
import torch

from dora_rl.cli import main
from dora_rl.cost import CostModel
from dora_rl.profile import get_profile
from dora_rl.profile.measured import DeviceProfile
from dora_rl.runtime import calibrate as cal
from dora_rl.scenario import load_scenario


def test_profile_measure_writes_a_device_profile(tmp_path, capsys):
    out = tmp_path / "p.json"
    assert main(["profile", "tiny_cnn", "--measure", "--batch", "1", "--batch", "3", "--repeats", "1",
                 "--training", "--out", str(out)]) == 0
    dp = DeviceProfile.load(out)
    prof = get_profile("tiny_cnn")
    assert dp.model == "tiny_cnn" and dp.n_blocks == prof.n_blocks
    assert dp.blocks == [b.name for b in prof.blocks] and dp.batch_sizes == [1, 3]
    assert dp.training and dp.threads == 1
    assert all(len(r) == 2 and min(r) > 0 for r in dp.forward_s + dp.backward_s)


def test_profile_measure_bad_input(tmp_path, capsys):
    assert main(["profile", "nope", "--measure"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope" in err and "resnet18" in err
    assert main(["profile", "tiny_cnn", "--out", str(tmp_path / "x.json")]) == 2


def test_calibrate_writes_a_loadable_scenario(tmp_path, capsys):
    before = (os.sched_getaffinity(0), torch.get_num_threads())
    assert main(["calibrate", "tiny_cnn", "--workers", "1", "--repeats", "1", "--out", str(tmp_path), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    sc = load_scenario(res["scenario"])
    assert sc.cluster.names == ["w0"] and set(sc.measured) == {"w0"}
    assert sc.measured["w0"].batch_sizes == [1, 2] and sc.workload.batch == 4 and sc.workload.microbatches == 2
    assert sc.cluster.devices[0].profile.endswith("w0.json")
    assert res["pinned"] and res["warnings"] == []
    assert (os.sched_getaffinity(0), torch.get_num_threads()) == before   # the caller is not left pinned


def test_more_workers_than_cores_warns_and_does_not_pin(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cal, "host_cores", lambda: [0])
    assert main(["calibrate", "tiny_cnn", "--workers", "2", "--repeats", "1", "--mbps", "200",
                 "--out", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert "2 workers on 1 core" in err and "optimistic" in err
    sc = load_scenario(tmp_path / "scenario.yaml")
    assert sc.measured["w0"].cpus is None and sc.cluster.links[0].mbps == 200


@pytest.mark.parametrize("argv", [["--workers", "0"], ["--workers", "1", "--mbps", "0"],
                                  ["--workers", "1", "--batch", "3", "--microbatches", "2"]])
def test_calibrate_bad_input(tmp_path, capsys, argv):
    assert main(["calibrate", "tiny_cnn", *argv, "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_run_no_emulate_on_a_calibrated_host(tmp_path):
    from dora_rl.plan import Plan
    from dora_rl.runtime.measure import measure

    res = cal.calibrate("tiny_cnn", 2, tmp_path, repeats=1, warmup=0)
    sc = load_scenario(res["scenario"])
    plan = Plan.make([(0, 2, ["w0"]), (2, get_profile("tiny_cnn").n_blocks, ["w1"])], microbatches=2)
    out = measure(sc, plan, requests=3, warmup=1, emulate=False, pace=True, throughput_phase=False, timeout=60)
    assert out["emulated"] is False and out["paced"] is True
    assert out["predicted"]["latency_ms"] == pytest.approx(CostModel(sc).evaluate(plan).latency_ms)
    assert set(out["measured"]["latency_ms"]) >= {"mean", "p50", "p95"}
    assert out["measured"]["saturated"] == {}      # nothing is stretched at real speed


def test_timing_workers_together_reports_the_failing_job_and_does_not_hang(tmp_path):
    # the second job names a model that does not exist: its ProfileError is raised (not the
    # first job's broken barrier), and the first job, waiting at the barrier, is released
    from dora_rl.errors import ProfileError

    jobs = [("tiny_cnn", [1], False, None, 0, 1, str(tmp_path / "w0.json")),
            ("no_such_model", [1], False, None, 0, 1, str(tmp_path / "w1.json"))]
    with pytest.raises(ProfileError, match="no_such_model"):
        cal._time_together(jobs)
    assert not (tmp_path / "w0.json").exists()


def test_pinned_workers_are_timed_together_each_on_its_own_core(tmp_path, monkeypatch):
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 cores to pin 2 workers")
    seen = []
    monkeypatch.setattr(cal, "_time_together", lambda jobs: seen.append(jobs) or [cal._time_one(*j) for j in jobs])
    monkeypatch.setattr(cal, "host_cores", lambda: [0, 1])
    res = cal.calibrate("tiny_cnn", 2, tmp_path, repeats=1, warmup=0)
    assert len(seen) == 1 and [j[3] for j in seen[0]] == [[0], [1]]
    sc = load_scenario(res["scenario"])
    assert [sc.measured[w].cpus for w in ("w0", "w1")] == [[0], [1]]
