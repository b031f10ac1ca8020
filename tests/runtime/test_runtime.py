"""Runtime executor: real worker processes (gloo) on tiny_cnn.

Checks: outputs equal single-process inference; parameters equal single-process SGD
(2 stages, one data-parallel over 2 devices, with and without a plan switch); a
switch in the middle of a request stream answers every request exactly once; pacing
limits a flow to its link's bandwidth and two flows on one medium share it; bad
input (device name, memory, unreachable coordinator) fails fast with a clear error."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from dora_rl.errors import PlanError, RuntimeFault
from dora_rl.plan import Plan
from dora_rl.profile import build_model
from dora_rl.runtime import Runtime, moves_between
from dora_rl.runtime.measure import reference_sgd
from dora_rl.scenario import Scenario

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

W = 80  # mbps of the shared medium and of its links


def _links():
    ded = 40   # slower than the medium links, so a-b and c-d route directly over "w"
    return [{"a": "a", "b": "b", "mbps": W, "latency_ms": 1, "medium": "w"},
            {"a": "c", "b": "d", "mbps": W, "latency_ms": 1, "medium": "w"},
            {"a": "a", "b": "c", "mbps": ded, "latency_ms": 1}, {"a": "a", "b": "d", "mbps": ded, "latency_ms": 1},
            {"a": "b", "b": "c", "mbps": ded, "latency_ms": 1}, {"a": "b", "b": "d", "mbps": ded, "latency_ms": 1}]


def scen(kind="inference", batch=4, mb=2, mem=4):
    wl = {"kind": kind, "batch": batch, "microbatches": mb, "source": "a"}
    if kind == "training":
        wl["optimizer"] = "sgd"
    return Scenario.from_dict({
        "name": "rt_test", "model": "tiny_cnn", "workload": wl,
        "devices": [{"name": n, "gflops": 0.5, "memory_gb": mem} for n in "abcd"],
        "links": _links(), "media": {"w": {"mbps": W}}})


@pytest.fixture(scope="class")
def rt():
    r = Runtime(scen(), emulate=True, timeout=40)
    try:
        r.start(Plan.make([(0, 3, ["a"]), (3, 7, ["b", "c"], [0.5, 0.5])], microbatches=2))
        yield r
    finally:
        r.close()
    assert all(p.poll() is not None for p in r.procs)


def reference(rt, rid, batch=4):
    model, _ = build_model("tiny_cnn")
    with torch.no_grad():
        return model(rt.make_input(rid, batch))


class TestInference:
    """One runtime (4 workers) shared by the inference tests."""

    def test_inference_equals_single_process(self, rt):
        res = rt.infer(6, window=3, keep_outputs=True)
        assert sorted(res.outputs) == list(range(6))
        for rid, y in res.outputs.items():
            assert torch.allclose(y, reference(rt, rid), atol=1e-5, rtol=0)
        lm = res.latency_ms
        assert lm["p50"] > 0 and res.throughput > 0 and res.energy_j > 0


    def test_switch_mid_stream_answers_each_request_once(self, rt):
        new = Plan.make([(0, 2, ["b", "a"], [0.5, 0.5]), (2, 5, ["c"]), (5, 7, ["d"])], microbatches=1)
        old = rt.plan
        res = rt.infer(12, window=4, keep_outputs=True, switch_at=5, switch_plan=new)
        assert sorted(res.answered) == list(range(12)) and len(res.answered) == 12
        for rid, y in res.outputs.items():
            assert torch.allclose(y, reference(rt, rid), atol=1e-5, rtol=0)
        assert res.switch_s is not None and res.switch_s < 2.0
        # only blocks whose owner changed moved
        expect = {b for b, _, _ in moves_between(old, new, lambda x, y: 1.0)}
        assert expect and set(res.switch["moved_blocks"]) == expect
        # switching back moves nothing: every worker kept the blocks it held (inference
        # weights never change), and the outputs are still the single-process ones
        back = rt.switch(old)
        assert back["transfers"] == 0 and back["moved_blocks"] == []
        res = rt.infer(3, window=2, keep_outputs=True)
        for rid, y in res.outputs.items():
            assert torch.allclose(y, reference(rt, rid), atol=1e-5, rtol=0)
        again = rt.switch(new)       # and forth: still nothing to move
        assert again["transfers"] == 0
        rt.switch(old)


    def test_prestaged_blocks_make_a_switch_a_drain(self, rt):
        """Blocks shipped before the run (the adapter's candidates) are not moved again."""
        old = rt.plan
        solo = Plan.make([(0, 7, ["d"])], microbatches=1)
        before = set(rt.held.get("d", ()))
        assert before != set(range(7))
        shipped = rt.prestage({"d": set(range(7))})
        assert set(shipped["d"]) == set(range(7)) - before and rt.held["d"] >= set(range(7))
        info = rt.switch(solo)
        assert info["transfers"] == 0
        res = rt.infer(2, window=1, keep_outputs=True)
        for rid, y in res.outputs.items():
            assert torch.allclose(y, reference(rt, rid), atol=1e-5, rtol=0)
        rt.switch(old)

    def test_pacing_limits_to_link_bandwidth_and_medium_is_shared(self, rt):
        # Pacing is an upper bound: a loaded CPU can only make a flow slower, so the
        # bounds are tight above (no flow beats its link; two flows on one medium add
        # up to one link: unpaced or unshared flows would break them) and loose below,
        # where they only catch gross over-throttling (a flow paced at a fraction of its
        # link) without failing when other processes keep every core busy.
        link = W * 1e6 / 8
        one = rt.probe([("a", "b", 100_000, 20)])[0]
        assert 0.35 * link < one < 1.05 * link, (one, link)
        two = rt.probe([("a", "b", 100_000, 20), ("c", "d", 100_000, 20)])
        assert sum(two) < 1.1 * link, (two, link)
        for r in two:
            assert 0.15 * link < r < 0.6 * link, (two, link / 2)


def test_training_equals_single_process_sgd():
    sc = scen("training", batch=8, mb=2)
    plan = Plan.make([(0, 3, ["a"]), (3, 7, ["b", "c"], [0.6, 0.4])], microbatches=2)
    plan2 = Plan.make([(0, 4, ["b", "a"], [0.5, 0.5]), (4, 7, ["d"])], microbatches=4)
    lr = 0.05
    with Runtime(sc, emulate=True, timeout=40, lr=lr) as r:
        r.start(plan)
        data = [r.make_batch(i, 8) for i in range(8)]
        res = r.train(5, data=data[:5])
        got = r.state_dict()
        ref = reference_sgd("tiny_cnn", data[:5], lr)
        assert set(ref) == set(got)
        assert max((ref[k] - got[k]).abs().max().item() for k in ref) <= 1e-5
        assert len(res.iter_s) == 5
        # switch at an iteration boundary: no update lost or applied twice
        res2 = r.train(3, data=data[5:], switch_at=1, switch_plan=plan2)
        got = r.state_dict()
        ref = reference_sgd("tiny_cnn", data, lr)
        assert max((ref[k] - got[k]).abs().max().item() for k in ref) <= 1e-5
        assert res2.switch_s is not None


def test_plan_too_big_for_memory_is_rejected():
    sc = scen(mem=1e-6)   # 1 kB per device: tiny_cnn's 35 kB of weights cannot fit
    with pytest.raises(PlanError, match="memory"):
        Runtime(sc).check_plan(Plan.make([(0, 7, ["a"])]))


def test_unknown_device_name_is_an_error():
    sc = scen()
    r = Runtime(sc, timeout=20, spawn_devices=["a", "b", "c", "nosuch"])
    with pytest.raises(RuntimeFault, match="nosuch"):
        r.start(Plan.make([(0, 7, ["a"])]))
    assert all(p.poll() is not None for p in r.procs)
    # `dora worker` with a scenario checks the name before joining
    out = subprocess.run([sys.executable, "-m", "dora_rl.runtime.worker", "--device", "nosuch",
                          "--scenario", os.path.join(ROOT, "envs", "smart_home.yaml")],
                         capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONPATH=ROOT))
    assert out.returncode == 2 and "nosuch" in out.stderr and "Traceback" not in out.stderr


