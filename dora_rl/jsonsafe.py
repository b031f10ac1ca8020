"""`json_safe`: turn results (numpy scalars, inf, nan, tuple keys) into plain JSON
values. One helper for every JSON the package writes (CLI --json, run logs)."""

from __future__ import annotations

import math

import numpy as np


def json_safe(o):
    """nan -> None, ±inf -> "inf"/"-inf", numpy scalars -> Python, keys -> str."""
    if isinstance(o, (np.floating, np.integer)):
        o = o.item()
    if isinstance(o, float):
        return None if math.isnan(o) else (str(o) if math.isinf(o) else o)
    if isinstance(o, dict):
        return {str(k): json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [json_safe(v) for v in o]
    return o
