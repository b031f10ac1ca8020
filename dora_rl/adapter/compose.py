"""Scoring candidate plans on the current conditions, and composing them.

A *condition* is the nominal scenario with some media at other rates and batteries
at other levels (`conditions`). Every candidate plan is scored there with the shared
cost model; from its `Metrics` we keep what composition needs:

    cap        throughput the plan sustains (req/s, or samples/s in training)
    power      average W at the offered load (the cost model's energy / period)
    power_sat  average W when it runs saturated (period = 1 / cap; in a time-share a
               plan serves its own slot at full capacity while the backlog of the
               slower plans' slots drains)
    dev_*      the same per battery device

A `Mix` time-shares plans with fractions alpha_i (sum 1). One plan (alpha = 1) uses the
cost model's own figures. Two or more use saturated power:

    cap(mix)   = sum alpha_i cap_i          power(mix) = sum alpha_i power_sat_i
    latency    = max latency of the used plans (queueing between slots is ignored)
    QoE        = every used plan feasible and within the latency SLO, cap(mix) >= the
                 required rate (max(min_throughput, request_rate)), and every battery
                 device's power within its budget  battery_J x level / (min_hours x 3600).

`best_mix` solves the small LP of the issue with scipy's HiGHS:

    min  sum alpha_i power_sat_i
    s.t. sum alpha_i cap_i >= need,   sum alpha_i power_sat_{i,d} <= budget_d  (battery d),
         sum alpha_i = 1,  alpha >= 0,  over plans that are feasible and meet the SLO,

and returns it when it is cheaper than the cheapest compliant single plan (at its
offered-load power); otherwise the single plan. When nothing is compliant it returns
the least-bad single plan (`shortfall`), flagged not ok."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from dora_rl.cost import CostModel, Metrics
from dora_rl.cost.qoe import required_rate
from dora_rl.plan import Plan
from dora_rl.scenario import Scenario

TOL = 1e-9
MIN_FRACTION = 1e-4     # LP fractions below this are dropped (and the rest renormalised)


def conditions(scenario: Scenario, bandwidth: dict[str, float] | None = None,
               battery: dict[str, float] | None = None) -> Scenario:
    """The scenario with media at `bandwidth` Mbps and batteries at `battery` levels."""
    cl = scenario.cluster
    for m, v in (bandwidth or {}).items():
        if v is not None and m in cl.media and abs(cl.media[m].mbps - v) > 1e-12 * max(1.0, v):
            cl = cl.with_medium_mbps(m, max(float(v), 1e-6))
    if battery:
        lv = {d: max(1e-6, min(1.0, float(x))) for d, x in battery.items()
              if d in cl.index and cl.device(d).on_battery}
        if lv and any(abs(cl.device(d).battery_level - x) > 1e-15 for d, x in lv.items()):
            cl = cl.with_battery_levels(lv)
    return scenario if cl is scenario.cluster else scenario.replace(cluster=cl)


@dataclass
class Scored:
    """One candidate plan scored on one condition."""

    pid: int
    plan: Plan
    metrics: Metrics
    cap: float
    power: float
    power_sat: float
    dev_power: dict[str, float]
    dev_power_sat: dict[str, float]
    lat_ok: bool

    @property
    def feasible(self) -> bool:
        return self.metrics.feasible

    @property
    def ok(self) -> bool:
        return self.metrics.qoe_ok


def score(cost: CostModel, pid: int, plan: Plan) -> Scored:
    m = cost.evaluate(plan, validate=False)
    names, p = cost.names, m.period_s
    cap = m.throughput
    # saturated period: one request every 1/cap seconds (training: already saturated)
    p_sat = min(p, 1.0 / cap) if (cap > 0 and math.isfinite(cap) and not cost.training) else p
    dev_power, dev_sat = {}, {}
    tot, tot_sat = 0.0, 0.0
    for d in m.participants:
        e = m.energy_by_device[d]
        w = e / p
        e_sat = e - cost.idle_w[d] * (p - p_sat)       # less idle time in a shorter period
        ws = e_sat / p_sat if p_sat > 0 else w
        tot += w
        tot_sat += ws
        if cost.battery_j[d] is not None:
            dev_power[names[d]] = w
            dev_sat[names[d]] = ws
    slo = cost.qoe.latency_slo_ms
    lat_ok = m.feasible and (slo is None or m.latency_ms <= slo * (1 + TOL))
    return Scored(pid, plan, m, cap, tot, tot_sat, dev_power, dev_sat, lat_ok)


def band_score(lo: Scored, mid: Scored, hi: Scored) -> Scored:
    """One plan scored over a BAND of bandwidths [lo, hi] (same plan on three
    conditions): compliant only if compliant at both ends; capacity and latency as at
    the low end (the worst case); power and each battery device's draw as at `mid` (the
    expected rate: energy is ranked there, and battery life is judged on the average
    draw, simulate.battery_violations). The composition LP on band-scored plans gives
    fractions that meet capacity anywhere in the band, where a time-share solved at one
    rate has no slack, and the battery budgets at the expected rate. (Budgets at the
    worst of the three capped the laptop's share in smart_home's time-shares below what
    a dip needs: on the ferry trace 0.127 of intervals violated against 0.117.)"""
    import dataclasses
    viol = list(dict.fromkeys(list(lo.metrics.violations) + list(hi.metrics.violations)))
    ok = lo.metrics.qoe_ok and hi.metrics.qoe_ok
    m = dataclasses.replace(lo.metrics, qoe_ok=ok, violations=viol) if dataclasses.is_dataclass(lo.metrics) \
        else lo.metrics
    dev, dsat = dict(mid.dev_power), dict(mid.dev_power_sat)
    return Scored(lo.pid, lo.plan, m, min(lo.cap, mid.cap, hi.cap), mid.power, mid.power_sat, dev, dsat,
                  lo.lat_ok and hi.lat_ok and mid.lat_ok)


def battery_budgets(cost: CostModel) -> dict[str, float]:
    """W each battery device may average and still last qoe.min_battery_hours."""
    h = cost.qoe.min_battery_hours
    if h is None:
        return {}
    return {cost.names[d]: bj / (h * 3600.0) for d, bj in enumerate(cost.battery_j) if bj is not None}


@dataclass
class Mix:
    """A plan (one entry) or a time-share of plans; figures on one condition."""

    parts: list[tuple[Scored, float]]
    cap: float = 0.0
    power: float = 0.0
    latency_ms: float = 0.0
    dev_power: dict[str, float] = field(default_factory=dict)
    ok: bool = False
    violations: list[str] = field(default_factory=list)

    @property
    def pids(self) -> tuple[int, ...]:
        return tuple(s.pid for s, _ in self.parts)

    @property
    def fractions(self) -> tuple[float, ...]:
        return tuple(a for _, a in self.parts)

    @property
    def plans(self) -> list[Plan]:
        return [s.plan for s, _ in self.parts]

    def energy_per_unit(self, need: float) -> float:
        """J per request (or sample) actually served."""
        served = min(self.cap, need) if need > 0 else self.cap
        return self.power / served if served > 0 else math.inf

    def label(self) -> str:
        if len(self.parts) == 1:
            return f"#{self.parts[0][0].pid}"
        return "+".join(f"#{s.pid}:{a:.2f}" for s, a in self.parts)


def make_mix(parts: list[tuple[Scored, float]], need: float, budgets: dict[str, float],
             slo_ms: float | None) -> Mix:
    single = len(parts) == 1
    cap = sum(a * s.cap for s, a in parts)
    power = sum(a * (s.power if single else s.power_sat) for s, a in parts)
    dev: dict[str, float] = {}
    for s, a in parts:
        for d, w in (s.dev_power if single else s.dev_power_sat).items():
            dev[d] = dev.get(d, 0.0) + a * w
    lat = max(s.metrics.latency_ms for s, _ in parts)
    viol = []
    if single:
        viol = list(parts[0][0].metrics.violations)
    else:
        for s, _ in parts:
            if not s.feasible:
                viol.append(f"plan #{s.pid} does not fit in memory")
        if slo_ms is not None and lat > slo_ms * (1 + TOL):
            viol.append(f"latency: {lat:.4g} ms > SLO {slo_ms:.4g} ms")
        if need and cap < need * (1 - TOL):
            viol.append(f"throughput: mix capacity {cap:.4g} < required {need:.4g}")
        viol.extend(budget_violations(dev, budgets))
    return Mix(list(parts), cap, power, lat, dev, not viol, viol)


def budget_violations(dev_power: dict[str, float], budgets: dict[str, float], over: str = "") -> list[str]:
    """One message per battery device whose draw (W) exceeds its budget (W)."""
    return [f"battery: {d} draws {dev_power[d]:.3g} W{over} > budget {b:.3g} W"
            for d, b in budgets.items() if dev_power.get(d, 0.0) > b * (1 + TOL)]


def shortfall(s: Scored, need: float, budgets: dict[str, float], slo_ms: float | None) -> tuple:
    """How badly a plan misses QoE (for choosing the least-bad plan when none complies)."""
    miss = 0.0
    if need > 0:
        miss += max(0.0, need / max(s.cap, 1e-12) - 1.0)
    if slo_ms is not None:
        miss += max(0.0, s.metrics.latency_ms / slo_ms - 1.0)
    for d, b in budgets.items():
        if d in s.dev_power and b > 0:
            miss += max(0.0, s.dev_power[d] / b - 1.0)
    return (not s.feasible, miss, s.power)


def best_mix(scored: list[Scored], cost: CostModel, *, compose: bool = True,
             objective: str | None = None, slack: float = 0.0) -> Mix | None:
    """The cheapest compliant plan or time-share on this condition (see module doc).
    objective='latency' picks the fastest compliant single plan (no composition)."""
    return choose_mix(scored, required_rate(cost.scenario), battery_budgets(cost), cost.qoe.latency_slo_ms,
                      objective=objective or cost.qoe.objective, compose=compose, slack=slack)


def choose_mix(scored: list[Scored], need: float, budgets: dict[str, float], slo_ms: float | None, *,
               objective: str = "energy", compose: bool = True, slack: float = 0.0) -> Mix | None:
    """`best_mix` on explicit figures: required rate, battery budgets (W), SLO (ms).
    `slack`: a time-share is solved for `need x (1 + slack)` when it can be (else for
    `need`), so that it keeps a little capacity in hand like a single plan does."""
    if not scored:
        return None
    ok = [s for s in scored if s.ok]
    if objective == "latency":
        if ok:
            return make_mix([(min(ok, key=lambda s: (s.metrics.latency_ms, s.power)), 1.0)], need, budgets, slo_ms)
        return make_mix([(min(scored, key=lambda s: shortfall(s, need, budgets, slo_ms)), 1.0)],
                        need, budgets, slo_ms)
    single = min(ok, key=lambda s: (s.power, s.metrics.latency_ms)) if ok else None
    best = make_mix([(single, 1.0)], need, budgets, slo_ms) if single else None
    if compose:
        mix = lp_slack([s for s in scored if s.lat_ok], need, budgets, slo_ms, slack)
        if mix is not None and mix.ok and (best is None or mix.power < best.power * (1 - 1e-6)):
            best = mix
    if best is None:
        s = min(scored, key=lambda s: shortfall(s, need, budgets, slo_ms))
        best = make_mix([(s, 1.0)], need, budgets, slo_ms)
    return best


_VERTEX_MEMO: dict = {}   # lp_mix's vertex_lp solutions by their exact inputs
VERTEX_MAX_N = 16       # composition LPs this small are solved by vertex enumeration (exact, ~0.3 ms)
VERTEX_MAX_ROWS = 3     # capacity + up to two battery budgets; larger ones go to HiGHS


def vertex_lp(c: np.ndarray, a: np.ndarray, b: np.ndarray, tol: float = 1e-9) -> np.ndarray | None:
    """min c.x  s.t.  a x <= b,  sum x = 1,  x >= 0, by enumerating the polytope's
    vertices: a vertex has k <= 1 + rows nonzeros, fixed by sum x = 1 and k - 1 tight
    rows, so every (support, tight rows) pair is one k x k solve, batched with numpy.
    Exact like the simplex (the optimum of a bounded LP is a vertex) and, for the
    handful of plans and rows composition has, ~10x faster than scipy's linprog
    call overhead. None when infeasible."""
    from itertools import combinations

    n, m = len(c), len(b)
    best, best_x = math.inf, None
    for k in range(1, min(n, m + 1) + 1):
        sup = np.array(list(combinations(range(n), k)))                     # (S, k)
        rows = list(combinations(range(m), k - 1)) or [()]
        for t in rows:
            t = list(t)
            mats = np.ones((len(sup), k, k))
            if t:
                mats[:, 1:, :] = a[t][:, sup].transpose(1, 0, 2)              # (S, k-1, k)
            rhs = np.concatenate([[1.0], b[t]]) if t else np.array([1.0])
            det = np.linalg.det(mats)
            ok = np.abs(det) > 1e-12
            if not ok.any():
                continue
            xs = np.linalg.solve(mats[ok], np.broadcast_to(rhs, (int(ok.sum()), k))[..., None])[..., 0]
            ss = sup[ok]
            good = (xs >= -tol).all(axis=1)
            if m:
                lhs = np.einsum("rsk,sk->sr", a[:, ss], xs)                   # (S, m)
                good &= (lhs <= b + tol * np.maximum(1.0, np.abs(b))).all(axis=1)
            if not good.any():
                continue
            obj = (c[ss] * xs).sum(axis=1)
            obj[~good] = math.inf
            i = int(np.argmin(obj))
            if obj[i] < best - 1e-12:
                best = float(obj[i])
                best_x = np.zeros(n)
                best_x[ss[i]] = np.clip(xs[i], 0.0, None)
    return best_x


def lp_slack(cands: list[Scored], need: float, budgets: dict[str, float], slo_ms: float | None,
             slack: float = 0.0) -> Mix | None:
    """`lp_mix` for `need x (1 + slack)` when that is feasible, else for `need`."""
    if slack > 0 and need:
        mix = lp_mix(cands, need * (1.0 + slack), budgets, slo_ms)
        if mix is not None and mix.ok:
            return mix
    return lp_mix(cands, need, budgets, slo_ms)


def lp_mix(cands: list[Scored], need: float, budgets: dict[str, float], slo_ms: float | None) -> Mix | None:
    """Solve the composition LP over `cands` (each already feasible and within the SLO).
    None when infeasible or when the optimum is a single plan."""
    from scipy.optimize import linprog

    cands = [s for s in cands if math.isfinite(s.cap) and math.isfinite(s.power_sat)]
    if len(cands) < 2:
        return None
    n = len(cands)
    c = np.array([s.power_sat for s in cands])
    a_ub, b_ub = [], []
    if need > 0:
        a_ub.append([-s.cap for s in cands])
        b_ub.append(-need * (1 + 1e-7))
    for d, b in budgets.items():
        row = [s.dev_power_sat.get(d, 0.0) for s in cands]
        if any(row):
            a_ub.append(row)
            b_ub.append(b * (1 - 1e-7))
    if n <= VERTEX_MAX_N and len(a_ub) <= VERTEX_MAX_ROWS:
        a_np, b_np = np.array(a_ub, dtype=float).reshape(len(a_ub), n), np.array(b_ub, dtype=float)
        key = (c.tobytes(), a_np.tobytes(), b_np.tobytes())
        if key not in _VERTEX_MEMO:      # the same figures recur (scores are cached per bandwidth bin)
            if len(_VERTEX_MEMO) > 20000:
                _VERTEX_MEMO.clear()
            _VERTEX_MEMO[key] = vertex_lp(c, a_np, b_np)
        xs = _VERTEX_MEMO[key]
        if xs is None:
            return None
    else:
        res = linprog(c, A_ub=np.array(a_ub) if a_ub else None, b_ub=np.array(b_ub) if b_ub else None,
                      A_eq=np.ones((1, n)), b_eq=[1.0], bounds=[(0.0, 1.0)] * n, method="highs")
        if res.status != 0:
            return None
        xs = res.x
    x = np.where(xs < MIN_FRACTION, 0.0, xs)
    if x.sum() <= 0:
        return None
    x = x / x.sum()
    parts = [(s, float(a)) for s, a in zip(cands, x, strict=False) if a > 0]
    parts.sort(key=lambda p: p[0].pid)
    if len(parts) == 1:
        return None      # a single plan: choose_mix compares single plans at their load power
    return make_mix(parts, need, budgets, slo_ms)


def rescore(mix: Mix, by_pid: dict[int, Scored], cost: CostModel) -> Mix:
    """The same plans and fractions, on another condition."""
    parts = [(by_pid[s.pid], a) for s, a in mix.parts]
    return make_mix(parts, required_rate(cost.scenario), battery_budgets(cost), cost.qoe.latency_slo_ms)


# ------------------------------------------------------------------ switch cost
def block_params(scenario: Scenario) -> list[float]:
    pp = scenario.profile.param_prefix
    return [float(pp[i + 1] - pp[i]) for i in range(scenario.profile.n_blocks)]


def weights_to_move(plans: list[Plan], holdings: dict[str, set[int]], params: list[float],
                    source: str) -> dict[str, float]:
    """Bytes each device must receive so it holds every block the plans give it.
    The source holds the whole model; `holdings` are the blocks others hold already
    (a device keeps the blocks it held before: flash cache)."""
    need: dict[str, set[int]] = {}
    for p in plans:
        for st in p.stages:
            for d in st.devices:
                if d != source:
                    need.setdefault(d, set()).update(range(st.start, st.end))
    out = {}
    for d, blocks in need.items():
        b = sum(params[i] for i in blocks - holdings.get(d, set()))
        if b > 0:
            out[d] = b
    return out


def transfer_seconds(cost: CostModel, per_device: dict[str, float], source: str) -> float:
    """Time to ship `per_device` bytes from the source at once: the slowest route, or
    the busiest medium when they share one."""
    if not per_device:
        return 0.0
    cl = cost.cluster
    s = cl.index[source]
    t = 0.0
    load: dict[int, float] = {}
    for d, b in per_device.items():
        j = cl.index[d]
        t = max(t, b / cost.bw[s][j] + cost.lat[s][j])
        for mu, cnt in cost.hops[s][j]:
            load[mu] = load.get(mu, 0.0) + b * cnt
    for mu, b in load.items():
        t = max(t, b / cost.medium_bps[mu])
    return t


def radio_joules(cost: CostModel, per_device: dict[str, float], source: str) -> float:
    """Radio energy of shipping weights (sender + receiver, per byte)."""
    cl = cost.cluster
    s = cl.index[source]
    return sum(b * (cost.radio[s] + cost.radio[cl.index[d]]) for d, b in per_device.items())
