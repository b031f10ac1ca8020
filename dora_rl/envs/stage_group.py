"""StageEnv's "group" key (observation v7): a data-parallel group that ends the plan, scored
on the cost model against the two-stage rule's own choices.

Why: the one-step add lookahead (dora_rl/learning/stage_lookahead.py:add_lookahead) prices
an add by a bound, and the two-stage key (dora_rl/envs/stage_two.py) compares only plans
that end on single devices, so the greedy policy ended large plans on one device where a
group of the fastest devices, data-parallel over the rest, was 1.3 to 2.2 x faster (card
large 32 x 100 instance 5: the whole model on the edge server at 283 ms against 130 ms on
the server, an AGX Orin and two laptops; 64 x 100 instance 0: one laptop against two;
docs/learning.md, "Session 35"). A group's transfers (the scatter to every member, the
gather back) and its shares are the cost model's, so here the candidates are real plans
evaluated exactly (`Instance.finish`, a fraction of a millisecond each), not estimates.

What the key says, and what the policy's rule does with it
(dora_rl/learning/stage_lookahead.py:with_group): at a state with no pending group, the
plan that puts the rest [p, B) on the k fastest free devices (k = 2 .. GROUP_MAX; under an
energy objective also the k with the least power per FLOP/s), compliant ones only, is
compared, by the planners' order (`cost.qoe.preference`: compliant first, then the
objective), with the two plans the two-stage rule would take - the best allowed ending
close and the best two-stage entry with its partner, both evaluated exactly - and when the
best group beats both, its members are marked 1. No group is evaluated where the sound QoE
bound says no compliant plan exists, nor, under latency, one whose batch compute alone
exceeds a compliant alternative's latency. StageEnv keeps the group once its first
member is added (`_gplan`), and the key then marks the members still to add; the rule adds
them and closes the stage on the last."""

from __future__ import annotations

import numpy as np

from dora_rl.envs.stage_two import plan_preference, rule_choices, two_stage

GROUP_MAX = 6       # the groups tried: the 2 .. 6 fastest free devices


def group_plan(env) -> tuple[int, ...] | None:
    """The group of free devices the plan should end on from this state (no pending group),
    or None: the best of the k fastest (k = 2 .. GROUP_MAX) when its plan is better than
    both of the two-stage rule's choices (module docstring) and its fastest member's add is
    allowed; cached per state on the env (`env._grp`)."""
    key = (id(env.inst), env.p, len(env.stages))
    if env._grp is None or env._grp[0] != key:
        env._grp = (key, _group_plan(env))
    return env._grp[1]


def current_group(env) -> tuple[int, ...] | None:
    """The group the plan should end on: `group_plan` at a state with no pending group, the
    one being formed (StageEnv's `_gplan`) once a member is added."""
    return env._gplan if env.group else group_plan(env)


def group_key(env) -> np.ndarray:
    """The "group" key, (D,): 1 at the members of `current_group` that are not in the
    pending group yet, else 0."""
    out = np.zeros(env.max_devices, np.float32)
    if env.done:
        return out
    plan = current_group(env)
    if plan:
        out[[d for d in plan if d not in env.group]] = 1.0
    return out


def _group_plan(env) -> tuple[int, ...] | None:
    inst, D, Bm, n, B, p = env.inst, env.max_devices, env.max_blocks, env.inst.n, env.inst.B, env.p
    if env.group or p >= B or inst.objective not in ("latency", "energy") or not env._mask[D * Bm:].any():
        return None
    if env.qoe_masks and env._bound().on and not env.qoe_masked:
        return None         # the QoE bound (sound) says no compliant plan exists from here: nor a group
    two = two_stage(env, env._bound()).astype(float)
    alts = rule_choices(env, two, env._two[2])[:2]
    bar = [k for k in (plan_preference(env, a) for a in alts if a is not None) if k is not None]
    if not bar:
        return None
    free, qb = [d for d in range(n) if d not in env.used], env._bound()
    orders = [sorted(free, key=lambda d: -inst.rate[d])[:GROUP_MAX]]
    if inst.objective == "energy":      # the most efficient too: the least active power per FLOP/s
        orders.append(sorted(free, key=lambda d: (qb.dyn_w[d] + qb.idle[d]) / inst.rate[d])[:GROUP_MAX])
    # under latency a compliant bar the group cannot beat spares the evaluation: a batch
    # passes the group's compute whatever the micro-batches (M u = the batch's work over the
    # group's rate, ms), a lower bound of the latency
    cap = min(bar)[2] if inst.objective == "latency" and not min(bar)[0] else np.inf
    work = qb.back * inst.batch * (inst.fp[B] - inst.fp[p])
    best = None
    for order in orders:
        if not env._mask[D * Bm + order[0]]:
            continue
        for k in range(2, len(order) + 1):
            g = tuple(order[:k])
            if 1e3 * work / sum(inst.rate[d] for d in g) >= cap:
                continue
            pk = plan_preference(env, [(p, B, g)])
            if pk is not None and not pk[0] and (best is None or pk < best[0]):     # compliant groups only
                best = (pk, g)
    if best is None or not best[0] < min(bar) or not env._mask[D * Bm + best[1][0]]:
        return None
    return best[1]
