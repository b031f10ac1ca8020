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


def _ref_split(rates, m):
    """The least split of m whole samples: the m-th smallest k / g (qoe_samples.least_split)."""
    vals = sorted(k / g for g in rates for k in range(1, m + 1))
    return vals[m - 1] if len(vals) >= m else math.inf


def _ref_group_t(qb, devs):
    rate = qb.inst.rate
    if len(devs) == 1:
        return qb.m / rate[devs[0]]
    return max(qb.m / sum(rate[x] for x in devs), max(1.0 / rate[x] for x in devs),
               _ref_split([rate[x] for x in devs], qb.mi))


def _ref_rest(qb, pool, r0, out):
    """(total rate, least split, return to the source) of the serving devices of pool but `out`."""
    srv = [e for e in pool if qb.serve[e, min(r0, qb.B)] and e not in out]
    rate, src = qb.inst.rate, qb.src
    costs = []
    for e in srv:
        if qb.training or e == src:
            costs.append(0.0)
            continue
        nb = qb.m * qb.bnd[qb.B]
        lat = qb.cost.net.least[0][e, src]
        grp = nb / qb.send_cap[src] + (lat if math.isfinite(lat) else 0.0) if nb > 0 else 0.0
        costs.append(min(qb.out[e][0] + qb.out[e][1], grp))
    return sum(rate[e] for e in srv), _ref_split([rate[e] for e in srv], qb.mi), min(costs, default=0.0)


def _ref_flows_in(qb, prev, members, e, p):
    nb = qb.m * qb.bnd[p]
    if len(prev) != 1 or nb <= 0 or prev[0] in members or e == prev[0]:
        return 0.0
    L, s = qb.cost.net.least[0], prev[0]
    lat = max([L[s, e]] + [L[s, j] for j in members])
    return (qb.dirs if p > 0 else 1.0) * (nb / qb.send_cap[s] + (lat if math.isfinite(lat) else 0.0))


def _ref_flows_out(qb, members, e, may_join):
    nb, src, L = qb.bnd[qb.B], qb.src, qb.cost.net.least[0]
    others = [j for j in members if j != src]
    if qb.training or nb <= 0 or (not others and e == src):
        return 0.0
    lat = max([0.0 if e == src else L[e, src]] + [L[j, src] for j in others])
    k = 1.0 if (e == src or may_join or src in members) else qb.m
    return k * nb / qb.send_cap[src] + (lat if math.isfinite(lat) else 0.0)


def _ref_rest_terms(qb, r, R_T, t_m, ret):
    if r >= qb.B:
        return 0.0, 0.0
    dF = qb.fp[-1] - qb.fp[r]
    return qb.back * qb.m * dF / max(R_T, 1e-30), qb.back * dF * (t_m if math.isfinite(t_m) else 1e30) + ret


def _ref_battery(qb, x, dF):
    return _reference_battery_ok(qb, x, qb.M * qb.back * dF / qb.inst.rate[x])


def _reference_add_ok(qb, F, T, A, group, pool, p, a, prev, Mq):
    rate, B = qb.inst.rate, qb.B
    k = len(group)
    if len(Mq) and len(prev) == 1 and prev[0] not in group:
        nb = qb.m * qb.bnd[p] * (qb.dirs if p > 0 else 1.0)
        T = max(T, max((Mq[mu] + nb * qb.forced[prev[0], mu]) / qb.mcap[mu] for mu in range(len(Mq))))
    others = sorted((rate[x] for x in pool if x != a), reverse=True)
    R = sum(rate[x] for x in group) + rate[a] + sum(others[:max(1, qb.inst.m_int - k - 1)])
    tf = max([1.0 / rate[a]] + [1.0 / rate[x] for x in group] + [_ref_split([rate[x] for x in group + pool], qb.mi)])
    rest = _ref_rest(qb, pool, p + 1, [a])
    j_src = qb.src in pool
    for r in range(p + 1, B + 1):
        dF = qb.fp[r] - qb.fp[p]
        u = qb.back * dF * max(qb.m / R, tf)
        rT, rF = _ref_rest_terms(qb, r, *rest)
        fill = F + u + rF + _ref_flows_in(qb, prev, group, a, p)
        fill += _ref_flows_out(qb, group, a, j_src) if r == B else 0.0
        ar = max(A, _reference_ring(qb, group + [a], group + pool, qb.pp[r] - qb.pp[p], k + 2, separable=True))
        if not qb._ok(fill, max(T, u, rT), ar):
            continue
        if qb.min_h is not None and not all(_ref_battery(qb, x, dF) for x in group + [a]):
            continue
        for d in pool:          # the pair lookahead: d closes the stage
            if d == a or not qb.serve[d, p]:
                continue
            j = qb.inst.m_int - k - 2
            more = sorted((rate[x] for x in pool if x not in (a, d)), reverse=True)[:max(j, 0)]
            R2 = sum(rate[x] for x in group) + rate[a] + rate[d] + sum(more)
            u2 = qb.back * dF * max(qb.m / R2, tf, 1.0 / rate[d])
            rT2, rF2 = _ref_rest_terms(qb, r, *_ref_rest(qb, pool, p + 1, [a, d]))
            fill2 = F + u2 + rF2 + max(_ref_flows_in(qb, prev, group, a, p), _ref_flows_in(qb, prev, group, d, p))
            if r == B:
                fill2 += max(_ref_flows_out(qb, group, a, j_src), _ref_flows_out(qb, group, d, j_src))
            if qb._ok(fill2, max(T, u2, rT2), ar) and (qb.min_h is None or _ref_battery(qb, d, dF)):
                return True
    return False