def test_worker_that_cannot_reach_coordinator_fails_fast():
    from dora_rl.runtime.coordinator import free_port
    env = dict(os.environ, PYTHONPATH=ROOT, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()),
               RANK="1", WORLD_SIZE="2")
    out = subprocess.run([sys.executable, "-m", "dora_rl.runtime.worker", "--device", "a", "--timeout", "3"],
                         capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 2, out.stderr
    assert "cannot reach the coordinator" in out.stderr and "Traceback" not in out.stderr


def test_a_failed_send_goes_to_on_error_not_out_as_a_gloo_error():
    """The fault-tolerant runtime turns a send that gloo fails (a killed peer's closed
    pair) into its recovery path; without a handler the error propagates as before."""
    from dora_rl.runtime.comm import Pending

    class Failed:
        def is_completed(self):
            return True

        def wait(self):
            raise RuntimeError("Connection closed by peer")

    class Done(Failed):
        def wait(self):
            return True

    seen = []
    p = Pending(on_error=seen.append)
    p.add([(Done(), None), (Failed(), None), (Done(), None)])
    p.wait()
    assert len(seen) == 1 and "closed by peer" in str(seen[0]) and p.items == []
    bare = Pending()
    bare.add([(Failed(), None)])
    with pytest.raises(RuntimeError, match="closed by peer"):
        bare.wait()


def test_pacing_shares_the_senders_interface():
    # s has two dedicated 40 Mbps links and no medium: its network interface is as fast
    # as its fastest link (40 Mbps, docs/cost-model.md), so two flows s -> x and s -> y
    # started together share it (each ~20 Mbps), as the cost model charges them
    links = [{"a": "s", "b": "x", "mbps": 40, "latency_ms": 1}, {"a": "s", "b": "y", "mbps": 40, "latency_ms": 1}]
    sc = Scenario.from_dict({
        "name": "iface", "model": "tiny_cnn", "workload": {"kind": "inference", "batch": 2, "microbatches": 1,
                                                           "source": "s"},
        "devices": [{"name": n, "gflops": 0.5, "memory_gb": 4} for n in ("s", "x", "y")], "links": links})
    link = 40e6 / 8
    with Runtime(sc, emulate=True, timeout=40) as r:
        r.start(Plan.make([(0, 3, ["s"]), (3, 5, ["x"]), (5, 7, ["y"])], microbatches=1))
        two = r.probe([("s", "x", 100_000, 20), ("s", "y", 100_000, 20)])
    assert sum(two) < 1.1 * link, (two, link)
    for rate in two:
        assert 0.3 * link < rate < 0.6 * link, (two, link / 2)
