"""Environments: checkers, determinism, masks, expressiveness, speed (fast: < 30 s)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import dora_rl.envs  # noqa: F401  registers the environments
from dora_rl.envs.partition import PartitionEnv, actions_for_plan
from dora_rl.synthetic import random_scenario


def _rollout(env, seed, rng=None, policy="first"):
    obs, _ = env.reset(seed=seed)
    traj = [obs]
    done = False
    r = 0.0
    info = {}
    while not done:
        mask = env.action_masks()
        allowed = np.flatnonzero(mask)
        a = int(allowed[0]) if rng is None else int(rng.choice(allowed))
        obs, r, term, trunc, info = env.step(a)
        done = term or trunc
        traj.append(obs)
    return traj, r, info


def test_registered_ids():
    for env_id in ("dora_rl/Partition-v0", "dora_rl/Adapt-v0", "dora_rl/Partition-smart_home-v0",
                   "dora_rl/Partition-traffic_analytics-v0", "dora_rl/Partition-edge_cluster-v0",
                   "dora_rl/Adapt-smart_home-v0"):
        assert env_id in gym.registry, env_id


@pytest.mark.parametrize("env_id", ["dora_rl/Partition-v0", "dora_rl/Partition-traffic_analytics-v0"])
def test_partition_checkers(env_id):
    env = gym.make(env_id).unwrapped
    gym_check_env(env, skip_render_check=True)
    sb3_check_env(gym.make(env_id).unwrapped, warn=False)


def test_adapt_checkers():
    gym_check_env(gym.make("dora_rl/Adapt-traffic_analytics-v0").unwrapped, skip_render_check=True)
    sb3_check_env(gym.make("dora_rl/Adapt-v0").unwrapped, warn=False)


@pytest.mark.parametrize("env_id", ["dora_rl/Partition-v0", "dora_rl/Adapt-v0"])
def test_deterministic_under_seed(env_id):
    a, b = gym.make(env_id).unwrapped, gym.make(env_id).unwrapped
    for seed in (0, 7):
        ra, rb = np.random.default_rng(seed), np.random.default_rng(seed)
        obs_a, _ = a.reset(seed=seed)
        obs_b, _ = b.reset(seed=seed)
        for _ in range(200):
            for k in obs_a:
                np.testing.assert_array_equal(obs_a[k], obs_b[k])
            ma, mb = a.action_masks(), b.action_masks()
            np.testing.assert_array_equal(ma, mb)
            act = int(ra.choice(np.flatnonzero(ma)))
            assert act == int(rb.choice(np.flatnonzero(mb)))
            obs_a, r1, t1, u1, _ = a.step(act)
            obs_b, r2, t2, u2, _ = b.step(act)
            assert (r1, t1, u1) == (r2, t2, u2)
            if t1 or u1:
                break


def test_masks_never_allow_infeasible_plans():
    """Random masked rollouts on many synthetic instances: every finished plan is valid
    and fits in memory (up to 8 devices)."""
    env = PartitionEnv(seed=3)
    rng = np.random.default_rng(0)
    for seed in range(300):
        _, r, info = _rollout(env, seed, rng)
        plan, m, u = env.result
        inst = env.inst
        inst.cost.validate(plan)
        assert m.feasible, (seed, m.violations, plan.to_dict())
        assert not info["masked_action"]
        assert r == pytest.approx(u)


@pytest.mark.parametrize("preset", ["smart_home", "traffic_analytics", "edge_cluster"])
def test_masks_on_presets(preset):
    env = gym.make(f"dora_rl/Partition-{preset}-v0").unwrapped
    rng = np.random.default_rng(1)
    for seed in range(30):
        _rollout(env, seed, rng)
        assert env.result[1].feasible


def test_masked_action_is_replaced_not_applied():
    env = PartitionEnv(seed=0)
    env.reset(seed=0)
    bad = int(np.flatnonzero(~env.action_masks())[0])
    _, _, _, _, info = env.step(bad)
    assert info["masked_action"]


def test_plan_shares_are_proportional_shares():
    """Groups get exactly the planners' shares (realized in whole samples)."""
    from dora_rl.planners.base import proportional_shares

    env = PartitionEnv(seed=9, gen_kwargs={"kind": "training"})
    rng = np.random.default_rng(2)
    groups = 0
    for seed in range(150):
        _rollout(env, seed, rng)
        plan, m, _ = env.result
        cost = env.inst.cost
        M, S = plan.microbatches, len(plan.stages)
        for s, st in enumerate(plan.stages):
            devs = [cost.cluster.index[d] for d in st.devices]
            groups += len(devs) > 1
            want = proportional_shares(cost, devs, st.start, st.end, cost.workload.batch / M, min(M, S - s))
            assert want is not None and list(st.shares) == pytest.approx(want)
    assert groups > 0


