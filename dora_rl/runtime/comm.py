"""Messaging helpers over one `torch.distributed` (gloo) process group.

Everything the runtime sends is either a *tensor message* (a small float64 header
`[deliver_at, nbytes]` followed by the payload tensor, whose shape and dtype the
receiver already knows from the plan) or a *pickled object* (an int64 length
followed by uint8 bytes) for control and weights. Tags keep the channels apart, so
messages between one pair of ranks on one tag arrive in the order they were sent.

Sample layout: a micro-batch of `m` samples is split over a stage's devices as
contiguous slices in share order (`sample_edges`); device i of group A sends device j
of group B exactly the overlap of their slices (`overlaps`), as the cost model does."""

from __future__ import annotations

import io
import itertools
import pickle
import queue
import socket
import threading

import torch
import torch.distributed as dist

from dora_rl.plan import sample_edges  # noqa: F401  (re-exported for the workers)
from dora_rl.runtime.emulation import advance, sleep_until, vnow

# tags: control from the coordinator, replies to it, weights, probe flows, and one
# tag per pipeline boundary for activations (forward) and gradients (backward)
TAG_CTRL = 1
TAG_REPLY = 2
TAG_ACK = 3
TAG_WEIGHTS = 4
TAG_PROBE = 5
TAG_RING = 6
TAG_INPUT = 7      # request inputs, coordinator -> source, as raw tensor messages
TAG_DRAIN = 8      # training: stage 0 has run its last backward (the pipeline drained)
TAG_FWD = 100      # + boundary k
TAG_BWD = 400      # + boundary k


def flow_class(tag: int, stage: int | None) -> str | None:
    """The schedule's flow class of a message on `tag` sent by a worker of `stage`:
    act<k> (forward across boundary k), grad<k> (backward across k), ar<s> (all-reduce
    of stage s); None for anything else (probes)."""
    if TAG_FWD <= tag < TAG_BWD:
        return f"act{tag - TAG_FWD}"
    if TAG_BWD <= tag < TAG_BWD + 300:
        return f"grad{tag - TAG_BWD}"
    if tag == TAG_RING and stage is not None:
        return f"ar{stage}"
    return None


