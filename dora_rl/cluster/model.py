"""Devices, links and shared media, held in a `networkx` graph.

A `Cluster` also precomputes, once, everything the cost model needs per device pair:
the route (fastest path by latency + serialisation of 1 MB), its bottleneck
bandwidth, its summed latency and the media its hops cross. Links on one medium
share that medium's capacity: that is contention (docs/cost-model.md)."""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, field, fields

import networkx as nx
import numpy as np

from dora_rl.cluster.presets import DEVICE_PRESETS, FIGURES, preset_figures
from dora_rl.errors import ClusterError

MB = 1e6  # bytes; all "mbps" are megabits per second (1e6 bit/s), "GB" is 1e9 bytes


@dataclass(frozen=True)
class Device:
    """One edge device. `gflops` is the *effective* sustained FP32 rate for DNN work
    (not the spec-sheet peak); `battery_wh` is None for mains-powered devices."""

    name: str
    kind: str = "generic"
    gflops: float = 100.0
    memory_gb: float = 4.0
    idle_w: float = 1.0
    active_w: float = 5.0
    battery_wh: float | None = None
    battery_level: float = 1.0
    radio_j_per_mb: float = 0.05   # radio energy per MB sent or received
    profile: str | None = None     # measured block times (a device profile JSON; the scenario loads it)

    @property
    def flops_per_s(self) -> float:
        return self.gflops * 1e9

    @property
    def memory_bytes(self) -> float:
        return self.memory_gb * 1e9

    @property
    def on_battery(self) -> bool:
        return self.battery_wh is not None

    def validate(self) -> None:
        n = self.name
        if not isinstance(n, str) or not n:
            raise ClusterError("device: 'name' must be a non-empty string")
        preset_figures(self.kind, f"device {n!r}")   # an unknown kind lists the known ones
        if self.profile is not None and not (isinstance(self.profile, str) and self.profile):
            raise ClusterError(f"device {n!r}: 'profile' must be a path to a device profile JSON, got {self.profile!r}")
        for key in ("gflops", "memory_gb"):
            v = getattr(self, key)
            if not _finite_pos(v):
                raise ClusterError(f"device {n!r}: {key!r} must be a positive number, got {v!r}")
        for key in ("idle_w", "active_w", "radio_j_per_mb"):
            v = getattr(self, key)
            if not (_finite(v) and v >= 0):
                raise ClusterError(f"device {n!r}: {key!r} must be a number >= 0, got {v!r}")
        if self.active_w < self.idle_w:
            raise ClusterError(f"device {n!r}: active_w ({self.active_w}) is below idle_w ({self.idle_w}); "
                               "active power includes idle power, so set active_w >= idle_w")
        if self.battery_wh is not None and not _finite_pos(self.battery_wh):
            raise ClusterError(f"device {n!r}: 'battery_wh' must be a positive number or omitted, "
                               f"got {self.battery_wh!r}")
        if not (_finite(self.battery_level) and 0 < self.battery_level <= 1):
            raise ClusterError(f"device {n!r}: 'battery_level' must be in (0, 1], got {self.battery_level!r}")


def device_preset(kind: str, name: str | None = None, **overrides) -> Device:
    """A `Device` built from preset `kind`, named `name` (default: the kind), with any
    field overridden by keyword (e.g. `battery_level=0.5`, `gflops=200`)."""
    if kind not in DEVICE_PRESETS:
        raise ClusterError(f"unknown device preset {kind!r}; known kinds: {', '.join(DEVICE_PRESETS)}")
    allowed = {f.name for f in fields(Device)} - {"name"}
    unknown = set(overrides) - allowed
    if unknown:
        raise ClusterError(f"device_preset({kind!r}): unknown field(s) {', '.join(sorted(unknown))}; "
                           f"allowed: {', '.join(sorted(allowed))}")
    dev = Device(name=name or kind, **{**DEVICE_PRESETS[kind], **overrides})
    dev.validate()
    return dev


