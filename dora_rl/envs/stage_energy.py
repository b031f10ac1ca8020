"""The energy, battery and relay terms of the "two_stage" key (dora_rl/envs/stage_two.py) and
the lone-flow relay lookups the observation and StageEnv's transition share.

Why a module of its own: the two-stage estimate's latency is the QoE bound's formula, its
energy the cost model's window formula (docs/cost-model.md, "Energy and battery") over the
participants, the devices its flows relay through and each device's battery at its duty;
that half kept stage_two.py over the size a reader holds at once."""

from __future__ import annotations

import copy
from functools import cached_property

import numpy as np

TWO_STAGE_MARGIN = 0.2     # a two-stage plan's latency, period (energy) and battery life must meet the targets by 20 %


def pstar_of(inst) -> float:
    """P*, the unit of power of the observation's energies (the mean active power)."""
    return max(float(inst.act_w.mean()), 1e-9)


def route_relays(inst, a: int, b: int, nbytes: float) -> tuple[int, ...]:
    """The devices the route a -> b of a flow of `nbytes` relays through (`routes.Network.route`:
    a lone flow's route; the plan's routing may pick another under contention)."""
    return inst.cost.net.route(a, b, nbytes).relays if a != b else ()


def entry_relays(inst, prev, ds, nb: float) -> np.ndarray:
    """(len(ds), n) bool: x relays a route from one of `prev` (the previous stage's devices)
    to d, a lone flow of `nb` bytes (the entry at the current cut; `routes.Network.lone_relays`,
    the routes `route_relays` names, for every pair at once)."""
    prev, ds = np.asarray(list(prev), dtype=np.int64), np.asarray(ds, dtype=np.int64)
    rel = inst.cost.net.lone_relays(np.tile(prev, len(ds)), np.repeat(ds, len(prev)), nb)
    return rel.reshape(len(ds), len(prev), inst.n).any(axis=1)


def relays(inst, s, t, kind: str = "boundary") -> np.ndarray:
    """(len(s), len(t), n) bool: x relays the route s -> t (a lone flow's,
    `routes.Network.lone_relays`). `kind` "boundary": a flow of the model's median boundary
    bytes; "return": of its output."""
    s, t = np.asarray(s, dtype=np.int64), np.asarray(t, dtype=np.int64)
    nb = inst.batch * float(np.median(inst.bnd_l[1:inst.B]) if kind == "boundary" else inst.bnd_l[inst.B])
    rel = inst.cost.net.lone_relays(np.repeat(s, len(t)), np.tile(t, len(s)), nb)
    return rel.reshape(len(s), len(t), inst.n)


def window(inst, latency, T):
    """The energy window of a plan of this latency and period T per micro-batch
    (docs/cost-model.md, "Energy and battery"): training the latency, inference max(1 /
    request rate, M T)."""
    if inst.training:
        return latency
    rr = inst.cost.workload.request_rate
    return np.maximum(1.0 / rr if rr else 0.0, inst.M * T)



def _marks(n: int, devs) -> np.ndarray:
    """(n,) bool: True at the devices `devs`."""
    out = np.zeros(n, dtype=bool)
    out[list(devs)] = True
    return out


