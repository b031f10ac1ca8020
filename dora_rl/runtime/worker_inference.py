"""A worker's inference command (`InferenceOps`, a mixin of `Worker`).

`op_infer` runs one request: the source injects it (its input arrives as a raw tensor
message after the command, or pickled inside it), every member of a stage runs its
slice of each micro-batch, and the source collects the answer pieces in a background
thread (`_collect_loop`), so that several requests are in flight at once."""

from __future__ import annotations

import threading

import torch

from dora_rl.runtime.comm import TAG_FWD, TAG_INPUT, TAG_REPLY, irecv_tensor, isend_obj, send_obj, wait_tensors
from dora_rl.runtime.emulation import now, settle, vnow

DTYPES = {"float32": torch.float32, "int64": torch.int64, "float64": torch.float64}


class InferenceOps:
    """The `infer` command; uses the `Worker`'s pipeline geometry (`PipelineOps`)."""

    def op_infer(self, cmd: dict) -> None:
        rid, batch = cmd["rid"], cmd["batch"]
        M = self.M
        m = batch // M
        settle()
        t0 = now()
        if self.is_source:
            if "x_meta" in cmd:   # the input follows the command as a raw tensor message
                shape, dt = cmd["x_meta"]
                x = wait_tensors([irecv_tensor(tuple(shape), DTYPES[dt], 0, TAG_INPUT)])[0]
            else:
                x = cmd["x"]
            remote = []
            for j in range(M):
                self.scatter(0, j, m, x[j * m:(j + 1) * m], 0, False)
                for a, _b, lo, hi in self.links(self.S, m, False):
                    if a != self.device:
                        remote.append((j, lo, hi, a))
            entry = {"rid": rid, "t0": t0, "pieces": {}, "need": sum(
                1 for a, b, lo, hi in self.links(self.S, m, False)) * M, "lock": threading.Lock()}
            self.current_entry = entry
            self.collect_q.put((entry, remote))
        if self.my_stage is not None:
            s = self.my_stage
            lo_, hi_ = self.my_range(s, m)
            for j in range(M):
                if hi_ <= lo_:
                    continue
                x = self.gather(s, j, m, False)
                t = now()
                with torch.no_grad():
                    y = self.module(x)
                self.clock.stretch(t, self.model_s(s, hi_ - lo_))
                if s == self.S - 1 and self.is_source:
                    self._add_piece(self.current_entry, j, lo_, y)
                else:
                    self.scatter(s + 1, j, m, y, lo_, False)

    def _add_piece(self, entry: dict, j: int, lo: int, t: torch.Tensor) -> None:
        with entry["lock"]:
            entry["pieces"][(j, lo)] = t
            done = len(entry["pieces"]) == entry["need"]
        if done:
            out = torch.cat([entry["pieces"][k] for k in sorted(entry["pieces"])])
            with self.reply_lock:
                self.pending.add(isend_obj({"rid": entry["rid"], "y": out, "t0": entry["t0"], "t1": vnow()},
                                           0, TAG_REPLY))

    def _collect_loop(self) -> None:
        """Source only: receive answer pieces in request order (several requests in flight)."""
        try:
            while True:
                item = self.collect_q.get()
                if item is None:
                    with self.reply_lock:
                        send_obj({"rid": None}, 0, TAG_REPLY)
                    return
                entry, remote = item
                bb = len(self.shapes) - 1
                posted = [(j, lo, irecv_tensor((hi - lo,) + self.shapes[bb], self.dtypes[bb], self.ranks[a],
                                               TAG_FWD + self.S)) for j, lo, hi, a in remote]
                for j, lo, p in posted:
                    t = wait_tensors([p])[0]
                    self.recv_bytes += t.numel() * t.element_size()
                    self._add_piece(entry, j, lo, t)
        except Exception as e:  # surface to the coordinator instead of dying silently
            try:
                with self.reply_lock:
                    send_obj({"rid": None, "error": f"{self.device}: {e}"}, 0, TAG_REPLY)
            except Exception:
                pass

