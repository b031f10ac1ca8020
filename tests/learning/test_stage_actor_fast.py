"""The numpy actor's shortcuts equal the torch policy, and the planner's env gives the plans a
gym-reset env gives: attention without the padding term when no device is padding (checked
here on padded observations, where the term is kept, and on unpadded ones), and greedy
decoding from `StageEnv.planning` against decoding from `StageEnv.reset` on a fresh Instance."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from dora_rl.envs.instance import Instance
from dora_rl.envs.stage import BLOCK_FEATURES, DEVICE_FEATURES, StageEnv
from dora_rl.features import CLIP
from dora_rl.synthetic import random_scenario


@pytest.fixture(scope="module", params=[{}, {"add_lookahead": True}, {"objective_term": True},
                                        {"objective_term": [0.0, 3.0]}],
                ids=["plain", "add_lookahead", "objective_term", "objective_term_fixed"])
def policy(request):
    import torch
    from sb3_contrib import MaskablePPO

    from dora_rl.learning.stage_policy import StagePolicy

    torch.manual_seed(1)
    model = MaskablePPO(StagePolicy, StageEnv(max_devices=8, max_blocks=32), n_steps=32, batch_size=32, seed=1,
                        device="cpu", policy_kwargs=request.param)
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

    from dora_rl.learning.stage_actor import StageNumpyActor

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


def test_masked_fit_logits_and_gradients_equal_the_full_tables(policy):
    """The fit's sparse lookahead term (`any_size(obs, mask)`: computed at the allowed closes
    only) gives the same logits (`sparse=False`) at every allowed action and the same gradients of a masked
    cross-entropy as the full (N, D, Bm, K) table, on a batch of states of two instances."""
    import torch

    obs, masks = [], []
    for seed, n in ((3, 5), (4, 7)):
        env = StageEnv(scenario=_scenario(n, 20, seed), max_devices=8, max_blocks=20)
        o, _ = env.reset(seed=0)
        while not env.done:
            m = env.action_masks()
            obs.append(o)
            masks.append(m)
            o, *_ = env.step(int(np.flatnonzero(m)[-1]))
    batch = {k: torch.as_tensor(np.stack([o[k] for o in obs])) for k in obs[0]}
    mask = torch.as_tensor(np.stack(masks))
    assert (~mask[:, :8 * 20]).any() and mask[:, :8 * 20].any()
    out = []
    for sparse in (False, True):
        policy.zero_grad()
        lg, v = policy.any_size(batch, mask, sparse)
        lg = lg.masked_fill(~mask, -1e9)
        (lg.logsumexp(-1) - lg.max(-1).values + v).mean().backward()
        out.append((lg.detach(), {k: p.grad.clone() for k, p in policy.named_parameters() if p.grad is not None}))
    (full, gf), (sparse, gs) = out
    assert torch.allclose(full[mask], sparse[mask], atol=1e-5)
    assert gf.keys() == gs.keys() and any(g.abs().max() > 0 for g in gf.values())
    for k in gf:
        assert torch.allclose(gf[k], gs[k], atol=1e-5), k


def test_sb3_entry_points_equal_the_flat_path_and_take_any_size(policy):
    """PPO's rollout (`forward`), update (`evaluate_actions`) and `predict_values` go through
    the masked any-size path: the same log-probabilities, entropies and values as SB3's flat
    path on the policy's own padding (8 x 32), and the same policy object evaluates states
    of a 24-device, 60-block instance (another family's PPO model shares it)."""
    import torch
    from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy as Base

    def states(n, B, D, Bm):
        env = StageEnv(scenario=_scenario(n, B, 3), max_devices=D, max_blocks=Bm)
        o, _ = env.reset(seed=0)
        obs, masks, acts = [], [], []
        while not env.done:
            m = env.action_masks()
            a = int(np.flatnonzero(m)[len(acts) % int(m.sum())])
            obs.append(o)
            masks.append(m)
            acts.append(a)
            o, *_ = env.step(a)
        return ({k: torch.as_tensor(np.stack([x[k] for x in obs])) for k in obs[0]}, np.stack(masks),
                torch.as_tensor(acts))

    obs, masks, acts = states(6, 20, 8, 32)
    with torch.no_grad():
        v, lp, ent = policy.evaluate_actions(obs, acts, masks)
        vb, lpb, entb = Base.evaluate_actions(policy, obs, acts, masks)
        if policy.action_net.obj_term:   # the flat path has no mask to set the ending closes' bar: the full table's
            lg = policy.any_size(obs, torch.as_tensor(masks), sparse=False)[0].masked_fill(~torch.as_tensor(masks),
                                                                                           -torch.inf)
            lpb = lg.log_softmax(-1).gather(1, acts[:, None])[:, 0]
            entb = -(lg.softmax(-1) * lg.log_softmax(-1)).nan_to_num().sum(-1)
        assert torch.allclose(lp, lpb, atol=1e-5) and torch.allclose(ent, entb, atol=1e-5)
        assert torch.allclose(v, vb, atol=1e-6) and torch.allclose(policy.predict_values(obs), vb, atol=1e-6)
        a, v2, lp2 = policy(obs, deterministic=True, action_masks=masks)
        flat = lg.argmax(-1) if policy.action_net.obj_term else Base.forward(policy, obs, True, masks)[0]
        assert torch.equal(a, flat) and torch.allclose(v2, v)
        assert masks[np.arange(len(a)), a.numpy()].all()
        big, bmasks, bacts = states(24, 60, 24, 60)
        v, lp, ent = policy.evaluate_actions(big, bacts, bmasks)
        assert v.shape == (len(bacts), 1) and torch.isfinite(lp).all() and (lp <= 0).all()
        a, _, _ = policy(big, action_masks=bmasks)
        assert bmasks[np.arange(len(a)), a.numpy()].all()


def test_numpy_actor_equals_torch_where_adds_are_allowed(policy):
    """The add logits (with the add lookahead, when the policy has it) in both actors, on
    states where data-parallel adds are allowed, in groups of 0, 1 and 2 members."""
    import torch

    from dora_rl.learning.stage_actor import StageNumpyActor

    actor, seen = StageNumpyActor(policy), set()
    for seed in range(40):
        env = StageEnv(scenario=_scenario(6, 16, seed), max_devices=8, max_blocks=16)
        obs, _ = env.reset(seed=0)
        while not env.done:
            mask = env.action_masks()
            adds = np.flatnonzero(mask[8 * 16:])
            if len(adds):
                seen.add(len(env.group))
                with torch.no_grad():
                    lt, _ = policy.any_size({k: torch.as_tensor(v)[None] for k, v in obs.items()},
                                            torch.as_tensor(mask)[None])
                assert np.abs(lt[0].numpy()[mask] - actor.logits(obs, mask)[mask]).max() < 1e-3
            a = 8 * 16 + adds[0] if len(adds) else int(np.flatnonzero(mask)[0])
            obs, *_ = env.step(a)
    assert {0, 1, 2} <= seen


def test_add_lookahead_pairs_each_device_with_the_fastest_other_free_device():
    """By hand: devices 0-2 free with log joined rates (lrj) 0.5, 0.2, -1, device 3 in use
    and faster; no pending group. The add of d is closed by the fastest other free device,
    so the joint rate is e^lrj_d + e^lrj_partner (0 and 1 pair with each other, 2 with 0),
    and the log stage time over T* (column 0) is min over candidate ends of log work - log
    joint rate; the ends that are not candidates are ignored. The lookahead is symmetric in
    d and its partner."""
    import torch

    from dora_rl.features import CLIP
    from dora_rl.learning.stage_policy import NBL, NDL, NGL, add_lookahead

    rng = np.random.default_rng(0)
    xd = rng.normal(size=(4, NDL + 1)) * 0.3
    xd[:, 0] = [0.5, 0.2, -1.0, 2.0]
    xd[:, NDL] = [1, 1, 1, 0]
    xb = rng.normal(size=(5, NBL + 1)) * 0.3
    xb[:, 0] = [-3.0, 0.1, 0.4, 0.9, 1.3]             # log work to each end
    xb[:, NBL] = [0, 1, 1, 1, 1]                       # end 0 is not a candidate
    xg = rng.normal(size=NGL + 1) * 0.3
    xg[3] = 0.0                                         # one micro-batch
    xg[NGL] = -CLIP                                     # no pending group (its rate e^-CLIP)
    joint = np.array([np.exp(0.5) + np.exp(0.2), np.exp(0.2) + np.exp(0.5), np.exp(-1.0) + np.exp(0.5)])
    got = add_lookahead(xd, xb, xg, np)
    assert got.shape == (4, 5) and np.isfinite(got).all()
    assert np.allclose(got[:3, 0], 0.1 - np.log(joint - np.exp(-CLIP)), atol=1e-9)
    assert np.allclose(got[0], got[1])                  # mutual partners: the same stage, the same lookahead
    assert not np.allclose(got[2], got[0])
    tg = add_lookahead(*(torch.as_tensor(x, dtype=torch.float64)[None] for x in (xd, xb, xg)), torch)
    assert np.allclose(tg[0].numpy(), got, atol=1e-9)


@pytest.mark.parametrize("n,B", [(2, 10), (5, 30), (16, 60), (24, 80)])
def test_greedy_plans_from_the_planning_env_equal_a_reset_envs(policy, n, B):
    from dora_rl.learning.search import greedy_complete
    from dora_rl.learning.stage_actor import StageNumpyActor
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


def _first_states(tag: int, n: int = 20):
    """(Instance, StageEnv, first observation) of up to n random completable latency instances."""
    for i in range(n):
        sc = random_scenario(np.random.default_rng([tag, i]), max_devices=5, n_blocks=10, objective="latency")
        inst = Instance(sc, sc.cluster.n)
        if inst.completable:
            env = StageEnv(max_devices=inst.n, max_blocks=inst.B, pool_size=1, qoe_masks=False)
            yield inst, env, env.reset(options={"scenario": inst})[0]


def test_end_objective_ranks_whole_model_closes_by_their_latency():
    """The objective term's input: for a latency objective, the difference of two devices'
    `end_objective` at the first state is the log of the ratio of their whole-model plans'
    latencies (cost model), and the best such device gets 0."""
    from dora_rl.learning.stage_policy import end_objective, head_columns

    pairs = 0
    for inst, env, obs in _first_states(11):
        eo = end_objective(*head_columns({k: v.astype("float64") for k, v in obs.items()}))
        ds = [d for d in range(inst.n) if env.action_masks()[d * inst.B + inst.B - 1]]
        lat = {d: math.log(inst.finish([(0, inst.B, (d,))])[2].latency_ms) for d in ds}
        assert eo.min() == 0.0
        for a in ds:
            for b in ds:
                pairs += a < b
                assert eo[a] - eo[b] == pytest.approx(lat[a] - lat[b], abs=1e-3)
    assert pairs >= 20


def test_end_objective_is_measured_against_the_best_allowed_end():
    """With the closes' mask, `end_objective` is the unmasked one shifted so that the best
    device whose ending close is allowed gets 0 (differences between devices unchanged):
    a masked close, which cannot be chosen, no longer sets the bar. With no ending close
    allowed it is the unmasked one."""
    from dora_rl.envs.stage import StageEnv as Env
    from dora_rl.learning.stage_policy import end_objective, head_columns

    shifted = none_allowed = 0
    for i in range(200):
        sc = random_scenario(np.random.default_rng([13, i]), max_devices=5, n_blocks=10, objective="latency")
        inst = Instance(sc, sc.cluster.n)
        if not inst.completable:
            continue
        env = Env(max_devices=inst.n, max_blocks=inst.B, pool_size=1)
        obs = env.reset(options={"scenario": inst})[0]
        mask = env.action_masks()
        cols = head_columns({k: v.astype("float64") for k, v in obs.items()})
        plain, gated = end_objective(*cols), end_objective(*cols, np, mask)
        ends = [d for d in range(inst.n) if mask[d * inst.B + inst.B - 1]]
        if not ends:
            np.testing.assert_array_equal(gated, plain)
            none_allowed += 1
            continue
        best = min(ends, key=lambda d: plain[d])
        np.testing.assert_allclose(gated, plain - plain[best], atol=1e-12)
        assert gated[best] == pytest.approx(0.0, abs=1e-12) and min(gated[d] for d in ends) >= -1e-12
        shifted += plain[best] > 1e-6       # the unmasked bar was a masked close
        risky = np.zeros(inst.n, bool)
        risky[best] = True                  # the best allowed end at risk: the next one sets the bar
        rest = [d for d in ends if d != best]
        got = end_objective(*cols, np, mask, risky)
        bar = plain[min(rest, key=lambda d: plain[d])] if rest else plain[best]   # none left: the allowed
        np.testing.assert_allclose(got[~risky], (plain - bar)[~risky], atol=1e-12)
        assert got[best] == pytest.approx(max(plain[best] - bar, 0.0), abs=1e-12)
    assert shifted >= 3 and none_allowed >= 1


def test_battery_risk_flags_battery_devices_that_would_not_last_the_target_at_full_power():
    """By hand: a target of e^3 h (log_battery_h = 3 / 3 = 1.0 in the observation's scale);
    device 0 off battery, 1 on battery lasting e^1.5 h at active power (0.5), 2 on battery
    lasting e^4.5 h (1.5): only 1 is at risk; without a target none is."""
    from dora_rl.envs.instance import GLOBAL_FEATURES
    from dora_rl.envs.stage import DEVICE_FEATURES
    from dora_rl.learning.stage_lookahead import battery_risk

    xd = np.zeros((3, len(DEVICE_FEATURES)))
    xd[1:, DEVICE_FEATURES.index("on_battery")] = 1.0
    xd[:, DEVICE_FEATURES.index("log_battery_h")] = [0.0, 0.5, 1.5]
    g = np.zeros(len(GLOBAL_FEATURES))
    g[GLOBAL_FEATURES.index("has_battery")], g[GLOBAL_FEATURES.index("log_battery_h")] = 1.0, 1.0
    assert battery_risk({"devices": xd, "global": g}).tolist() == [False, True, False]
    g[GLOBAL_FEATURES.index("has_battery")] = 0.0
    assert not battery_risk({"devices": xd, "global": g}).any()


def test_lookahead_rule_ranks_by_the_objective_column_and_whole_model_closes_by_latency():
    """The control of the network alone (`LookaheadActor`): its score of every allowed action
    is minus the lookahead's objective column (the latency bound, or the energy estimate
    when the objective's flag is set), masked actions are -inf, and among whole-model closes
    at the first state it prefers a device whose single-device plan the cost model finds fastest."""
    from dora_rl.learning.stage_lookahead import _G_OBJ_ENERGY, add_lookahead, head_columns, lookahead
    from dora_rl.learning.stage_search import LookaheadActor

    checked = 0
    for inst, env, obs in _first_states(12):
        mask = env.action_masks()
        D, B = inst.n, inst.B
        for energy, col in ((0.0, 1), (1.0, 4)):
            o = {k: v.astype("float64") for k, v in obs.items()}
            o["global"][_G_OBJ_ENERGY] = energy
            o["group"][:] = 0.0             # the group rule on its own: test_stage.py
            xd, xb, xg = head_columns(o)
            want = np.concatenate([-lookahead(xd, xb, xg)[..., col].reshape(-1), -add_lookahead(xd, xb, xg)[..., col]])
            got = LookaheadActor().logits(o, mask)
            assert np.all(np.isneginf(got[~mask]))
            np.testing.assert_allclose(got[mask], want[mask], rtol=1e-12)
        ds = [d for d in range(D) if mask[d * B + B - 1]]
        if len(ds) < 2:
            continue
        got = LookaheadActor().logits({k: v.astype("float64") for k, v in obs.items()}, mask)
        lat = [inst.finish([(0, B, (d,))])[2].latency_ms for d in ds]
        pick = int(np.argmax([got[d * B + B - 1] for d in ds]))
        assert lat[pick] == pytest.approx(min(lat), rel=1e-6)
        checked += 1
    assert checked >= 5


def _with_term_by_hand(obs: dict, mask, w: float, without: np.ndarray) -> tuple[np.ndarray, list]:
    """(The logits `without` the objective term given it, from its documented definition, in
    loops; the allowed closes the bar dominates). The bar is the least objective column
    of the allowed ending closes (none allowed: of every free device's) on devices not at
    battery risk (none: of them all); an ending close gets -w (col - bar) (at most 0 on a
    risky device); then, if an ending close is allowed and an allowed close that does not end
    the plan and whose column is above the bar (or, when the bar is not at risk, an allowed
    ending close on a risky device) has a logit at least the bar's ending close's, that
    close's logit becomes the highest such logit + 1e-3."""
    from dora_rl.learning.stage_lookahead import battery_risk, head_columns, lookahead, objective_column

    o = {k: np.asarray(v, dtype="float64")[None] for k, v in obs.items()}
    xd, xb, xg = head_columns(o)
    col = objective_column(lookahead(xd, xb, xg), xg)[0]
    risky = battery_risk(o)[0]
    D, Bm = col.shape
    is_end = o["blocks"][0][:, BLOCK_FEATURES.index("is_end")] > 0.5
    j_end = int(np.flatnonzero(is_end & (o["block_mask"][0] > 0.5))[0])
    ends = [d for d in range(D) if mask[d * Bm + j_end]]
    dev = o["devices"][0]
    free = [d for d in range(D) if o["device_mask"][0][d] > 0.5 and dev[d, DEVICE_FEATURES.index("used")] < 0.5
            and dev[d, DEVICE_FEATURES.index("in_group")] < 0.5]
    pool = ends or free
    safe = [d for d in pool if not risky[d]] or pool
    bar = min(col[d, j_end] for d in safe)
    out = np.array(without, dtype="float64")
    for d in range(D):
        if mask[d * Bm + j_end]:
            rel = col[d, j_end] - bar
            out[d * Bm + j_end] -= w * (max(rel, 0.0) if risky[d] else rel)
    d_bar = min(safe, key=lambda d: col[d, j_end])
    b = d_bar * Bm + j_end
    worse = [d * Bm + j for d in range(D) for j in range(Bm)
             if ends and mask[d * Bm + j] and j != j_end and col[d, j] > bar + 1e-6]
    worse += [d * Bm + j_end for d in ends if risky[d] and not risky[d_bar]]
    if worse and max(out[worse]) >= out[b]:
        out[b] = max(out[worse]) + 1e-3
    return out, worse


def test_a_fixed_objective_term_is_not_trained_and_is_saved(tmp_path):
    """`objective_term=(w_latency, w_energy)`: the weights are a buffer (no optimiser sees
    them), they come back from `MaskablePPO.load`, and on an energy state the end closes'
    logits differ from the same network's without the term by exactly -w_energy x
    `end_objective` (the other logits not at all)."""
    from sb3_contrib import MaskablePPO

    from dora_rl.learning.stage_actor import StageNumpyActor
    from dora_rl.learning.stage_lookahead import end_objective, head_columns
    from dora_rl.learning.stage_policy import StagePolicy

    env = StageEnv(max_devices=8, max_blocks=32)
    model = MaskablePPO(StagePolicy, env, n_steps=32, batch_size=32, seed=1, device="cpu",
                        policy_kwargs={"objective_term": [0.0, 3.0]})
    head = model.policy.action_net
    assert not any(p is head.obj_w for p in model.policy.parameters())
    assert head.obj_w.tolist() == [0.0, 3.0]
    model.save(tmp_path / "m.zip")
    back = MaskablePPO.load(tmp_path / "m.zip", device="cpu")
    assert back.policy.action_net.obj_w.tolist() == [0.0, 3.0]
    with pytest.raises(ValueError, match="pair"):
        MaskablePPO(StagePolicy, env, n_steps=32, batch_size=32, device="cpu",
                    policy_kwargs={"objective_term": [1.0]})

    i = 0
    while True:                      # an energy instance whose first state can end the plan on 2+ devices
        env_e = StageEnv(scenario=_scenario(4, 6, 100 + i), max_devices=8, max_blocks=32)
        obs, _ = env_e.reset(seed=0)
        xd, xb, xg = head_columns({k: v[None] for k, v in obs.items()})
        eo = end_objective(xd, xb, xg)[0]
        if env_e.inst.objective == "energy" and (eo > 1e-3).any():
            break
        i += 1
    mask = env_e.action_masks()
    actor = StageNumpyActor(back.policy)
    with_term = actor.logits(obs, mask)
    actor.obj_w = None                               # the same weights without the term
    without = actor.logits(obs, mask)
    expect, _ = _with_term_by_hand(obs, mask, 3.0, without)
    B = env_e.inst.B
    assert any(expect[d * 32 + B - 1] != without[d * 32 + B - 1] for d in range(8))   # an end close moved
    assert np.allclose(with_term[mask], expect[mask], atol=1e-4)


def test_the_objective_term_ends_the_plan_rather_than_take_a_dominated_close():
    """Along random rollouts (latency and energy, 2-6 devices), the numpy actor's logits with
    the term are the documented ones at every allowed close (`_with_term_by_hand`: the ending
    closes moved, and the bar's raised above any close whose lookahead is already worse than
    it, and, when the bar is battery-safe, above the ending closes at battery risk), the
    greedy choice is never such a dominated close, at some states it would have been without
    the term, and at some an ending close at risk is among them. With the observation's
    "two_stage" and "promise" keys, the actor then applies the two-stage rule to those logits
    (`with_two_stage`), and along these rollouts it moves some."""
    from sb3_contrib import MaskablePPO

    from dora_rl.learning.stage_actor import StageNumpyActor
    from dora_rl.learning.stage_lookahead import head_columns, with_two_stage
    from dora_rl.learning.stage_policy import StagePolicy

    env = StageEnv(max_devices=8, max_blocks=32)
    model = MaskablePPO(StagePolicy, env, n_steps=32, batch_size=32, seed=3, device="cpu",
                        policy_kwargs={"objective_term": [2.0, 3.0]})
    actor = StageNumpyActor(model.policy)
    rng = np.random.default_rng(0)
    raised_at = at_risk = two_moved = 0
    for i in range(120):            # until every kind was seen (12 instances at least)
        if i >= 12 and raised_at and at_risk and two_moved:
            break
        e = StageEnv(scenario=_scenario(2 + i % 5, 8, 500 + i), max_devices=8, max_blocks=32)
        obs, _ = e.reset(seed=0)
        w = 3.0 if e.inst.objective == "energy" else 2.0
        while not e.done:
            mask = e.action_masks()
            plain = {k: v for k, v in obs.items() if k not in ("two_stage", "promise")}
            actor.obj_w = np.array([2.0, 3.0], dtype="float32")
            with_term, full = actor.logits(plain, mask), actor.logits(obs, mask)
            actor.obj_w = None
            without = actor.logits(plain, mask)
            expect, dominated = _with_term_by_hand(obs, mask, w, without)
            assert np.allclose(with_term[mask], expect[mask], atol=1e-3)
            o = {k: np.asarray(v, dtype="float64") for k, v in obs.items()}
            _, xb, xg = head_columns(o)
            rule = with_two_stage(with_term, o["two_stage"], xb, xg, (2.0, 3.0), np, mask, o["promise"])
            assert np.allclose(full[mask], rule[mask], atol=1e-6)
            two_moved += not np.allclose(full[mask], with_term[mask])
            assert int(np.argmax(with_term)) not in dominated
            raised_at += bool(dominated) and int(np.argmax(without)) in dominated
            at_risk += any(a % 32 == e.inst.B - 1 for a in dominated)
            obs, *_ = e.step(int(rng.choice(np.flatnonzero(mask))))
    assert raised_at > 0 and at_risk > 0 and two_moved > 0


def test_an_objective_term_fixed_after_training_is_saved_and_reloaded(tmp_path):
    """`fix_objective_term` on a network trained without the term: `MaskablePPO.load` gives
    back the pair as a buffer (no optimiser sees it) and the same kwargs; its actor's end
    closes move by exactly -w_energy x the masked `end_objective` on an energy state; a
    policy that learns its weights is refused."""
    from sb3_contrib import MaskablePPO

    from dora_rl.learning.stage_actor import StageNumpyActor
    from dora_rl.learning.stage_agent import fix_objective_term
    from dora_rl.learning.stage_lookahead import end_objective, head_columns
    from dora_rl.learning.stage_policy import StagePolicy

    env = StageEnv(max_devices=8, max_blocks=32)
    model = MaskablePPO(StagePolicy, env, n_steps=32, batch_size=32, seed=2, device="cpu")
    before = StageNumpyActor(model.policy)
    fix_objective_term(model, (16, 32))
    model.save(tmp_path / "m.zip")
    back = MaskablePPO.load(tmp_path / "m.zip", device="cpu")
    assert back.policy.action_net.obj_w.tolist() == [16.0, 32.0]
    assert back.policy_kwargs["objective_term"] == [16.0, 32.0]
    assert not any(p is back.policy.action_net.obj_w for p in back.policy.parameters())
    i = 0
    while True:
        env_e = StageEnv(scenario=_scenario(4, 6, 300 + i), max_devices=8, max_blocks=32)
        obs, _ = env_e.reset(seed=0)
        mask = env_e.action_masks()
        eo = end_objective(*head_columns({k: v[None] for k, v in obs.items()}), np, mask[None])[0]
        B = env_e.inst.B
        if env_e.inst.objective == "energy" and any(mask[d * 32 + B - 1] and eo[d] > 1e-3 for d in range(8)):
            break
        i += 1
    without = before.logits(obs, mask)
    expect, _ = _with_term_by_hand(obs, mask, 32.0, without)
    assert any(expect[d * 32 + B - 1] != without[d * 32 + B - 1] for d in range(8))
    assert np.allclose(StageNumpyActor(back.policy).logits(obs, mask)[mask], expect[mask], atol=1e-4)
    learned = MaskablePPO(StagePolicy, env, n_steps=32, batch_size=32, device="cpu",
                          policy_kwargs={"objective_term": True})
    with pytest.raises(ValueError, match="learns"):
        fix_objective_term(learned, (1, 1))


def test_a_close_whose_two_stage_plan_beats_every_ending_close_promises_its_partner():
    """Along greedy rollouts of a random policy's numpy actor on random instances (2-6
    devices): after a single-device close whose "two_stage" entry was below every allowed
    ending close's, the "promise" key is 1 at the partner that entry was computed with
    (`stage_two.promised`) and 0 elsewhere, and that device's ending close is the one the
    policy then takes when the mask allows it and the network's choice is a close (the
    two-stage rule's part 2, unless a further two-stage close is better still); after any
    other close the key is all 0. Some rollout makes a promise."""
    from sb3_contrib import MaskablePPO

    from dora_rl.learning.stage_actor import StageNumpyActor
    from dora_rl.learning.stage_policy import StagePolicy

    env = StageEnv(max_devices=8, max_blocks=32)
    model = MaskablePPO(StagePolicy, env, n_steps=32, batch_size=32, seed=3, device="cpu",
                        policy_kwargs={"objective_term": [2.0, 3.0]})
    actor = StageNumpyActor(model.policy)
    promises = 0
    for i in range(60):
        e = StageEnv(scenario=_scenario(2 + i % 5, 12, 700 + i), max_devices=8, max_blocks=32)
        obs, _ = e.reset(seed=0)
        while not e.done:
            mask = e.action_masks()
            a = int(np.argmax(actor.logits(obs, mask)))
            two, D, Bm, B = obs["two_stage"].astype(float), e.max_devices, e.max_blocks, e.inst.B
            ends = mask[:D * Bm].reshape(D, Bm)[:, B - 1]
            d, j = divmod(a, Bm)
            expect = None
            bar = min(two[ends, B - 1].min(), CLIP) if ends.any() else CLIP
            if a < D * Bm and j < B - 1 and not e.group and two[d, j] < bar - 1e-4:
                expect = int(e._two[2][d, j])
            obs, *_ = e.step(a)
            if e.done:
                break
            if expect is not None:
                promises += 1
                assert obs["promise"][expect] == 1.0 and obs["promise"].sum() == 1.0
            elif a < D * Bm:
                assert obs["promise"].sum() == 0.0
        if promises >= 2:
            break
    assert promises >= 1



@pytest.mark.parametrize("objective", ["latency", "energy"])
def test_a_ruled_move_is_the_networks_greedy_choice_and_skipping_the_network_keeps_the_plans(policy, objective):
    """Wherever `StageNumpyActor.ruled` names a move (the group rule's close,
    `stage_group.ruled_close`), the actor's masked argmax on that state's observation is
    that move; greedy decoding that takes ruled moves without the network ends on the same
    plans as decoding that asks it at every choice. With the objective term off (or its
    weight 0 for the objective) no move is ruled; with it on, some move is."""
    from dora_rl.learning.search import greedy_complete
    from dora_rl.learning.stage_actor import StageNumpyActor

    actor = StageNumpyActor(policy)

    class Asking:        # the same actor without `ruled`: every real choice goes to the network
        def logits(self, obs, mask):
            return actor.logits(obs, mask)

    ruled = 0
    for i in range(6):
        n, B = (8, 40) if i % 2 else (16, 60)
        sc = random_scenario(np.random.default_rng([77, i]), max_devices=n, min_devices=n, n_blocks=B,
                             objective=objective)
        if not Instance(sc, n).completable:
            continue
        env = StageEnv.planning(Instance(sc, n))
        while not env.done:
            a = actor.ruled(env)
            if a is not None:
                ruled += 1
                obs = env.observe()
                assert int(np.argmax(actor.logits({k: v[None] for k, v in obs.items() if k != "action_mask"},
                                                  env._mask[None]))) == a
            allowed = np.flatnonzero(env._mask)
            env.advance(a if a is not None else int(allowed[len(allowed) // 2]))
        fast = greedy_complete(actor, [StageEnv.planning(Instance(sc, n))])[0]
        ref = greedy_complete(Asking(), [StageEnv.planning(Instance(sc, n))])[0]
        assert json.dumps(fast[0].to_dict()) == json.dumps(ref[0].to_dict()) and fast[2] == ref[2]
    live = actor.obj_w is not None and actor.obj_w[1 if objective == "energy" else 0] > 0
    assert (ruled > 0) == live
