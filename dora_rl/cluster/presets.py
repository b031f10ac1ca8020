"""Device presets: typical edge devices as `Device` field values.

Why: scenarios, the synthetic generator and tests all need believable devices whose
speed, memory and power differ the way real ones do (10-100x). Every figure, its
source and whether it is verified is in docs/hardware.md; the sourced figures come
from ../shared/reference/edge-hardware.md.

Rule for `gflops` (EFFECTIVE sustained FP32 rate for DNN inference, not peak):
- GPU devices (Jetsons, laptop, edge server): 40% of the derived FP32 peak
  (cores x 2 x clock), the middle of the 30-60% range reported for Jetson-class boards;
- CPU-only devices with a measured sustained benchmark (Raspberry Pi 4, HPL): the
  measured figure itself, since a sustained benchmark is already "effective";
- devices without a retrieved figure: a placeholder, marked unverified in the docs.
"""

from __future__ import annotations

from dora_rl.errors import ClusterError

EFFECTIVE_FRACTION = 0.40   # effective / derived FP32 peak, for GPU devices

# name -> Device fields (everything except `name` and `battery_level`).
DEVICE_PRESETS: dict[str, dict] = {
    # Galaxy S25 Ultra class. active ~7 W derived from 6% of a ~19.4 Wh battery in 10 min.
    "phone": dict(kind="phone", gflops=300.0, memory_gb=8.0, idle_w=0.6, active_w=7.0,
                  battery_wh=19.4, radio_j_per_mb=0.05),
    # RTX 4050 laptop: 34.1 W measured GPU load + ~6 W rest of the system.
    "laptop": dict(kind="laptop", gflops=3000.0, memory_gb=16.0, idle_w=6.0, active_w=40.0,
                   battery_wh=60.0, radio_j_per_mb=0.05),
    # TV SoC only (the panel's power is not charged to the DNN).
    "smart_tv": dict(kind="smart_tv", gflops=25.0, memory_gb=3.0, idle_w=1.5, active_w=5.0,
                     battery_wh=None, radio_j_per_mb=0.05),
    "smart_speaker": dict(kind="smart_speaker", gflops=5.0, memory_gb=1.0, idle_w=2.0, active_w=4.0,
                          battery_wh=None, radio_j_per_mb=0.05),
    # HPL ~8 GFLOPS (64-bit OS); idle ~2.2 W, high load 5.1-6.3 W (midpoint 5.7).
    "rpi4": dict(kind="rpi4", gflops=8.0, memory_gb=4.0, idle_w=2.2, active_w=5.7,
                 battery_wh=None, radio_j_per_mb=0.05),
    "rpi5": dict(kind="rpi5", gflops=30.0, memory_gb=8.0, idle_w=2.7, active_w=7.0,
                 battery_wh=None, radio_j_per_mb=0.05),
    # 128 cores x 2 x 0.921 GHz = 236 GFLOPS peak -> 40% = 94.
    "jetson_nano": dict(kind="jetson_nano", gflops=94.0, memory_gb=4.0, idle_w=1.9, active_w=6.8,
                        battery_wh=None, radio_j_per_mb=0.05),
    # 15 W mode: 1024 x 2 x 0.625 GHz = 1280 GFLOPS peak -> 40% = 512; board idle 2.6 W.
    "jetson_orin_nano": dict(kind="jetson_orin_nano", gflops=512.0, memory_gb=8.0, idle_w=2.6,
                             active_w=15.0, battery_wh=None, radio_j_per_mb=0.05),
    # 64GB: 2048 x 2 x 1.3 GHz = 5325 GFLOPS peak (clock unverified) -> 40% = 2130; max 60 W.
    "jetson_agx_orin": dict(kind="jetson_agx_orin", gflops=2130.0, memory_gb=64.0, idle_w=8.0,
                            active_w=60.0, battery_wh=None, radio_j_per_mb=0.05),
    # A small roadside/closet server with a T4-class GPU (all figures unverified).
    "edge_server": dict(kind="edge_server", gflops=3200.0, memory_gb=64.0, idle_w=60.0,
                        active_w=180.0, battery_wh=None, radio_j_per_mb=0.02),
    # Orin NX 16GB (1024 CUDA cores at ~0.918 GHz, clock unverified): 1880 GFLOPS peak -> 40% = 752;
    # 10-25 W modes (unverified); idle 4 W unverified.
    "jetson_orin_nx": dict(kind="jetson_orin_nx", gflops=752.0, memory_gb=16.0, idle_w=4.0, active_w=20.0,
                           battery_wh=None, radio_j_per_mb=0.05),
    # A smart camera built on an Orin Nano 8GB in its 7 W mode:
    # 1024 x 2 x 0.42 GHz = 860 GFLOPS peak -> 40% = 344.
    "camera": dict(kind="camera", gflops=344.0, memory_gb=8.0, idle_w=2.6, active_w=7.0,
                   battery_wh=None, radio_j_per_mb=0.05),
    # No kind given: a placeholder device (every figure unverified), the defaults of `Device`.
    "generic": dict(kind="generic", gflops=100.0, memory_gb=4.0, idle_w=1.0, active_w=5.0,
                    battery_wh=None, radio_j_per_mb=0.05),
}
FIGURES = ("gflops", "memory_gb", "idle_w", "active_w", "battery_wh", "radio_j_per_mb")


def preset_kinds() -> list[str]:
    """The preset names, in table order."""
    return list(DEVICE_PRESETS)


def preset_figures(kind: str, where: str = "device") -> dict:
    """The figures of preset `kind` (a copy), or a ClusterError listing the known kinds."""
    if not isinstance(kind, str) or kind not in DEVICE_PRESETS:
        raise ClusterError(f"{where}: unknown kind {kind!r}; known kinds: {', '.join(DEVICE_PRESETS)} "
                           "(or give no kind: 'generic')")
    return dict(DEVICE_PRESETS[kind])
