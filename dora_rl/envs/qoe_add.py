"""The add lookahead of StageEnv's QoE bound (a mixin of `QoEBound`): may a data-parallel add still comply?

Why: an add only grows the pending group; the stage's end and its other members come in
later steps. The add is kept if some end r and some completion may comply: the stage on
whole samples at most as fast as the group + a + the fastest devices that may still join
(at most m members), the rest on the serving devices but a, the all-reduce over at least
len(group) + 2 members; then, naming the device d that closes the stage (every add is
followed by a close on one more device), the stage group + a + d (+ the fastest others
that fit in m members) with the rest on the serving devices but a and d, the entry of
every member's flow and their return to the source (docs/learning.md, "QoE-aware masks")."""

from __future__ import annotations

import numpy as np

from dora_rl.envs.qoe_samples import least_split, least_split_without

PAIR_CHUNK = 8          # partners tried at once by the pair lookahead (fastest first)


class AddLookahead:
    """Mixin of `QoEBound`: `add_ok` and its pair lookahead."""

    def add_ok(self, F: float, T: float, A: float, group: list, pool: list, p: int, cands,
               prev: list = (), Mq: np.ndarray | None = None) -> np.ndarray:
        """Per candidate add `a` of `cands`: may some stage [p, r) on group + [a] + the devices
        that may still join, then the rest, still comply? (a lookahead over every end r; the
        stage on whole samples at most as fast as group + a + the fastest of the pool, the
        rest on the serving devices of pool - a, the all-reduce over g = len(group) + 2
        members at least, partners among group + pool; then `_pair_ok`, naming the member
        that closes the stage)."""
        cands = np.asarray(cands, dtype=np.int64)
        if not len(cands) or p >= self.B:
            return np.zeros(len(cands), dtype=bool)
        rate = self.inst.rate
        r = np.arange(p + 1, self.B + 1)
        dF = self.fp[r] - self.fp[p]
        k = len(group)
        # members beyond group + a: at most m - k - 1 (a group computes with at most m members)
        extra, _ = self._fastest(pool, max(1, self.inst.m_int - k - 1))
        R = float(sum(rate[x] for x in group)) + rate[cands] + extra[cands]
        t = np.maximum(self.m / R, self._forced_t(group, pool, cands))
        u = self.back * dF[None, :] * t[:, None]
        R_T, t_m, ret, _, _ = self.rest_bound(pool, p + 1)
        rest, rest_f = self._rest_terms(r, R_T[cands], t_m[cands], ret[cands])
        end = (r >= self.B)[None, :]
        if Mq is not None and len(Mq) and len(prev) == 1 and prev[0] not in group:
            # the entry's bytes on the media: all leave prev (the same for every a)
            nb = self.m * self.bnd[p] * (self.dirs if p > 0 else 1.0)
            T = max(T, float(((Mq + nb * self.forced[prev[0]]) / self.mcap).max(initial=0.0)))
        fill = F + u + rest_f + self._flows_in(list(prev), group, cands, p)[:, None]
        fill = fill + np.where(end, self._flows_out(group, cands, self.src in pool)[:, None], 0.0)
        TT = np.maximum(np.maximum(T, u), rest)
        AA = np.full_like(u, A)
        if self.training:
            g = k + 2
            P = self.pp[r] - self.pp[p]
            # each member's least latency plus chunk x its least s/B to any partner (min of sums >=
            # sum of mins: looser than the close's bound, and O(members x partners + members x R))
            L, K = self.cost.net.least
            ps = np.asarray(list(group) + list(pool), dtype=np.int64)
            c = P / g

            def steps(xs):
                xs = np.asarray(xs, dtype=np.int64)
                lp = L[xs][:, ps]                           # inf on x itself and where no route exists
                kp = np.where(np.isfinite(lp), K[xs][:, ps], np.inf).min(axis=1)
                kp = np.where(np.isfinite(kp), kp, 0.0)
                return lp.min(axis=1)[:, None] + kp[:, None] * c[None, :]

            step = steps(cands)                                                          # (rows, R)
            if group:
                step = np.maximum(step, steps(group).max(axis=0)[None, :])
            AA = np.maximum(AA, self._ar(g, P[None, :], step))
        ok = self._ok(fill, TT, AA)
        if self.min_h is not None:
            ok &= self._busy_ok(cands, dF)
            if group:
                ok &= self._busy_ok(group, dF).all(axis=0)[None, :]
        res = ok.any(axis=1)
        rows = np.flatnonzero(res)
        if len(rows):
            res[rows] = self._pair_ok(F, T, AA[rows], group, pool, p, cands[rows], r, ok[rows], list(prev))
        return res

    def _forced_t(self, group: list, pool: list, cands: np.ndarray) -> np.ndarray:
        """Per candidate a: the least per-sample-FLOP time of a stage with members group + [a]
        + any of the pool, on whole samples: every named member computes a sample, and the
        least split over group + pool."""
        rate = self.inst.rate
        t = 1.0 / np.maximum(rate[cands], 1e-30)
        if group:
            t = np.maximum(t, 1.0 / float(min(rate[x] for x in group)))
        return np.maximum(t, least_split(rate[np.asarray(list(group) + list(pool), dtype=np.int64)], self.mi))

    def _pair_ok(self, F, T, AA, group, pool, p, cands, r, ok0, prev) -> np.ndarray:
        """`add_ok`'s lookahead naming the member d that will close the stage (every add is
        followed by a close on one more device): per candidate a (rows), may some d of the
        pool and some end r make the stage group + a + d (+ up to m - k - 2 more of the fastest
        others), the rest on the serving devices of the pool but a and d, comply? Only the
        (a, r) where `ok0` holds are tried; partners go fastest first, PAIR_CHUNK at a time,
        and a candidate stops at its first passing pair."""
        cols = np.flatnonzero(ok0.any(axis=0))
        rate = self.inst.rate
        part = sorted((d for d in pool if self.serve[d, p]), key=lambda x: -rate[x])
        found = np.zeros(len(cands), dtype=bool)
        if not len(cols) or not part:
            return found
        r, ok0, AA = r[cols], ok0[:, cols], AA[:, cols]
        srv = np.asarray([x for x in pool if self.serve[x, min(p + 1, self.B)]], dtype=np.int64)
        for c0 in range(0, len(part), PAIR_CHUNK):
            todo = np.flatnonzero(~found)
            if not len(todo):
                break
            chunk = np.asarray(part[c0:c0 + PAIR_CHUNK], dtype=np.int64)
            ai = np.repeat(todo, len(chunk))
            a, d = cands[ai], np.tile(chunk, len(todo))
            sel = a != d
            ai, a, d = ai[sel], a[sel], d[sel]
            if len(a):
                ok = self._pairs(F, T, AA[ai], group, pool, p, a, d, r, srv, prev) & ok0[ai]
                np.logical_or.at(found, ai, ok.any(axis=1))
        return found

    def _pairs(self, F, T, AA, group, pool, p, a, d, r, srv, prev) -> np.ndarray:
        """(pairs, ends): the bound of `_pair_ok` for the pairs (a[i], d[i]) and ends r."""
        rate, k = self.inst.rate, len(group)
        dF = self.fp[r] - self.fp[p]
        j = self.inst.m_int - k - 2                 # members the stage may still take beyond a and d
        R = float(sum(rate[x] for x in group)) + rate[a] + rate[d]
        if j > 0:
            order = np.asarray(sorted(pool, key=lambda x: -rate[x])[:j + 2], dtype=np.int64)
            keep = (order[None, :] != a[:, None]) & (order[None, :] != d[:, None])
            keep &= np.cumsum(keep, axis=1) <= j
            R = R + (rate[order][None, :] * keep).sum(axis=1)
        t = np.maximum(self.m / R, np.maximum(self._forced_t(group, pool, a), 1.0 / np.maximum(rate[d], 1e-30)))
        u = self.back * dF[None, :] * t[:, None]
        # the rest: the serving devices of the pool, but a and d
        sv = np.zeros(self.inst.n)
        sv[srv] = 1.0
        R_T = float(rate[srv].sum()) - rate[a] * sv[a] - rate[d] * sv[d]
        ad = np.stack([a, d], axis=1)
        t_m = least_split_without(rate[srv], srv, ad, self.mi)
        rest, rest_f = self._rest_terms(r, R_T, t_m, self._min_without(self._ret_costs(srv), srv, ad))
        entry = np.maximum(self._flows_in(prev, group, a, p), self._flows_in(prev, group, d, p))
        fill = F + u + rest_f + entry[:, None]
        j_src = self.src in pool
        back = np.maximum(self._flows_out(group, a, j_src), self._flows_out(group, d, j_src))
        fill = fill + np.where((r >= self.B)[None, :], back[:, None], 0.0)
        ok = self._ok(fill, np.maximum(np.maximum(T, u), rest), AA)
        if self.min_h is not None:
            ok &= self._busy_ok(d, dF)
        return ok
