"""Collecting the stage policy's training data on every core: teacher plans and DAgger labels.

Why a module of its own: a teacher plan (`dora` + polish) and a DAgger label (the policy's
top-k actions completed and polished) cost 0.1-1 s each and are independent per training
instance, while fitting the network is one process's work. With `workers` > 1 the
instances are handed to that many worker processes (a pool spawned for the teacher phase
and for each DAgger round, whose actor is new; ~3 s to start each here), so on 2 cores
a budget buys twice the data. A task is one instance, named by (family, generator seed,
index): its data do not depend on which worker ran it; the main process only gathers them
and stops handing out instances at the deadline (a teacher instance in flight finishes; a
DAgger episode stops labelling at the deadline). `workers=1` runs the same tasks in the
main process."""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import time

import numpy as np

from dora_rl.learning.stage_training import Data, TimeBar, best_known, fit, label_by_rollout, make_env, replay_plan

log = logging.getLogger(__name__)
_ENVS: dict = {}            # per process: (family name, seed, family) -> StageEnv


def _env(name: str, family: dict, seed: int):
    key = (name, seed, repr(family))
    if key not in _ENVS:
        _ENVS[key] = make_env(family, seed)
    return _ENVS[key]


def teach_one(name: str, family: dict, seed: int, i: int):
    """Instance i's best known plan replayed into a Data: (name, i, data, replayed, compliant), or None."""
    env = _env(name, family, seed)
    inst = env.source.instance(i)
    env.source.cache.clear()
    best = best_known(inst, use_dora=inst.n <= 32)
    if best is None:
        return None
    data = Data()
    ok = replay_plan(env, inst, best[0], data, best[2])
    return name, i, data, ok, bool(ok and best[1].qoe_ok)


def dagger_one(actor, name: str, family: dict, seed: int, i: int, top_k: int, deadline: float):
    """The policy plans instance i greedily; every state it visits is labelled by rollout
    (DAgger: follow the learner, label with the teacher). (name, i, data, states, agreements)."""
    env = _env(name, family, seed)
    inst = env.source.instance(i)
    env.source.cache.clear()
    obs, _ = env.reset(seed=0, options={"scenario": inst})
    data, n, agree = Data(), 0, 0
    # the deadline is checked per state, not per episode: one 64-device episode, each state
    # labelled by 4 rollouts + polish, once ran 24 minutes past it
    while not env.done and time.time() < deadline:
        mask = env._mask
        allowed = np.flatnonzero(mask)
        if len(allowed) == 1:
            env.advance(int(allowed[0]))
            continue
        a_pol = int(np.argmax(actor.logits(obs, mask)))
        a_lab, res, eq = label_by_rollout(actor, env, top_k)
        data.add(obs, mask.copy(), a_lab, res[2], eq)
        n += 1
        agree += a_pol in eq
        env.advance(a_pol)
        obs = env.observe()
    return name, i, data, n, agree


def run_tasks(fn, tasks, deadline: float, workers: int, on_result, tick=None) -> None:
    """fn(*task) for the tasks (an iterator) until `deadline` (time.time()), `workers` at a
    time; on_result(result) in the main process as each ends, tick() while waiting."""
    if workers <= 1:
        for t in tasks:
            if time.time() >= deadline:
                break
            on_result(fn(*t))
            if tick is not None:
                tick()
        return
    from dora_rl.learning.stage_actor import one_blas_thread

    tasks = iter(tasks)
    with multiprocessing.get_context("spawn").Pool(workers, initializer=one_blas_thread) as pool:
        pending: list = []
        more = True
        while True:
            while more and len(pending) < workers and time.time() < deadline:
                t = next(tasks, None)
                if t is None:
                    more = False
                    break
                pending.append(pool.apply_async(fn, t))
            if not pending:
                break
            done = [p for p in pending if p.ready()]
            if not done:
                time.sleep(0.02)
                continue
            for p in done:
                pending.remove(p)
                on_result(p.get())
            if tick is not None:
                tick()