class Energy:
    """`two_stage`'s energy and battery terms for the free devices `free` (docs/cost-model.md,
    "Energy and battery"): the participants' idle power over the window, the radio of the
    entry (both ends) and of the return to the source (both ends; inference), the idle power
    of the new relays, and the battery checks at each device's duty."""

    def __init__(self, env, qb, free):
        inst, cost = env.inst, env.inst.cost
        self.pstar = pstar_of(inst)
        self.idle, self.dyn = np.asarray(qb.idle, dtype=float), np.asarray(qb.dyn_w, dtype=float)
        self.radio = np.asarray(cost.cluster.radio_j_per_byte, dtype=float)
        self.part = set(env.used) | {inst.src}
        self.idle_part = float(sum(self.idle[x] for x in self.part))
        self.in_part = _marks(inst.n, self.part)          # (n,) bool (np.isin's sort cost more)
        self.free, self.inst = free, inst
        p, src = env.p, inst.src
        nin = qb.m * float(qb.bnd[p]) * (qb.dirs if p > 0 else 1.0)              # the entry's bytes
        r_prev = float(np.mean([self.radio[x] for x in env.prev]))
        away = ~_marks(inst.n, env.prev)[free]
        self.rin_own = qb.M * nin * self.radio[free] * away    # (F,): d's end of the entry
        self.rin = self.rin_own + qb.M * nin * r_prev * away
        nret = 0.0 if inst.training else qb.m * float(qb.bnd[inst.B])              # the return's
        self.ret_own = qb.M * nret * self.radio * (np.arange(inst.n) != src)      # (n,): e's end of it
        self.ret = self.ret_own + qb.M * nret * self.radio[src] * (np.arange(inst.n) != src)
        # the source's own radio for the input it sends (when the first stage is not on it),
        # for its battery when it is d or e: sends[x] as d, sende[x] as e
        send = qb.M * qb.m * float(qb.bnd[0]) * self.radio[src]
        first_off = p > 0 and src not in env.stages[0][2]
        self.send_d = np.where(free == src, send if first_off else 0.0, 0.0)           # (F,)
        self.send_e = np.where(np.arange(inst.n) == src, send if (p == 0 or first_off) else 0.0, 0.0)   # (n,)
        # relays: the idle power of the devices the entry (prev -> d), the boundary (d -> e) and
        # the return (e -> source) relay through that are not participants already
        n = inst.n
        self.qb, self.env = qb, env
        self.targets = qb.min_h is not None and bool(np.isfinite(qb.bj).any())       # any battery target
        self.avail = np.where(self.in_part | _marks(n, env.relays), 0.0, self.idle)
        self.relay_ok = qb.battery_ok_at(np.arange(n), 0.0, 0.0, 1 + TWO_STAGE_MARGIN)  # a relay's idle alone
        self._pairs = None

    def subset(self, keep: np.ndarray) -> Energy:
        """The same terms for the free devices free[keep] only (`_two_stage`'s closes that leave
        a rest): each per-device term is its own device's, so a slice of this one, not another
        build (which cost a tenth of a 16-device entry)."""
        out = copy.copy(self)
        out.free, out.rin_own, out.rin = self.free[keep], self.rin_own[keep], self.rin[keep]
        out.send_d = self.send_d[keep]
        if "r_in" in self.__dict__:
            out.r_in = self.r_in[keep]
        out._pairs = None
        return out

    @cached_property
    def r_in(self) -> np.ndarray:
        """(F, n): the devices the entry (prev -> d, its bytes) relays through."""
        env, inst = self.env, self.inst
        return entry_relays(inst, env.prev, self.free, inst.batch * inst.bnd_l[env.p])

    @cached_property
    def r_ret(self) -> np.ndarray:
        """(n, n): the devices the return (e -> source) relays through (none in training)."""
        n = self.inst.n
        if self.inst.training:
            return np.zeros((n, n), dtype=bool)
        return relays(self.inst, np.arange(n), [self.inst.src], "return")[:, 0]

    def new_idle(self, ds) -> np.ndarray:
        return np.where(self.in_part[ds], 0.0, self.idle[ds])

    def of(self, latency, T, work, part=None, i=None) -> np.ndarray:
        """The energy: the window's idle power of the participants (the closed ones, d, and e
        when `part` names the rest's devices: arrays (E, A) whose column k is the close on
        free[i[k]], else (F,)) plus `work` (the dynamic and radio energy)."""
        P = window(self.inst, latency, T)
        idle = self.idle_part + self.new_idle(self.free)
        free = self.free
        if part is None:
            idle = idle + self.rel_end() @ self.avail
        else:
            other = np.where(free[:, None] == part[None, :], 0.0, self.new_idle(part)[None, :])
            idle = (idle[:, None] + other + self.rel_pairs(part) @ self.avail)[i].T
        return idle * P + work

    def battery_end(self, busy, P):
        """(F,) bool: d lasts its battery target with the plan ending on it (`two_stage`)."""
        if not self.targets:
            return True
        ok = self.qb.battery_ok_at(self.free, busy / P, (self.rin_own + self.ret_own[self.free] + self.send_d) / P)
        return ok if self.relay_ok.all() else ok & ~(self.rel_end() & ~self.relay_ok).any(-1)

    def battery_pairs(self, part, i, busy_d, busy_e, nbd, P):
        """(E, A) bool, row the partner e and column k the close on free[i[k]]: d and e at
        their duty (busy / P) and radio (the entry, the boundary of `nbd` bytes, the return,
        the source's input) and the new relays at their idle power last their battery
        targets by TWO_STAGE_MARGIN."""
        if not self.targets:
            return True
        mg, free, qb = 1 + TWO_STAGE_MARGIN, self.free, self.qb
        ok = np.ones(P.shape, dtype=bool)
        f = np.isfinite(qb.bj[free])[i]                      # only devices on battery can miss
        if f.any():
            radio = (self.rin_own + self.send_d)[i][f][None, :] + nbd[:, f] * self.radio[free[i][f]][None, :]
            ok[:, f] &= qb.battery_ok_at(free[i][f][None, :], busy_d[:, f] / P[:, f], radio / P[:, f], mg)
        e = np.isfinite(qb.bj[part])
        if e.any():
            radio = nbd * self.radio[part[e]][:, None] + (self.ret_own + self.send_e)[part[e]][:, None]
            ok[e] &= qb.battery_ok_at(part[e][:, None], busy_e[e] / P[e], radio / P[e], mg)
        if not self.relay_ok.all():                           # a relay whose idle power alone misses its target
            ok &= ~(self.rel_pairs(part) & ~self.relay_ok).any(-1)[i].T
        return ok

    def rel_end(self) -> np.ndarray:
        """(F, n): the devices the entry to d and d's return relay through."""
        return self.r_in | self.r_ret[self.free]

    def rel_pairs(self, part) -> np.ndarray:
        """(F, E, n): the devices the entry to d, the boundary d -> e and e's return relay
        through, d and e themselves aside (counted as stage devices)."""
        if self._pairs is None:
            free, F = self.free, len(self.free)
            rel = self.r_in[:, None, :] | relays(self.inst, free, part) | self.r_ret[part][None, :, :]
            rel[np.arange(F), :, free] = False
            rel[:, np.arange(len(part)), part] = False
            self._pairs = rel
        return self._pairs


