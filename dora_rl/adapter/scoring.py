"""Scoring an adapter's candidate plans on a condition or over a bandwidth band, cached per binned condition.

Bandwidth revisits the same levels all the time, so an adapter's decisions are mostly
lookups: scores are kept per condition with the bandwidth rounded DOWN to a 2% log-bin
and battery levels down to 1% (both conservative), and a band's composition per
(lo, mid, hi) bin triple."""

from __future__ import annotations

import copy
import math
from typing import NamedTuple

from dora_rl.adapter.candidates import SCORE_BIN, log_bin
from dora_rl.adapter.compose import Mix, Scored, band_score, best_mix, conditions, score
from dora_rl.cost import CostModel
from dora_rl.plan import Plan
from dora_rl.scenario import Scenario

Band = tuple[dict, dict, dict]     # (lo, mid, hi) Mbps per medium
MAX_ENTRIES = 50000                # the cache is emptied when it grows past this


class Evaluation(NamedTuple):
    """The options of one decision, scored over one bandwidth band."""

    band: Band                 # (lo, mid, hi) the plans were scored over (compose.band_score)
    cost: CostModel            # the cost model at the band's low end
    by: dict[int, Scored]      # per plan id, the band-scored plan
    best: Mix                  # the best plan or time-share there


def with_battery_levels(cost: CostModel, levels: dict[str, float]) -> CostModel:
    """`cost` with its battery devices at `levels` (clamped to (0, 1] as compose.conditions does):
    a shallow copy with the stored battery energy replaced. Battery levels enter the cost model
    only there (battery life = stored energy / draw); rebuilding the cluster for them (networkx
    routes) is what a cache miss used to spend most of its time on. Tests check it against a
    CostModel built on the levels."""
    lv = {cost.cluster.index[d]: max(1e-6, min(1.0, float(x))) for d, x in (levels or {}).items()
          if d in cost.cluster.index and cost.cluster.devices[cost.cluster.index[d]].on_battery}
    if not lv:
        return cost
    out = copy.copy(cost)
    out.battery_j = [bj if (bj is None or i not in lv) else cost.cluster.devices[i].battery_wh * lv[i] * 3600.0
                     for i, bj in enumerate(cost.battery_j)]
    return out


