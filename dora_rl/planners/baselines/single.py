"""Single-device and single-cut baselines: `local`, `offload`, `neurosurgeon`.

The status quo every offloading paper compares with (everything on the source, or on
the best single device) and Neurosurgeon's best single cut between the source and one
other device. docs/baselines.md has the rule, source and blind spots of each."""

from __future__ import annotations

from dora_rl.cost import CostModel
from dora_rl.plan import Plan
from dora_rl.planners.base import Planner, no_fit
from dora_rl.planners.baselines.common import make_plan, memory_detail, setup, single
from dora_rl.scenario import Scenario

# --- local ----------------------------------------------------------------------

class Local(Planner):
    """`local`: the whole model on the source device, one stage (no network at all).

    The on-device baseline of every offloading paper (e.g. Kang et al., ASPLOS 2017,
    "Neurosurgeon", the "mobile-only" status quo). Ignores every other device, QoE and
    energy; raises NoFeasiblePlan if the model does not fit on the source."""

    name = "local"
    description = "everything on the source device"

    def plan(self, scenario: Scenario, cost: CostModel | None = None) -> Plan:
        cost, M, _ = setup(scenario, cost)
        stages = single(cost, cost.src)
        m = cost.evaluate_stages(stages, M)
        if not m.feasible:
            raise no_fit(self.name, scenario,
                         f"the model does not fit on source {scenario.source!r}: {memory_detail(cost, m)}")
        return make_plan(cost, stages, M)


# --- offload --------------------------------------------------------------------

class Offload(Planner):
    """`offload`: the best single device (full offloading, the "cloud-only" / "server-only"
    status quo of Kang et al., ASPLOS 2017, generalised to any device of the cluster).

    Rule: for every device d (the source included, so offloading never loses to
    `local`), the one-stage plan [0, B) on d, scored by the cost model *including* the
    input transfer from the source and the answer back to it; pick the lowest objective
    (`qoe.objective`: latency_ms or energy_j) among those that fit in memory; ties to the
    lower device index. Ignores QoE targets (latency SLO, throughput, battery)."""

    name = "offload"
    description = "best single device"

    def plan(self, scenario: Scenario, cost: CostModel | None = None) -> Plan:
        cost, M, _ = setup(scenario, cost)
        obj = cost.qoe.objective
        best = None
        for d in range(cost.n):
            stages = single(cost, d)
            m = cost.evaluate_stages(stages, M)
            if not m.feasible:
                continue
            key = (m.objective(obj), m.latency_ms, d)
            if best is None or key < best[0]:
                best = (key, stages)
        if best is None:
            raise no_fit(self.name, scenario, "the whole model fits on no single device")
        return make_plan(cost, best[1], M)


# --- neurosurgeon ---------------------------------------------------------------

class Neurosurgeon(Planner):
    """`neurosurgeon`: the best single cut between the source and one other device.

    Source: Y. Kang, J. Hauswald, C. Gao, A. Rovinski, T. Mudge, J. Mars, L. Tang,
    "Neurosurgeon: Collaborative Intelligence Between the Cloud and Mobile Edge",
    ASPLOS 2017. Neurosurgeon predicts per-layer latency and energy on the mobile and
    the server, then evaluates every partition point k (mobile runs layers [0, k), the
    server [k, B); k = 0 is full offload, k = B is mobile-only) and picks the one that
    minimises end-to-end latency, or the *mobile device's* energy.

    Here: the mobile is the source device and "the server" is every other device in
    turn; all (device, k) pairs are scored by the cost model (input upload, the cut's
    activation transfer and the answer's return included). Objective `latency` ->
    min latency_ms; objective `energy` -> min energy of the source device only (the
    paper's mobile-energy mode), tie-broken by latency. Plans that do not fit in memory
    are skipped. Ignores QoE targets, the energy of the other devices, and every device
    but one. Training workloads are handled by the same rule on the cost model's
    training figures (an extension; the paper is inference only)."""

    name = "neurosurgeon"
    description = "best single cut between the source and one other device"

    def plan(self, scenario: Scenario, cost: CostModel | None = None) -> Plan:
        cost, M, _ = setup(scenario, cost)
        src, B = cost.src, cost.n_blocks
        energy = cost.qoe.objective == "energy"
        best = None

        def consider(stages):
            nonlocal best
            m = cost.evaluate_stages(stages, M)
            if not m.feasible:
                return
            key = ((m.energy_by_device[src] if energy else m.latency_ms), m.latency_ms)
            if best is None or key < best[0]:
                best = (key, stages)

        consider(single(cost, src))                       # k = B: mobile only
        for d in range(cost.n):
            if d == src:
                continue
            consider(single(cost, d))                     # k = 0: full offload to d
            for k in range(1, B):
                consider([(0, k, [src], [1.0]), (k, B, [d], [1.0])])
        if best is None:
            raise no_fit(self.name, scenario, "no cut between the source and another device fits")
        return make_plan(cost, best[1], M)
