"""The stage policy's DAgger labels: each continues the plan it is credited with."""

from __future__ import annotations

import numpy as np
import pytest

from dora_rl.errors import NoFeasiblePlan


@pytest.fixture(scope="module")
def policy():
    import torch
    from sb3_contrib import MaskablePPO

    from dora_rl.envs.stage import StageEnv
    from dora_rl.learning.stage_policy import StagePolicy

    torch.manual_seed(0)
    return MaskablePPO(StagePolicy, StageEnv(max_devices=8, max_blocks=32), n_steps=32, batch_size=32, seed=0,
                       device="cpu").policy


def test_polish_keeps_a_fixed_prefix():
    from dora_rl.learning.search import index_stages, polish, search_key
    from dora_rl.learning.stage_training import FAMILIES, fastest_plan, make_env

    env = make_env(FAMILIES["small"], seed=4)
    checked = 0
    for i in range(40):
        inst = env.source.instance(i)
        f = fastest_plan(inst)
        if f is None or inst.n < 3:
            continue
        free = polish(inst, f)
        if len(free[0].stages) < 2:
            continue
        st = index_stages(inst, free[0])
        try:            # a worse start whose first stage the polish must keep: the two stages swapped
            M, stg, m = inst.finish([(st[0][0], st[0][1], st[1][2]), (st[1][0], st[-1][1], st[0][2])])
        except NoFeasiblePlan:
            continue
        from dora_rl.cost.qoe import utility
        start = (inst.to_plan(stg, M), m, utility(inst.cost, m, inst.ref_obj))
        kept = [(st[0][0], st[0][1], st[1][2])]
        out = polish(inst, start, fixed=(kept, ()))
        got = index_stages(inst, out[0])
        assert got[:1] == kept
        assert search_key(out, inst.objective) <= search_key(start, inst.objective)
        checked += 1
    assert checked >= 3


def test_dagger_label_continues_the_plan_it_is_credited_with(policy):
    # each label comes with the plan that justifies it; that plan must start with the
    # episode's partial plan and continue with the label (a free polish used to credit an
    # action with a plan whose earlier stages it had rewritten)
    from dora_rl.learning.stage_actor import StageNumpyActor
    from dora_rl.learning.stage_training import FAMILIES, label_by_rollout, make_env, next_action

    actor = StageNumpyActor(policy)
    env = make_env(FAMILIES["small"], seed=5)
    labels = 0
    for i in range(12):     # until 3 labelled states: each label polishes top_k plans (seconds each)
        if labels >= 3:
            break
        env.reset(seed=0, options={"scenario": env.source.instance(i)})
        while not env.done:
            allowed = np.flatnonzero(env._mask)
            if len(allowed) > 1:
                a, res, eq = label_by_rollout(actor, env, top_k=2)
                assert env._mask[a] and a in eq and all(env._mask[x] for x in eq)
                assert next_action(env, res[0]) == a
                labels += 1
            if labels >= 3:
                break
            env.advance(int(allowed[0]))
    assert labels >= 3


def test_group_members_may_join_in_any_order():
    from dora_rl.learning.stage_training import group_adds

    D, Bm = 8, 32           # add d is action D * Bm + d = 256 + d
    assert group_adds([3, 1, 5], 0, D, Bm) == (259, 257, 261)
    assert group_adds([3, 1, 5], 1, D, Bm) == (257, 261)
    assert group_adds([3, 1, 5], 2, D, Bm) == ()            # the last member closes the stage
    assert group_adds([4], 0, D, Bm) == ()


def test_a_replayed_group_labels_every_order_that_builds_it():
    from dora_rl.envs.instance import Instance
    from dora_rl.envs.stage import StageEnv
    from dora_rl.learning.stage_training import Data, replay_plan
    from dora_rl.synthetic import random_scenario

    for seed in range(40):
        sc = random_scenario(np.random.default_rng(seed), max_devices=4, min_devices=3)
        inst = Instance(sc, 8)
        try:
            M, st, m = inst.finish([(0, inst.B, (0, 1))])
            m2 = inst.finish([(0, inst.B, (1, 0))])[2]
        except NoFeasiblePlan:
            continue
        env = StageEnv(max_devices=8, max_blocks=32)
        data = Data()
        if not replay_plan(env, inst, inst.to_plan(st, M), data, 0.0):
            continue
        # the first decision is "add 0"; "add 1" (then close on 0) builds the same stage
        assert data.acts[0] == 8 * 32 + 0 and data.equiv[0] == (8 * 32 + 0, 8 * 32 + 1)
        obj = sc.qoe.objective          # and the cost model agrees: the two orders cost the same
        assert m2.objective(obj) == pytest.approx(m.objective(obj), rel=1e-3)
        return
    pytest.fail("no 3-4 device instance replayed a 2-device group")
