"""Automatic time dilation, false-fault rules and the live view (no worker processes).

`choose` on a hand-made block-time profile: the factor is headroom x the worst
real/modelled ratio x contention, rounded up; an explicit factor below it is flagged
saturated; a machine too slow for the timeout is an error naming the worker. A request
overdue with every worker alive is never a fault without a device; a stalled heartbeat
channel says nothing about the workers. The live view and timeline state units, the
dilation, the violated targets and the faults."""

from __future__ import annotations

import json
import time

import pytest

from dora_rl.cli import main
from dora_rl.errors import PlanError, RuntimeFault
from dora_rl.plan import Plan
from dora_rl.profile.measured import DeviceProfile
from dora_rl.runtime.dilation import choose, parse_slowdown
from dora_rl.runtime.fault_policy import WorkerLost
from dora_rl.scenario import Scenario


def scen(gflops=(1.0, 4.0)):
    return Scenario.from_dict({
        "name": "dil", "model": "tiny_cnn", "qoe": {"latency_slo_ms": 50},
        "workload": {"kind": "inference", "batch": 1, "microbatches": 1, "source": "a", "request_rate": 2},
        "devices": [{"name": n, "gflops": g, "memory_gb": 4} for n, g in zip("ab", gflops)],
        "links": [{"a": "a", "b": "b", "mbps": 100, "latency_ms": 1}]})


def profile(sc, seconds_per_block):
    from dora_rl.cost import CostModel
    n = len(CostModel(sc).device_times(0)["fwd_per"]) - 1
    return DeviceProfile("tiny_cnn", [f"b{i}" for i in range(n)], [1], [[seconds_per_block] for _ in range(n)])


def modelled(sc, dev):
    from dora_rl.cost import CostModel
    t = CostModel(sc).device_times(sc.cluster.names.index(dev))
    return t["fwd_per"][-1]


@pytest.mark.parametrize("bad", ["0", "-3", "abc", "nan", 0, -1.0])
def test_slowdown_must_be_auto_or_positive(bad):
    with pytest.raises(PlanError, match="--slowdown"):
        parse_slowdown(bad)
    assert parse_slowdown("auto") == "auto" and parse_slowdown("2.5") == 2.5


def test_auto_factor_is_headroom_times_worst_ratio_times_contention():
    sc = scen()
    prof = profile(sc, 1e-3)
    d = choose(sc, None, profile=prof, load=0.0, n_cores=2, headroom=1.5)
    n = len(prof.blocks)
    ra = n * 1e-3 / modelled(sc, "a")
    rb = n * 1e-3 / modelled(sc, "b")
    assert d.ratio["a"] == pytest.approx(ra) and d.ratio["b"] == pytest.approx(rb)
    assert rb > ra                       # b is modelled 4x faster: emulating it is 4x harder
    assert d.contention == 1.0           # two workers, two idle cores
    assert 1.5 * rb <= d.factor <= 1.5 * rb * 1.1
    assert d.auto and not d.saturated
    busy = choose(sc, None, profile=prof, load=6.0, n_cores=2)
    assert busy.contention == pytest.approx(4.0) and busy.factor > 3.5 * d.factor


def test_explicit_factor_below_need_is_flagged_saturated():
    sc = scen()
    prof = profile(sc, 1e-3)
    need = choose(sc, None, profile=prof, load=0.0, n_cores=2).factor
    low = choose(sc, None, slowdown=need / 4, profile=prof, load=0.0, n_cores=2)
    assert low.factor == need / 4 and not low.auto and set(low.saturated) == {"b"}


def test_a_machine_too_slow_for_the_timeout_names_the_worker():
    sc = scen()
    plan = Plan.make([(0, 3, ["a"]), (3, len(profile(sc, 1).blocks), ["b"])])
    with pytest.raises(RuntimeFault, match=r"worker b .*timeout"):
        choose(sc, plan, profile=profile(sc, 5.0), load=0.0, n_cores=2, timeout=10)
    ok = choose(sc, plan, profile=profile(sc, 1e-4), load=0.0, n_cores=2, timeout=10)
    assert ok.factor >= 1.0


