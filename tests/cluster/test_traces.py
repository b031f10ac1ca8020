"""Bandwidth traces: parsing, step semantics, scaling, generators, scenario specs."""

from pathlib import Path

import numpy as np
import pytest

from dora_rl.cluster.traces import (
    MIN_MBPS,
    BandwidthTrace,
    load_trace,
    markov_trace,
    resolve_trace,
    step_trace,
    traces_root,
)
from dora_rl.errors import TraceError

NORWAY = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "traces" / "pensieve" / "norway_3g"


def _norway_file() -> Path:
    if not NORWAY.is_dir():
        pytest.skip(f"real traces not found at {NORWAY} (they live in ../shared/data/traces)")
    files = sorted(p for p in NORWAY.iterdir() if p.is_file())
    if not files:
        pytest.skip(f"no files in {NORWAY}")
    return files[0]


def _write(tmp_path, text, name="t.log"):
    p = tmp_path / name
    p.write_text(text)
    return p


# --------------------------------------------------------------- parsing
def test_parse_real_norway_trace():
    f = _norway_file()
    tr = load_trace(f)
    rows = [ln.split() for ln in f.read_text().splitlines() if ln.strip()]
    assert len(tr.times) == len(rows)
    assert tr.times[0] == float(rows[0][0]) and tr.mbps[0] == max(float(rows[0][1]), MIN_MBPS)
    assert np.all(np.diff(tr.times) > 0) and np.all(tr.mbps >= MIN_MBPS)
    assert 0.01 < tr.mean < 50 and tr.duration > 100


def test_parse_all_norway_and_fcc_traces():
    _norway_file()
    for folder in (NORWAY, NORWAY.parent / "fcc_broadband"):
        for f in sorted(folder.iterdir()):
            tr = load_trace(f)
            assert tr.mean > 0 and tr.duration > 0


def test_tabs_spaces_blank_lines_and_clamping(tmp_path):
    p = _write(tmp_path, "0.0\t2.0\n1.0   0.0\n\n2.0 \t 0.000001\n3.0\t4.0\n")
    tr = load_trace(p)
    assert list(tr.times) == [0, 1, 2, 3]
    assert list(tr.mbps) == [2.0, MIN_MBPS, MIN_MBPS, 4.0]


@pytest.mark.parametrize("text, what", [
    ("", "empty"),
    ("\n\n  \n", "empty"),
    ("0 1\n2 1\n1 1\n", "increasing"),
    ("0 1\n0 2\n", "increasing"),
    ("0 1\n1 abc\n", ":2"),
    ("0 1 3\n", ":1"),
    ("time throughput\n0 1\n", ":1"),
    ("0 0\n1 0\n", "zero"),
    ("0 1\n1 -2\n", "negative"),
    ("0 nan\n", "finite"),
])
def test_trace_errors(tmp_path, text, what):
    p = _write(tmp_path, text)
    with pytest.raises(TraceError) as e:
        load_trace(p)
    assert what in str(e.value) and str(p) in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(TraceError):
        load_trace(tmp_path / "nope.log")


# -------------------------------------------------------------- semantics
def test_at_previous_sample_hold_and_wrap():
    tr = BandwidthTrace(np.array([0.0, 1.0, 3.0]), np.array([10.0, 20.0, 30.0]))
    assert tr.duration == pytest.approx(4.5)          # last sample holds the median interval (1.5 s)
    assert tr.at(0) == 10 and tr.at(0.999) == 10
    assert tr.at(1.0) == 20 and tr.at(2.99) == 20
    assert tr.at(3.0) == 30 and tr.at(4.49) == 30
    assert tr.at(4.5) == 10 and tr.at(5.5) == 20       # wraps
    assert tr.at(-0.5) == 30                          # negative time wraps too
    assert list(tr.at(np.array([0.5, 1.5, 3.5]))) == [10, 20, 30]


def test_at_with_offset_start():
    tr = BandwidthTrace(np.array([100.0, 101.0]), np.array([1.0, 2.0]))
    assert tr.at(0) == 1.0 and tr.at(1.0) == 2.0 and tr.duration == 2.0


def test_step_trace_and_mean():
    tr = step_trace([10, 40], [3, 1])
    assert tr.duration == 4
    assert tr.at(2.9) == 10 and tr.at(3.0) == 40 and tr.at(4.0) == 10
    assert tr.mean == pytest.approx((10 * 3 + 40 * 1) / 4)
    assert tr.peak == 40
    with pytest.raises(TraceError):
        step_trace([1, 2], [1])
    with pytest.raises(TraceError):
        step_trace([1], [0])


