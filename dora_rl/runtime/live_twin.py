"""The simulated twin of a live adapter run: the live run's requests replayed through the
discrete-event simulator on the simulated run's plans and true bandwidth.

Why: a live run is judged by its requests (runtime/live_judge.py) and its adapter decides
on what its monitor measured, the workers' transfers. Its twin (`bench/bench_live.py`:
the same adapter simulated on the same trace) is a fair comparison only when both sides
model those the way the live workers produce them: a request waits for the devices its
predecessors hold, shares the medium with their transfers, and each transfer runs at the
bandwidth of the moments it runs in (`sim.replay`). Replayed on the bandwidth a live run
applied and on its own plans, session 7's 129 live requests came out within 2.6 % of
their measured latency (docs/runtime.md "Live vs simulated").

`RequestReplay` answers two questions on a list of intervals (plan, bandwidth): when each
request is answered (`spans`, the judge) and which transfers ended in a window, with the
seconds each took (`transfers`, what the live monitor hears over the heartbeats).
`LiveMonitorFeed` is the twin's monitor input, `adapter.simulate(observe=...)`: each
interval, the transfers the replay ended in it, and a probe only when the live loop would
send one (the medium carried nothing for `probe_after_s` and no request is in flight on a
plan whose transfers cross it, `LiveRun.observe`/`medium_busy`) - where the simulation's
own monitor samples the true bandwidth four times per interval, a far better view than the
live one's (a few transfers per dilated request, each slowed by what shares the medium)."""

from __future__ import annotations

from dora_rl.adapter.compose import conditions
from dora_rl.adapter.simulate import plan_crosses, probe, probe_peer
from dora_rl.cost import CostModel
from dora_rl.sim.program import capacities
from dora_rl.sim.simulate import replay_run


class RequestReplay:
    """Requests issued at `issues` (run seconds) to a run whose interval k (`interval`
    seconds from k x interval) is served by a plan on a bandwidth of `medium`: `rows[k] =
    (plan or None, Mbps)`. A request is served by its issue interval's plan (None: left
    out); consecutive requests on one plan are replayed together, the network's
    capacities following the rows (the last row's after them)."""

    def __init__(self, scenario, medium: str, issues: list[float], interval: float):
        self.scenario, self.medium, self.interval = scenario, medium, float(interval)
        self.issues = sorted(issues)
        self._cms: dict = {}
        self._crosses: dict = {}
        self._runs: dict = {}

    def cost(self, bw: float) -> CostModel:
        key = round(float(bw), 9)
        if key not in self._cms:
            self._cms[key] = CostModel(conditions(self.scenario, {self.medium: key}, None))
        return self._cms[key]

    def _k(self, t: float, n: int) -> int:
        return min(n - 1, max(0, int(t // self.interval)))

    def runs(self, rows: list[tuple], until: float = float("inf")) -> list[tuple]:
        """(issue instants, plan, the engine's Run from the first of them) per group of
        consecutive requests issued before `until` on one plan."""
        n, groups = len(rows), []
        for ti in self.issues:
            if ti >= until or not n:
                break
            plan = rows[self._k(ti, n)][0]
            if groups and groups[-1][1] == plan:
                groups[-1][0].append(ti)
            else:
                groups.append(([ti], plan))
        out = []
        for ts, plan in groups:
            if plan is not None:
                out.append((ts, plan, self._run(rows, ts, plan)))
        return out

    def _run(self, rows: list[tuple], ts: list[float], plan):
        """The replay of requests `ts` on `plan`, from the rows' bandwidths. Cached: a run
        that ended within the rows it was replayed on depends on those rows only, so a
        run is replayed again only when its requests or those rows changed (a live
        twin asks every interval with one more row: without the cache, every earlier
        run would be replayed again, quadratic in the run's length)."""
        n, t0 = len(rows), ts[0]
        k0 = self._k(t0, n)
        key = (tuple(ts), plan.key(), k0)
        hit = self._runs.get(key)
        if hit is not None and hit[0] == [bw for _, bw in rows[k0:k0 + len(hit[0])]]:
            return hit[1]
        changes = [(k * self.interval - t0, capacities(self.cost(rows[k][1]))) for k in range(k0 + 1, n)]
        run = replay_run(self.cost(rows[k0][1]), plan, [t - t0 for t in ts], changes)
        k_end = int((t0 + max(run.mb_done, default=0.0)) // self.interval)
        if k_end < n:      # ended within the rows: later rows cannot change it
            self._runs[key] = ([bw for _, bw in rows[k0:k_end + 1]], run)
        return run

    def spans(self, rows: list[tuple]) -> list[tuple[float, float]]:
        """(issue, answer) of every request served (run seconds)."""
        out = []
        for ts, plan, run in self.runs(rows):
            M = plan.microbatches
            out += [(ti, ts[0] + max(run.mb_done[r * M:(r + 1) * M])) for r, ti in enumerate(ts)]
        return out

    def transfers(self, rows: list[tuple], a: float, b: float) -> list[tuple]:
        """(src, dst, bytes, seconds, end) of the transfers whose last byte went in [a, b)
        (run seconds), from the first byte: what a live worker reports."""
        out = []
        for ts, _, run in self.runs(rows, until=b):
            names = self.cost(rows[0][1]).names
            for i, j, nbytes, s, e in run.transfers:
                if a <= ts[0] + e < b:
                    out.append((names[i], names[j], nbytes, e - s, ts[0] + e))
        return sorted(out, key=lambda x: x[4])

    def busy(self, rows: list[tuple], t: float, monitor) -> bool:
        """True while a request issued before t is unanswered at t on a plan whose
        transfers cross the medium (the live loop's `medium_busy`)."""
        for ts, plan, run in self.runs(rows, until=t):
            M = plan.microbatches
            if any(ts[0] + max(run.mb_done[r * M:(r + 1) * M]) > t for r in range(len(ts))):
                key = plan.key()
                if key not in self._crosses:
                    self._crosses[key] = plan_crosses(monitor, self.cost(rows[0][1]), plan, self.medium)
                if self._crosses[key]:
                    return True
        return False


class LiveMonitorFeed:
    """`adapter.simulate(observe=LiveMonitorFeed(...))`: the simulated monitor hears what
    the live one hears (module doc). Called once per interval [t, t + dt) with the plan
    serving it and its true bandwidth; keeps the rows seen so far."""

    def __init__(self, scenario, medium: str, issues: list[float], interval: float):
        self.replay = RequestReplay(scenario, medium, issues, interval)
        self.rows: list[tuple] = []
        self.probe_t = -float("inf")
        self.src, self.peer = scenario.workload.source, probe_peer(scenario, medium)

    def __call__(self, mon, trace_at, nominal: float, t: float, dt: float, plan, bw_true: float) -> None:
        self.rows.append((plan, bw_true))
        for src, dst, nbytes, secs, end in self.replay.transfers(self.rows, t, t + dt):
            mon.observe_transfer(src, dst, nbytes, secs, end)
        end = t + dt           # the live loop probes at the control instant that ends the interval
        if (self.peer is not None and mon.needs_probe(self.replay.medium, end)
                and end - self.probe_t >= mon.probe_after_s and not self.replay.busy(self.rows, end, mon)):
            probe(mon, trace_at, end, nominal, self.src, self.peer, None, 0.0, 1.0)
            self.probe_t = end
