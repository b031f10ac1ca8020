"""`oracle`: exhaustive search, exact on small instances; the yardstick for `dora`.

It enumerates the same plan space as `dora` (docs/planners.md): for every stage count
S, depth first, an ordered sequence of disjoint device groups (ascending device order,
at most `max_group` devices each) times every composition of the blocks into S
contiguous ranges, shares from `proportional_shares` (training: in-flight count
min(M, S - s)). Every complete plan is scored with the full cost model
(`CostModel.evaluate_stages`, full contention) and the best QoE-compliant plan by the
scenario's objective wins.

Pruning never changes the answer:
- memory: a stage that does not fit ends the branch (memory does not depend on later
  stages once S is fixed);
- monotone QoE bounds: a prefix whose partial latency or partial period already breaks
  the latency SLO / throughput target cannot be completed into a compliant plan;
- branch and bound on the objective: the prefix's partial latency (sum of stage and
  transfer times so far + (M-1) x partial bottleneck + partial all-reduce) and partial
  energy (participants so far, with the period lower bound) only grow as stages are
  added; a prefix no better than the incumbent is cut. A transfer, and a stage's ring
  all-reduce, is charged, figure by figure, the least over its routings (time,
  occupancy, bytes per medium and per device): the cost model picks the routings of a
  complete plan, so a prefix cannot know which.

Instances beyond `MAX_DEVICES` devices or `MAX_BLOCKS` blocks are refused
(`PlannerError`): the space grows like (ordered set partitions) x C(B-1, S-1)."""

from __future__ import annotations

import math

from dora_rl.cost import CostModel
from dora_rl.errors import PlannerError
from dora_rl.plan import Plan
from dora_rl.planners.base import Planner, proportional_shares, register
from dora_rl.planners.dp import Space, explain_infeasible
from dora_rl.scenario import Scenario

MAX_DEVICES = 6
MAX_BLOCKS = 24
TOL = 1e-9


class _Oracle:
    def __init__(self, cost: CostModel, max_group: int | None, prune: bool = True):
        self.cost = cost
        n, B = cost.n, cost.n_blocks
        self.space = Space(list(range(n)), n if max_group is None else max_group)
        self.groups = self.space.groups()
        self.gmask = [sum(1 << d for d in g) for g in self.groups]
        self.prune = prune
        wl, q = cost.workload, cost.qoe
        self.M = wl.microbatches
        self.m = wl.batch / self.M
        self.B = B
        self.tr = cost.training
        self.back = 3.0 if self.tr else 1.0
        self.obj = q.objective
        self.nmed = len(cost.medium_bps)
        self.Lbound = math.inf
        self.Tbound = math.inf
        if q.latency_slo_ms is not None:
            self.Lbound = q.latency_slo_ms * 1e-3 * (1 + TOL)
        if self.tr:
            if q.min_throughput is not None:
                self.Lbound = min(self.Lbound, wl.batch / (q.min_throughput * (1 - TOL)))
        else:
            need = max(q.min_throughput or 0.0, wl.request_rate or 0.0)
            if need > 0:
                self.Tbound = 1.0 / (self.M * need * (1 - TOL))
        self.best = None          # (objective, stages, metrics)
        self.evaluated = 0
        self.nodes = 0

    # -- partial figures (prefix of stages, source boundary included) --------
    def _lb(self, P):
        """Lower bounds (latency s, energy J, T_eff) of any completion of prefix state P."""
        cost, M = self.cost, self.M
        caps = cost.medium_bps
        T = P["T"]
        for mu, b in P["load"].items():
            T = max(T, b / caps[mu])
        A = P["A"]
        for mu, b in P["arload"].items():
            A = max(A, b / caps[mu])
        L = P["fill"] + (M - 1) * T + A
        if self.tr:
            period = L
        else:
            rate = cost.workload.request_rate
            period = max(1.0 / rate, M * T) if rate else M * T
        E = 0.0
        for d in P["part"]:
            busy = P["busy"].get(d, 0.0)
            E += (cost.active_w[d] * busy + cost.idle_w[d] * max(period - busy, 0.0)
                  + cost.radio[d] * P["bytes"].get(d, 0.0))
        return L, E, T

    def _add_stage(self, P, prev, l, r, devs, sh, c, per):
        """New prefix state after appending stage (l, r, devs, sh) behind group `prev`."""
        cost, M = self.cost, self.M
        Q = {"fill": P["fill"], "T": P["T"], "A": P["A"], "load": dict(P["load"]), "arload": dict(P["arload"]),
             "busy": dict(P["busy"]), "bytes": dict(P["bytes"]), "part": P["part"] | set(devs)}
        u = c                      # forward (inference) or forward + backward (training) time
        Q["fill"] += u
        Q["T"] = max(Q["T"], u)
        for d, t in zip(devs, per):
            Q["busy"][d] = Q["busy"].get(d, 0.0) + t * M
        dirs = 2.0 if (self.tr and l > 0) else 1.0
        # the plan's routing is chosen once it is complete (`routing.choose`), so a prefix is
        # charged, figure by figure, the least over the transfer's routings: a lower bound
        opts = cost.transfer_options(prev[0], prev[1], list(devs), list(sh), self.m * cost.bnd[l])
        Q["fill"] += dirs * opts[0].x                   # the options are sorted by x
        Q["T"] = max(Q["T"], dirs * min(o.occ for o in opts))
        for mu in range(self.nmed):
            b = min(o.media[mu] for o in opts)
            if b > 0:
                Q["load"][mu] = Q["load"].get(mu, 0.0) + dirs * b
        for d, b in _least_bytes(opts).items():
            Q["bytes"][d] = Q["bytes"].get(d, 0.0) + dirs * b * M
        if self.tr and len(devs) > 1:
            # the rings are routed jointly too (`CostModel._allreduces`): the least over the
            # ring's routings, figure by figure (step time, bytes per medium and per device)
            ar = cost.allreduce_options(list(devs), cost.pp[r] - cost.pp[l])
            steps = 2 * (len(devs) - 1)
            Q["A"] = max(Q["A"], steps * ar[0].x)              # the options are sorted by x
            for mu in range(self.nmed):
                b = min(o.media[mu] for o in ar) * steps
                if b > 0:
                    Q["arload"][mu] = Q["arload"].get(mu, 0.0) + b
            for d, b in _least_bytes(ar).items():              # members: sent + received; relays: forwarded
                Q["bytes"][d] = Q["bytes"].get(d, 0.0) + steps * b
        return Q

    def _stage(self, l, r, gi, inflight):
        cost = self.cost
        devs = self.groups[gi]
        sh = proportional_shares(cost, list(devs), l, r, self.m, inflight)
        if sh is None:
            return None
        # the cost model's per-member compute (measured block times where a device has them)
        c, per = cost.stage_compute(l, r, devs, sh, self.m)
        if self.tr:
            per = cost.stage_busy(l, r, devs, sh, self.m, per)
            c = max(per)
        return sh, c, per

    def _cut(self, P):
        if not self.prune:
            return False
        L, E, T = self._lb(P)
        if T > self.Tbound or L > self.Lbound:
            return True
        if self.best is None:
            return False
        v = L * 1e3 if self.obj == "latency" else E
        return v > self.best[0] * (1 + 1e-12)

    def run(self):
        cost = self.cost
        src = cost.src
        nd = len(self.space.devices)
        for S in range(1, min(nd, self.B) + 1):
            P0 = {"fill": 0.0, "T": 0.0, "A": 0.0, "load": {}, "arload": {}, "busy": {}, "bytes": {},
                  "part": {src}}
            self._dfs(S, 0, 0, 0, ([src], [1.0]), P0, [])
        return self.best

    def _dfs(self, S, s, l, used, prev, P, stages):
        cost, B = self.cost, self.B
        inflight = min(self.M, S - s) if self.tr else 1
        last = s == S - 1
        rs = [B] if last else range(l + 1, B - (S - 1 - s) + 1)
        for gi, g in enumerate(self.groups):
            if self.gmask[gi] & used:
                continue
            for r in rs:
                st = self._stage(l, r, gi, inflight)
                if st is None:
                    continue
                sh, c, per = st
                self.nodes += 1
                stg = stages + [(l, r, list(g), sh)]
                if last:
                    self.evaluated += 1
                    met = cost.evaluate_stages(stg, self.M)
                    if met.qoe_ok:
                        v = met.objective(self.obj)
                        if self.best is None or v < self.best[0]:
                            self.best = (v, stg, met)
                    continue
                Q = self._add_stage(P, prev, l, r, g, sh, c, per)
                if self._cut(Q):
                    continue
                self._dfs(S, s + 1, r, used | self.gmask[gi], (list(g), list(sh)), Q, stg)