class ScoreCache:
    """Scores of the plans of `plans` (an adapter's plan table, read by id as it grows)
    on `scenario`'s conditions; `enabled=False` scores every call exactly (no binning)."""

    def __init__(self, scenario: Scenario, plans: list[Plan], *, compose: bool, slack: float, enabled: bool = True):
        self.scenario = scenario
        self.plans = plans
        self.compose, self.slack = compose, slack
        self.enabled = enabled
        self._cache: dict = {}
        self.built = 0          # cost models built (conditions scored from scratch): the cache's misses

    def key(self, bandwidth, battery):
        """(bandwidth, battery, hashable key) of a condition, binned when the cache is on."""
        if self.enabled:
            bandwidth = {m: log_bin(v, SCORE_BIN) for m, v in bandwidth.items()}
            battery = {d: math.floor(v * 100) / 100 for d, v in battery.items()}
        return bandwidth, battery, (tuple(sorted(bandwidth.items())), tuple(sorted(battery.items())))

    def at(self, bandwidth: dict[str, float], battery: dict[str, float], pids: list[int]):
        """(cost model, {pid: Scored}) of `pids` on one condition. With the cache on, the
        bandwidth is rounded DOWN to a 2% log-bin and battery levels down to 1% (both
        conservative) and the result is kept."""
        bandwidth, battery, k = self.key(bandwidth, battery)
        key = ("pt", k, tuple(pids))
        hit = self._cache.get(key) if self.enabled else None
        if hit is not None:
            return hit
        if self.enabled:       # the bin's cost model at the scenario's levels, re-levelled (no cluster rebuild)
            ck = ("cost", k[0])
            base = self._cache.get(ck)
            if base is None:
                base = CostModel(conditions(self.scenario, bandwidth, {}))
                self.built += 1
                self._remember(ck, base)
            cost = with_battery_levels(base, battery)
        else:
            cost = CostModel(conditions(self.scenario, bandwidth, battery))
            self.built += 1
        out = (cost, {p: score(cost, p, self.plans[p]) for p in pids})
        self._remember(key, out)
        return out

    def band(self, band: Band, battery: dict[str, float], pids: list[int]) -> Evaluation:
        """`pids` scored over the bandwidth band (lo, mid, hi): see compose.band_score.
        lo == mid == hi is a point."""
        lo, mid, hi = band
        keys = tuple(self.key(b, battery)[2] for b in band)
        key = ("band", keys, tuple(pids))
        hit = self._cache.get(key) if self.enabled else None
        if hit is not None:
            return Evaluation(band, *hit)
        cost, by_lo = self.at(lo, battery, pids)
        if keys[0] == keys[1] == keys[2]:
            by = by_lo
        else:
            by_mid = self.at(mid, battery, pids)[1]
            by_hi = self.at(hi, battery, pids)[1]
            by = {p: band_score(by_lo[p], by_mid[p], by_hi[p]) for p in pids}
        out = (cost, by, best_mix([by[p] for p in pids], cost, compose=self.compose, slack=self.slack))
        self._remember(key, out)
        return Evaluation(band, *out)

    def bins(self, lo_frac: float = 0.2, hi_frac: float = 3.0) -> list[dict[str, float]]:
        """The bandwidth conditions (every medium) of every 2% bin of the dynamic medium between
        lo_frac and hi_frac x nominal, lowest first ([] without a dynamic medium)."""
        medium = self.scenario.dynamic_medium()
        if medium is None:
            return []
        nom = self.scenario.cluster.media[medium].mbps
        step = math.log1p(SCORE_BIN)
        others = {m: med.mbps for m, med in self.scenario.cluster.media.items() if m != medium}
        k0, k1 = math.floor(math.log(nom * lo_frac) / step), math.ceil(math.log(nom * hi_frac) / step)
        return [{**others, medium: math.exp(k * step)} for k in range(k0, k1 + 1)]

    def initial_levels(self) -> dict[str, float]:
        return {d.name: d.battery_level for d in self.scenario.cluster.devices if d.on_battery}

    def prewarm(self, lo_frac: float = 0.2, hi_frac: float = 3.0) -> int:
        """Score every plan on every bandwidth bin of the dynamic medium between lo_frac
        and hi_frac x nominal, at the initial battery levels and at the 1% bin below them
        (where the levels fall after the first interval's drain and stay for minutes), before
        the run (for a fixed candidate set: `pareto`, `ppo`), so that decisions seldom build
        a cost model or score a plan online. Returns the number of conditions scored."""
        medium = self.scenario.dynamic_medium()
        if not self.enabled or medium is None:
            return 0
        lvl, pids = self.initial_levels(), list(range(len(self.plans)))
        below = {d: max(math.floor(v * 100 - 1e-9) / 100, 0.01) for d, v in lvl.items()}
        conds = self.bins(lo_frac, hi_frac)
        for levels in ([lvl, below] if below != lvl else [lvl]):
            for bw in conds:
                self.at(bw, levels, pids)
            self.at({m: med.mbps for m, med in self.scenario.cluster.media.items()}, levels, pids)
        return (len(conds) + 1) * (2 if below != lvl else 1)

    def min_ok_mbps(self, lo_frac: float = 0.2, hi_frac: float = 3.0) -> dict[int, float]:
        """Per plan id, the lowest bandwidth bin of the dynamic medium from which up to hi_frac x
        nominal the plan complies on its own (initial battery levels); inf when it does not comply
        at hi_frac x nominal. A single plan's robustness: how far bandwidth may fall before it breaks."""
        medium = self.scenario.dynamic_medium()
        pids = list(range(len(self.plans)))
        out = {p: math.inf for p in pids}
        if medium is None:
            return out
        alive, lvl = set(pids), self.initial_levels()
        for bw in reversed(self.bins(lo_frac, hi_frac)):
            by = self.at(bw, lvl, pids)[1]
            alive = {p for p in alive if by[p].ok}
            for p in alive:
                out[p] = bw[medium]
            if not alive:
                break
        return out

    def _remember(self, key, out) -> None:
        if self.enabled:
            if len(self._cache) > MAX_ENTRIES:
                self._cache.clear()
            self._cache[key] = out
