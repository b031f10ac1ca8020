"""AdaptEnv's dynamics: the runtime simulator's interval, one step at a time; test beds; the trace split.

`IntervalSim` replays simulate()'s loop (dora_rl/adapter/simulate.py) one control
interval per call, so that an agent acts between intervals: the adapter sees the Monitor's
State (bandwidth estimated from the previous interval's transfers with lognormal noise and
its recent overshoot, battery levels); a switch takes effect after its weights moved at the
TRUE bandwidth plus the drain time (the old plan serves meanwhile, the radio energy is
paid); the interval is judged on the TRUE bandwidth, battery on the 60 s trailing-average
draw (simulate.battery_violations). tests/test_envs.py checks that it reproduces
simulate()'s log for `pareto`. `what_if(options)` runs the coming interval once per option on a
fork of the Monitor's battery state: what each would have been paid (AdaptEnv.row_utilities).

The trace split (`trace_split`): every file under the traces root ($DORA_TRACES, e.g.
../shared/data/traces/pensieve: norway_3g/, fcc_broadband/) is in the validation split
when sha1(folder/name) mod 5 == 0, else in the training split; deterministic, independent
of the file order or of which files exist. Test beds (`test_bed`): "preset" or
"preset@uplinkX" (the dynamic medium and its links at X x nominal, as the bench uses)."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np

from dora_rl.errors import TraceError

VALIDATION_MOD = 5
TRACE_FOLDERS = ("norway_3g", "fcc_broadband")


def is_validation(relpath: str) -> bool:
    """True when the trace `folder/name` is in the validation split (module docstring)."""
    return int(hashlib.sha1(relpath.encode()).hexdigest(), 16) % VALIDATION_MOD == 0


def trace_split(root: str | Path | None = None) -> tuple[list[str], list[str]]:
    """(training, validation) trace paths relative to the traces root, sorted. No root (or
    none found): ([], []): synthetic traces only. A root whose split leaves no validation
    trace: TraceError."""
    from dora_rl.cluster.traces import traces_root

    r = Path(root) if root is not None else traces_root()
    if r is None or not Path(r).is_dir():
        return [], []
    files = sorted(f"{d}/{p.name}" for d in TRACE_FOLDERS if (Path(r) / d).is_dir()
                   for p in (Path(r) / d).iterdir() if p.is_file())
    if not files:
        return [], []
    val = [f for f in files if is_validation(f)]
    if not val:
        raise TraceError(f"trace split of {r}: no validation traces among {len(files)} files "
                         f"(sha1(name) mod {VALIDATION_MOD} == 0 selects none); add traces")
    return [f for f in files if f not in val], val


def test_bed(spec: str):
    """The scenario of a test bed spec: "preset" or "preset@uplinkX" (dynamic medium x X)."""
    from dora_rl.adapter.compose import conditions
    from dora_rl.scenario import load_scenario

    name, _, rest = str(spec).partition("@")
    scen = load_scenario(name)
    if rest:
        if not rest.startswith("uplink"):
            raise TraceError(f"test bed {spec!r}: expected preset@uplinkX")
        try:
            x = float(rest[len("uplink"):])
        except ValueError:
            raise TraceError(f"test bed {spec!r}: X in preset@uplinkX must be a number") from None
        m = scen.dynamic_medium()
        if m is None or not x > 0:
            raise TraceError(f"test bed {spec!r}: needs a dynamic medium and X > 0")
        scen = conditions(scen, {m: scen.cluster.media[m].mbps * x})
    return scen


class IntervalSim:
    """simulate()'s loop, one interval per `step(decision)` (module docstring).
    `t0` starts the replay that far into the trace."""

    def __init__(self, scenario, adapter, trace, medium: str, interval_s: float = 1.0, *, seed: int = 0,
                 t0: float = 0.0, estimator: str = "harmonic", window: int = 4, error_window: int = 5,
                 noise: float = 0.05, battery_window_s: float = 60.0):
        from dora_rl.adapter.monitor import Monitor
        from dora_rl.adapter.simulate import probe_peer
        from dora_rl.cost import CostModel
        from dora_rl.cost.qoe import required_rate

        self.scenario, self.adapter, self.trace, self.medium = scenario, adapter, trace, medium
        self.interval_s, self.t0, self.noise = float(interval_s), float(t0), float(noise)
        adapter.bind(trace, medium, interval_s)
        self.nominal = scenario.cluster.media[medium].mbps
        self.need = required_rate(scenario)
        self.mon = Monitor(scenario.cluster, kind=estimator, window=window, error_window=error_window,
                           battery_window_s=battery_window_s)
        self.rng = np.random.default_rng(seed)
        self.src = scenario.workload.source
        self.nom_cost = CostModel(scenario)
        self.flow_cache: dict[int, list] = {}
        self.probe_dst = probe_peer(scenario, medium)
        self.active = None
        self.ready_at = 0.0
        self.k = 0
        self._true = None

    @property
    def t(self) -> float:
        return self.k * self.interval_s

    def state(self):
        """The Monitor's State at the coming decision."""
        return self.mon.state(self.t)

    def true_condition(self):
        """(true bandwidth, cost model on the true condition) of the coming interval."""
        from dora_rl.adapter.compose import conditions
        from dora_rl.adapter.rules import true_mbps
        from dora_rl.cost import CostModel

        if self._true is None or self._true[0] != self.k:
            bw = true_mbps(self.trace, self.t0 + self.t, self.interval_s)
            self._true = (self.k, bw, CostModel(conditions(self.scenario, {self.medium: bw}, self.mon.battery())))
        return self._true[1], self._true[2]

    def what_if(self, options: list, p_ref: float) -> tuple[np.ndarray, np.ndarray]:
        """Per option (a Mix, or None: NaN), the QoE utility (adapter.observation.qoe_utility) the
        coming interval would have if the adapter deployed it now, and whether it would meet QoE
        (1/0): run_interval on a fork of the Monitor's battery state, exactly as step() would judge
        it (switch drain, battery on the trailing average). AdaptEnv's counterfactual targets."""
        from types import SimpleNamespace

        from dora_rl.adapter.compose import score, weights_to_move
        from dora_rl.adapter.observation import qoe_utility
        from dora_rl.adapter.simulate import run_interval

        ad, dt = self.adapter, self.interval_s
        _, tcost = self.true_condition()
        memo: dict = {}

        def scorer(cost, p, plan):
            if p not in memo:
                memo[p] = score(cost, p, plan)
            return memo[p]

        out, ok = np.full(len(options), np.nan), np.full(len(options), np.nan)
        for k, m in enumerate(options):
            if m is None:
                continue
            switch = ad.current is None or set(m.pids) != set(ad.current.pids)
            move = weights_to_move(m.plans, ad.holdings, ad.params, ad.source) if switch else {}
            dec = SimpleNamespace(pids=m.pids, fractions=m.fractions, switch=switch, move_bytes=move)
            fig = run_interval(ad, self.scenario, tcost, dec, self.active, self.ready_at, self.t, dt, self.need,
                               self.src, self.mon.fork(), scorer=scorer)[2]
            out[k] = qoe_utility(not fig["viol"], fig["energy"], dt, p_ref)
            ok[k] = 0.0 if fig["viol"] else 1.0
        return out, ok

    def step(self, dec) -> dict:
        """Run the coming interval under decision `dec` (Adapter.decide's); returns the log row."""
        from dora_rl.adapter.simulate import observe_interval, plan_flows, run_interval

        ad, mon, tr, medium, need = self.adapter, self.mon, self.trace, self.medium, self.need
        t, dt, k = self.t, self.interval_s, self.k
        bw_true, tcost = self.true_condition()
        self.active, self.ready_at, fig = run_interval(ad, self.scenario, tcost, dec, self.active, self.ready_at,
                                                       t, dt, need, self.src, mon)
        target, energy, lat, viol = fig["target"], fig["energy"], fig["lat"], fig["viol"]
        main_pid = max(zip(target[1], target[0], strict=False))[1]
        if main_pid not in self.flow_cache:
            self.flow_cache[main_pid] = plan_flows(self.nom_cost, ad.plans[main_pid])
        observe_interval(mon, self.flow_cache[main_pid], lambda tau: tr.at(self.t0 + tau), t, dt, self.nominal,
                         medium, self.rng, self.noise, self.src, self.probe_dst)
        mon.record(t, bw_true_mbps=bw_true)
        mon.close_interval()
        self.k += 1
        return {"t": t, "bw_true_mbps": bw_true, "ok": not viol, "violations": viol, "energy_j": energy,
                "switch": bool(dec.switch and k > 0), "reason": dec.reason, "latency_ms": lat,
                "pids": list(target[0]), "decide_ms": dec.decide_ms}


def scaled_trace(scenario, relpath: str | None, mean_frac: float, seed: int, cache: dict | None = None):
    """(trace in Mbps, medium): the file `relpath` (or a Markov trace, seeded, when None) with
    its mean at mean_frac x the dynamic medium's nominal rate."""
    from dora_rl.adapter.simulate import make_trace

    if relpath is None:
        return make_trace(scenario, f"markov:{seed}", mean_frac=mean_frac, duration_s=900.0)
    key = (id(scenario), relpath)
    if cache is not None and key in cache:
        tr, medium = cache[key]
    else:
        tr, medium = make_trace(scenario, relpath, mean_frac=1.0)
        if cache is not None:
            cache[key] = (tr, medium)
    nominal = scenario.cluster.media[medium].mbps
    return (tr if math.isclose(mean_frac, 1.0) else tr.scaled(nominal * mean_frac, "mean")), medium
