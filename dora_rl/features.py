"""Observation helpers shared by the environments: the clip bound and a clipped log.

Every observation feature is a log-ratio clipped to [-CLIP, CLIP] so one network serves
models and clusters of any scale."""

from __future__ import annotations

import math

CLIP = 10.0


def clip_log(x: float) -> float:
    """Natural log clipped to [-CLIP, CLIP]; -CLIP for x <= 0, CLIP for inf."""
    if x <= 0:
        return -CLIP
    if x == math.inf:
        return CLIP
    v = math.log(x)
    return CLIP if v > CLIP else (-CLIP if v < -CLIP else v)