@pytest.mark.parametrize("preset", ["smart_home", "traffic_analytics"])
def test_dora_plan_is_expressible(preset):
    """The action space reaches the `dora` partitioner's plan (data-parallel groups included)."""
    from dora_rl.planners import run_planner
    from dora_rl.scenario import load_scenario

    sc = load_scenario(preset)
    res = run_planner("dora", sc)
    env = PartitionEnv(scenario=sc)
    env.reset(seed=0)
    for a in actions_for_plan(res.plan, sc):
        assert env.action_masks()[a], (a, env.render())
        _, _, done, _, info = env.step(a)
        if done:
            break
    assert done
    obj = sc.qoe.objective
    assert env.result[1].objective(obj) == pytest.approx(res.metrics.objective(obj), rel=1e-9)


def test_group_actions_build_data_parallel_stage():
    # seed 14: after opening the first stage, three devices may join its group
    sc = random_scenario(np.random.default_rng(14), max_devices=6, min_devices=4)
    env = PartitionEnv(scenario=sc)
    env.reset(seed=0)
    D = env.max_devices
    first = int(np.flatnonzero(env.action_masks()[1 + D:])[0])
    env.step(1 + D + first)
    adds = np.flatnonzero(env.action_masks()[1:1 + D])
    assert len(adds) > 0
    env.step(1 + int(adds[0]))
    assert len(env.group) == 2 and int(adds[0]) in env.group and first in env.group
    assert not env.action_masks()[1 + first] and not env.action_masks()[1 + int(adds[0])]   # no device twice


def test_adapt_rewards_and_switch_cost():
    env = gym.make("dora_rl/Adapt-traffic_analytics-v0").unwrapped
    env.reset(seed=0)
    cur = env.current
    _, r_keep, _, _, info = env.step(cur)
    assert not info["switched"] and info["moved_frac"] == 0.0
    other = (cur + 1) % env.dyn.K
    _, r_sw, _, _, info = env.step(other)
    # the switch is charged the weights the table says must move (> 0: the plans differ)
    assert info["switched"] and info["moved_frac"] == pytest.approx(env.dyn.moved[cur, other])
    assert info["moved_frac"] > 0 and r_sw < r_keep


def test_adapt_masked_action_keeps_the_current_plan_and_is_flagged():
    from dora_rl.envs.adapt import AdaptEnv

    env = AdaptEnv(scenario="traffic_analytics", horizon=4)
    env.reset(seed=0)
    if env.dyn.K >= env.K:
        pytest.skip("no padded slot on this scenario")
    before = env.current
    _, _, _, _, info = env.step(env.K - 1)              # a padded (masked) slot
    assert info["masked_action"] and info["plan_index"] == before and not info["switched"]
    other = (before + 1) % env.dyn.K
    _, _, _, _, info = env.step(other)                   # a valid action is applied as before
    assert not info["masked_action"] and info["plan_index"] == other


def test_adapt_observation_comes_from_the_shared_builder(monkeypatch):
    """AdaptEnv's observation is `adapt_obs.build_observation`'s (the deployed agent uses it too)."""
    import dora_rl.envs.adapt as adapt_mod
    from dora_rl.envs import adapt_obs

    calls = []

    def spy(situation, candidates, slots):
        calls.append(len(candidates))
        return adapt_obs.build_observation(situation, candidates, slots)

    monkeypatch.setattr(adapt_mod, "build_observation", spy)
    env = adapt_mod.AdaptEnv(scenario="smart_home", horizon=4)
    obs, _ = env.reset(seed=1)
    assert calls == [env.dyn.K]
    assert obs["candidates"].shape == (env.K, adapt_obs.NC) and obs["global"].shape == (adapt_obs.NGA,)
    assert obs["action_mask"].sum() == env.dyn.K


def test_lower_layers_never_import_learning():
    """planners/, envs/, cost/ (and the planner registry listing its names) leave dora_rl.learning alone."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys, dora_rl, dora_rl.cost, dora_rl.planners, dora_rl.envs, dora_rl.envs.partition, "
            "dora_rl.envs.adapt; from dora_rl.planners import planner_names; assert 'ppo' in planner_names(); "
            "print(sorted(m for m in sys.modules if m.startswith('dora_rl.learning')))")
    root = str(Path(dora_rl.envs.__file__).resolve().parents[2])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": root})
    assert out.stdout.strip() == "[]", out.stdout
