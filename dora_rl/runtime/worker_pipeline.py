"""How a worker's samples cross stage boundaries (`PipelineOps`, a mixin of `Worker`).

A plan's stages are groups of devices that split every micro-batch by their shares;
boundary k joins group k to group k+1 (group 0 is the source, and for inference the
source again after the last stage). These methods compute which sample ranges go from
which member to which, send them (`scatter`) and receive them (`gather`); the
inference and training ops (worker_inference.py, worker_training.py) build on them."""

from __future__ import annotations

import torch

from dora_rl.runtime.comm import TAG_FWD, irecv_tensor, overlaps, sample_edges, wait_tensors


class PipelineOps:
    """Stage geometry and sample hand-off; reads the `Worker`'s plan (`stages`, `S`),
    `shapes`/`dtypes`, `ranks` and sends through `Worker.send_tensor`."""

    def groups(self, training: bool):
        src = ([self.source], [1.0])
        g = [src] + [(st[2], st[3]) for st in self.stages]
        if not training:
            g.append(src)
        return g

    def boundary_block(self, k: int) -> int:
        """Index into `shapes` of the tensor crossing boundary k (0: input, S: output)."""
        return 0 if k == 0 else self.stages[k - 1][1]

    def links(self, k: int, m: int, training: bool):
        """Overlaps for boundary k (group k -> group k+1) with micro-batch size m."""
        key = (k, m, training)
        if key not in self._edges_cache:
            g = self.groups(training)
            a, b = g[k], g[k + 1]
            self._edges_cache[key] = overlaps(a[0], sample_edges(m, a[1]), b[0], sample_edges(m, b[1]))
        return self._edges_cache[key]

    def my_range(self, s: int, m: int) -> tuple[int, int]:
        _, _, devs, sh = self.stages[s]
        e = sample_edges(m, sh)
        i = devs.index(self.device)
        return e[i], e[i + 1]

    def scatter(self, k: int, j: int, m: int, x: torch.Tensor, x_lo: int, training: bool, tagbase=TAG_FWD) -> None:
        """Send the samples of x (global range starting at x_lo) over boundary k to
        the next group's members (local hand-off if the receiver is this device)."""
        for a, b, lo, hi in self.links(k, m, training):
            if a != self.device:
                continue
            piece = x[lo - x_lo: hi - x_lo]
            if b == self.device:
                self.local[(k, j, lo)] = piece
            else:
                self.send_tensor(b, piece, tagbase + k)

    def gather(self, k: int, j: int, m: int, training: bool) -> torch.Tensor:
        """Receive this device's samples of micro-batch j crossing boundary k."""
        bb = self.boundary_block(k)
        posted, local = [], []
        for a, b, lo, hi in self.links(k, m, training):
            if b != self.device:
                continue
            if a == self.device:
                local.append((lo, self.local.pop((k, j, lo))))
            else:
                posted.append((lo, irecv_tensor((hi - lo,) + self.shapes[bb], self.dtypes[bb],
                                                self.ranks[a], TAG_FWD + k)))
        got = wait_tensors([p for _, p in posted])
        for (lo, _), t in zip(posted, got):
            self.recv_bytes += t.numel() * t.element_size()
            local.append((lo, t))
        local.sort(key=lambda p: p[0])
        return local[0][1] if len(local) == 1 else torch.cat([t for _, t in local])

    def model_s(self, s: int, n: int, phase: str = "fwd") -> float:
        """Modelled seconds of this device's n samples of stage s ("fwd" or "bwd")."""
        if n <= 0:
            return 0.0
        l, r = self.stages[s][0], self.stages[s][1]
        fixed, per = self.times[phase + "_fixed"], self.times[phase + "_per"]
        return fixed[r] - fixed[l] + n * (per[r] - per[l])