@dataclass(frozen=True)
class Link:
    """A bidirectional link. `medium` names the shared channel it sits on (None: a
    dedicated link that contends with nothing)."""

    a: str
    b: str
    mbps: float
    latency_ms: float = 1.0
    medium: str | None = None

    @property
    def bytes_per_s(self) -> float:
        return self.mbps * MB / 8


@dataclass(frozen=True)
class Medium:
    """A shared channel (a WiFi channel, a switch uplink) of `mbps` total capacity."""

    name: str
    mbps: float

    @property
    def bytes_per_s(self) -> float:
        return self.mbps * MB / 8


def fill_from_kind(row: dict) -> dict:
    """A device row (YAML) with every figure it does not give taken from the preset of
    its `kind` (no kind: 'generic'); an unknown kind is a ClusterError listing the known
    ones. `battery_wh: null` given explicitly means mains power even for a battery kind."""
    row = dict(row)
    row["name"] = str(row["name"])
    kind = row.setdefault("kind", "generic")
    preset = preset_figures(kind, f"device {row['name']!r}")
    for key in FIGURES:
        if key not in row:
            row[key] = preset[key]
    return row


def _finite(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _finite_pos(v) -> bool:
    return _finite(v) and v > 0


@dataclass
class Cluster:
    """Devices + links + media. Construction validates and precomputes routes."""

    devices: list[Device]
    links: list[Link]
    media: dict[str, Medium] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.devices:
            raise ClusterError("cluster: 'devices' is empty; declare at least one device")
        names = [d.name for d in self.devices]
        seen = set()
        for d in self.devices:
            d.validate()
            if d.name in seen:
                raise ClusterError(f"cluster: device name {d.name!r} appears twice; device names must be unique")
            seen.add(d.name)
        self.index = {n: i for i, n in enumerate(names)}
        for name, m in self.media.items():
            if not _finite_pos(m.mbps):
                raise ClusterError(f"medium {name!r}: 'mbps' must be a positive number, got {m.mbps!r}")
        g = nx.Graph()
        for d in self.devices:
            g.add_node(d.name, device=d)
        for ln in self.links:
            for end in (ln.a, ln.b):
                if end not in self.index:
                    raise ClusterError(f"link {ln.a}-{ln.b}: unknown device {end!r}; "
                                       f"known devices: {', '.join(names)}")
            if ln.a == ln.b:
                raise ClusterError(f"link {ln.a}-{ln.b}: a link must join two different devices")
            if not _finite_pos(ln.mbps):
                raise ClusterError(f"link {ln.a}-{ln.b}: 'mbps' must be a positive number, got {ln.mbps!r}")
            if not (_finite(ln.latency_ms) and ln.latency_ms >= 0):
                raise ClusterError(f"link {ln.a}-{ln.b}: 'latency_ms' must be a number >= 0, got {ln.latency_ms!r}")
            if ln.medium is not None and ln.medium not in self.media:
                raise ClusterError(f"link {ln.a}-{ln.b}: unknown medium {ln.medium!r}; declare it under 'media' "
                                   f"(known: {', '.join(self.media) or 'none'})")
            if g.has_edge(ln.a, ln.b):
                raise ClusterError(f"link {ln.a}-{ln.b} is declared twice; keep one")
            g.add_edge(ln.a, ln.b, link=ln,
                       weight=ln.latency_ms / 1e3 + 1e6 / ln.bytes_per_s)  # latency + 1 MB serialisation
        if not nx.is_connected(g):
            comps = [sorted(c) for c in nx.connected_components(g)]
            raise ClusterError("cluster is disconnected: groups " + " | ".join(",".join(c) for c in comps)
                               + "; add links so that every device can reach every other")
        self.graph = g
        self._precompute()

    # ------------------------------------------------------------------
    def _precompute(self) -> None:
        n = len(self.devices)
        self.media_names = list(self.media)
        midx = {m: i for i, m in enumerate(self.media_names)}
        self.medium_bps = np.array([self.media[m].bytes_per_s for m in self.media_names], dtype=float)
        self.rate = np.array([d.flops_per_s for d in self.devices])
        self.mem = np.array([d.memory_bytes for d in self.devices])
        self.idle_w = np.array([d.idle_w for d in self.devices])
        self.active_w = np.array([d.active_w for d in self.devices])
        self.radio_j_per_byte = np.array([d.radio_j_per_mb / MB for d in self.devices])
        # per link (as `links`): its ends' indices (L, 2), latency (s) and medium index (-1: none)
        ends = [(self.index[ln.a], self.index[ln.b]) for ln in self.links]
        self.link_ends = np.array(ends, dtype=np.int64).reshape(-1, 2)
        self.link_lat = np.array([ln.latency_ms for ln in self.links], dtype=float) / 1e3
        self.link_medium = np.array([-1 if ln.medium is None else midx[ln.medium] for ln in self.links], dtype=np.int64)
        self.bw = np.full((n, n), math.inf)       # bottleneck bytes/s of the route i -> j
        self.lat = np.zeros((n, n))               # summed latency (s) of the route
        # hops[i][j]: tuple of (medium index, count) for media the route crosses
        self.hops: list[list[tuple[tuple[int, int], ...]]] = [[() for _ in range(n)] for _ in range(n)]
        paths = dict(nx.all_pairs_dijkstra_path(self.graph, weight="weight"))
        names = [d.name for d in self.devices]
        for i, a in enumerate(names):
            for j, b in enumerate(names):
                if i == j:
                    continue
                p = paths[a][b]
                bw, lat, counts = math.inf, 0.0, {}
                for u, v in zip(p, p[1:]):
                    ln: Link = self.graph.edges[u, v]["link"]
                    bw = min(bw, ln.bytes_per_s)
                    lat += ln.latency_ms / 1e3
                    if ln.medium is not None:
                        counts[midx[ln.medium]] = counts.get(midx[ln.medium], 0) + 1
                self.bw[i, j] = bw
                self.lat[i, j] = lat
                self.hops[i][j] = tuple(sorted(counts.items()))
        # python-list mirrors for the hot path (numpy scalar access is slow)
        self.bw_l = self.bw.tolist()
        self.lat_l = self.lat.tolist()
        self.rate_l = self.rate.tolist()

    # ------------------------------------------------------------------
    @property
    def n(self) -> int:
        return len(self.devices)

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.devices]

    def interface_bps(self) -> list[float]:
        """Per device, the capacity of its network interface in each direction: its
        fastest link's bytes/s (0.0 for a device without links). The cost model's
        interface law (docs/cost-model.md) and the runtime's emulation both use it."""
        return [max((b for b, _ in links), default=0.0) for links in self.interface_links()]

    def interface_links(self) -> list[list[tuple[float, int]]]:
        """Per device, (bytes/s, medium index or -1) of each of its links: its interface is
        as fast as the fastest, and when a medium's bandwidth moves its links move with it
        (`with_medium_mbps`), so the interface does too (the runtime's emulation scales
        these by the live medium factors)."""
        midx = {m: i for i, m in enumerate(self.media_names)}
        out: list[list[tuple[float, int]]] = [[] for _ in range(self.n)]
        for ln in self.links:
            for d in (self.index[ln.a], self.index[ln.b]):
                out[d].append((ln.bytes_per_s, midx.get(ln.medium, -1) if ln.medium else -1))
        return out

    def device(self, name: str) -> Device:
        if name not in self.index:
            raise ClusterError(f"unknown device {name!r}; known devices: {', '.join(self.names)}")
        return self.devices[self.index[name]]

    def link(self, a: str, b: str) -> Link | None:
        e = self.graph.get_edge_data(a, b)
        return None if e is None else e["link"]

    def with_medium_mbps(self, medium: str, mbps: float) -> "Cluster":
        """A copy with one medium's capacity changed and its links scaled by the same
        factor: how bandwidth dynamics are applied."""
        if medium not in self.media:
            raise ClusterError(f"unknown medium {medium!r}; known: {', '.join(self.media) or 'none'}")
        media = dict(self.media)
        old = media[medium].mbps
        media[medium] = Medium(medium, mbps)
        scale = mbps / old
        links = [Link(ln.a, ln.b, ln.mbps * scale, ln.latency_ms, ln.medium) if ln.medium == medium else ln
                 for ln in self.links]
        return Cluster(list(self.devices), links, media)

    def with_battery_levels(self, levels: dict[str, float]) -> "Cluster":
        devs = [Device(**{**asdict(d), "battery_level": levels.get(d.name, d.battery_level)}) for d in self.devices]
        return Cluster(devs, list(self.links), dict(self.media))

    # --- dict I/O (the scenario YAML's devices/links/media sections) -------
    def to_dict(self) -> dict:
        devs = []
        for d in self.devices:
            row = {k: v for k, v in asdict(d).items() if v is not None}
            if d.battery_wh is None:
                row.pop("battery_level", None)
                if preset_figures(d.kind)["battery_wh"] is not None:
                    row["battery_wh"] = None     # mains, although the kind's preset has a battery
            devs.append(row)
        links = [{k: v for k, v in asdict(ln).items() if not (k == "medium" and v is None)} for ln in self.links]
        return {"devices": devs, "links": links, "media": {m.name: {"mbps": m.mbps} for m in self.media.values()}}

    @classmethod
    def from_dict(cls, d: dict) -> "Cluster":
        if not isinstance(d, dict):
            raise ClusterError("cluster: expected a mapping with 'devices', 'links' and optional 'media'")
        devs_in = d.get("devices")
        if not isinstance(devs_in, list) or not devs_in:
            raise ClusterError("'devices' must be a non-empty list of "
                               "{name, kind, gflops, memory_gb, idle_w, active_w, ...}")
        allowed = set(Device.__dataclass_fields__)
        devices = []
        for i, row in enumerate(devs_in):
            if not isinstance(row, dict) or "name" not in row:
                raise ClusterError(f"devices[{i}]: each device must be a mapping with at least a 'name'")
            unknown = set(row) - allowed
            if unknown:
                raise ClusterError(f"device {row['name']!r}: unknown field(s) {', '.join(sorted(unknown))}; "
                                   f"allowed: {', '.join(sorted(allowed))}")
            devices.append(Device(**fill_from_kind(row)))
        links_in = d.get("links") or []
        if not isinstance(links_in, list):
            raise ClusterError("'links' must be a list of {a, b, mbps, latency_ms, medium}")
        links = []
        for i, row in enumerate(links_in):
            if not isinstance(row, dict) or not {"a", "b", "mbps"} <= set(row):
                raise ClusterError(f"links[{i}]: each link needs 'a', 'b' and 'mbps'")
            unknown = set(row) - set(Link.__dataclass_fields__)
            if unknown:
                raise ClusterError(f"links[{i}]: unknown field(s) {', '.join(sorted(unknown))}")
            links.append(Link(str(row["a"]), str(row["b"]), row["mbps"], row.get("latency_ms", 1.0),
                              None if row.get("medium") is None else str(row["medium"])))
        media_in = d.get("media") or {}
        if not isinstance(media_in, dict):
            raise ClusterError("'media' must be a mapping name -> {mbps: N}")
        media = {}
        for name, row in media_in.items():
            if not isinstance(row, dict) or "mbps" not in row:
                raise ClusterError(f"medium {name!r}: needs 'mbps' (its total shared capacity)")
            media[str(name)] = Medium(str(name), row["mbps"])
        if len(devices) > 1 and not links:
            raise ClusterError("'links' is empty but there are several devices; add links between them")
        return cls(devices, links, media)
