"""StageEnv's action masks (a mixin of `StageEnv`): memory ranges, the data-parallel adds'
witnesses, the QoE narrowing, and the mask left pending after a step.

Why a module of its own: the masks are a third of StageEnv's code and have their own
invariants (tests/envs/test_stage_masks_fast.py); and since session 42 a step leaves the
next state's mask pending (`_Masked`): greedy decoding takes a followed group plan's close
(`stage_group.ruled_close`) after checking that close alone (`allows`, `_close_alone`),
without the whole mask - a fifth of a 64-device x 200-block decision went to masks, and a
followed plan's closes read one entry of theirs (docs/learning.md, "Session 42")."""

from __future__ import annotations

import numpy as np

from dora_rl.envs.qoe_bound import QoEBound

ADD_CANDIDATES = 16             # data-parallel members are drawn from the 16 fastest free devices


class _Masked:
    """An attribute `StageEnv._compute_mask` sets: reading it brings a pending mask up to
    date first (`StageEnv.advance` leaves the mask pending; `StageEnv.allows`)."""

    def __set_name__(self, owner, name):
        self.key = "_m" + name

    def __get__(self, env, owner=None):
        if env is None:
            return self
        if env._pending:
            env._pending = False
            env._compute_mask()
        return env.__dict__[self.key]

    def __set__(self, env, value):
        env.__dict__[self.key] = value


