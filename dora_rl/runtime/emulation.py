"""Device and network emulation on one machine.

Compute: a worker runs the real torch code, measures the real time and sleeps out the
difference to the modelled time (the cost model's: FLOPs / device rate, or the device's
measured block times; `CostModel.device_times`). Without emulation (`dora run
--no-emulate`) compute runs at this machine's real speed and is only accounted. When
the real time exceeds the modelled time the emulation is *saturated* (this CPU is
slower than the modelled device): the excess is counted and reported, never hidden.

Network: every transfer reserves time on a shared calendar that all workers on this
machine see (a small memory-mapped file of `free_at` times guarded by `flock`): one
slot per ordered device pair (the route's bottleneck bandwidth), one per shared
medium (its capacity) and two per device (its network interface, send and receive, as
fast as its fastest link: the cost model's interface law; under live bandwidth factors
each link counts at its medium's factor, as the model's dynamics scale it). A message of b bytes from i
to j starts when the pair, every medium its route crosses, i's send and j's receive
interface are free, occupies the pair for b/bw, each medium for b*hops/capacity and the
two interfaces for b/their rate, and is *delivered* (usable by the receiver) at the end
of that occupancy plus the route latency. (A relay's interfaces are not booked: the
emulation keeps one route per device pair, where the cost model routes each flow.) The
bytes themselves move over gloo at once; the receiver waits until the delivery time.
So a link never carries more than its bandwidth, and flows on one medium (or through
one interface) queue behind each other (FIFO per message: two long flows each get about
half). Same formulas as `cost/model.py`.
A plan's schedule (docs/formats.md, "Schedule") ranks the flow classes on a medium:
a sender of rank r marks `active_until` of (medium, r) on the calendar while it is
backlogged, and a sender of a lower rank (a larger number) waits while any more urgent
class on one of its media is marked: strict priority at chunk granularity (a chunk
already booked is not preempted), FIFO within a class; no schedule: FIFO.

Energy: busy (modelled compute) seconds at active power, the rest of the window at
idle power, plus radio energy per byte sent and received."""

from __future__ import annotations

import fcntl
import math
import mmap
import os
import struct
import threading
import time
from dataclasses import dataclass, field

now = time.monotonic   # CLOCK_MONOTONIC: one clock for every process on this machine

SLACK_S = 0.05   # host lateness (a late wake-up, a descheduled thread) a modelled time absorbs
_mark = threading.local()


def sleep_until(t: float) -> None:
    """Sleep until t; the calling thread's modelled time is then at least t (`vtime`)."""
    d = t - now()
    if d > 0:
        time.sleep(d)
    advance(t)


def advance(t: float) -> None:
    """The calling thread learns that a modelled event happened at t (its own section's
    end, an input's delivery, the moment a message it now sends was offered)."""
    if t > getattr(_mark, "t", -math.inf):
        _mark.t = t


def settle() -> None:
    """Forget the thread's modelled time (a command arrived: nothing before it counts)."""
    _mark.t = -math.inf


def vtime(t: float) -> float:
    """The modelled time of real instant t (>= the thread's last modelled event) on the
    calling thread: that event's time if t is at most SLACK_S after it, else t. A thread
    that wakes late from `sleep_until(x)`, or acts late on an input delivered at x, acts
    as the modelled device would, at x: this host's scheduling delays are not charged
    to the emulated device or link (docs/runtime.md, "Modelled time")."""
    m = getattr(_mark, "t", -math.inf)
    return m if 0.0 <= t - m <= SLACK_S else t


def vnow() -> float:
    return vtime(now())


PRIO_LEVELS = 32      # priority ranks per medium the calendar can mark (deeper ranks share the last)
PRIO_GRACE_S = 0.002  # a backlogged flow stays marked this long past its chunk (its next booking's wake-up)


def calendar_slots(n: int, n_media: int) -> int:
    """Slots of a calendar: n*n pairs, one per medium, two per device (send and receive
    interface), then PRIO_LEVELS marks per medium."""
    return n * n + n_media + 2 * n + n_media * PRIO_LEVELS


