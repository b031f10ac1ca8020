"""The rest-of-plan and boundary terms of StageEnv's QoE bound (a mixin of `QoEBound`).

Why a module of its own: the bound's terms for what comes after a candidate step - the
rest of the model on the devices that can serve it, the boundaries into and out of a
group, the bytes on shared media - are shared by the close test (qoe_bound.py) and the
add lookahead (qoe_add.py) and are each a lower bound with its own argument
(docs/learning.md, "QoE-aware masks"). Every method reads the `QoEBound` constants
(rates, FLOP prefix sums, boundary bytes, routes, `serve`)."""

from __future__ import annotations

import numpy as np

from dora_rl.envs.qoe_samples import least_split, least_split_without


def _memo(cache: dict, key, make):
    """cache[key], made once by make() (a decision asks for the same pool several times;
    the cache is emptied past 64 entries)."""
    hit = cache.get(key)
    if hit is None:
        if len(cache) > 64:
            cache.clear()
        hit = cache[key] = make()
    return hit


class RestTerms:
    """Mixin of `QoEBound`: the rest [r, B), the group boundaries, the shared media."""

    def rest_rates(self, pool: list) -> tuple[np.ndarray, np.ndarray, float, float]:
        """Rates left for the rest once device d takes a stage, per device d (array over all
        devices; d outside `pool` leaves the whole pool): (total rate, rate of the m fastest),
        then the same two for the whole pool. Memoised per pool: read, do not modify."""
        return _memo(self._rest, tuple(pool), lambda: self._rest_rates(pool))

    def _rest_rates(self, pool: list) -> tuple:
        rate = self.inst.rate
        tot = float(sum(rate[d] for d in pool))
        R_T = np.full(self.inst.n, tot)
        for d in pool:
            R_T[d] = tot - rate[d]
        R_m, top = self._fastest(pool, max(1, self.m))
        return R_T, R_m, tot, top

    def _fastest(self, pool: list, k: int) -> tuple[np.ndarray, float]:
        """Per device d (array over all devices): the total rate of the k fastest devices of
        `pool` other than d; then that of the pool's k fastest."""
        rate = self.inst.rate
        order = sorted(pool, key=lambda d: -rate[d])
        top = float(sum(rate[d] for d in order[:k]))
        nxt = float(rate[order[k]]) if len(order) > k else 0.0
        out = np.full(self.inst.n, top)
        for d in order[:k]:
            out[d] = top - rate[d] + nxt
        return out, top

    def rest_bound(self, pool: list, r0: int) -> tuple:
        """The rest [r, B) (r >= r0) on the devices of `pool` that may serve it (`serve[:, r0]`),
        per device d left out (arrays over all devices; d outside them leaves them all):
        their total rate, their least split of m samples (`qoe_samples`) and the return of
        the last stage to the source (fill; inference); then the total rate and least split
        of them all. Memoised per set of serving devices: read, do not modify."""
        srv = [d for d in pool if self.serve[d, min(r0, self.B)]]
        return _memo(self._restb, tuple(srv), lambda: self._rest_bound(srv))

    def _rest_bound(self, srv: list) -> tuple:
        rate, n = self.inst.rate, self.inst.n
        ids = np.asarray(srv, dtype=np.int64)
        tot = float(rate[ids].sum())
        R_T = np.full(n, tot)
        R_T[ids] = tot - rate[ids]
        t_all = least_split(rate[ids], self.mi)
        t_m = np.full(n, t_all)
        if len(ids):
            t_m[ids] = least_split_without(rate[ids], ids, ids[:, None], self.mi)
        ret = self._min_without(self._ret_costs(ids), ids, np.arange(n)[:, None])
        return R_T, t_m, ret, tot, t_all

    def _rest_terms(self, r: np.ndarray, R_T, t_m, ret) -> tuple[np.ndarray, np.ndarray]:
        """(T, fill) lower bounds of the rest [r, B) (rows: R_T, t_m, ret per row; columns:
        r): its work over the total rate of the serving devices, its work per sample on
        their least whole-sample split plus the return to the source; 0 at r = B."""
        left = (r < self.B)[None, :]
        dF = np.where(left, self.fp[-1] - self.fp[r][None, :], 0.0)
        R_T, t_m, ret = (np.asarray(x, dtype=float).reshape(-1, 1) for x in (R_T, t_m, ret))
        rest = self.back * self.m * dF / np.maximum(R_T, 1e-30)
        rest_f = np.where(left, self.back * dF * np.where(np.isfinite(t_m), t_m, 1e30) + ret, 0.0)
        return rest, rest_f

    @staticmethod
    def _min_without(c: np.ndarray, ids: np.ndarray, excl: np.ndarray) -> np.ndarray:
        """Per row of `excl` (device ids): the least c over the devices `ids` not in the row
        (0 when none is left: the rest is then impossible, which other terms say)."""
        if not len(ids):
            return np.zeros(len(excl))
        order = np.argsort(c, kind="stable")[:excl.shape[1] + 1]
        keep = np.ones((len(excl), len(order)), dtype=bool)
        for j in range(excl.shape[1]):
            keep &= ids[order][None, :] != excl[:, j:j + 1]
        has = keep.any(axis=1)
        return np.where(has, c[order][keep.argmax(axis=1)], 0.0)

    def _ret_costs(self, ids: np.ndarray) -> np.ndarray:
        """Per serving device e of `ids`: the least fill of the return to the source
        (inference) of a last stage that e is in: from e alone exactly its transfer (`out`),
        from a group at least the source's interface and e's latency (`_xfer`); 0 for the
        source itself (and in training)."""
        if self.training or not len(ids):
            return np.zeros(len(ids))
        nb = self.m * self.bnd[self.B]
        lat = self.cost.net.least[0][ids, self.src]
        lat = np.where(np.isfinite(lat), lat, 0.0)
        grp = np.where(nb > 0, nb / self.send_cap[self.src] + lat, 0.0)
        one = np.array([self.out[e][0] + self.out[e][1] for e in ids])
        return np.where(ids == self.src, 0.0, np.minimum(one, grp))

    def _flows_in(self, prev: list, members: list, extra, p: int) -> np.ndarray:
        """Per device e of `extra`: a lower bound of the fill of the boundary p into the
        stage on members + [e] from the single device prev (0 otherwise): every member
        computes a whole sample, so every one receives a flow, and the boundary takes the
        slowest flow's latency plus the occupancy of prev's interface (dirs x)."""
        extra = np.asarray(extra, dtype=np.int64)
        nb = self.m * self.bnd[p]
        if len(prev) != 1 or nb <= 0 or prev[0] in members:
            return np.zeros(len(extra))
        L = self.cost.net.least[0]
        s = prev[0]
        lat = np.where(extra == s, -np.inf, L[s, extra])
        if members:
            lat = np.maximum(lat, max(float(L[s, j]) for j in members))
        lat = np.where(np.isfinite(lat), lat, 0.0)
        fin = (self.dirs if p > 0 else 1.0) * (nb / self.send_cap[s] + lat)
        return np.where(extra == s, 0.0, fin)

    def _flows_out(self, members: list, extra, may_join: bool) -> np.ndarray:
        """Per device e of `extra`: a lower bound of the fill of the last stage's return to
        the source (inference) from members + [e] (`may_join`: the source may be a member):
        every member other than the source sends a flow; through the source's interface go
        all m samples' outputs (the source not a member) or at least one."""
        extra = np.asarray(extra, dtype=np.int64)
        nb = self.bnd[self.B]
        if self.training or nb <= 0:
            return np.zeros(len(extra))
        L, src = self.cost.net.least[0], self.src
        lat = np.where(extra == src, 0.0, L[extra, src])
        others = [j for j in members if j != src]
        if others:
            lat = np.maximum(lat, max(float(L[j, src]) for j in others))
        lat = np.where(np.isfinite(lat), lat, 0.0)
        inside = may_join or src in members
        k = np.where((extra == src) | inside, 1.0, self.m)
        has = np.asarray([bool(others)] * len(extra)) | (extra != src)
        return np.where(has, k * nb / self.send_cap[src] + lat, 0.0)

    def media_in(self, prev: list, group: list, ds, p: int) -> np.ndarray:
        """(rows ds, media): a lower bound of the bytes (x dirs) boundary p puts on each
        shared medium, from prev into the stage on group + [d]: all its bytes leave a single
        sender outside the stage (or reach a single receiver outside prev) through that
        device's links, so a medium carrying every link of it carries them all."""
        ds = np.asarray(ds, dtype=np.int64)
        nb = self.m * self.bnd[p] * (self.dirs if p > 0 else 1.0)
        out = np.zeros((len(ds), self.forced.shape[1]))
        if nb <= 0 or not out.shape[1]:
            return out
        if len(prev) == 1 and prev[0] not in group:
            out = np.where((ds != prev[0])[:, None], self.forced[prev[0]][None, :], 0.0)
        if not group:
            out = np.maximum(out, np.where(np.isin(ds, prev)[:, None], 0.0, self.forced[ds]))
        return nb * out

    def _media_T(self, Mq: np.ndarray, rows: np.ndarray, cols: np.ndarray | None = None) -> np.ndarray:
        """max over media of (committed bytes Mq + per-row bytes rows (rows, media) + per
        (row, column) bytes cols (rows, R, media)) / the medium's capacity: a lower bound
        of the period (the cost model's medium term)."""
        tot = Mq[None, :] + rows
        if cols is None:
            return (tot / self.mcap[None, :]).max(axis=1, initial=0.0)[:, None]
        return ((tot[:, None, :] + cols) / self.mcap[None, None, :]).max(axis=2, initial=0.0)