def oracle_search(scenario: Scenario, cost: CostModel | None = None, *, max_group: int | None = None,
                  prune: bool = True, max_devices: int = MAX_DEVICES, max_blocks: int = MAX_BLOCKS):
    """Best QoE-compliant plan by the objective as (objective value, stages, Metrics), or None."""
    cost = cost or CostModel(scenario)
    if cost.n > max_devices or cost.n_blocks > max_blocks:
        raise PlannerError(f"oracle: exhaustive search is limited to {max_devices} devices x {max_blocks} blocks; "
                           f"this scenario has {cost.n} devices x {cost.n_blocks} blocks. Use planner 'dora' "
                           "(exact DP where it fits, approximate past it; no device limit) instead")
    o = _Oracle(cost, max_group, prune)
    best = o.run()
    return best, o


def _least_bytes(opts) -> dict[int, float]:
    """Per device, the least bytes it sends or receives (relaying counts both) over a
    transfer's routings (0 where some routing does not touch it)."""
    per = []
    for o in opts:
        b: dict[int, float] = {}
        for i, j, x in o.flows:
            b[i] = b.get(i, 0.0) + x
            b[j] = b.get(j, 0.0) + x
        per.append(b)
    return {d: min(p.get(d, 0.0) for p in per) for d in per[0]}


@register
class Oracle(Planner):
    """Exhaustive search with exact pruning; small instances only (options: max_group)."""

    name = "oracle"
    approximate = False          # exact over the documented plan space (or it refuses the instance)
    description = f"exhaustive search (<= {MAX_DEVICES} devices x {MAX_BLOCKS} blocks), the yardstick"

    def plan(self, scenario: Scenario, cost: CostModel | None = None) -> Plan:
        self.check_supported(scenario)
        cost = cost or CostModel(scenario)
        mg = self.options.get("max_group")
        best, _ = oracle_search(scenario, cost, max_group=mg)
        if best is None:
            raise explain_infeasible(self.name, scenario, cost, max_group=mg, exact=True)
        names = cost.names
        return Plan.make([(l, r, [names[d] for d in devs], sh) for l, r, devs, sh in best[1]],
                         cost.workload.microbatches)
