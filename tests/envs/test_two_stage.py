"""StageEnv's two-stage completion columns and the lookahead feature they make."""

from __future__ import annotations

import math

import numpy as np

from dora_rl.errors import NoFeasiblePlan


def test_two_stage_estimate_is_the_cost_models_latency_of_that_plan():
    # the lookahead's feature 5 estimates the latency of "[0, j + 1) on d, the rest on the
    # fastest other device e": the cost model's own stage times and transfers, so it is that
    # plan's latency except where two transfers share a medium or a route changes with the
    # bytes (then within a factor the test bounds)
    from dora_rl.envs.instance import NG
    from dora_rl.envs.stage import BLK_LOOKAHEAD, DEV_LOOKAHEAD
    from dora_rl.learning.stage_policy import lookahead
    from dora_rl.learning.stage_training import FAMILIES, make_env

    env = make_env(FAMILIES["small"], seed=3)
    ratios = []
    for i in range(25):
        inst = env.source.instance(i)
        obs, _ = env.reset(seed=0, options={"scenario": inst})
        x = lookahead(obs["devices"][:, list(DEV_LOOKAHEAD)].astype(float),
                      obs["blocks"][:, list(BLK_LOOKAHEAD)].astype(float),
                      obs["global"][NG:NG + 10].astype(float))
        order = sorted(range(inst.n), key=lambda d: -inst.rate[d])
        for d in range(inst.n):
            e = order[0] if order[0] != d else order[1]
            for j in range(inst.B - 1):
                try:
                    _, _, m = inst.finish([(0, j + 1, (d,)), (j + 1, inst.B, (e,))])
                except NoFeasiblePlan:
                    continue
                ratios.append(math.exp(x[d, j, 5]) * inst.tstar / (m.objective("latency") / 1e3))
    r = np.array(ratios)
    assert len(r) > 300
    assert abs(np.median(r) - 1.0) < 1e-3
    assert np.mean(np.abs(r - 1.0) < 0.02) > 0.85
    assert r.min() > 0.5 and r.max() < 2.0
