"""Online monitoring: bandwidth per medium and battery level per device.

Bandwidth is estimated from the transfers the workers actually make: each finished
transfer reports (bytes, seconds) on a route; the monitor turns it into the rate the
route's *medium* must have had (every link of a medium scales together, see
`Cluster.with_medium_mbps`), and feeds a per-medium `BandwidthEstimator` (harmonic
mean of the last few samples, or an EWMA). When a medium carried nothing for
`probe_after_s` seconds the monitor asks for a small probe transfer (`needs_probe`).
At the end of each control interval (`close_interval`) it scores its own estimate
against what was measured during the interval: the largest recent overshoot is the
RobustMPC-style discount the adapters plan with (bandwidth / (1 + error)).

Battery levels follow the power model (drain = average power x dt / stored energy)
and, for a device mapped to an OS battery (`/sys/class/power_supply/<name>/capacity`),
the OS reading overrides the model when it is available. Both are kept as time
series (`Monitor.series`) that end up in the run's log. The monitor also keeps the
drain of the last `battery_window_s` seconds: battery life is a property of the
average draw, so the QoE judges it on that trailing average (`avg_power`), as an
operating system's time-remaining estimate does."""

from __future__ import annotations

import copy
import math
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from dora_rl.adapter.state import State
from dora_rl.cluster.model import Cluster

POWER_SUPPLY_ROOT = Path("/sys/class/power_supply")


class BandwidthEstimator:
    """Estimate a rate (Mbps) from (bytes, seconds) samples.

    kind="harmonic": harmonic mean of the last `window` sample rates (robust to one
    fast outlier; what MPC-style video adapters use). kind="ewma": exponentially
    weighted mean with weight `alpha` on the newest sample. Samples with a
    non-positive size or duration are ignored (they carry no rate). Before the first
    sample the estimate is `initial_mbps` (the nominal rate)."""

    def __init__(self, kind: str = "harmonic", window: int = 4, alpha: float = 0.5,
                 initial_mbps: float | None = None):
        if kind not in ("harmonic", "ewma"):
            raise ValueError(f"estimator kind must be 'harmonic' or 'ewma', got {kind!r}")
        if window < 1 or not (0 < alpha <= 1):
            raise ValueError("estimator needs window >= 1 and 0 < alpha <= 1")
        self.kind, self.window, self.alpha = kind, int(window), float(alpha)
        self.samples: deque[float] = deque(maxlen=self.window)
        self.ewma: float | None = None
        self.initial = initial_mbps
        self.last_t: float | None = None
        self.count = 0

    def add(self, nbytes: float, seconds: float, t: float | None = None) -> float | None:
        """Feed one transfer; returns the new estimate (Mbps)."""
        if not (nbytes > 0 and seconds > 0 and math.isfinite(nbytes) and math.isfinite(seconds)):
            return self.estimate()
        return self.add_rate(nbytes * 8 / seconds / 1e6, t)

    def add_rate(self, mbps: float, t: float | None = None) -> float | None:
        if not (mbps > 0 and math.isfinite(mbps)):
            return self.estimate()
        self.samples.append(mbps)
        self.ewma = mbps if self.ewma is None else self.alpha * mbps + (1 - self.alpha) * self.ewma
        self.last_t = t
        self.count += 1
        return self.estimate()

    def estimate(self) -> float | None:
        if not self.samples:
            return self.initial
        if self.kind == "ewma":
            return self.ewma
        return len(self.samples) / sum(1.0 / r for r in self.samples)


def read_os_battery(root: str | Path = POWER_SUPPLY_ROOT) -> dict[str, float]:
    """{supply name: level in [0, 1]} for every OS battery that reports `capacity`
    (percent). Empty when the machine has none (containers, desktops)."""
    out = {}
    r = Path(root)
    if not r.is_dir():
        return out
    for d in sorted(r.iterdir()):
        cap = d / "capacity"
        try:
            typ = (d / "type").read_text().strip() if (d / "type").is_file() else "Battery"
            if typ != "Battery" or not cap.is_file():
                continue
            out[d.name] = max(0.0, min(1.0, float(cap.read_text().strip()) / 100.0))
        except (OSError, ValueError):
            continue
    return out


