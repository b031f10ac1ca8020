"""`StageNumpyActor`: a StagePolicy's actor in numpy, the one that plans (any D and B per call,
one observation or a batch), and `one_blas_thread` for the small matmuls it does.

Why apart from stage_policy.py: planning (`StageAgent.plan`, the training workers'
decoding) runs the actor without torch's autograd and SB3's wrappers, and the torch
policy module stays about the network that is trained. The two compute the same logits
(tests/learning/test_stage_actor_fast.py checks them against each other with and without
padding, at every allowed action)."""

from __future__ import annotations

import math
import sys

import numpy as np
from torch import nn

from dora_rl.envs.stage_group import ruled_close
from dora_rl.learning.stage_lookahead import (
    add_lookahead,
    battery_risk,
    bump_sum,
    head_columns,
    lookahead_at,
    objective_column,
    with_group,
    with_objective_term,
    with_two_stage,
)
from dora_rl.learning.stage_policy import NEG, StagePolicy

_BLAS = None


def one_blas_thread():
    """numpy's BLAS on one thread (threadpoolctl): as a context (`with one_blas_thread():`,
    the caller's setting restored after; `StageAgent.plan` and `rollouts`), or called once
    for the rest of the process (the training workers' pool initializer). The actor's
    matmuls are small (devices or blocks x 64 features), so a pool of BLAS threads only
    spins beside it. Measured on 2 cores (session 22): `agent.plan` at 64 devices x 200
    blocks 58-63 ms CPU with the default pool against 46-47 (wall time equal), and with the
    other core busy 40-53 ms wall against 36-38; 2 training workers decoding 20 tasks at
    32-48 devices x 150 blocks 5.0-5.1 s CPU against 1.5-1.7, wall 14.3-14.7 s against
    12.1-12.9. The controller scans the loaded libraries (~2 ms) again only when modules were
    imported since its last scan (an import may load another BLAS, as scipy.linalg loads its
    own OpenBLAS beside numpy's); each limit then costs ~30 us."""
    global _BLAS
    if _BLAS is None or _BLAS[0] != len(sys.modules):
        from threadpoolctl import ThreadpoolController
        _BLAS = (len(sys.modules), ThreadpoolController())
    return _BLAS[1].limit(limits=1, user_api="blas")