def free_port() -> int:
    """A TCP port free on this machine now (the group's rendezvous, a rebuilt group's)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _to_bytes(obj) -> torch.Tensor:
    buf = io.BytesIO()
    torch.save(obj, buf, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    return torch.frombuffer(bytearray(buf.getbuffer()), dtype=torch.uint8)


def isend_obj(obj, dst: int, tag: int, book=None) -> list:
    """Send a picklable object (tensors allowed) without blocking; returns the works
    (keep them, and their buffers, until `.wait()`). `book(nbytes) -> deliver_at`
    paces it through the network emulation (None: delivered at once)."""
    data = _to_bytes(obj)
    deliver = book(data.numel()) if book is not None else 0.0
    head = torch.tensor([deliver, float(data.numel())], dtype=torch.float64)
    return [(dist.isend(head, dst, tag=tag), head), (dist.isend(data, dst, tag=tag), data)]


def send_obj(obj, dst: int, tag: int, book=None) -> None:
    for w, _ in isend_obj(obj, dst, tag, book):
        w.wait()


def recv_obj(src: int, tag: int, with_meta: bool = False):
    """Receive an object sent by `isend_obj`; waits until its delivery time."""
    head = torch.empty(2, dtype=torch.float64)
    dist.recv(head, src, tag=tag)
    n = int(head[1].item())
    data = torch.empty(n, dtype=torch.uint8)
    dist.recv(data, src, tag=tag)
    sleep_until(float(head[0].item()))
    obj = torch.load(io.BytesIO(data.numpy().tobytes()), weights_only=False)
    return (obj, n) if with_meta else obj


def isend_tensor(t: torch.Tensor, dst: int, tag: int, deliver: float) -> list:
    """A tensor whose shape/dtype the receiver knows: header [deliver_at, nbytes] + payload."""
    t = t.detach().contiguous()
    head = torch.tensor([deliver, float(t.numel() * t.element_size())], dtype=torch.float64)
    return [(dist.isend(head, dst, tag=tag), head), (dist.isend(t, dst, tag=tag), t)]


def irecv_tensor(shape, dtype, src: int, tag: int):
    """Post the receive of one tensor message; returns (works, header, tensor)."""
    head = torch.empty(2, dtype=torch.float64)
    t = torch.empty(shape, dtype=dtype)
    return [dist.irecv(head, src, tag=tag), dist.irecv(t, src, tag=tag)], head, t


def wait_tensors(posted) -> list[torch.Tensor]:
    """Wait for posted receives, then until the latest delivery time; return tensors."""
    latest = 0.0
    out = []
    for works, head, t in posted:
        for w in works:
            w.wait()
        latest = max(latest, float(head[0].item()))
        out.append(t)
    sleep_until(latest)
    return out


def overlaps(a_devs, a_edges, b_devs, b_edges):
    """[(a_dev, b_dev, lo, hi)] sample ranges that group A's member sends to group B's
    member (global sample indices within the micro-batch), non-empty only."""
    out = []
    for i, da in enumerate(a_devs):
        for j, db in enumerate(b_devs):
            lo = max(a_edges[i], b_edges[j])
            hi = min(a_edges[i + 1], b_edges[j + 1])
            if hi > lo:
                out.append((da, db, lo, hi))
    return out


class Pending:
    """Outstanding non-blocking sends: keeps buffers alive, reaps finished ones.
    `on_error(exc)`: what a failed send turns into (the fault-tolerant runtime: find the
    dead worker and recover); without it the gloo error propagates."""

    def __init__(self, on_error=None):
        self.items: list = []
        self.lock = threading.Lock()
        self.on_error = on_error

    def add(self, works) -> None:
        with self.lock:
            self.items.extend(works)
            if len(self.items) > 64:
                self.items = [(w, b) for w, b in self.items if not w.is_completed()]

    def wait(self) -> None:
        with self.lock:
            items, self.items = self.items, []
        for w, _ in items:
            try:
                w.wait()
            except RuntimeError as e:   # gloo: the pair to a peer closed or reset
                if self.on_error is None:
                    raise
                self.on_error(e)


class Transmitter:
    """Outgoing tensor messages of one worker. Unpaced they are sent at once; paced
    (`pace`: the network is emulated), one sender thread per destination paces them (so compute overlaps
    communication, and flows to different peers proceed in parallel, as on a NIC). `ranks` (a plan's
    schedule): medium index -> the message class's rank there; a destination's queue serves the most
    urgent class first (FIFO within a class, and FIFO without a schedule). A message carries the
    sending thread's modelled time (`emulation.vnow`), from which its pacing starts."""

    def __init__(self, net, my_idx: int, ranks: dict, names: list, pace: bool):
        self.net, self.me, self.ranks, self.names = net, my_idx, ranks, names
        self.pace = pace
        self.pending = Pending()
        self.queues: dict = {}
        self.threads: list = []
        self.errors: list = []
        self.seq = itertools.count()

    def send(self, dst: str, t: torch.Tensor, tag: int, ranks: dict | None = None) -> None:
        t = t.detach().contiguous()
        if not self.pace:
            self.pending.add(isend_tensor(t, self.ranks[dst], tag, 0.0))
            return
        with self.pending.lock:   # the training all-reduce thread sends beside the main thread
            q = self.queues.get(dst)
            if q is None:
                q = self.queues[dst] = queue.PriorityQueue()
                th = threading.Thread(target=self._loop, args=(dst, q), daemon=True)
                th.start()
                self.threads.append(th)
        q.put((min(ranks.values(), default=0) if ranks else 0, next(self.seq), (t, tag, ranks, vnow())))

    def _loop(self, dst: str, q: queue.Queue) -> None:
        j = self.names.index(dst)
        state: dict = {}
        while True:
            _, _, item = q.get()
            try:
                if item is None:
                    return
                t, tag, ranks, offered = item
                advance(offered)                  # the message exists from the sender's modelled time
                state["backlog"] = not q.empty()
                deliver = self.net.pace(self.me, j, t.numel() * t.element_size(), state, ranks)
                self.pending.add(isend_tensor(t, self.ranks[dst], tag, deliver))
            except Exception as e:   # re-raised by flush(); the worker turns it into a RuntimeFault
                self.errors.append(e)
            finally:
                q.task_done()

    def flush(self) -> None:
        """Wait until every queued message is paced out and handed to the peer."""
        for q in list(self.queues.values()):
            q.join()
        self.pending.wait()
        if self.errors:
            raise self.errors[0]

    def close(self) -> None:
        for q in self.queues.values():
            q.put((float("inf"), next(self.seq), None))
