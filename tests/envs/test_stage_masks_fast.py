"""StageEnv's vectorised masks (dora_rl/envs/stage.py, qoe_bound.py, instance.py) equal the
straightforward per-device code they replaced (kept here as `_reference_*`): the same
masks, reach ranges and observations along random episodes of several sizes, groups
(data-parallel adds) included."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dora_rl.envs.instance import Instance
from dora_rl.envs.qoe_bound import SLACK
from dora_rl.envs.stage import ADD_CANDIDATES, StageEnv
from dora_rl.synthetic import random_scenario


# --- the reference: the former one-device-at-a-time code -------------------------------
def _reference_group_reach(inst, devs, l):
    if len(devs) == 1:
        return inst.reach_l[devs[0]][l]
    rates = inst.rate[devs]
    w = rates / rates.sum()
    wr = np.array(inst.cost.realized(inst.m_int, [float(x) for x in w], list(devs)))
    if inst.m_int < len(devs) or (wr <= 0).any():
        return l
    ww = np.maximum(w, wr)
    ok = np.all(inst.base[l][None, :] + ww[:, None] * inst.act[l][None, :] <= inst.mem[devs][:, None], axis=0)
    ok[: l + 1] = False
    return l + int(ok.sum())


def _reference_battery_ok(qb, d, busy):
    if qb.min_h is None or not np.isfinite(qb.bj[d]):
        return True
    frac = busy / qb.period_cap if math.isfinite(qb.period_cap) else 0.0
    power = qb.idle[d] + qb.dyn_w[d] * frac
    hours = qb.bj[d] / np.maximum(power, 1e-30) / 3600.0
    return hours >= qb.min_h * (1 - 1e-9) * (1 - SLACK)


def _reference_lone(qb, x, e, chunk):
    """The least latency plus chunk x the least seconds per byte of any route x -> e."""
    rs = qb.cost.net.routes[x][e] if x != e else ()
    return min(r.lat for r in rs) + chunk * min(r.kappa for r in rs) if rs else math.inf


def _reference_ring(qb, members, partners, P, g, separable=False):
    """2 (g - 1) max over members x of min over partners e != x of the lone flow x -> e
    (separable: the least latency plus chunk x the least s/B, each over the partners)."""
    if not qb.training or P <= 0:
        return 0.0
    if separable:
        net, c = qb.cost.net, P / g
        step = max(min((r.lat for e in partners if e != x for r in net.routes[x][e]), default=math.inf)
                   + c * min((r.kappa for e in partners if e != x for r in net.routes[x][e]), default=0.0)
                   for x in members)
    else:
        step = max(min((_reference_lone(qb, x, e, P / g) for e in partners if e != x), default=math.inf)
                   for x in members)
    return 2.0 * (g - 1) * step if math.isfinite(step) else 0.0


def _reference_add_ok(qb, F, T, A, group, pool, p, a):
    rate, B = qb.inst.rate, qb.B
    k = len(group)
    j = max(1, qb.inst.m_int - k - 1)
    others = sorted((rate[x] for x in pool if x != a), reverse=True)
    R = sum(rate[x] for x in group) + rate[a] + sum(others[:j])
    rest_T = sum(rate[x] for x in pool if x != a)
    rest_m = sum(others[:max(1, qb.m)])
    for r in range(p + 1, B + 1):
        u = qb.back * qb.m * (qb.fp[r] - qb.fp[p]) / R
        work = qb.back * qb.m * (qb.fp[-1] - qb.fp[r]) if r < B else 0.0
        fill = F + u + work / max(rest_m, 1e-30)
        TT = max(T, u, work / max(rest_T, 1e-30))
        ar = _reference_ring(qb, group + [a], group + pool, qb.pp[r] - qb.pp[p], k + 2, separable=True)
        if qb._ok(fill, TT, max(A, ar)):
            return True
    return False


def _reference_close_ok(qb, F, T, f_in, t_in, group, d, p, r, rest_rate, rest_top, A=0.0):
    devs = group + [d]
    rate = float(sum(qb.inst.rate[x] for x in devs))
    u = qb.back * qb.m * (qb.fp[r] - qb.fp[p]) / rate
    work = np.where(r < qb.B, qb.back * qb.m * (qb.fp[-1] - qb.fp[r]), 0.0)
    rest, rest_f = work / max(rest_rate, 1e-30), work / max(rest_top, 1e-30)
    o_occ, o_lat = qb.out[d] if not group else (0.0, 0.0)
    end = r >= qb.B
    x_occ, x_lat = np.zeros_like(u), np.zeros_like(u)
    if not group:       # the exit of a single-device stage: through d's send interface, after one of its links
        net = qb.cost.net
        lat = min((ln.latency_ms / 1e3 for ln in qb.cost.cluster.links if d in (qb.cost.cluster.index[ln.a],
                                                                                qb.cost.cluster.index[ln.b])))
        for i, x in enumerate(r):
            if x < qb.B and qb.cost.bnd[x] > 0:
                x_occ[i] = qb.dirs * qb.m * qb.cost.bnd[x] / net.cap[net.iface0 + 2 * d]
                x_lat[i] = qb.dirs * lat
    fill = F + f_in + u + rest_f + np.where(end, o_occ + o_lat, 0.0) + x_occ + x_lat
    TT = np.maximum.reduce([np.full_like(u, max(T, t_in)), u, rest, np.where(end, o_occ, 0.0), x_occ])
    ar = np.array([_reference_ring(qb, devs, devs, qb.pp[x] - qb.pp[p], len(devs)) if group else 0.0 for x in r])
    ok = qb._ok(fill, TT, np.maximum(A, ar))
    if qb.min_h is not None:
        for x in (devs if group else []):
            ok = ok & _reference_battery_ok(qb, x, 0.0)
        if not group:
            ok = ok & _reference_battery_ok(qb, d, u * qb.M)
    return ok


class _ReferenceStageEnv(StageEnv):
    def _close_range(self, group, taken):
        inst, p, B, n = self.inst, self.p, self.inst.B, self.inst.n
        rmin, rmax = np.full(n, B + 1, dtype=np.int64), np.zeros(n, dtype=np.int64)
        free = [d for d in range(n) if d not in taken]
        self._reach = np.full(n, p)         # what StageEnv's add masks read (compared with ref_adds below)
        if not free or p >= B:
            return rmin, rmax
        G = inst.completion_table(taken, free)
        for i, d in enumerate(free):
            R = self._reach[d] = _reference_group_reach(inst, group + [d], p)
            if R <= p:
                continue
            ok = np.flatnonzero(G[i, p + 1:R + 1] >= B)
            if len(ok):
                rmin[d], rmax[d] = p + 1 + ok[0], R
        return rmin, rmax

    def _compute_mask(self):
        super()._compute_mask()          # the closes via the reference _close_range / _qoe_mask
        inst, p, B = self.inst, self.p, self.inst.B
        taken = self.used | set(self.group)
        adds = np.zeros(inst.n, dtype=bool)
        free = sorted((d for d in range(inst.n) if d not in taken), key=lambda d: -inst.rate[d])[:ADD_CANDIDATES]
        if len(free) >= 2 and inst.m_int >= len(self.group) + 2:
            for d in free:
                g2 = self.group + [d]
                if _reference_group_reach(inst, g2, p) <= p:
                    continue
                for e in [x for x in free if x != d][:2]:
                    R3 = _reference_group_reach(inst, g2 + [e], p)
                    if R3 > p and (R3 >= B or inst.greedy(R3, taken | {d, e}) >= B):
                        adds[d] = True
                        break
        self.ref_adds = adds

    def _qoe_closes(self, cm, rmin, rmax, R_T, R_m):
        qb, p = self._bound(), self.p
        q = np.zeros_like(cm)
        f_in, t_in = self._qin
        for d in np.flatnonzero(rmin <= rmax):
            r = np.arange(rmin[d], rmax[d] + 1)
            q[d, r - 1] = _reference_close_ok(qb, self._qF, self._qT, f_in[d], t_in[d], self.group, int(d), p, r,
                                              R_T[d], R_m[d], self._qA)
        return q

    def _qoe_adds(self, adds, pool):
        qb, qa = self._bound(), np.zeros_like(adds)
        for a in np.flatnonzero(adds[:self.inst.n]):
            qa[a] = _reference_add_ok(qb, self._qF, self._qT, self._qA, self.group, pool, self.p, int(a))
        return qa

    def _qoe_mask(self, cm, adds, rmin, rmax):
        super()._qoe_mask(cm, adds, rmin, rmax)
        self.ref_q_range = []
        for d in range(self.inst.n):     # the former per-device first / last allowed end
            ok = np.flatnonzero(cm[d])
            self.ref_q_range.append((ok[0] + 1, ok[-1] + 1) if len(ok) else (self.inst.B + 1, 0))
        if self.qoe_masked:
            assert [(int(a), int(b)) for a, b in zip(rmin, rmax)] == [(int(a), int(b)) for a, b in self.ref_q_range]


def _instances(k, seed, n, B, **kw):
    out, i = [], 0
    while len(out) < k:
        sc = random_scenario(np.random.default_rng([seed, i]), max_devices=n, min_devices=n, n_blocks=B, **kw)
        i += 1
        inst = Instance(sc, n)
        if inst.completable:
            out.append(inst)
    return out


@pytest.mark.parametrize("n,B,k", [(2, 8, 6), (4, 16, 6), (8, 40, 4), (16, 60, 3), (64, 120, 2)])
def test_vectorised_masks_equal_the_reference(n, B, k):
    adds_seen = closes = narrowed = 0
    for j, inst in enumerate(_instances(k, 977 + n, n, B)):
        for qoe in (True, False):
            rng = np.random.default_rng(j)
            new = StageEnv(max_devices=n, max_blocks=B, pool_size=1, qoe_masks=qoe)
            ref = _ReferenceStageEnv(max_devices=n, max_blocks=B, pool_size=1, qoe_masks=qoe)
            o_new, _ = new.reset(options={"scenario": inst})
            o_ref, _ = ref.reset(options={"scenario": inst})
            while True:
                D, Bm = n, B
                assert np.array_equal(new._mask, ref._mask)
                assert np.array_equal(new._rmin, ref._rmin) and np.array_equal(new._rmax, ref._rmax)
                if not ref.done:
                    assert np.array_equal(new._adds_mem, ref.ref_adds)   # the adds, before any QoE narrowing
                for key in o_ref:
                    assert np.array_equal(o_new[key], o_ref[key]), key
                if ref.done:
                    break
                narrowed += ref.qoe_masked
                allowed = np.flatnonzero(ref._mask)
                add = allowed[allowed >= D * Bm]
                a = int(rng.choice(add if len(add) and rng.random() < 0.6 else allowed))
                adds_seen += a >= D * Bm
                closes += a < D * Bm
                o_new, *_ = new.step(a)
                o_ref, *_ = ref.step(a)
            assert new.result[2] == ref.result[2]
    # the episodes exercised groups and the QoE narrowing too
    assert closes > 0 and (n < 4 or adds_seen > 0) and narrowed > 0