class Calendar:
    """The shared `free_at` table: n*n pair slots, one slot per medium, then the
    priority marks (`active_until` per medium and rank)."""

    def __init__(self, path: str, n_slots: int, create: bool = False):
        self.path = path
        self.n_slots = n_slots
        size = 8 * n_slots
        if create:
            with open(path, "wb") as f:
                f.write(b"\0" * size)
        self.fd = os.open(path, os.O_RDWR)
        self.mm = mmap.mmap(self.fd, size)
        self.lockfd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)

    def reserve(self, slots_durs: list[tuple[int, float]], earliest: float) -> tuple[float, float]:
        """Atomically book every (slot, duration) from one common start (>= earliest and
        >= each slot's free_at). Returns (start, end of the longest booking)."""
        fcntl.flock(self.lockfd, fcntl.LOCK_EX)
        try:
            start = earliest
            for s, _ in slots_durs:
                f = struct.unpack_from("d", self.mm, 8 * s)[0]
                if f > start:
                    start = f
            end = start
            for s, d in slots_durs:
                struct.pack_into("d", self.mm, 8 * s, start + d)
                end = max(end, start + d)
            return start, end
        finally:
            fcntl.flock(self.lockfd, fcntl.LOCK_UN)

    def read(self, slot: int) -> float:
        return struct.unpack_from("d", self.mm, 8 * slot)[0]

    def mark(self, slots: list[int], until: float) -> None:
        """Raise each slot's time to `until` (a priority mark)."""
        fcntl.flock(self.lockfd, fcntl.LOCK_EX)
        try:
            for s in slots:
                if struct.unpack_from("d", self.mm, 8 * s)[0] < until:
                    struct.pack_into("d", self.mm, 8 * s, until)
        finally:
            fcntl.flock(self.lockfd, fcntl.LOCK_UN)

    def reset(self) -> None:
        fcntl.flock(self.lockfd, fcntl.LOCK_EX)
        try:
            self.mm[:] = b"\0" * (8 * self.n_slots)
        finally:
            fcntl.flock(self.lockfd, fcntl.LOCK_UN)

    def close(self) -> None:
        try:
            self.mm.close()
            os.close(self.fd)
            os.close(self.lockfd)
        except (OSError, ValueError):
            pass


def chunk_bytes(rate: float, nbytes: float) -> float:
    """The chunk a paced message of `nbytes` is sent in at `rate` B/s: ~2 ms at the rate,
    but at least 16 kB, and a message of up to that in one piece. Flows sharing a medium
    interleave chunk by chunk, so each gets a share in proportion to its chunk: with one
    chunk size for every message of 16 kB or more they share fairly, and a small message
    waits for at most one chunk of the others. (Before, a message went in eighths of itself
    of at least 1 kB: a 4 kB answer meeting a 600 kB input on a dilated WiFi was 4 chunks of
    1 kB, each behind a 16 kB one, 0.19-0.30 s instead of ~0.03 s, and the monitor took it
    for a medium at a tenth of its rate.)"""
    return max(rate * 0.002, min(16384.0, float(nbytes)))


