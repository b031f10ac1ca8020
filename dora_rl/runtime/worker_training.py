"""A worker's training commands (`TrainingOps`, a mixin of `Worker`).

`op_train` runs one iteration: 1F1B over the micro-batches of this device's stage,
gradients sent back across the boundaries, a ring all-reduce of the gradients inside the
stage's data-parallel group (2(g-1) steps of one chunk each, the cost model's formula),
then an SGD step (with momentum when set). The plan's schedule (docs/formats.md) adds
`extra_warmup` forwards to 1F1B's warm-up and splits the all-reduce into `buckets`
equal slices of the flat gradient, last layers first; with start `backward` a thread
runs bucket b once the modelled last backward is (b+1)/buckets done (as the simulator),
overlapping the rest of it, else the buckets run one after another once the whole
pipeline has drained (stage 0, the last to finish 1F1B, tells every data-parallel
member of a later stage: a control token, not paced).
`op_checkpoint` hands the coordinator the parameters and optimizer state of every block
(the fault-tolerant runtime's copy)."""

from __future__ import annotations

import threading

import torch
import torch.nn.functional as F

from dora_rl.runtime.comm import TAG_BWD, TAG_DRAIN, TAG_RING, irecv_tensor, isend_tensor, wait_tensors
from dora_rl.runtime.emulation import now, settle, sleep_until, vtime