class StageMasks:
    """Mixin of `StageEnv`: `_compute_mask` and the attributes it sets (`_Masked`), `allows`."""

    _mask, _rmin, _rmax, _qin, _reach, _adds_mem, qoe_masked = (_Masked() for _ in range(7))
    _pending, _alone = False, None

    def _close_range(self, group: list[int], taken: set[int]) -> tuple[np.ndarray, np.ndarray]:
        """Per device d: the allowed ends r of a stage [p, r) on group + [d] as [rmin_d, rmax_d]
        (empty when rmin > rmax). `taken` = devices already used or in the group."""
        p, B, n = self.p, self.inst.B, self.inst.n
        rmin = np.full(n, B + 1, dtype=np.int64)
        rmax = np.zeros(n, dtype=np.int64)
        free = [d for d in range(n) if d not in taken]
        self._reach = np.full(n, p, dtype=np.int64)       # group + [d]'s memory reach per free d
        if not free or p >= B:
            return rmin, rmax
        first, R = self._memory_ends(group, taken, free)
        self._reach[free] = R
        has = first <= B
        fr = np.asarray(free)[has]
        rmin[fr], rmax[fr] = first[has], R[has]
        return rmin, rmax

    def _memory_ends(self, group: list[int], taken: set[int], devs: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Per device d of `devs` (free, p < B): the first end r in (p, R_d] from which the
        rest still completes (the greedy completion without taken and d reaches B; B + 1
        where none) and R_d, group + [d]'s memory reach. Each row is its own device's
        (`Instance.completion_table`, `group_reach_rows`): `_close_range` asks for every free
        device, `_close_alone` for one."""
        inst, p, B = self.inst, self.p, self.inst.B
        G = inst.completion_table(taken, devs)
        R = inst.group_reach_rows([group + [d] for d in devs], p)
        ok = (G[:, p + 1:] >= B) & (np.arange(p + 1, B + 1)[None, :] <= R[:, None])
        return np.where(ok.any(axis=1), p + 1 + ok.argmax(axis=1), B + 1), R

    def _bound(self) -> QoEBound:
        """The instance's QoE bound (built once per Instance, shared by every episode on it)."""
        qb = getattr(self.inst, "_qoe_bound", None)
        if qb is None:
            qb = self.inst._qoe_bound = QoEBound(self.inst)
        return qb

    def _compute_mask(self) -> None:
        D, Bm, n = self.max_devices, self.max_blocks, self.inst.n
        taken = self.used | set(self.group)
        rmin, rmax = self._close_range(self.group, taken)
        mask = np.zeros(self.n_actions, dtype=bool)
        cm = mask[:D * Bm].reshape(D, Bm)
        j = np.arange(1, Bm + 1)[None, :]
        cm[:n] = (j >= rmin[:, None]) & (j <= rmax[:, None])
        # add d: some other free device must close a stage with the enlarged group (a
        # witness among the fastest free devices; candidates: the ADD_CANDIDATES fastest)
        inst, p, B = self.inst, self.p, self.inst.B
        free = sorted((d for d in range(n) if d not in taken), key=lambda d: -inst.rate[d])[:ADD_CANDIDATES]
        if len(free) >= 2 and inst.m_int >= len(self.group) + 2:
            # _close_range already has group + [d]'s memory reach for every free d
            R2 = self._reach[free]
            todo = [d for d, r2 in zip(free, R2) if r2 > p]
            for k in range(2):       # the first witness of every candidate at once, then the second
                wit = [(d, e) for d in todo for e in [x for x in free if x != d][k:k + 1]]
                R3 = inst.group_reach_rows([self.group + [d, e] for d, e in wit], p) if wit else []
                for (d, e), r3 in zip(wit, R3):
                    if r3 > p and (r3 >= B or inst.greedy(int(r3), taken | {d, e}) >= B):
                        mask[D * Bm + d] = True
                todo = [d for d in todo if not mask[D * Bm + d]]
        self.qoe_masked = False
        self._adds_mem = mask[D * Bm:].copy()       # the adds before the QoE narrowing (tests compare them)
        self._qin = self._bound().inputs(self.prev, self.group, p, [d for d in range(n) if d not in taken])
        if self.qoe_masks and self._bound().on:
            self._qoe_mask(cm, mask[D * Bm:], rmin, rmax)
        self._mask, self._rmin, self._rmax = mask, rmin, rmax

    def _qoe_mask(self, cm: np.ndarray, adds: np.ndarray, rmin: np.ndarray, rmax: np.ndarray) -> None:
        """Narrow the memory masks (in place) to steps after which a QoE-compliant plan may
        still exist (dora_rl/envs/qoe_bound.py); when no step passes, keep the memory masks
        (no compliant plan exists: the episode still ends in a valid plan). rmin/rmax become
        the first/last allowed end per device (the observation's reach features)."""
        qb, inst, p = self._bound(), self.inst, self.p
        pool = [d for d in range(inst.n) if d not in self.used and d not in self.group]
        q = self._qoe_closes(cm, rmin, rmax, *qb.rest_bound(pool, p + 1)[:3])
        qa = self._qoe_adds(adds, pool)
        if q.any():
            cm[:] = q
            adds[:] = qa
        elif qa.any() and qb.global_ok(self._qF, self._qT, p, *qb.rest_bound(pool + self.group, p)[3:], A=self._qA,
                                             Mq=self._qM):
            cm[:] = False
            adds[:] = qa
        else:
            return
        self.qoe_masked = True
        c = cm[:inst.n]
        has = c.any(axis=1)
        rmin[:] = np.where(has, c.argmax(axis=1) + 1, inst.B + 1)
        rmax[:] = np.where(has, c.shape[1] - c[:, ::-1].argmax(axis=1), 0)

    def _qoe_adds(self, adds: np.ndarray, pool: list) -> np.ndarray:
        """The adds (adds' shape) that pass `QoEBound.add_ok` (a lookahead over the stage's ends)."""
        cand = np.flatnonzero(adds[:self.inst.n])
        qa = np.zeros_like(adds)
        qa[cand] = self._bound().add_ok(self._qF, self._qT, self._qA, self.group, pool, self.p, cand, self.prev,
                                                        self._qM)
        return qa

    def _qoe_closes(self, cm, rmin, rmax, R_T, t_m, ret) -> np.ndarray:
        """The closes (cm's shape) within [rmin_d, rmax_d] that pass `QoEBound.close_ok`."""
        qb, p = self._bound(), self.p
        q = np.zeros_like(cm)
        f_in, t_in = self._qin
        ds = np.flatnonzero(rmin <= rmax)
        if len(ds):       # the ends any device may take (close_ok is elementwise in r)
            lo, hi = int(rmin[ds].min()), int(rmax[ds].max())
            r = np.arange(lo, hi + 1)
            inside = (r[None, :] >= rmin[ds][:, None]) & (r[None, :] <= rmax[ds][:, None])
            q[ds, lo - 1:hi] = inside & qb.close_ok(self._qF, self._qT, f_in[ds], t_in[ds], self.group, ds, p, r,
                                                    R_T[ds], t_m[ds], ret[ds], A=self._qA, prev=self.prev,
                                                    Mq=self._qM)
        return q

    def allows(self, a: int) -> bool:
        """Whether action `a` is allowed (`_mask[a]`). With the mask pending, a close is
        first checked alone (`_close_alone`), and the mask is computed only if that check
        fails: the close a followed group plan's rule takes (`stage_group.ruled_close`) needs
        no other entry."""
        if self._pending and 0 <= a < self.max_devices * self.max_blocks:
            if self._alone is None or self._alone[0] != a:
                self._alone = (a, self._close_alone(*divmod(a, self.max_blocks)))
            if self._alone[1]:
                return True
        return bool(self._mask[a])

    def _close_alone(self, d: int, j: int) -> bool:
        """Whether the whole mask would allow the close of [p, j + 1) on group + [d], from
        that entry alone: its memory range (`_memory_ends`, as `_close_range`) and the QoE bound's `close_ok`,
        each computed per device and per end, so the entry is the one the whole mask
        computes; where it passes, the QoE narrowing keeps it (some close passes). False
        means "not known": the caller computes the whole mask."""
        p, B, n, r = self.p, self.inst.B, self.inst.n, j + 1
        taken = self.used | set(self.group)
        if d >= n or d in taken or not p < r <= B:
            return False
        first, R = self._memory_ends(self.group, taken, [d])
        if not int(first[0]) <= r <= int(R[0]):
            return False
        qb = self._bound()
        if not (self.qoe_masks and qb.on):
            return True
        R_T, t_m, ret = qb.rest_bound([x for x in range(n) if x not in taken], p + 1)[:3]
        f_in, t_in = qb.inputs(self.prev, self.group, p, [d])
        ds = np.array([d], dtype=np.int64)
        return bool(qb.close_ok(self._qF, self._qT, f_in[ds], t_in[ds], self.group, ds, p, np.array([r]), R_T[ds],
                                t_m[ds], ret[ds], A=self._qA, prev=self.prev, Mq=self._qM)[0, 0])