def _round_robin(families: dict, seed: int, start: dict, weights: dict | None = None):
    """(name, family, seed, index) of the next training instances, families in turn
    (`weights[name]`: how many of that family per cycle, default 1), each family's index
    counting up from `start`."""
    for name in itertools.cycle([n for n in families for _ in range(int((weights or {}).get(n, 1)))]):
        i = start[name]
        start[name] += 1
        yield name, families[name], seed, i


def teacher_phase(families: dict, datas: dict, seconds: float, seed: int, progress: bool, start: dict,
                  workers: int = 1, weights: dict | None = None) -> dict:
    """Best known plans replayed on training instances until `seconds`, `weights[name]` of
    each family per cycle (default 1 each). Why a weight: a large-family teacher instance
    costs ~7x a small one (0.71 vs 0.11 CPU s, session 19), so the weights set how the phase's
    time splits (at 2:1 the large family took ~77 % of it, at 8:1 ~46 %)."""
    stats = {k: {"episodes": 0, "compliant": 0, "unreachable": 0} for k in families}
    t0, bar = time.time(), TimeBar(seconds, "teacher", progress)

    def got(r):
        if r is None:
            return
        name, _, data, ok, compliant = r
        datas[name].extend(data)
        st = stats[name]
        st["episodes"] += ok
        st["unreachable"] += not ok
        st["compliant"] += compliant

    def tick():
        bar.tick(", ".join(f"{n} {s['episodes']}" for n, s in stats.items()))

    run_tasks(teach_one, _round_robin(families, seed, start, weights), t0 + seconds, workers, got, tick)
    bar.close()
    return stats


def _dagger_round(actor, families: dict, datas: dict, seconds: float, seed: int, start: dict, top_k: int,
                  workers: int, desc: str, progress: bool) -> dict:
    """One DAgger round's data: fresh instances planned by `actor`, their states labelled, for `seconds`."""
    t0, tot = time.time(), {"states": 0, "agree": 0}
    bar = TimeBar(seconds, desc, progress)

    def got(res):
        name, _, data, n, agree = res
        datas[name].extend(data)
        tot["states"] += n
        tot["agree"] += agree

    def tick():
        bar.tick(f"{tot['states']} states, agree {tot['agree'] / max(tot['states'], 1):.2f}")

    tasks = ((actor, name, fam, s, i, top_k, t0 + seconds) for name, fam, s, i in _round_robin(families, seed, start))
    run_tasks(dagger_one, tasks, t0 + seconds, workers, got, tick)
    bar.close()
    return tot


def dagger_phase(policy, families: dict, datas: dict, seconds: float, seed: int, start: dict, rounds: int = 4,
                 top_k: int = 4, progress: bool = False, workers: int = 1, fit_threads: int = 1,
                 on_round=None, epochs: int = 8) -> list:
    """Rounds of: the policy plans fresh instances greedily, every state it visits is
    labelled by rollout (`label_by_rollout`) and added; then the network is fit again (at
    most `epochs`, on `fit_threads` torch threads: the workers are idle then; time the fit
    leaves goes to the next round's collection); `on_round(name)` after each
    round's fit (the run's checkpoint selection), its result kept in the round's record."""
    from dora_rl.learning.stage_actor import StageNumpyActor

    t_end, hist = time.time() + seconds, []
    for r in range(rounds):
        left = t_end - time.time()
        if left < 10:
            break
        t0 = time.time()
        tot = _dagger_round(StageNumpyActor(policy), families, datas, left / (rounds - r) * 0.6, seed, start, top_k,
                            workers, f"dagger {r + 1}/{rounds}", progress)
        n_dec = tot["states"]
        f = fit(policy, datas, max(5.0, (t_end - time.time()) / (rounds - r)), epochs=epochs, lr=5e-4,
                seed=seed + r + 1, progress=progress, desc=f"dagger fit {r + 1}", threads=fit_threads)
        hist.append({"round": r + 1, "states": n_dec, "agreement": round(tot["agree"] / max(n_dec, 1), 4),
                     "collect_seconds": round(time.time() - t0, 1), "fit": f})
        if on_round is not None:
            hist[-1]["selection"] = on_round(f"dagger {r + 1}")
        log.info("dagger round %d: %s", r + 1, hist[-1])
    return hist
