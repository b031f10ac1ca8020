"""`dora_rl/Schedule-v0` (envs/schedule.py; docs/learning.md, "ScheduleEnv"): the
scheduler's decisions as an episode, masks for admissible choices, the simulator's
reward, and a seconds-long MaskablePPO run that beats the uniform masked policy."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest

import dora_rl.envs  # noqa: F401  (registers the environments)
from dora_rl.envs.schedule import ALLREDUCE, PHASES, ScheduleEnv, contention_instance
from dora_rl.schedule import Schedule
from dora_rl.sim import simulate


@pytest.fixture(scope="module")
def env():
    return ScheduleEnv(n_instances=8, seed=0)


def _play(env, pick, instance):
    obs, _ = env.reset(options={"instance": instance})
    phases, done = [], False
    while not done:
        phases.append(PHASES[int(np.argmax(obs[:len(PHASES)]))])
        mask = env.action_masks()
        obs, r, done, _, info = env.step(pick(mask))
    return phases, r, info


def test_registered_and_passes_the_checker():
    from gymnasium.utils.env_checker import check_env

    e = gym.make("dora_rl/Schedule-v0", n_instances=2)
    check_env(e.unwrapped)
    assert isinstance(e.unwrapped, ScheduleEnv)


def test_inference_decides_micro_batches_and_priorities_only(env):
    # seed 0 of contention_instance infers (even seeds): no all-reduce, no 1F1B warm-up phase
    phases, _, _ = _play(env, lambda m: 0, 0)
    assert "allreduce" not in phases and "warmup" not in phases and phases[0] == "microbatches"
    phases, _, _ = _play(env, lambda m: 0, 1)       # seed 1 trains, stage 1 is data-parallel
    assert "allreduce" in phases


def test_masks_allow_only_divisors_of_the_batch(env):
    env.reset(options={"instance": 1})
    inst = env.inst
    allowed = np.flatnonzero(env.action_masks())
    assert [inst.ms[a] for a in allowed] == inst.ms
    assert all(inst.cm.workload.batch % m == 0 for m in inst.ms)


def test_the_fifo_choices_earn_zero_and_a_schedule_earns_the_simulated_ratio(env):
    env.reset(options={"instance": 1})
    inst = env.inst
    m0 = inst.plan.microbatches

    def fifo_pick(mask):                            # the plan's own M, no priorities, drain/1 bucket, no warm-up
        ph = PHASES[env.phase]
        return inst.ms.index(m0) if ph == "microbatches" else 0

    _, r, _ = _play(env, fifo_pick, 1)
    assert r == 0.0                                 # ln(FIFO / FIFO): the same simulation
    backward = ALLREDUCE.index(("backward", 2))

    def pick(mask):
        return backward if PHASES[env.phase] == "allreduce" else fifo_pick(mask)

    _, r, info = _play(env, pick, 1)
    want = simulate(inst.cm, inst.plan, Schedule(buckets=2, allreduce_start="backward"), validate=False)
    assert info["schedule"]["allreduce"] == {"buckets": 2, "start": "backward"}
    assert r == pytest.approx(math.log(inst.fifo_obj / want.latency_ms), abs=1e-12)


def test_a_masked_action_is_substituted(env):
    env.reset(options={"instance": 0})
    bad = int(np.flatnonzero(~env.action_masks())[0])
    _, _, _, _, info = env.step(bad)
    assert info.get("substituted") is True


def test_short_maskable_ppo_beats_the_uniform_policy():
    import torch
    from sb3_contrib import MaskablePPO

    torch.set_num_threads(1)
    env = ScheduleEnv(instances=[contention_instance(s)[1:] for s in range(8)])
    model = MaskablePPO("MlpPolicy", env, seed=0, device="cpu", n_steps=256, batch_size=64,
                        learning_rate=1e-3, gamma=1.0)
    model.learn(1024)

    def learned(mask):
        return int(model.predict(env._obs(), deterministic=True, action_masks=mask)[0])

    rng = np.random.default_rng(1)
    policy = np.mean([_play(env, learned, i)[1] for i in range(8)])
    uniform = np.mean([_play(env, lambda m: int(rng.choice(np.flatnonzero(m))), i)[1]
                       for i in range(8) for _ in range(8)])
    assert policy > uniform + 0.02, (policy, uniform)
