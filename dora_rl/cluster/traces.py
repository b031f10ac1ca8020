"""Bandwidth over time: real traces, synthetic generators, and scenario specs.

Why: WiFi bandwidth moves every second, and the runtime adapter and the dynamic
environments must be driven by that movement. A `BandwidthTrace` is a step function
(each sample holds until the next one) that wraps around at its end, so any run length
can replay it. Real traces use the two-column `time_s throughput_Mbps` format of the
Pensieve collection (../shared/data/traces/README.md); the package also ships a
Gilbert-Elliott (good/bad Markov) generator so it works without them.

A trace is "the shape" of bandwidth: `scaled` rescales it so that its time-weighted
mean (or its peak) equals a medium's nominal capacity.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dora_rl.errors import TraceError
from dora_rl.resources import default_traces_root

MIN_MBPS = 0.01   # floor: zero or tiny samples are clamped to this (never divide by zero)
TRACES_ENV = "DORA_TRACES"
DEFAULT_TRACES_ROOT = default_traces_root()


@dataclass(frozen=True, eq=False)
class BandwidthTrace:
    """Throughput samples `mbps[i]` starting at `times[i]` (seconds, strictly
    increasing). The last sample holds for `period - (times[-1] - times[0])` seconds
    (default: the median sample interval, 1 s for a single sample); then the trace
    repeats. Time t = 0 is the first sample."""

    times: np.ndarray
    mbps: np.ndarray
    period: float | None = None
    source: str = "trace"
    _dt: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        t = np.asarray(self.times, dtype=float)
        v = np.asarray(self.mbps, dtype=float)
        if t.ndim != 1 or t.shape != v.shape or t.size == 0:
            raise TraceError(f"{self.source}: times and mbps must be equal-length non-empty 1-D arrays")
        if not (np.all(np.isfinite(t)) and np.all(np.isfinite(v))):
            raise TraceError(f"{self.source}: times and mbps must be finite numbers")
        if np.any(np.diff(t) <= 0):
            raise TraceError(f"{self.source}: times must be strictly increasing")
        if np.any(v <= 0):
            raise TraceError(f"{self.source}: throughput must be positive (clamp to {MIN_MBPS} Mbps when parsing)")
        span = float(t[-1] - t[0])
        period = self.period
        if period is None:
            period = span + (float(np.median(np.diff(t))) if t.size > 1 else 1.0)
        if not (math.isfinite(period) and period > span):
            raise TraceError(f"{self.source}: period ({period}) must exceed the time span of the samples ({span})")
        object.__setattr__(self, "times", t)
        object.__setattr__(self, "mbps", v)
        object.__setattr__(self, "period", float(period))
        # how long each sample holds (the weights of the time-weighted mean)
        object.__setattr__(self, "_dt", np.diff(np.append(t, t[0] + period)))

    # ------------------------------------------------------------------
    @property
    def duration(self) -> float:
        """Seconds before the trace repeats."""
        return float(self.period)

    @property
    def mean(self) -> float:
        """Time-weighted mean throughput over one period (Mbps)."""
        return float(np.dot(self.mbps, self._dt) / self.period)

    @property
    def peak(self) -> float:
        return float(self.mbps.max())

    def at(self, t):
        """Throughput (Mbps) at time `t` seconds (scalar or array): the most recent
        sample at or before t (previous-sample hold), wrapping around after
        `duration`. Negative t wraps too."""
        tt = self.times[0] + np.mod(np.asarray(t, dtype=float), self.period)
        i = np.searchsorted(self.times, tt, side="right") - 1
        out = self.mbps[np.clip(i, 0, self.mbps.size - 1)]
        return float(out) if np.ndim(out) == 0 else out

    def scaled(self, target_mbps: float, how: str = "mean") -> "BandwidthTrace":
        """A copy multiplied so that its mean (how='mean') or peak (how='peak') equals
        `target_mbps`."""
        if not (isinstance(target_mbps, (int, float)) and math.isfinite(target_mbps) and target_mbps > 0):
            raise TraceError(f"{self.source}: scale target must be a positive number of Mbps, got {target_mbps!r}")
        if how == "mean":
            ref = self.mean
        elif how == "peak":
            ref = self.peak
        else:
            raise TraceError(f"{self.source}: scale must be 'mean' or 'peak', got {how!r}")
        return BandwidthTrace(self.times.copy(), self.mbps * (float(target_mbps) / ref), self.period, self.source)


# ---------------------------------------------------------------------------- files
def load_trace(path: str | Path, floor: float = MIN_MBPS) -> BandwidthTrace:
    """Parse a `time_s throughput_Mbps` file (tabs or spaces; blank lines and a
    trailing newline are fine). Samples below `floor` Mbps are clamped to it. Raises
    `TraceError` naming the file and line for a missing or empty file, a line that is
    not two numbers, a negative throughput, times that are not strictly increasing,
    or a trace that is zero throughout."""
    p = Path(path)
    if not p.is_file():
        raise TraceError(f"trace file {str(p)!r} does not exist")
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise TraceError(f"trace file {str(p)!r} cannot be read as text ({e})") from None
    times, vals = [], []
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise TraceError(f"{p}:{lineno}: expected two columns 'time_s throughput_Mbps', got {line.strip()!r}")
        try:
            t, v = float(parts[0]), float(parts[1])
        except ValueError:
            raise TraceError(f"{p}:{lineno}: not numbers: {line.strip()!r}") from None
        if not (math.isfinite(t) and math.isfinite(v)):
            raise TraceError(f"{p}:{lineno}: values must be finite, got {line.strip()!r}")
        if v < 0:
            raise TraceError(f"{p}:{lineno}: negative throughput {v}")
        if times and t <= times[-1]:
            raise TraceError(f"{p}:{lineno}: time {t} is not after the previous time {times[-1]}; "
                             "times must be strictly increasing")
        times.append(t)
        vals.append(v)
    if not times:
        raise TraceError(f"trace file {str(p)!r} is empty; expected lines of 'time_s throughput_Mbps'")
    v = np.array(vals)
    if not np.any(v > 0):
        raise TraceError(f"trace file {str(p)!r} has zero throughput throughout; it carries no shape to replay")
    return BandwidthTrace(np.array(times), np.maximum(v, floor), source=str(p))


# ------------------------------------------------------------------------ synthetic
def markov_trace(rng: np.random.Generator, mean_mbps: float, duration_s: float, dt: float = 1.0, *,
                 p_good_to_bad: float = 0.05, p_bad_to_good: float = 0.25, bad_ratio: float = 0.2,
                 sigma: float = 0.25, floor: float = MIN_MBPS) -> BandwidthTrace:
    """A Gilbert-Elliott trace: a two-state (good/bad) Markov chain stepped every `dt`
    seconds; the bad state runs at `bad_ratio` x the good rate; each sample carries
    mean-one lognormal noise (log-sd `sigma`). The good rate is set so that the
    *expected* mean is `mean_mbps` (the realised mean is close over long traces; use
    `.scaled()` for an exact mean). The start state is drawn from the stationary
    distribution."""
    for key, v in (("mean_mbps", mean_mbps), ("duration_s", duration_s), ("dt", dt)):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise TraceError(f"markov_trace: {key} must be a positive number, got {v!r}")
    for key, v in (("p_good_to_bad", p_good_to_bad), ("p_bad_to_good", p_bad_to_good)):
        if not (0 < v <= 1):
            raise TraceError(f"markov_trace: {key} must be in (0, 1], got {v!r}")
    if not (0 < bad_ratio <= 1) or sigma < 0:
        raise TraceError(f"markov_trace: need 0 < bad_ratio <= 1 and sigma >= 0 (got {bad_ratio}, {sigma})")
    n = max(1, int(math.ceil(duration_s / dt)))
    pi_bad = p_good_to_bad / (p_good_to_bad + p_bad_to_good)
    good = mean_mbps / ((1 - pi_bad) + pi_bad * bad_ratio)
    u = rng.random(n)
    noise = rng.lognormal(-sigma * sigma / 2, sigma, size=n) if sigma > 0 else np.ones(n)
    bad = bool(u[0] < pi_bad)
    state = np.empty(n, dtype=bool)
    state[0] = bad
    for i in range(1, n):
        bad = (u[i] >= p_bad_to_good) if bad else (u[i] < p_good_to_bad)
        state[i] = bad
    mbps = np.maximum(good * np.where(state, bad_ratio, 1.0) * noise, floor)
    return BandwidthTrace(np.arange(n) * float(dt), mbps, period=n * float(dt), source="markov")


def step_trace(levels, durations) -> BandwidthTrace:
    """A piecewise-constant trace: `levels[i]` Mbps for `durations[i]` seconds each,
    then repeat. For tests and hand-made scenarios."""
    lv = np.asarray(levels, dtype=float)
    du = np.asarray(durations, dtype=float)
    if lv.ndim != 1 or lv.size == 0 or lv.shape != du.shape:
        raise TraceError("step_trace: levels and durations must be equal-length non-empty lists")
    if np.any(~np.isfinite(du)) or np.any(du <= 0):
        raise TraceError("step_trace: every duration must be a positive number of seconds")
    times = np.concatenate([[0.0], np.cumsum(du)[:-1]])
    return BandwidthTrace(times, lv, period=float(du.sum()), source="step")


# ---------------------------------------------------------------------- scenario spec
def traces_root() -> Path:
    """Where relative trace paths are looked up: $DORA_TRACES, else
    `<repo>/../shared/data/traces/pensieve`."""
    env = os.environ.get(TRACES_ENV)
    return Path(env) if env else DEFAULT_TRACES_ROOT


def resolve_trace(spec: dict, nominal_mbps: float | None = None, base: Path | None = None) -> BandwidthTrace:
    """The trace a scenario's `dynamics.bandwidth` spec names, scaled to `nominal_mbps`
    (the medium's capacity) when given.

    - `{medium: wifi, trace: norway_3g/<file>, scale: mean|peak}`: the file is looked up
      as given (absolute), then under `base` (the scenario's folder), then under
      `traces_root()`;
    - `{medium: wifi, synthetic: markov, seed: 0, duration_s: 600, dt: 1.0, ...}`: a
      `markov_trace` whose expected mean is the nominal rate (extra keys p_good_to_bad,
      p_bad_to_good, bad_ratio, sigma); with an explicit `scale` key it is rescaled so
      its realised mean (or peak) equals the nominal rate exactly;
    - `{medium: wifi, synthetic: step, levels: [...], durations: [...]}`: levels are
      fractions of the nominal rate when `nominal_mbps` is given, else Mbps.
    """
    if not isinstance(spec, dict):
        raise TraceError(f"bandwidth spec must be a mapping with 'trace' or 'synthetic', got {spec!r}")
    how = spec.get("scale", "mean")
    if how not in ("mean", "peak"):
        raise TraceError(f"bandwidth spec: scale must be 'mean' or 'peak', got {how!r}")
    if "trace" in spec:
        rel = Path(str(spec["trace"]))
        tried = [rel] if rel.is_absolute() else ([base / rel] if base is not None else []) + [traces_root() / rel]
        for cand in tried:
            if cand.is_file():
                tr = load_trace(cand)
                break
        else:
            raise TraceError(f"bandwidth trace {str(rel)!r} not found (tried: {', '.join(map(str, tried))}); "
                             f"set ${TRACES_ENV} to the folder holding norway_3g/ and fcc_broadband/, "
                             "or use {synthetic: markov, seed: 0}")
        return tr.scaled(float(nominal_mbps), how) if nominal_mbps is not None else tr
    kind = spec.get("synthetic")
    if kind == "markov":
        extra = {k: spec[k] for k in ("p_good_to_bad", "p_bad_to_good", "bad_ratio", "sigma") if k in spec}
        seed = spec.get("seed", 0)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise TraceError(f"bandwidth spec: seed must be an integer, got {seed!r}")
        try:
            mean = float(nominal_mbps) if nominal_mbps is not None else float(spec.get("mean_mbps", 100.0))
            duration, dt = float(spec.get("duration_s", 600.0)), float(spec.get("dt", 1.0))
            extra = {k: float(v) for k, v in extra.items()}
        except (TypeError, ValueError):
            raise TraceError(f"bandwidth spec: markov parameters must be numbers, got {spec!r}") from None
        tr = markov_trace(np.random.default_rng(seed), mean, duration, dt, **extra)
        return tr.scaled(mean, how) if "scale" in spec else tr
    if kind == "step":
        if "levels" not in spec or "durations" not in spec:
            raise TraceError("bandwidth spec: synthetic: step needs 'levels' and 'durations'")
        try:
            levels = np.asarray(spec["levels"], dtype=float)
            durations = np.asarray(spec["durations"], dtype=float)
        except (TypeError, ValueError):
            raise TraceError("bandwidth spec: 'levels' and 'durations' must be lists of numbers") from None
        if nominal_mbps is not None:
            levels = levels * float(nominal_mbps)
        return step_trace(levels, durations)
    raise TraceError(f"bandwidth spec needs 'trace: <folder/file>' or 'synthetic: markov|step', got {spec!r}")
