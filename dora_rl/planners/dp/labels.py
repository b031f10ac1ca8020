"""Named records of the DP: a label's cost vector layout, labels, stage and boundary costs.

A label describes a suffix of stages that starts at block l with a first stage on a
group G (shares sh); its Pareto list is keyed (G, id of (G, sh), j) with j = min(M,
stages in the suffix) for training, else 1. Its vector holds monotone cost components so that
dominance pruning is exact (docs/planners.md):

    FILL       fill: sum of stage times and boundary transfers (+ latency)   additive
    STEADY     steady-state period candidate: max over stages / boundaries   max
    ALLREDUCE  training all-reduce time (dedicated links)                    max
    ENERGY     energy that does not depend on the period (+ idle/rate when
               the period is fixed)                                          additive
    IDLE       idle watts of participants (period varies)                    additive
    BATTERY    battery: period a battery device needs (period varies)        max
    SOURCE_J   the source's battery energy (it is on several boundaries)     additive
    then per-medium bytes of the pipeline (and of the all-reduces)           additive
    then per battery device that can relay: its battery energy so far        additive

Relays (devices inside a route, docs/cost-model.md) are participants: `Label.part` is
the set of devices that pay idle power (members and relays, the source aside); IDLE
(or the fixed-period idle energy in ENERGY) counts each of them once.

These are NamedTuples: the DP builds millions of them, and a tuple is what CPython
builds fastest."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from dora_rl.cost import Metrics
from dora_rl.plan import Plan
from dora_rl.planners.dp.space import Space

# the fixed components of a label's vector; per-medium loads follow (see `Layout`)
FILL, STEADY, ALLREDUCE, ENERGY, IDLE, BATTERY, SOURCE_J = range(7)
LOADS = 7


class Layout(NamedTuple):
    """Where the per-medium loads sit in a label's vector."""

    nmed: int          # shared media
    loads: int         # first pipeline load (one per medium)
    ar_loads: int      # first all-reduce load (training only; one per medium)
    dim: int           # vector length
    pcols: list[int]   # the components that fix the period (FILL, STEADY, ALLREDUCE, loads)
    rbat: int          # first relay-battery column (one per battery device that can relay)


def layout(nmed: int, training: bool, n_rbat: int = 0) -> Layout:
    """The vector layout for `nmed` media (training adds the all-reduce loads) and
    `n_rbat` battery devices that can relay (their energy is carried to the end)."""
    loads_end = LOADS + nmed * (2 if training else 1)
    return Layout(nmed, LOADS, LOADS + nmed, loads_end + n_rbat,
                  [FILL, STEADY, ALLREDUCE] + list(range(LOADS, loads_end)), loads_end)


class Span(NamedTuple):
    """One stage: blocks [start, end) on `devs` (device indices) with `shares`."""

    start: int
    end: int
    devs: tuple[int, ...]
    shares: tuple[float, ...]


class Node(NamedTuple):
    """A suffix's stages as a linked list, first stage first (labels share their tails)."""

    stage: Span
    rest: Node | None


class Label(NamedTuple):
    """A Pareto label: a suffix of stages and what completing it can still cost."""

    vec: tuple[float, ...]       # cost components (module docstring)
    claim: int                   # U: mask of the devices the suffix uses (or claims, chain space)
    part: int                    # mask of the participants that pay idle power: members and relays, not the source
    pending: tuple[float, ...]   # battery J of the first stage's devices whose incoming transfer is unknown
    stages: Node


class Ring(NamedTuple):
    """One routing of a stage's ring all-reduce (`Pieces.stage`); a stage without a ring
    (inference, or one device) has one, all zero."""

    time: float                  # AR_s: 2(g-1) steps of the routing's step time
    loads: list[float]           # all-reduce bytes per medium
    relays: int                  # mask of the routing's relays (not the source)
    relay_j: dict[int, float]    # radio J per relay


class StageCost(NamedTuple):
    """A stage [l, r) on a group with a given in-flight count (`DPEngine.stage`)."""

    shares: tuple[float, ...]
    shid: int                    # id of (group, shares)
    busy: float                  # u: time per micro-batch (x3 for training)
    energy: list[float]          # per member: (active - idle) J over the M micro-batches (+ all-reduce radio,
                                 # the same bytes on every routing of the ring)
    rings: tuple[Ring, ...]      # the ring all-reduce on each routing the plan's joint choice may take


class Boundary(NamedTuple):
    """A transfer between two consecutive stages (x dirs: 2 for training)."""

    fill: float                  # added to FILL: occupancy + latency
    occ: float                   # STEADY candidate: occupancy
    loads: list[float]           # bytes per medium
    radio: dict[int, float]      # radio J per device (relays included)
    hops: int                    # mask of every device on the flows' routes (not the source)


@dataclass
class Candidate:
    """A complete plan the DP found, with the DP's own latency and energy."""

    stages: list                       # [(l, r, [dev idx], [shares])]
    latency_s: float
    energy_j: float
    plan: Plan | None = None
    metrics: Metrics | None = None


@dataclass
class SearchResult:
    """What `search` returns: the candidates, the space searched, label count and time."""

    candidates: list[Candidate]        # QoE-compliant (by the DP's arithmetic), Pareto over (latency, energy)
    space: Space
    labels: int = 0
    seconds: float = 0.0
    stats: dict = field(default_factory=dict)
