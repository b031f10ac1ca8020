"""Decoding a plan from the stage policy under a time budget: greedy, polish, rollout, sample, beam.

Why a budget: search on top of the network is worth having only if it beats the network
(and the cheaper controls) at the same wall time, so every mode takes `budget_ms` and
stops there with the best plan so far (the greedy plan is always a candidate, so no
mode is worse than the network alone).

- `greedy`: the network alone (one call per decision, forced moves skipped);
- `polish`: greedy, then local hill climbing on the cost model (search.py:polish) until the budget;
- `rollout`: Bertsekas' rollout with the policy as base heuristic (search.py:rollout_search,
  top_k candidates per decision), then polish, within the budget;
- `sample`: greedy, then plans sampled from the policy's probabilities (temperature 1)
  until the budget, the best kept;
- `beam`: beam search over decisions by summed log-probability (width `top_k`, default 4),
  the finished beams scored by the cost model;
- `restart`: greedy + polish, then until the budget plans sampled from the policy, each
  polished from its own start (a start already polished is not polished again), the best
  kept: a polish converges to a local optimum in a few ms and then idles, so the budget
  goes to other starts, drawn where the network puts its probability. The starts' polishes
  bring in only the candidate devices (`polish(wide=False)`): on 64 devices a wide scan
  costs as much as several starts, and with a last share of the budget for a wide polish
  of the best plan the results were the same (session 20).

`UniformActor` (every allowed action equally likely; greedy = the first allowed) and
`fastest_start` (the whole model on the fastest device) are the controls the bench runs
the same searches from; `LookaheadActor` (the network's computed lookahead terms ranked
without the network) is the control of the network alone."""

from __future__ import annotations

import time

import numpy as np

from dora_rl.errors import AgentError
from dora_rl.learning import SEARCHES as MODES
from dora_rl.learning.search import greedy_complete, polish, rollout_search, search_key

DEFAULT_BUDGET_MS = {"greedy": None, "polish": None, "rollout": None, "sample": 100.0, "beam": 100.0,
                     "restart": 100.0}


class UniformActor:
    """A policy that scores every allowed action equally (the searches' control)."""

    def logits(self, obs: dict, mask) -> np.ndarray:
        return np.where(mask, 0.0, -np.inf)


class LookaheadActor:
    """The network's computed terms without the network (the rule it weighs): every allowed
    close scored by its one-step lookahead's objective column and every add by its
    `add_lookahead`'s (dora_rl/learning/stage_lookahead.py: the latency lower bound, or the
    energy estimate), the least best, then the two-stage and group rules as the shipped
    policy applies them (`with_two_stage`, `with_group`). The control that shows what the
    learned weights add over the formulas and rules they are given."""

    def logits(self, obs: dict, mask) -> np.ndarray:
        from dora_rl.learning.stage_lookahead import (
            add_lookahead,
            head_columns,
            lookahead,
            objective_column,
            with_group,
            with_two_stage,
        )

        obs = {k: np.asarray(v, dtype="float64") for k, v in obs.items()}
        xd, xb, xg = head_columns(obs)
        close = -objective_column(lookahead(xd, xb, xg), xg)
        add = -objective_column(add_lookahead(xd, xb, xg), xg)
        out = np.concatenate([close.reshape(close.shape[:-2] + (-1,)), add], -1)
        if "two_stage" in obs:
            out = with_two_stage(out, obs["two_stage"], xb, xg, (1.0, 1.0), np, mask, obs.get("promise"))
            if "group" in obs:
                out = with_group(out, obs["group"], xg, (1.0, 1.0), np, mask)
        return np.where(mask, out, -np.inf)


def _best(results, objective):
    return min((r for r in results if r is not None), key=lambda r: search_key(r, objective))


def _sample(actor, env, rng) -> tuple:
    while not env.done:
        allowed = np.flatnonzero(env._mask)
        if len(allowed) == 1:
            env.advance(int(allowed[0]))
            continue
        lg = actor.logits(env.observe(), env._mask)
        p = np.exp(lg - lg[allowed].max())
        env.advance(int(rng.choice(len(p), p=p / p.sum())))
    return env.result


def _beam(actor, env, width: int, deadline: float | None):
    beams, done = [(0.0, env.fork())], []
    while beams:
        nxt = []
        for lp, e in beams:
            if e.done:
                done.append(e.result)
                continue
            allowed = np.flatnonzero(e._mask)
            if len(allowed) == 1:
                f = e.fork()
                f.advance(int(allowed[0]))
                nxt.append((lp, f))
                continue
            lg = actor.logits(e.observe(), e._mask)
            z = lg[allowed] - lg[allowed].max()
            logp = z - np.log(np.exp(z).sum())
            for i in np.argsort(-logp, kind="stable")[:width]:
                f = e.fork()
                f.advance(int(allowed[i]))
                nxt.append((lp + float(logp[i]), f))
        nxt.sort(key=lambda x: -x[0])
        beams = nxt[:width]
        if deadline is not None and time.perf_counter() > deadline:
            done += greedy_complete(actor, [e for _, e in beams])
            break
    return done


def _stages_key(result) -> tuple:
    return tuple((s.start, s.end, tuple(s.devices)) for s in result[0].stages)


def _restarts(actor, env, first, deadline: float, seed: int):
    """Polish from the greedy plan, then from plans sampled from the policy until `deadline`,
    each over the candidate devices only (`polish(wide=False)`: more starts fit in the budget)."""
    rng = np.random.default_rng(seed)
    inst, obj = env.inst, env.inst.objective
    best, seen = polish(inst, first, deadline=deadline, wide=False), {_stages_key(first)}
    while time.perf_counter() < deadline:
        s = _sample(actor, env.fork(), rng)
        k = _stages_key(s)
        if k in seen:
            continue
        seen.add(k)
        best = _best([best, polish(inst, s, deadline=deadline, wide=False)], obj)
    return best


def decode(actor, env, mode: str = "greedy", budget_ms: float | None = None, top_k: int | None = None,
           seed: int = 0, start=None):
    """Plan env's episode (already reset on an instance) with `mode`; returns the best
    (plan, metrics, utility). `start`: a result to search from instead of the greedy plan
    (the fastest-device control)."""
    if mode not in MODES:
        raise AgentError(f"unknown search {mode!r}; choose one of {', '.join(MODES)}")
    if budget_ms is not None and not budget_ms > 0:
        raise AgentError(f"budget_ms must be > 0, got {budget_ms}")
    t0 = time.perf_counter()
    budget_ms = budget_ms if budget_ms is not None else DEFAULT_BUDGET_MS[mode]
    deadline = None if budget_ms is None else t0 + budget_ms / 1e3
    inst, obj = env.inst, env.inst.objective
    first = start if start is not None else greedy_complete(actor, [env.fork()])[0]
    if mode == "greedy":
        return first
    if mode == "polish":
        return polish(inst, first, deadline=deadline)
    if mode == "rollout":
        res = rollout_search(actor, env.fork(), top_k or 4, deadline=deadline)
        best = _best([first, res], obj)
        return polish(inst, best, deadline=deadline)
    if mode == "sample":
        rng = np.random.default_rng(seed)
        out = [first]
        while time.perf_counter() < deadline:
            out.append(_sample(actor, env.fork(), rng))
        return _best(out, obj)
    if mode == "restart":
        return _restarts(actor, env, first, deadline, seed)
    return _best([first] + _beam(actor, env, top_k or 4, deadline), obj)