class StageNumpyActor:
    """The actor of a StagePolicy in numpy: logits for any (D, B), masked by `mask`.
    `dtype`: float32 (the default) is the precision the network was trained in (torch) and
    halves a 64-device x 200-block decision's time against float64 (wider tanh and matmul
    lanes); float64 is kept for checking the two against each other (docs/learning.md)."""

    def __init__(self, policy: StagePolicy, dtype: str = "float32"):
        fe, hd = policy.features_extractor, policy.action_net
        self.dtype = dtype

        def arr(t):
            return t.detach().cpu().numpy().astype(dtype)

        def lin(m: nn.Linear):
            return arr(m.weight).T.copy(), arr(m.bias)

        self.heads = fe.attn[0].heads if len(fe.attn) else 1
        self.denc = [lin(fe.denc[0]), lin(fe.denc[2])]
        self.benc = [lin(fe.benc[0]), lin(fe.benc[2])]
        self.attn = [dict(ln1=(arr(b.ln1.weight), arr(b.ln1.bias)), ln2=(arr(b.ln2.weight), arr(b.ln2.bias)),
                          qkv=lin(b.qkv), out=lin(b.out), ff1=lin(b.ff1), ff2=lin(b.ff2)) for b in fe.attn]
        self.genc, self.ctx, self.dout, self.bout = lin(fe.genc[0]), lin(fe.ctx[0]), lin(fe.dout[0]), lin(fe.bout[0])
        self.q, self.kb, self.amp, self.add = lin(hd.q), lin(hd.kb), lin(hd.amp), lin(hd.add)
        self.scale, self.shift = arr(hd.scale), arr(hd.shift)
        self.fidx = hd.fidx.detach().numpy()
        self.embed = fe.embed
        self.add_look = hd.add_look
        self.obj_w = arr(hd.obj_w) if hd.obj_term else None
        if hd.add_look:
            self.amp_add = lin(hd.amp_add)
            self.scale_add, self.shift_add = arr(hd.scale_add), arr(hd.shift_add)

    @staticmethod
    def _ln(x, p):
        H = x.shape[-1]         # (np.add.reduce / H is what ndarray.mean computes, without its wrapper)
        xc = x - np.add.reduce(x, -1, keepdims=True) / H
        return xc / np.sqrt(np.add.reduce(xc * xc, -1, keepdims=True) / H + 1e-5) * p[0] + p[1]

    def _attn(self, x, mask, a):
        *lead, D, H = x.shape
        h = self.heads
        qkv = (self._ln(x, a["ln1"]) @ a["qkv"][0] + a["qkv"][1]).reshape(*lead, D, 3, h, H // h)
        # (..., 3, h, D, H/h) in one copy (one observation: q, k, v are contiguous views of it)
        t = np.ascontiguousarray(np.moveaxis(qkv, -4, -2))
        q, k, v = (np.ascontiguousarray(t[..., i, :, :, :]) for i in range(3))
        s = q @ np.ascontiguousarray(np.swapaxes(k, -1, -2)) / math.sqrt(H // h)
        if not mask.all():        # padding (all ones: adding 0 changes nothing)
            s = s + ((1.0 - mask)[..., None, None, :] * NEG)
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        o = np.ascontiguousarray(np.moveaxis(s @ v, -3, -2)).reshape(*lead, D, H)
        x = x + o @ a["out"][0] + a["out"][1]
        f = np.tanh(self._ln(x, a["ln2"]) @ a["ff1"][0] + a["ff1"][1])
        return x + f @ a["ff2"][0] + a["ff2"][1]

    def ruled(self, env) -> int | None:
        """The action this policy takes at StageEnv `env`'s state whatever its network says
        (the group rule's close, `stage_group.ruled_close`, where the rule is live for the
        instance's objective), else None: greedy decoding takes it without an observation."""
        if self.obj_w is None or self.obj_w[1 if env.inst.objective == "energy" else 0] <= 0:
            return None
        return ruled_close(env)

    def logits(self, obs: dict, mask) -> np.ndarray:
        dt = self.dtype
        xd, dm = obs["devices"].astype(dt), obs["device_mask"].astype(dt)
        xb, bm, xg = obs["blocks"].astype(dt), obs["block_mask"].astype(dt), obs["global"].astype(dt)

        def mlp(x, ls):
            for w, b in ls:
                x = np.tanh(x @ w + b)
            return x

        e = mlp(xd, self.denc)
        for a in self.attn:
            e = self._attn(e, dm, a)
        b = mlp(xb, self.benc)
        dmu, bmu = dm[..., None], bm[..., None]
        mean = (e * dmu).sum(-2) / np.maximum(dmu.sum(-2), 1.0)
        mx = (e if dm.all() else e + (dmu - 1.0) * -NEG).max(-2)
        bmean = (b * bmu).sum(-2) / np.maximum(bmu.sum(-2), 1.0)
        g = np.tanh(xg @ self.genc[0] + self.genc[1])
        c = np.tanh(np.concatenate([g, mean, mx, bmean], -1) @ self.ctx[0] + self.ctx[1])
        cd = np.broadcast_to(c[..., None, :], e.shape[:-1] + c.shape[-1:])
        cb = np.broadcast_to(c[..., None, :], b.shape[:-1] + c.shape[-1:])
        hd = np.tanh(np.concatenate([e, cd], -1) @ self.dout[0] + self.dout[1])
        gb = np.tanh(np.concatenate([b, cb], -1) @ self.bout[0] + self.bout[1])
        bil = (hd @ self.q[0] + self.q[1]) @ np.swapaxes(gb, -1, -2) / math.sqrt(self.embed)
        # the lookahead term only where a close is allowed (`lookahead_at`: at 64 devices x 200
        # blocks the full (D, Bm, 24) table was most of a decision's time)
        D, Bm = bil.shape[-2:]
        mask = np.asarray(mask)
        at = np.nonzero(mask[..., :D * Bm].reshape(bil.shape))
        cols = {"devices": xd, "device_mask": dm, "blocks": xb, "block_mask": bm, "global": xg}
        if "relay_w" in obs:
            cols["relay_w"] = obs["relay_w"].astype(dt)
        cd, cb, cg = head_columns(cols)
        x = lookahead_at(cd, cb, cg, at, np)
        amp = (hd @ self.amp[0] + self.amp[1])[at[:-1]]             # each close's device row
        close = bil.copy()
        close[at] += bump_sum(x, self.fidx, self.scale, self.shift, amp)
        close += np.swapaxes(gb @ self.kb[0] + self.kb[1], -1, -2)
        risky = battery_risk(obs) if self.obj_w is not None else None
        if self.obj_w is not None:
            col = np.zeros_like(close)
            col[at] = objective_column(x, cg[at[:-2]])
            close = with_objective_term(close, cd, cb, cg, self.obj_w, np, mask, risky, col)
        add = (hd @ self.add[0] + self.add[1])[..., 0]
        if self.add_look and mask[..., D * Bm:].any():
            xa = add_lookahead(cd, cb, cg, np)
            amp_a = hd @ self.amp_add[0] + self.amp_add[1]
            add = add + bump_sum(xa, self.fidx, self.scale_add, self.shift_add, amp_a)
        out = np.concatenate([close.reshape(close.shape[:-2] + (-1,)), add], -1)
        if self.obj_w is not None and "two_stage" in obs:
            out = with_two_stage(out, obs["two_stage"].astype(dt), cb, cg, self.obj_w, np, mask, obs.get("promise"))
            if "group" in obs:
                out = with_group(out, obs["group"], cg, self.obj_w, np, mask)
        return np.where(mask, out.astype(np.float64), -np.inf)      # float64 for the searches' softmax sums