@pytest.mark.parametrize("target", [0.5, 100.0, 433.3])
def test_scaled_mean_and_peak(target):
    tr = step_trace([1.0, 7.0, 2.5], [2.0, 0.5, 4.0])
    assert abs(tr.scaled(target, "mean").mean - target) < 1e-9
    assert abs(tr.scaled(target, how="peak").peak - target) < 1e-9
    with pytest.raises(TraceError):
        tr.scaled(target, "median")
    with pytest.raises(TraceError):
        tr.scaled(0)


def test_scaled_real_trace():
    tr = load_trace(_norway_file()).scaled(400.0)
    assert abs(tr.mean - 400.0) < 1e-9


# ------------------------------------------------------------- generators
def test_markov_deterministic_and_mean():
    a = markov_trace(np.random.default_rng(7), 200.0, 1000.0)
    b = markov_trace(np.random.default_rng(7), 200.0, 1000.0)
    assert np.array_equal(a.mbps, b.mbps) and np.array_equal(a.times, b.times)
    assert a.duration == 1000.0 and len(a.times) == 1000
    for seed in range(20):
        tr = markov_trace(np.random.default_rng(seed), 200.0, 1000.0)
        assert abs(tr.mean - 200.0) / 200.0 < 0.25
        assert tr.mbps.min() >= MIN_MBPS
    assert not np.array_equal(a.mbps, markov_trace(np.random.default_rng(8), 200.0, 1000.0).mbps)


def test_markov_has_good_and_bad_periods():
    tr = markov_trace(np.random.default_rng(0), 100.0, 1000.0, sigma=0.0)
    levels = np.unique(np.round(tr.mbps, 9))
    assert len(levels) == 2 and levels[0] / levels[1] == pytest.approx(0.2)


def test_markov_bad_params():
    with pytest.raises(TraceError):
        markov_trace(np.random.default_rng(0), -1, 10)
    with pytest.raises(TraceError):
        markov_trace(np.random.default_rng(0), 10, 10, p_good_to_bad=0)


# ----------------------------------------------------------------- specs
def test_resolve_trace_file_under_root(monkeypatch):
    f = _norway_file()
    monkeypatch.setenv("DORA_TRACES", str(NORWAY.parent))
    assert traces_root() == NORWAY.parent
    tr = resolve_trace({"medium": "wifi", "trace": f"norway_3g/{f.name}", "scale": "mean"}, 300.0)
    assert abs(tr.mean - 300.0) < 1e-9
    tr = resolve_trace({"medium": "wifi", "trace": f"norway_3g/{f.name}", "scale": "peak"}, 300.0)
    assert abs(tr.peak - 300.0) < 1e-9


def test_resolve_trace_relative_to_base_and_missing(tmp_path, monkeypatch):
    _write(tmp_path, "0 1\n1 3\n", "mine.log")
    tr = resolve_trace({"trace": "mine.log"}, 50.0, base=tmp_path)
    assert abs(tr.mean - 50.0) < 1e-9
    monkeypatch.setenv("DORA_TRACES", str(tmp_path / "nowhere"))
    with pytest.raises(TraceError) as e:
        resolve_trace({"trace": "norway_3g/missing.log"}, 50.0)
    assert "DORA_TRACES" in str(e.value)


def test_resolve_synthetic():
    a = resolve_trace({"medium": "wifi", "synthetic": "markov", "seed": 3}, 250.0)
    b = resolve_trace({"medium": "wifi", "synthetic": "markov", "seed": 3}, 250.0)
    assert np.array_equal(a.mbps, b.mbps) and abs(a.mean - 250) / 250 < 0.25
    c = resolve_trace({"synthetic": "markov", "seed": 3, "scale": "mean", "duration_s": 100}, 250.0)
    assert abs(c.mean - 250) < 1e-9 and c.duration == 100
    s = resolve_trace({"synthetic": "step", "levels": [1.0, 0.5], "durations": [10, 10]}, 200.0)
    assert s.at(0) == 200 and s.at(10) == 100


@pytest.mark.parametrize("spec", [{"medium": "wifi"}, {"synthetic": "brownian"}, "wifi",
                                  {"synthetic": "markov", "seed": "x"}, {"synthetic": "step", "levels": [1]},
                                  {"trace": "x", "scale": "median"}])
def test_resolve_bad_specs(spec):
    with pytest.raises(TraceError):
        resolve_trace(spec, 100.0)
