"""Whole-sample lower bounds for the QoE masks: the least time a group can compute a micro-batch in.

Why: a data-parallel stage does not split its micro-batch of m samples by rate; every
member computes a whole number n_i of samples (`CostModel.realized`: n_i >= 1 when the
group has at most m members, sum n_i = m), so the stage takes back x dF x max_i n_i / g_i
(dF the stage's FLOPs per sample, g_i the member's rate). The rate split m / sum g_i can
be far below it (two devices and m = 2: the slower one alone sets the time). The least of
max_i n_i / g_i over every split of the m samples among a set of devices (n_i >= 0) is the
m-th smallest of the values k / g_i (k = 1..m, every device i): a split whose slowest
member needs t must give each member at most floor(t g_i) samples, and the number of
values k / g_i <= t is exactly sum_i floor(t g_i). A member that must get a sample adds
t >= 1 / g_i. Subsets only make the least larger, so the least over a set is a lower
bound for every group drawn from it (docs/learning.md, "QoE-aware masks")."""

from __future__ import annotations

import numpy as np


def sample_times(rates, m: int) -> np.ndarray:
    """(len(rates), m): k / g for k = 1..m, one row per device (the time a device of rate g
    needs for k samples of one FLOP each)."""
    g = np.asarray(rates, dtype=float)
    return np.arange(1, m + 1, dtype=float)[None, :] / np.maximum(g, 1e-300)[:, None]


def least_split(rates, m: int) -> float:
    """The least, over every split of m whole samples among devices of `rates` (n_i >= 0),
    of max_i n_i / g_i: the m-th smallest k / g_i (inf without devices)."""
    if m < 1:
        return 0.0
    v = sample_times(rates, m).ravel()
    if len(v) < m:
        return np.inf
    return float(np.partition(v, m - 1)[m - 1])


def least_split_rows(base_rates, row_rates, m: int) -> np.ndarray:
    """Per row i: `least_split` of base_rates + [row_rates[i]] (a group plus one device)."""
    row = np.asarray(row_rates, dtype=float)
    if m < 1:
        return np.zeros(len(row))
    b = np.sort(sample_times(base_rates, m).ravel())[:m]
    v = np.concatenate([np.broadcast_to(b, (len(row), len(b))), sample_times(row, m)], axis=1)
    return np.partition(v, m - 1, axis=1)[:, m - 1]


def least_split_without(rates, ids, excl: np.ndarray, m: int) -> np.ndarray:
    """Per row of `excl` (device ids, (rows, j)): `least_split` of the devices `ids` (with
    `rates`) other than those of the row (inf when fewer than one device is left)."""
    excl = np.asarray(excl, dtype=np.int64).reshape(len(excl), -1)
    ids = np.asarray(ids, dtype=np.int64)
    if m < 1:
        return np.zeros(len(excl))
    if not len(ids):
        return np.full(len(excl), np.inf)
    v = sample_times(rates, m).ravel()
    own = np.repeat(ids, m)
    keep_n = min(len(v), (excl.shape[1] + 1) * m)          # excluding j devices removes at most j m values
    first = np.argpartition(v, keep_n - 1)[:keep_n] if keep_n < len(v) else np.arange(len(v))
    first = first[np.argsort(v[first], kind="stable")]
    vals, owners = v[first], own[first]
    keep = np.ones((len(excl), len(first)), dtype=bool)
    for c in range(excl.shape[1]):
        keep &= owners[None, :] != excl[:, c:c + 1]
    cs = np.cumsum(keep, axis=1)
    hit = cs >= m
    has = hit.any(axis=1)
    return np.where(has, vals[hit.argmax(axis=1)], np.inf)
