"""The stage policy's fixed preference for the fastest two-stage completion (latency objectives only)."""

from __future__ import annotations

import numpy as np


def test_rule_term_ranks_closes_by_the_two_stage_estimate_on_latency_only():
    import torch

    from dora_rl.learning.stage_policy import NGL, rule_term

    x = np.zeros((1, 2, 3, 7))
    x[..., 5] = [[0.5, 0.2, 0.9], [0.1, 0.4, 0.3]]       # log latency estimates of 6 closes
    lat, energy = np.zeros((1, NGL)), np.zeros((1, NGL))
    energy[0, -1] = 1.0                                    # the energy-objective flag
    r = rule_term(x, lat, np)
    # -estimate: the close (1, 0) with the lowest estimate 0.1 gets the highest term
    assert np.unravel_index(np.argmax(r[0]), r[0].shape) == (1, 0)
    assert np.allclose(r[0], -x[0, ..., 5])
    assert np.allclose(rule_term(x, energy, np), 0.0)
    t = rule_term(torch.as_tensor(x), torch.as_tensor(lat), torch).numpy()
    assert np.allclose(t, r)
