"""StageEnv's "group" key (observation v7): a data-parallel group or a balanced pipeline that
ends the plan, scored on the cost model against the two-stage rule's own choices.

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
plans that put the rest [p, B) on the k fastest free devices (k = 2 .. GROUP_MAX; under an
energy objective also the k with the least power per FLOP/s) and the balanced pipelines of
dora_rl/envs/stage_chain.py (session 36: the two-stage estimate never sees three or more
stages as a whole), compliant ones only, are compared, by the planners' order
(`cost.qoe.preference`: compliant first, then the objective), with the two plans the
two-stage rule would take (the best allowed ending close and the best two-stage entry
with its partner, both evaluated exactly; at the first state, where neither exists, any
compliant candidate beats them - without that, card large 32 x 200 instance 0 ended
three stages at 1.43 x the best - but not at a later state, where the network's own
continuation was the better on three card large instances) - and when the best of them
beats both, the members of its first stage [l, r) are marked 0.5 + 0.5 r / Bm (any mark >
0.5; the value carries the stage's end). No candidate is evaluated where the sound QoE
bound says no compliant plan exists, nor, under latency, one whose compute alone (a lower
bound of its latency) exceeds a compliant alternative's latency; the first chain that
misses QoE but fits is cut again with its batteries' duties scaled down
(`stage_chain.tightened`), and its first compliant re-cut stands for it. StageEnv follows
the plan once a member of its first stage is added or that stage closed (`_gplan`, the
stages still to place), and the key then marks the members still to add of the stage
being formed or of the next; the rule adds them and closes the stage on the last at its
end."""

from __future__ import annotations

import numpy as np

from dora_rl.envs.stage_chain import chains, media_context, stage_times, tightened
from dora_rl.envs.stage_two import plan_preference, rule_choices, two_stage

GROUP_MAX = 6       # the groups tried: the 2 .. 6 fastest free devices


def group_plan(env) -> list | None:
    """The rest plan [(l, r, devs)] to end on from this state (no pending group), or None:
    the best compliant data-parallel group of the k fastest (k = 2 .. GROUP_MAX) or chain
    (`stage_chain.chains`) when its plan is better than both of the two-stage rule's
    choices (module docstring) and its first step (the group's fastest member's add, the
    chain's first close) is allowed; cached per state on the env (`env._grp`)."""
    key = (id(env.inst), env.p, len(env.stages))
    if env._grp is None or env._grp[0] != key:
        env._grp = (key, _group_plan(env))
    return env._grp[1]


def current_group(env) -> list | None:
    """The rest plan being followed (StageEnv's `_gplan`, set once its first stage's member
    is added or its first stage closed), else `group_plan` at a state with no pending group."""
    if env._gplan is not None:
        return env._gplan
    return None if env.group else group_plan(env)


def ruled_close(env) -> int | None:
    """The close the policy's group rule takes at env's state whatever the network's logits
    (`stage_lookahead.with_group` with one member marked: the last member of
    `current_group`'s first stage [l, r) still to add, closed at r), or None (no plan, two
    or more members left - the network then ranks their adds - or that close masked).
    Why: greedy decoding (dora_rl/learning/search.py:greedy_complete) takes it without
    building the observation or running the network, whose output the rule overrides; at
    64 devices x 200 blocks such closes were 8 of the 19 decisions on the card's large
    set."""
    plan = None if env.done else current_group(env)
    if not plan:
        return None
    _, r, devs = plan[0]
    left = [d for d in devs if d not in env.group]
    if len(left) != 1:
        return None
    a = left[0] * env.max_blocks + r - 1
    return a if env.allows(a) else None


def group_key(env) -> np.ndarray:
    """The "group" key, (D,): at the members of `current_group`'s first stage [l, r) that
    are not in the pending group yet 0.5 + 0.5 r / Bm (the stage's end, for the rule's
    close: `stage_lookahead.with_group`), else 0."""
    out = np.zeros(env.max_devices, np.float32)
    if env.done:
        return out
    plan = current_group(env)
    if plan:
        l, r, devs = plan[0]
        out[[d for d in devs if d not in env.group]] = 0.5 + 0.5 * r / env.max_blocks
    return out


def _group_plan(env) -> list | None:
    inst, D, Bm, n, B, p = env.inst, env.max_devices, env.max_blocks, env.inst.n, env.inst.B, env.p
    if env.group or p >= B or inst.objective not in ("latency", "energy"):
        return None
    if env.qoe_masks and env._bound().on and not env.qoe_masked:
        return None         # the QoE bound (sound) says no compliant plan exists from here: nor a group
    two = two_stage(env, env._bound()).astype(float)
    alts = rule_choices(env, two, env._two[2])[:2]
    bar = [k for k in (plan_preference(env, a) for a in alts if a is not None) if k is not None]
    if not bar and env.stages:
        return None
    bar = bar or [(True, True, np.inf)]     # at the first state with neither a plan: any compliant candidate beats them
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
                best = (pk, [(p, B, g)])
    retried = False
    for rest in chains(env, free, qb):
        (_, r0, (d0,)) = rest[0]
        if not env._mask[d0 * Bm + r0 - 1]:
            continue
        u = stage_times(inst, rest)
        if 1e3 * (sum(u) + (inst.M - 1) * max(u)) >= cap:      # one micro-batch through all, then M - 1 periods
            continue
        pk = plan_preference(env, rest)
        if pk is not None and pk[0] and not pk[1] and not retried:     # the first feasible miss: its batteries' duty
            retried = True
            for again in tightened(inst, qb, rest, p, media_context(env, qb)):
                pa = plan_preference(env, again) if env._mask[again[0][2][0] * Bm + again[0][1] - 1] else None
                if pa is not None and not pa[0]:
                    pk, rest = pa, again
                    break
        if pk is not None and not pk[0] and (best is None or pk < best[0]):
            best = (pk, rest)
    return best[1] if best is not None and best[0] < min(bar) else None