def test_run_bad_slowdown_and_duration_are_one_line_errors(capsys):
    assert main(["run", "smart_home", "--slowdown", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--slowdown" in err and len(err.splitlines()) == 1
    assert main(["run", "smart_home", "--adapter", "static", "--duration", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--duration" in err and len(err.splitlines()) == 1


class _Rt:
    timeout = 100.0
    names = ("a", "b")
    started = True

    def _check_procs(self):
        pass


def _resilience(deadline=0.01):
    from dora_rl.runtime.faults import Resilience
    r = Resilience(request_deadline=deadline)
    r.rt = _Rt()
    return r


def test_an_overdue_request_with_every_worker_alive_is_not_a_fault():
    r = _resilience()
    t = time.monotonic()
    r.unanswered(t - 50, t - 1)               # overdue, nobody dead: wait on
    r.rt.timeout = 5.0
    r.checked_at = -1e9
    with pytest.raises(RuntimeFault) as e:   # past the run's timeout: the run ends, no recovery
        r.unanswered(t - 50, t - 10)
    assert not isinstance(e.value, WorkerLost)
    with pytest.raises(RuntimeFault) as e:
        r.pipeline_failed("source stopped answering")
    assert not isinstance(e.value, WorkerLost)


def test_silence_of_every_worker_at_once_is_a_stalled_channel_not_a_fault():
    from dora_rl.runtime.heartbeat import HeartbeatServer
    hb = HeartbeatServer()
    try:
        t = time.monotonic()
        hb.last = {"a": t - 10, "b": t - 10}
        assert hb.silent(["a", "b"], 3.0) == []          # nobody heard: the channel stalled
        hb.last = {"a": t - 10, "b": t}
        assert hb.silent(["a", "b"], 3.0) == ["a"]       # b heard, a silent: a is hung
        hb.last = {"a": t - 10}
        assert hb.silent(["a"], 3.0) == ["a"]            # a lone worker: silence is its own
    finally:
        hb.close()


def _log(dilation=50.0):
    from dora_rl.adapter.simulate import Log
    log = Log("s", "static", "trace", "wifi", 300.0, 1.0, 10.0, 150.0 * dilation, 0.3, dilation=dilation)
    for i in range(12):
        log.rows.append({"t": float(i), "bw_true_mbps": 5.0, "bw_est_mbps": 5.0, "battery": {"p": 0.5},
                         "label": "x", "reason": "keep", "latency_ms": 9000.0, "throughput": 0.1,
                         "power_w": 1.0, "energy_j": 1.0, "switch": False, "decide_ms": 0.1,
                         "ok": i % 2 == 0, "violations": [] if i % 2 == 0 else
                         ["latency: 9000 ms > SLO 7500 ms", "throughput: 0.10 < 0.8 x required 0.30"],
                         "served_frac": 0.3})
    log.faults.append({"devices": ["tv"], "detected_s": {"tv": 0.4}, "recover_s": 2.0, "t": 5.0})
    return log


def test_live_view_states_units_dilation_violated_targets_and_faults():
    from rich.console import Console

    from dora_rl.adapter.view import render
    log = _log()
    con = Console(width=200, record=True)
    con.print(render(log, log.rows[-1]))
    txt = con.export_text()
    assert "t = 10 / 10 s" in txt                       # the counter stops at the duration
    assert "dilated 50x" in txt and "0.2 s of device time" in txt
    assert "req/s" in txt
    assert "latency: 9000 ms > SLO 7500 ms; throughput" in txt
    assert "tv lost; detected tv after 0.40 s" in txt


def test_timeline_records_dilation_and_faults(tmp_path):
    from dora_rl.adapter.timeline import plot_timeline
    log = _log()
    p = plot_timeline(log, tmp_path / "t.png")
    assert p.stat().st_size > 10_000
    d = json.loads(json.dumps(log.to_dict()))
    assert d["dilation"] == 50.0 and d["faults"][0]["devices"] == ["tv"]


def test_strict_refuses_a_factor_at_which_a_worker_saturates(tmp_path, monkeypatch, capsys):
    # devices modelled 1e6 x faster than any CPU: at --slowdown 1 every worker saturates
    import yaml
    monkeypatch.setenv("DORA_CACHE", str(tmp_path / "cache"))
    d = scen(gflops=(1e6, 1e6)).to_dict()
    (tmp_path / "fast.yaml").write_text(yaml.safe_dump(d))
    assert main(["run", str(tmp_path / "fast.yaml"), "--plan", _plan_file(tmp_path), "--slowdown", "1",
                 "--strict", "--requests", "1"]) == 2
    err = capsys.readouterr().err
    assert "time dilation 1x" in err and "--strict" in err and "predicted to saturate" in err
    assert list((tmp_path / "cache" / "block_times").glob("tiny_cnn-*.json"))   # measured once, cached


def _plan_file(tmp_path) -> str:
    Plan.make([(0, 7, ["a"])]).save(tmp_path / "p.json")
    return str(tmp_path / "p.json")