class TrainingOps:
    """The `train` and `checkpoint` commands; uses the `Worker`'s pipeline geometry."""

    def op_train(self, cmd: dict) -> None:
        """One iteration; `v` (fault tolerance): the iteration's version, snapshotted at its start."""
        if "v" in cmd:
            self.faults.begin_iteration(self, cmd["v"])
        self._op_train(cmd)
        if "v" in cmd:
            self.faults.end_iteration(cmd["v"])

    def _op_train(self, cmd: dict) -> None:
        settle()
        t0 = now()
        batch = cmd["batch"]
        M, S = self.M, self.S
        m = batch // M
        if self.is_source:
            x = cmd["x"]
            for j in range(M):
                self.scatter(0, j, m, x[j * m:(j + 1) * m], 0, True)
        s = self.my_stage
        if s is not None:
            lo_, hi_ = self.my_range(s, m)
            n = hi_ - lo_
            saved = {}
            y_all = cmd.get("y")
            denom = cmd["denom"]
            ar = self.schedule.get("allreduce") or {}
            early = ar.get("start") == "backward" and len(self.stages[s][2]) > 1
            ring: list = []   # the bucketed all-reduce thread started during the last backward

            def fwd(j):
                x = self.gather(s, j, m, True)
                if s > 0:
                    x.requires_grad_(True)
                t = now()
                y = self.module(x)
                if s == S - 1:
                    lab = y_all[j * m + lo_: j * m + hi_]
                    y = F.cross_entropy(y.reshape(-1, y.shape[-1]), lab.reshape(-1), reduction="sum") / denom
                self.clock.stretch(t, self.model_s(s, n))
                if s < S - 1:
                    self.scatter(s + 1, j, m, y.detach(), lo_, True)
                saved[j] = (x, y)

            def bwd(j):
                x, y = saved.pop(j)
                if s == S - 1:
                    t = now()
                    y.backward()
                else:
                    g = self.gather_grad(s, j, m, lo_)
                    t = now()
                    y.backward(g)
                model = self.model_s(s, n, "bwd")
                if early and j == M - 1:
                    ring.append(self._start_ring(s, vtime(t), model))   # the modelled start of the backward
                self.clock.stretch(t, model)
                if s > 0:
                    self.scatter_grad(s, j, m, x.grad, lo_)

            if n > 0:
                warm = min(S - s - 1 + int(self.schedule.get("extra_warmup", 0)), M)
                for j in range(warm):
                    fwd(j)
                for j in range(M - warm):
                    fwd(warm + j)
                    bwd(j)
                for j in range(M - warm, M):
                    bwd(j)
            if ar.get("start", "drain") == "drain":
                self.drained(s)
            self.allreduce_and_step(s, ring[0] if ring else None)
        self.flush()
        self.ack({"op": "train", "device": self.device, "t0": t0, "t1": now()})

    def gather_grad(self, s: int, j: int, m: int, my_lo: int) -> torch.Tensor:
        """Gradient of my stage output, from the next stage's members (boundary s+1)."""
        k = s + 1
        bb = self.boundary_block(k)
        posted = []
        for a, b, lo, hi in self.links(k, m, True):
            if a == self.device:   # I sent them samples [lo, hi) forward; the gradient comes back
                posted.append((lo, irecv_tensor((hi - lo,) + self.shapes[bb], torch.float32,
                                                self.ranks[b], TAG_BWD + k)))
        got = wait_tensors([p for _, p in posted])
        for t in got:
            self.recv_bytes += t.numel() * t.element_size()
        pieces = sorted(zip([lo for lo, _ in posted], got), key=lambda p: p[0])
        return pieces[0][1] if len(pieces) == 1 else torch.cat([t for _, t in pieces])

    def scatter_grad(self, s: int, j: int, m: int, g: torch.Tensor, my_lo: int) -> None:
        k = s   # boundary into my stage
        for a, b, lo, hi in self.links(k, m, True):
            if b != self.device:
                continue
            self.send_tensor(a, g[lo - my_lo: hi - my_lo], TAG_BWD + k)

    def drained(self, s: int) -> None:
        """`drain` start: stage 0 tells the data-parallel members of later stages that
        its last backward is done; they wait for every stage-0 member's token."""
        later = [d for _, _, devs, _ in self.stages[1:] if len(devs) > 1 for d in devs]
        if s == 0:
            for d in later:
                self.pending.add(isend_tensor(torch.zeros(1), self.ranks[d], TAG_DRAIN, 0.0))
        elif self.device in later:
            wait_tensors([irecv_tensor((1,), torch.float32, self.ranks[d], TAG_DRAIN) for d in self.stages[0][2]])

    def _grads(self) -> list:
        params = [(b, name, p) for b in sorted(self.blocks) for name, p in self.blocks[b].named_parameters()]
        for _, _, p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        return params

    def _bucketed(self, s: int, t0: float, model: float) -> tuple:
        """(flat gradient, thread) - the thread sums `flat` over stage s's group in the
        schedule's buckets, bucket b (the last (b+1)/B of the flat gradient) from
        t0 + model*(b+1)/B; its error, if any, is appended to the thread's `err`."""
        params = self._grads()
        flat = torch.cat([p.grad.reshape(-1) for _, _, p in params]) if params else torch.zeros(0)
        B = max(1, int((self.schedule.get("allreduce") or {}).get("buckets", 1)))
        pieces = list(reversed(torch.tensor_split(flat, B)))
        devs = self.stages[s][2]

        def run():
            try:
                for b, piece in enumerate(pieces):
                    sleep_until(t0 + model * (b + 1) / B)
                    if piece.numel():
                        self.ring_allreduce(piece, devs)
            except (RuntimeError, OSError) as e:   # re-raised by allreduce_and_step in the main thread
                th.err.append(e)
        th = threading.Thread(target=run, daemon=True)
        th.err = []
        return flat, th

    def _start_ring(self, s: int, t0: float, model: float) -> tuple:
        flat, th = self._bucketed(s, t0, model)
        th.start()
        return flat, th

    def allreduce_and_step(self, s: int, ring: tuple | None = None) -> None:
        """All-reduce (or collect the one started during backward, `ring`), then step."""
        params = self._grads()
        devs = self.stages[s][2]
        if len(devs) > 1 and params:
            flat, th = ring if ring is not None else self._start_ring(s, now(), 0.0)
            th.join()
            if th.err:
                raise th.err[0]
            off = 0
            for _, _, p in params:
                k = p.numel()
                p.grad.copy_(flat[off:off + k].view_as(p))
                off += k
        with torch.no_grad():
            for b, name, p in params:
                d = p.grad
                if self.momentum:
                    st = self.opt_state.setdefault(b, {})
                    buf = st.get(name)
                    if buf is None:
                        buf = st[name] = d.clone()
                    else:
                        buf.mul_(self.momentum).add_(d)
                    d = buf
                p.add_(d, alpha=-self.lr)
                p.grad = None

    def ring_allreduce(self, flat: torch.Tensor, devs: list[str]) -> None:
        """Sum `flat` over the group in place: reduce-scatter then all-gather around the
        ring in group order, 2(g-1) steps of one chunk each (the cost model's formula)."""
        g = len(devs)
        p = devs.index(self.device)
        nxt, prv = devs[(p + 1) % g], devs[(p - 1) % g]
        chunks = list(torch.tensor_split(flat, g))
        for phase in (0, 1):
            for t in range(g - 1):
                si = (p - t) % g if phase == 0 else (p + 1 - t) % g
                ri = (p - t - 1) % g if phase == 0 else (p - t) % g
                self.send_tensor(nxt, chunks[si].clone(), TAG_RING)
                got = wait_tensors([irecv_tensor(chunks[ri].shape, flat.dtype, self.ranks[prv], TAG_RING)])[0]
                self.recv_bytes += got.numel() * got.element_size()
                if phase == 0:
                    chunks[ri].add_(got)
                else:
                    chunks[ri].copy_(got)

    def op_checkpoint(self, cmd: dict) -> None:   # [faults] parameters + optimizer state per block
        self.flush()
        self.ack({"op": "checkpoint", "state": {
            b: ({k: v.detach().clone() for k, v in m.state_dict().items()},
                {k: v.clone() for k, v in self.opt_state.get(b, {}).items()}) for b, m in self.blocks.items()}})