class NetEmulator:
    """Paces transfers between devices (indices into the cluster's device list)."""

    def __init__(self, net: dict, calendar_path: str | None):
        # net: {"bw": n x n bytes/s, "lat": n x n s, "hops": n x n [(medium, count)], "medium_bps": [...],
        #       "iface_bps": [per device: its fastest link, bytes/s; 0 = no links]}
        self.bw = net["bw"]
        self.lat = net["lat"]
        self.hops = net["hops"]
        self.medium_bps = net["medium_bps"]
        self.n = len(self.bw)
        self.iface_bps = net.get("iface_bps") or [0.0] * self.n
        self.iface_links = net.get("iface_links")   # per device [(bytes/s, medium or -1)] of its links
        self.iface0 = self.n * self.n + len(self.medium_bps)      # device d: send slot iface0 + 2d, receive + 1
        self.cal = Calendar(calendar_path, calendar_slots(self.n, len(self.medium_bps))) if calendar_path else None
        # [live] bandwidth dynamics: a shared table of per-medium factors (calendar + ".scale", written by
        # the live adapter loop, `set_medium_scale`); every link on a medium scales with it
        self.scale = None
        if calendar_path and os.path.exists(calendar_path + ".scale"):
            fd = os.open(calendar_path + ".scale", os.O_RDONLY)
            self.scale = mmap.mmap(fd, 8 * max(1, len(self.medium_bps)), prot=mmap.PROT_READ)
            os.close(fd)
        from collections import deque
        self.observed = deque(maxlen=4096)   # [live] (dst index, bytes, seconds) per paced message

    def _mf(self, mu: int) -> float:
        if self.scale is None:
            return 1.0
        f = struct.unpack_from("d", self.scale, 8 * mu)[0]
        return f if f > 0 else 1.0

    def _rf(self, i: int, j: int) -> float:
        """Factor of route i -> j: the lowest of the media it crosses."""
        if self.scale is None:
            return 1.0
        return min([self._mf(mu) for mu, _ in self.hops[i][j]] or [1.0])

    def _iface(self, d: int) -> float:
        """Device d's interface rate (bytes/s): its fastest link, each link scaled by its
        medium's live factor (as `Cluster.with_medium_mbps` scales links, and with them the
        cost model's interfaces); the nominal `iface_bps` without dynamics."""
        if self.scale is None or not self.iface_links:
            return self.iface_bps[d]
        return max((b * (self._mf(mu) if mu >= 0 else 1.0) for b, mu in self.iface_links[d]), default=0.0)

    def _slots(self, i: int, j: int, nbytes: float):
        slots = [(i * self.n + j, nbytes / (self.bw[i][j] * self._rf(i, j)))]
        for mu, cnt in self.hops[i][j]:
            slots.append((self.n * self.n + mu, nbytes * cnt / (self.medium_bps[mu] * self._mf(mu))))
        for slot, bps in ((self.iface0 + 2 * i, self._iface(i)), (self.iface0 + 2 * j + 1, self._iface(j))):
            if bps > 0:
                slots.append((slot, nbytes / bps))
        return slots

    def book(self, i: int, j: int, nbytes: float) -> float:
        """Reserve the route i -> j for nbytes in one piece, without waiting (bulk
        transfers such as weights); return the delivery time."""
        if self.cal is None or i == j or nbytes <= 0:
            return 0.0
        _, end = self.cal.reserve(self._slots(i, j, nbytes), now())
        return end + self.lat[i][j]

    def _mark_slot(self, mu: int, rank: int) -> int:
        return self.iface0 + 2 * self.n + mu * PRIO_LEVELS + min(rank, PRIO_LEVELS - 1)

    def _yield_to_urgent(self, ranks: dict) -> None:
        """Wait while a more urgent class is marked backlogged on one of `ranks`' media
        (medium index -> this flow's rank there), and PRIO_GRACE_S past its mark: its
        sender may be about to book its next message (a wake-up away). The medium was
        the urgent class's until its mark, so this flow's modelled time moves there
        (not to the end of the wait)."""
        while True:
            t = now()
            block = max([self.cal.read(self._mark_slot(mu, q)) for mu, r in ranks.items()
                         for q in range(min(r, PRIO_LEVELS - 1))] or [0.0])
            if block + PRIO_GRACE_S <= t:
                return
            time.sleep(block + PRIO_GRACE_S - t)
            advance(block)

    def pace(self, i: int, j: int, nbytes: float, state: dict, ranks: dict | None = None) -> float:
        """Transmit nbytes over i -> j in real time: book chunks of ~2 ms one after
        another, sleeping through each, so that flows sharing a medium interleave
        chunk by chunk (fair sharing). A backlogged flow chains its chunks from the
        previous chunk's end (sleep overshoot does not accumulate). `ranks` (a
        schedule): medium index -> this flow's class rank there; before each chunk the
        flow yields to more urgent marked classes, after it marks its own (kept PRIO_GRACE_S
        past the chunk while `state["backlog"]`: more messages wait behind this one). A
        chunk is booked from the thread's modelled time (`vnow`: the previous chunk's end,
        or when the message was offered, `advance`), so a late wake-up neither delays it
        nor lets a less urgent flow take its turn. Blocks the calling (sender) thread;
        returns the delivery time (end + route latency)."""
        if self.cal is None or i == j or nbytes <= 0:
            return 0.0
        rate = self.bw[i][j] * self._rf(i, j)
        for mu, cnt in self.hops[i][j]:
            rate = min(rate, self.medium_bps[mu] * self._mf(mu) / cnt)
        for bps in (self._iface(i), self._iface(j)):
            if bps > 0:
                rate = min(rate, bps)
        chunk = chunk_bytes(rate, nbytes)
        left = float(nbytes)
        t_begin = None
        while left > 0:
            c = min(chunk, left)
            if ranks:
                self._yield_to_urgent(ranks)
            start, end = self.cal.reserve(self._slots(i, j, c), vnow())
            if ranks:   # backlogged (more of this message, or more queued behind it): keep the mark
                self.cal.mark([self._mark_slot(mu, r) for mu, r in ranks.items()],
                              end + (PRIO_GRACE_S if left > c or state.get("backlog") else 0.0))
            if t_begin is None:
                t_begin = start   # [live] measure from the first chunk's start (not the queueing before it)
            sleep_until(end)
            left -= c
        self.observed.append((j, float(nbytes), max(end - t_begin, 1e-9)))   # [live] measured transfer
        return end + self.lat[i][j]

    def close(self) -> None:
        if self.cal is not None:
            self.cal.close()


