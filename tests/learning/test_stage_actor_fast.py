"""The numpy actor's shortcuts equal the torch policy, and the planner's env gives the plans a
gym-reset env gives: attention without the padding term when no device is padding (checked
here on padded observations, where the term is kept, and on unpadded ones), and greedy
decoding from `StageEnv.planning` against decoding from `StageEnv.reset` on a fresh Instance."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dora_rl.envs.instance import Instance
from dora_rl.envs.stage import StageEnv
from dora_rl.synthetic import random_scenario


@pytest.fixture(scope="module")
def policy():
    import torch
    from sb3_contrib import MaskablePPO

    from dora_rl.learning.stage_policy import StagePolicy

    torch.manual_seed(1)
    model = MaskablePPO(StagePolicy, StageEnv(max_devices=8, max_blocks=32), n_steps=32, batch_size=32, seed=1,
                        device="cpu")
    with torch.no_grad():          # weights away from the near-zero init, so the logits differ per action
        for p in model.policy.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model.policy


def _scenario(n, B, seed):
    i = 0
    while True:
        sc = random_scenario(np.random.default_rng([seed, i]), max_devices=n, min_devices=n, n_blocks=B)
        if Instance(sc, n).completable:
            return sc
        i += 1


@pytest.mark.parametrize("n,D,B", [(3, 3, 12), (3, 7, 12), (16, 16, 40), (16, 21, 40)])
def test_numpy_actor_equals_torch_with_and_without_padding(policy, n, D, B):
    import torch

    from dora_rl.learning.stage_policy import StageNumpyActor

    actor = StageNumpyActor(policy)
    env = StageEnv(scenario=_scenario(n, B, 5), max_devices=D, max_blocks=B)
    obs, _ = env.reset(seed=0)
    mask = env.action_masks()
    assert (obs["device_mask"] == 0).any() == (D > n)
    lg = actor.logits(obs, mask)
    with torch.no_grad():
        lt, _ = policy.any_size({k: torch.as_tensor(v)[None] for k, v in obs.items()})
    assert np.isneginf(lg[~mask]).all()
    assert np.allclose(lt[0].numpy()[mask], lg[mask], rtol=0, atol=1e-4)
    assert np.ptp(lg[mask]) > 1e-3 or mask.sum() == 1


@pytest.mark.parametrize("n,B", [(2, 10), (5, 30), (16, 60), (24, 80)])
def test_greedy_plans_from_the_planning_env_equal_a_reset_envs(policy, n, B):
    from dora_rl.learning.search import greedy_complete
    from dora_rl.learning.stage_policy import StageNumpyActor
    from dora_rl.learning.stage_search import decode

    actor = StageNumpyActor(policy)
    for seed in range(3):
        sc = _scenario(n, B, 100 + seed)
        fast = decode(actor, StageEnv.planning(Instance(sc, n)), "greedy")
        env = StageEnv(max_devices=n, max_blocks=B, pool_size=1)
        env.reset(seed=0, options={"scenario": Instance(sc, n)})
        ref = greedy_complete(actor, [env])[0]
        assert json.dumps(fast[0].to_dict()) == json.dumps(ref[0].to_dict())
        assert fast[2] == ref[2]