@dataclass
class Monitor:
    """Per-medium bandwidth estimators + per-device battery levels, with time series.

    `cluster` is the nominal cluster (its media rates are the estimators' prior and
    the reference that route samples are normalised by). `os_batteries` maps device
    names to OS power-supply names (e.g. {"laptop": "BAT0"}) for devices that have one."""

    cluster: Cluster
    kind: str = "harmonic"
    window: int = 4
    alpha: float = 0.5
    probe_after_s: float = 2.0
    probe_bytes: float = 256e3
    os_batteries: dict[str, str] = field(default_factory=dict)
    os_root: Path = POWER_SUPPLY_ROOT
    error_window: int = 5
    battery_window_s: float = 60.0
    dilation: float = 1.0          # run seconds per device second (a dilated run): levels drain per device second

    def __post_init__(self) -> None:
        cl = self.cluster
        self.nominal = {m: med.mbps for m, med in cl.media.items()}
        self.est = {m: BandwidthEstimator(self.kind, self.window, self.alpha, initial_mbps=v)
                    for m, v in self.nominal.items()}
        self.last_seen = {m: 0.0 for m in self.nominal}
        self.levels = {d.name: d.battery_level for d in cl.devices if d.on_battery}
        self.capacity_j = {d.name: d.battery_wh * 3600.0 for d in cl.devices if d.on_battery}
        self.series: list[dict] = []
        self._drained: deque = deque()       # (dt, {device: joules}) of recent intervals
        # RobustMPC-style discount: how much the estimate overshot the rate measured over
        # each of the last `error_window` intervals (0 = never overshot)
        self.errors = {m: deque(maxlen=self.error_window) for m in self.nominal}
        self._open = {m: [] for m in self.nominal}      # rates measured in the open interval
        self._est_at_open = self.bandwidth()

    # --- bandwidth -------------------------------------------------------------
    def route_media(self, src: str, dst: str) -> tuple[list[str], float]:
        """Media a route crosses and its nominal bottleneck rate (Mbps)."""
        cl = self.cluster
        i, j = cl.index[src], cl.index[dst]
        media = [cl.media_names[mu] for mu, _ in cl.hops[i][j]]
        return media, cl.bw[i, j] * 8 / 1e6

    def observe_transfer(self, src: str, dst: str, nbytes: float, seconds: float, t: float) -> None:
        """A worker finished sending `nbytes` from `src` to `dst` in `seconds`: credit
        every medium on the route with the medium rate that transfer implies."""
        if src == dst:
            return
        media, nominal_route = self.route_media(src, dst)
        if not media or not (nbytes > 0 and seconds > 0):
            return
        ratio = (nbytes * 8 / seconds / 1e6) / nominal_route
        for m in media:
            self.observe_medium(m, ratio * self.nominal[m], t)

    def observe_medium(self, medium: str, mbps: float, t: float) -> None:
        """A rate sample already expressed as the medium's capacity (Mbps)."""
        self.est[medium].add_rate(mbps, t)
        self.last_seen[medium] = t
        if mbps > 0:
            self._open[medium].append(mbps)

    def needs_probe(self, medium: str, t: float) -> bool:
        """True when `medium` carried no measured transfer for `probe_after_s`."""
        return t - self.last_seen.get(medium, 0.0) >= self.probe_after_s

    def bandwidth(self) -> dict[str, float]:
        return {m: e.estimate() for m, e in self.est.items()}

    def close_interval(self) -> dict[str, float]:
        """End a control interval: score the estimate held at its start against the
        harmonic-mean rate measured during it (overshoot = est / measured - 1, kept for
        the last `error_window` intervals). Returns the current discounts."""
        for m, rates in self._open.items():
            prev = self._est_at_open.get(m)
            if rates and prev:
                actual = len(rates) / sum(1.0 / r for r in rates)
                self.errors[m].append(max(0.0, prev / actual - 1.0))
            self._open[m] = []
        self._est_at_open = self.bandwidth()
        return self.error()

    def error(self) -> dict[str, float]:
        """Max recent overshoot per medium: plan on estimate / (1 + error)."""
        return {m: (max(e) if e else 0.0) for m, e in self.errors.items()}

    def state(self, t: float):
        """The adapter's input at time t (a State)."""
        return State(t, self.bandwidth(), self.battery(), self.error())

    # --- battery -----------------------------------------------------------------
    def drain(self, power_w: dict[str, float], dt: float) -> dict[str, float]:
        """Battery devices spend `power_w[d]` watts for `dt` seconds (power model): of run
        time, so for dt / `dilation` seconds of device time (the levels); the trailing
        average draw (`avg_power`) is a power, the same in either clock."""
        for d, w in power_w.items():
            if d in self.levels and w > 0:
                self.levels[d] = max(0.0, self.levels[d] - w * dt / self.dilation / self.capacity_j[d])
        self._drained.append((dt, {d: w * dt for d, w in power_w.items() if d in self.levels}))
        while sum(t for t, _ in self._drained) - self._drained[0][0] >= self.battery_window_s:
            self._drained.popleft()
        return dict(self.levels)

    def fork(self) -> "Monitor":
        """A copy whose battery state (levels, drain window) evolves on its own: what-if intervals."""
        other = copy.copy(self)
        other.levels = dict(self.levels)
        other._drained = deque(self._drained)
        return other

    def avg_power(self) -> dict[str, float]:
        """Each battery device's average draw (W) over the last `battery_window_s`
        seconds of drain (over all of it while less has elapsed; 0 before any)."""
        out = {d: 0.0 for d in self.levels}
        left = self.battery_window_s
        for dt, joules in reversed(self._drained):
            take = min(dt, left)
            for d, j in joules.items():
                out[d] += j * take / dt
            left -= take
            if left <= 0:
                break
        span = self.battery_window_s - max(left, 0.0)
        return {d: j / span for d, j in out.items()} if span > 0 else out

    def poll_os(self) -> dict[str, float]:
        """Read the OS battery interface for mapped devices; readings override the
        power model's level. Returns the readings used ({} when none)."""
        if not self.os_batteries:
            return {}
        os_levels = read_os_battery(self.os_root)
        used = {}
        for dev, supply in self.os_batteries.items():
            if supply in os_levels and dev in self.levels:
                self.levels[dev] = used[dev] = os_levels[supply]
        return used

    def battery(self) -> dict[str, float]:
        return dict(self.levels)

    # --- series -------------------------------------------------------------------
    def record(self, t: float, **extra) -> dict:
        row = {"t": t, "bw_est_mbps": self.bandwidth(), "battery": self.battery(), **extra}
        self.series.append(row)
        return row