@dataclass
class ComputeClock:
    """Stretches compute to a device's modelled time and accounts busy time."""

    emulate: bool = True
    busy_s: float = 0.0          # modelled (emulated) busy seconds, or real seconds without emulation
    real_s: float = 0.0          # real compute seconds
    saturated: int = 0           # sections where the real time exceeded the modelled time
    excess_s: float = 0.0        # total real-minus-modelled time of those sections
    sections: int = 0
    credited_s: float = 0.0      # host lateness absorbed by modelled time (`vtime`)

    def stretch(self, t0: float, model: float) -> None:
        """Call after a compute section that started at t0 (real) and is modelled to take
        `model` seconds: it ends at `vtime(t0) + model` (the device started it when its
        previous section ended or its input was delivered, if this host started it at
        most SLACK_S late; `credited_s` sums that lateness)."""
        real = now() - t0
        self.real_s += real
        self.sections += 1
        if not self.emulate:      # real compute: it ends now (what follows is not backdated into it)
            self.busy_s += real
            advance(now())
            return
        if real > model:
            self.saturated += 1
            self.excess_s += real - model
            self.busy_s += real
            advance(now())
        else:
            start = vtime(t0)
            self.credited_s += t0 - start
            sleep_until(start + model)
            self.busy_s += model

    def snapshot(self) -> dict:
        return {"busy_s": self.busy_s, "real_s": self.real_s, "saturated": self.saturated,
                "excess_s": self.excess_s, "sections": self.sections, "credited_s": self.credited_s}

    def reset(self) -> None:
        self.busy_s = self.real_s = self.excess_s = self.credited_s = 0.0
        self.saturated = self.sections = 0


@dataclass
class Traffic:
    sent_bytes: float = 0.0
    recv_bytes: float = 0.0
    by_peer: dict = field(default_factory=dict)


def energy_j(busy_s: float, window_s: float, idle_w: float, active_w: float,
             radio_bytes: float, radio_j_per_byte: float) -> float:
    """Energy of one device over a window: active while busy, idle otherwise, + radio."""
    busy = min(busy_s, window_s)
    return active_w * busy + idle_w * (window_s - busy) + radio_j_per_byte * radio_bytes


def set_medium_scale(calendar_path: str, factors: list[float]) -> None:
    """[live] Write per-medium bandwidth factors (1.0 = nominal) read by every worker's
    NetEmulator (creates the table; create it before the workers start)."""
    data = struct.pack(f"{max(1, len(factors))}d", *(factors or [1.0]))
    path = calendar_path + ".scale"
    if not os.path.exists(path):
        with open(path, "wb") as f:
            f.write(data)
        return
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, 0)
    finally:
        os.close(fd)