def _ref_media_in(qb, prev, group, d, p):
    nb = qb.m * qb.bnd[p] * (qb.dirs if p > 0 else 1.0)
    f = np.zeros(qb.forced.shape[1])
    if nb <= 0:
        return f
    if len(prev) == 1 and prev[0] not in group and d != prev[0]:
        f = qb.forced[prev[0]].copy()
    if not group and d not in prev:
        f = np.maximum(f, qb.forced[d])
    return nb * f


def _reference_close_ok(qb, F, T, f_in, t_in, group, d, p, r, pool, prev, Mq, A=0.0):
    devs = group + [d]
    src, B = qb.src, qb.B
    rest = _ref_rest(qb, pool, p + 1, [d])
    if group:
        f_in = max(f_in, _ref_flows_in(qb, prev, group, d, p))
        e_occ = 0.0 if qb.training or src in devs else qb.m * qb.bnd[B] / qb.send_cap[src]
        e_fill = _ref_flows_out(qb, group, d, False)
    else:
        e_occ, e_fill = qb.out[d][0], qb.out[d][0] + qb.out[d][1]
    out = []
    for x in r:
        dF = qb.fp[x] - qb.fp[p]
        u = qb.back * dF * _ref_group_t(qb, devs)
        rT, rF = _ref_rest_terms(qb, x, *rest)
        x_occ = x_lat = 0.0
        if not group and x < B and qb.bnd[x] > 0:       # the exit: d's send interface, one of its links
            lat = min((ln.latency_ms / 1e3 for ln in qb.cost.cluster.links
                       if d in (qb.cost.cluster.index[ln.a], qb.cost.cluster.index[ln.b])))
            x_occ, x_lat = qb.dirs * qb.m * qb.bnd[x] / qb.send_cap[d], qb.dirs * lat
        fill = F + f_in + u + rF + (e_fill if x >= B else 0.0) + x_occ + x_lat
        TT = max(T, t_in, u, rT, e_occ if x >= B else 0.0, x_occ)
        if len(Mq):
            tot = Mq + _ref_media_in(qb, prev, group, d, p)
            if not group and x < B:
                tot = tot + qb.dirs * qb.m * qb.bnd[x] * qb.forced[d]
            if not qb.training and x >= B and d != src and src not in group:
                tot = tot + qb.m * qb.bnd[B] * (qb.forced[src] if group else np.maximum(qb.forced[src], qb.forced[d]))
            TT = max(TT, float(max(tot / qb.mcap)))
        ar = _reference_ring(qb, devs, devs, qb.pp[x] - qb.pp[p], len(devs)) if group else 0.0
        ok = bool(qb._ok(fill, TT, max(A, ar)))
        if qb.min_h is not None:
            if group:
                ok = ok and all(_ref_battery(qb, y, dF) for y in devs)
            else:
                ok = ok and bool(_reference_battery_ok(qb, d, u * qb.M))
        out.append(ok)
    return np.array(out)


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

    def _qoe_closes(self, cm, rmin, rmax, R_T, t_m, ret):
        qb, p = self._bound(), self.p
        q = np.zeros_like(cm)
        f_in, t_in = self._qin
        pool = [d for d in range(self.inst.n) if d not in self.used and d not in self.group]
        for d in np.flatnonzero(rmin <= rmax):
            r = np.arange(rmin[d], rmax[d] + 1)
            q[d, r - 1] = _reference_close_ok(qb, self._qF, self._qT, f_in[d], t_in[d], self.group, int(d), p, r,
                                              pool, self.prev, self._qM, self._qA)
        return q

    def _qoe_adds(self, adds, pool):
        qb, qa = self._bound(), np.zeros_like(adds)
        for a in np.flatnonzero(adds[:self.inst.n]):
            qa[a] = _reference_add_ok(qb, self._qF, self._qT, self._qA, self.group, pool, self.p, int(a),
                                      self.prev, self._qM)
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


def test_a_close_checked_alone_at_a_pending_mask_is_the_whole_masks_entry():
    """`StageEnv.advance` leaves the next state's mask pending and `allows` first checks a
    close alone (`_close_alone`: its memory range and the QoE bound's `close_ok`). Along
    random episodes (8 and 16 devices, both objectives, with and without QoE masks), at
    every pending state the check reads no mask, and wherever it allows some close (the
    QoE narrowing then keeps exactly the closes that pass) it gives every close's entry of
    the whole mask; without QoE masks, always. Some state has closes it allows and
    closes it refuses."""
    rng, seen = np.random.default_rng(17), {True: 0, False: 0}
    for n, B in ((8, 30), (16, 50)):
        for objective in ("latency", "energy"):
            for qoe in (True, False):
                for i in range(3):
                    sc = random_scenario(np.random.default_rng([23, n, B, i]), max_devices=n, min_devices=n,
                                         n_blocks=B, objective=objective)
                    if not Instance(sc, n).completable:
                        continue
                    env = StageEnv(scenario=sc, max_devices=n, max_blocks=B, qoe_masks=qoe)
                    env.reset(seed=0)
                    env.advance(int(rng.choice(np.flatnonzero(env._mask))))
                    while not env.done:
                        assert env._pending
                        alone = np.array([[env._close_alone(d, j) for j in range(B)] for d in range(n)])
                        assert env._pending                     # the check computed no mask
                        whole = env._mask[:n * B].reshape(n, B)
                        assert not (alone & ~whole).any()
                        if alone.any() or not qoe:
                            assert (alone == whole).all()
                        for v in (True, False):
                            seen[v] += int((alone == v).sum())
                        env.advance(int(rng.choice(np.flatnonzero(env._mask))))
    assert seen[True] > 0 and seen[False] > 0
