"""Random heterogeneous clusters for training and testing planners.

Why: a learned planner must generalise to clusters it never saw, and exact planners
need many small varied instances to be checked against. `random_cluster` draws devices
from the presets with jittered speed, memory and power, and connects them the way a
home or street deployment is wired:

- WiFi devices form a clique on one shared medium `wifi` (capacity 100-600 Mbps;
  each pair's link gets 50-100% of it, 2-6 ms), so concurrent transfers contend;
- wired devices hang off a hub (an edge server if there is one) on dedicated ~940 Mbps
  GbE links (0.2-0.5 ms); the hub also joins the WiFi clique (the access point is
  bridged onto the LAN), so the cluster is always connected.

With `shared_media=False` the same topology is built with every link dedicated (no
medium). Everything is drawn from `rng`, in an order that does not depend on
`shared_media`, so a seed gives the same devices and bandwidths either way.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dora_rl.cluster.model import Cluster, Device, Link, Medium, device_preset
from dora_rl.cluster.presets import DEVICE_PRESETS
from dora_rl.errors import ClusterError

WIFI = "wifi"
ETHERNET_MBPS = 940.0                      # 1 GbE minus ~5% TCP/IP + Ethernet overhead
WIRELESS_ONLY = {"phone", "laptop", "smart_speaker", "smart_tv"}   # never on a cable here
WIRED_ONLY = {"edge_server"}
# default draw weights: household and Jetson-class devices common, servers rare
KIND_WEIGHTS = {"phone": 2.0, "laptop": 1.5, "smart_tv": 1.0, "smart_speaker": 1.0, "rpi4": 1.5, "rpi5": 1.5,
                "jetson_nano": 1.5, "jetson_orin_nano": 2.0, "jetson_agx_orin": 1.0, "edge_server": 0.5,
                "camera": 1.5}
DEFAULT_KINDS = list(KIND_WEIGHTS)   # what `random_cluster` draws from unless told (fixed: seeds keep their clusters)


def _jitter_device(rng: np.random.Generator, kind: str, name: str) -> Device:
    """A preset with speed x lognormal(0, 0.2), memory and power x U(0.8, 1.2)."""
    p = DEVICE_PRESETS[kind]
    speed = float(rng.lognormal(0.0, 0.2))
    mem = float(rng.uniform(0.8, 1.2))
    pw_idle, pw_active = (float(x) for x in rng.uniform(0.85, 1.15, size=2))
    level = float(rng.uniform(0.3, 1.0))
    idle = round(p["idle_w"] * pw_idle, 3)
    active = max(round(p["active_w"] * pw_active, 3), idle)
    over = dict(gflops=round(p["gflops"] * speed, 3), memory_gb=round(p["memory_gb"] * mem, 3),
                idle_w=idle, active_w=active)
    if p["battery_wh"] is not None:
        over["battery_level"] = round(level, 3)
    return device_preset(kind, name, **over)


def random_cluster(rng: np.random.Generator, n_devices: int | None = None, min_devices: int = 2,
                   max_devices: int = 16, *, shared_media: bool = True, kinds: Sequence[str] | None = None,
                   wired_prob: float = 0.4, wifi_mbps: tuple[float, float] = (100.0, 600.0)) -> Cluster:
    """A random connected cluster of `n_devices` (default: uniform in
    [min_devices, max_devices]) devices drawn from `kinds` (default: every preset,
    weighted by `KIND_WEIGHTS`).

    Devices are named `<kind>_<k>` (k counts from 0 per kind). Phones, laptops, TVs
    and speakers are always on WiFi, edge servers always wired, the rest wired with
    probability `wired_prob`."""
    if n_devices is None:
        if not (1 <= min_devices <= max_devices):
            raise ClusterError(f"random_cluster: need 1 <= min_devices ({min_devices}) <= max_devices ({max_devices})")
        n_devices = int(rng.integers(min_devices, max_devices + 1))
    if int(n_devices) < 1:
        raise ClusterError(f"random_cluster: n_devices must be >= 1, got {n_devices}")
    kinds = list(kinds) if kinds is not None else list(DEFAULT_KINDS)
    bad = [k for k in kinds if k not in DEVICE_PRESETS]
    if bad or not kinds:
        raise ClusterError(f"random_cluster: unknown kind(s) {bad or '(none given)'}; "
                           f"known: {', '.join(DEVICE_PRESETS)}")
    if not (0.0 <= wired_prob <= 1.0):
        raise ClusterError(f"random_cluster: wired_prob must be in [0, 1], got {wired_prob}")
    lo, hi = wifi_mbps
    if not (0 < lo <= hi):
        raise ClusterError(f"random_cluster: wifi_mbps must be (low, high) with 0 < low <= high, got {wifi_mbps}")

    w = np.array([KIND_WEIGHTS.get(k, 1.0) for k in kinds], dtype=float)
    w /= w.sum()
    devices: list[Device] = []
    wired: list[bool] = []
    counts: dict[str, int] = {}
    for _ in range(int(n_devices)):
        kind = kinds[int(rng.choice(len(kinds), p=w))]
        k = counts.get(kind, 0)
        counts[kind] = k + 1
        devices.append(_jitter_device(rng, kind, f"{kind}_{k}"))
        coin = bool(rng.random() < wired_prob)
        wired.append(kind in WIRED_ONLY or (kind not in WIRELESS_ONLY and coin))

    wifi_cap = round(float(rng.uniform(lo, hi)), 1)
    wired_idx = [i for i, w in enumerate(wired) if w]
    hub = next((i for i in wired_idx if devices[i].kind == "edge_server"), wired_idx[0] if wired_idx else None)
    wifi_side = [i for i, w in enumerate(wired) if not w]
    if wifi_side and hub is not None:
        wifi_side = sorted(wifi_side + [hub])      # the hub reaches WiFi devices through the AP

    links: list[Link] = []
    names = [d.name for d in devices]
    for x, i in enumerate(wifi_side):
        for j in wifi_side[x + 1:]:
            mbps = round(wifi_cap * float(rng.uniform(0.5, 1.0)), 1)
            lat = round(float(rng.uniform(2.0, 6.0)), 2)
            links.append(Link(names[i], names[j], mbps, lat, WIFI if shared_media else None))
    for i in wired_idx:
        if i == hub:
            continue
        lat = round(float(rng.uniform(0.2, 0.5)), 2)
        links.append(Link(names[hub], names[i], ETHERNET_MBPS, lat, None))

    media = {WIFI: Medium(WIFI, wifi_cap)} if shared_media and any(ln.medium == WIFI for ln in links) else {}
    return Cluster(devices, links, media)
