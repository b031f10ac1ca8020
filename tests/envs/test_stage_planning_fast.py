"""The planner's fast paths through StageEnv equal the straightforward code they replaced:
the planning env (`StageEnv.planning`, forks copied from a template) against an env built
and reset the gym way on a fresh Instance; the observation (per-instance constants cached,
per-step parts vectorised, `rest_rates` memoised) against the former per-device code
(`_reference_obs`, on a fresh QoEBound); a lone flow's routing (`routing.lone`) against
`CostModel.transfer`; the all-reduce's route tables and the group memory reach (which skips
the sample split when it cannot matter) against plain loops."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dora_rl.cost import routing
from dora_rl.envs.instance import NG, Instance
from dora_rl.envs.qoe_bound import QoEBound
from dora_rl.envs.stage import NFB, NFD, SNG, StageEnv
from dora_rl.envs.stage_two import two_stage
from dora_rl.features import CLIP, clip_log
from dora_rl.synthetic import random_scenario


def _scenarios(n, B, k, seed, **kw):
    out, i = [], 0
    while len(out) < k:
        sc = random_scenario(np.random.default_rng([seed, n, B, i]), max_devices=n, min_devices=n, n_blocks=B, **kw)
        i += 1
        if Instance(sc, n).completable:
            out.append(sc)
    return out


def _reference_obs(env) -> dict:
    """The observation as StageEnv built it before (one device at a time; a fresh QoEBound)."""
    inst, D, Bm, n, B = env.inst, env.max_devices, env.max_blocks, env.inst.n, env.inst.B
    p = min(env.p, B)
    ts, t3 = inst.tstar, 3.0
    dev = np.zeros((D, NFD))
    dev[:n, :11] = inst.static[:, :11]
    for d in env.used:
        dev[d, 11] = 1.0
    for d in env.group:
        dev[d, 12] = 1.0
    bwp = inst.bw[env.prev].min(axis=0)
    dev[:n, 13] = np.clip(np.log(np.maximum(inst.batch * inst.bnd_l[p] / bwp / ts, 1e-30)), -CLIP, CLIP) / t3
    grate = sum(inst.rate[x] for x in env.group)
    rj = inst.rate + grate
    mean_rate = inst.total_rate / n
    dev[:n, 14] = np.log(rj / mean_rate)
    free_rate = float(sum(inst.rate[d] for d in range(n) if d not in env.used))
    span = max(B - p, 1)
    okc = env._rmin <= env._rmax
    dev[:n, 15] = np.where(okc, np.clip((env._rmax - p) / span, 0.0, 1.0), 0.0)
    dev[:n, 16] = okc
    dev[:n, 17] = env._mask[D * Bm:D * Bm + n]
    rest = inst.back * inst.batch * (inst.fp[-1] - inst.fp[p])
    dev[:n, 18] = np.clip(np.log(np.maximum(rest / rj / ts, 1e-30)), -CLIP, CLIP) / t3
    dev[:n, 19] = np.where(okc, np.clip((env._rmin - p) / span, 0.0, 1.0), 1.0)
    qb = QoEBound(inst)
    f_in, t_in = qb.inputs(env.prev, env.group, p, [d for d in range(n) if d not in env.used | set(env.group)])
    lg = np.log(np.maximum(np.stack([f_in, t_in, [o[0] + o[1] for o in qb.out]], 1) / ts, 1e-30))
    dev[:n, 20:23] = np.clip(lg, -CLIP, CLIP)
    R_T, R_m, _, _ = qb.rest_rates([d for d in range(n) if d not in env.used and d not in env.group])
    dev[:n, 23] = np.clip(np.log(np.maximum(R_T / mean_rate, 1e-30)), -CLIP, CLIP)
    dev[:n, 26] = np.clip(np.log(np.maximum(R_m / mean_rate, 1e-30)), -CLIP, CLIP)
    pstar = max(float(inst.act_w.mean()), 1e-9)
    dev[:n, 24] = np.clip(np.log(np.maximum(qb.dyn_w / pstar, 1e-30)), -CLIP, CLIP)
    part = env.used | {inst.src}
    new = np.array([d not in part for d in range(n)])
    dev[:n, 25] = np.where(new, np.clip(np.log(np.maximum(qb.idle / pstar, 1e-30)), -CLIP, CLIP), -CLIP)
    blk = np.zeros((Bm, NFB))
    blk[:B] = inst.block_table(NFB)
    r = np.arange(1, B + 1)
    cand = r > p
    blk[:B, 1] = cand
    fp = np.asarray(inst.fp)
    work = np.maximum(fp[1:] - fp[p], 0.0) / max(fp[-1], 1e-30)
    blk[:B, 5] = np.where(cand, np.log(np.maximum(work * n, 1e-30)), -CLIP).clip(-CLIP, CLIP)
    blk[:B, 9] = np.where(cand, (r - p) / B, 0.0)
    pp = np.asarray(inst.cost.pp)
    log_params = np.log(np.maximum((pp[1:] - pp[p]) / inst.mem_med, 1e-30)).clip(-CLIP, CLIP)
    blk[:B, 11] = np.where(cand, log_params / t3, -CLIP / t3)
    bmask = np.zeros(Bm, np.float32)
    bmask[:B] = cand
    g = np.zeros(SNG)
    g[:NG] = inst.gstatic
    g[0], g[1], g[2], g[3] = p / B, len(env.stages) / 8.0, len(env.group) / 4.0, n / 64.0
    g[4] = (fp[-1] - fp[p]) / max(fp[-1], 1e-30)
    g[5] = clip_log(env.t_max_stage / ts) / t3 if env.stages else -CLIP / t3
    g[6] = clip_log(env.t_transfers / ts) / t3 if env.t_transfers > 0 else -CLIP / t3
    g[7] = clip_log(grate / mean_rate) if env.group else -CLIP
    g[8] = np.log(B) / np.log(300.0)
    g[9] = clip_log(inst.bnd_l[p] / max(inst.bnd_l[0], 1.0)) / t3
    g[19] = (n - len(env.used)) / n
    g[20] = free_rate / inst.total_rate
    g[21] = clip_log(rest / free_rate / ts) / t3 if free_rate > 0 else CLIP / t3
    g[23] = np.log(n) / np.log(64.0)
    free = [d for d in range(n) if d not in env.used]
    rest_dyn = min((qb.dyn_w[d] / pstar * mean_rate / inst.rate[d] for d in free), default=0.0)
    wl = inst.cost.workload
    g[NG:] = (clip_log(env._qF / ts), clip_log(env._qT / ts), np.log(qb.M), (qb.M - 1) / 64.0,
              clip_log(qb.lat_cap / ts), clip_log(qb.T_cap / ts),
              clip_log(1.0 / wl.request_rate / ts) if (wl.request_rate and not inst.training) else -CLIP,
              float(inst.training), clip_log(rest_dyn), clip_log(sum(qb.idle[d] for d in part) / pstar))
    # relays: those of the closed stages' entries (from the stages, not env.relays), then each device's entry
    net, committed, prev = inst.cost.net, set(), [inst.src]
    for l, _r, devs in env.stages:
        nb = inst.batch * inst.bnd_l[l]
        committed |= {x for a in prev for b in devs if a != b for x in net.route(a, b, nb).relays}
        prev = list(devs)
    committed -= part
    relay = np.full(D, -CLIP)
    for d in range(n):
        if d in part or d in committed or d in env.group:
            continue
        new_r = {x for a in env.prev if a != d for x in net.route(a, d, inst.batch * inst.bnd_l[p]).relays}
        w = sum(qb.idle[x] for x in committed | (new_r - part - set(env.group) - {d}))
        if w > 0:
            relay[d] = np.clip(np.log(w / pstar), -CLIP, CLIP)
    return {"devices": dev.astype(np.float32), "device_mask": env._dmask.copy(),
            "blocks": blk.astype(np.float32), "block_mask": bmask, "global": g.astype(np.float32),
            "relay_w": relay.astype(np.float32)}


def _same_state(a, b):
    assert np.array_equal(a._mask, b._mask)
    assert np.array_equal(a._rmin, b._rmin) and np.array_equal(a._rmax, b._rmax)
    oa, ob = a.observe(), b.observe()
    for k in ob:
        assert np.array_equal(oa[k], ob[k]), k


@pytest.mark.parametrize("n,B,k", [(2, 12, 4), (3, 20, 3), (16, 60, 3), (24, 100, 2)])
def test_planning_env_and_its_forks_equal_a_reset_env(n, B, k):
    adds = steps = 0
    for j, (sc, ep) in enumerate((sc, ep) for sc in _scenarios(n, B, k, 61) for ep in range(3)):
        if ep == 0:       # three episodes on one Instance: what it caches must not leak between them
            inst = Instance(sc, n)
        fast = StageEnv.planning(inst)
        ref = StageEnv(max_devices=n, max_blocks=B, pool_size=1)
        ref.reset(seed=0, options={"scenario": Instance(sc, n)})        # a fresh Instance: cold caches
        rng = np.random.default_rng(j)
        while not ref.done:
            _same_state(fast, ref)
            o = fast.observe()
            for key, v in _reference_obs(ref).items():
                assert np.array_equal(o[key], v), key
            _same_state(fast.fork(), ref)
            allowed = np.flatnonzero(ref._mask)
            add = allowed[allowed >= n * B]
            a = int(rng.choice(add if len(add) and rng.random() < 0.5 else allowed))
            adds += a >= n * B
            steps += 1
            fast.advance(a)
            ref.step(a)
        assert fast.done
        assert json.dumps(fast.result[0].to_dict()) == json.dumps(ref.result[0].to_dict())
        assert fast.result[2] == ref.result[2]
    assert steps > k and (n < 16 or adds > 0)


@pytest.mark.parametrize("n", [4, 24])       # exact candidates (<= 8 devices) and heuristic ones
def test_a_lone_flow_routes_as_cost_transfer(n):
    sc = _scenarios(n, 10, 1, 7)[0]
    cost = Instance(sc, n).cost
    rng = np.random.default_rng(n)
    assert cost.net.exact == (n <= 8)
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            b = float(rng.choice([1.0, 3e3, 2e5, 7e7]))
            occ, lat = routing.lone(cost.net, i, j, b)
            t = cost.transfer([i], [1.0], [j], [1.0], b)
            assert (occ, lat) == (t[0], t[1])


def test_network_least_is_the_least_route_latency_and_seconds_per_byte():
    sc = _scenarios(12, 20, 1, 9, kind="training")[0]
    inst = Instance(sc, 12)
    net = inst.cost.net
    L, K = net.least
    for x in range(12):
        for e in range(12):
            rs = net.routes[x][e] if x != e else ()
            assert L[x, e] == (min(r.lat for r in rs) if rs else np.inf)
            assert K[x, e] == (min(r.kappa for r in rs) if rs else 0.0)


def test_group_reach_splits_samples_only_where_it_can_matter():
    calls = rows = 0
    for sc in _scenarios(8, 40, 16, 5, kind="training") + _scenarios(8, 40, 4, 5, kind="inference"):
        inst = Instance(sc, 8)
        realized = inst.cost.realized

        def counted(*a, _r=realized):
            nonlocal calls
            calls += 1
            return _r(*a)

        inst.cost.realized = counted
        rng = np.random.default_rng(1)
        for k in (2, 3, 4):
            if inst.m_int < k:
                continue
            groups = [[int(x) for x in rng.choice(8, size=k, replace=False)] for _ in range(12)]
            for l in range(0, inst.B, 5):
                got = inst.group_reach_rows(groups, l)
                rows += len(groups)
                for g, r in zip(groups, got):      # the reference: always the realized shares
                    rates = inst.rate[g]
                    w = rates / rates.sum()
                    W = np.maximum(w, np.array(realized(inst.m_int, w.tolist(), g)))
                    ok = np.all(inst.base[l, l + 1:][None, :] + W[:, None] * inst.act[l, l + 1:][None, :]
                                <= inst.mem[g][:, None], axis=0)
                    assert r == l + int(ok.sum())
    # both paths ran: groups whose reach needed the sample split (rare: the memory edge must fall
    # between the shares' lower and upper ends), and groups whose did not
    assert 0 < calls < rows


def test_relay_w_is_the_idle_power_of_the_relays_a_close_brings_in():
    """docs/cost-model.md's worked example 5 (cam - phone - server in a chain, cam the
    source) plus HOME's tv behind the server: P* = mean active power = (5 + 5 + 30 + 10) / 4
    = 12.5 W. First state: the server is reached through the phone (0.5 W idle): log(0.5 /
    12.5); the tv through the phone and the server: log(5.5 / 12.5); the phone directly and
    the cam is the source: none. After a stage on the server, the phone relays already: a
    close on the tv (direct from the server) brings in no new relay but the plan carries the
    phone's 0.5 W, and the lookahead's idle column of the tv is log((2 + 0.5) / 12.5)."""
    from dora_rl.learning.stage_lookahead import _IDLE, head_columns
    from tests.toy import HOME, RELAY, scenario

    d = {**RELAY, "devices": [*RELAY["devices"], HOME["devices"][2]],
         "links": [*RELAY["links"], {"a": "server", "b": "tv", "mbps": 80, "latency_ms": 2}]}
    env = StageEnv(scenario=scenario(d), max_devices=4, max_blocks=4, qoe_masks=False)
    obs, _ = env.reset(seed=0)
    none = np.float32(-CLIP)
    assert obs["relay_w"][[0, 1]].tolist() == [none, none]
    assert obs["relay_w"][2] == pytest.approx(np.log(0.5 / 12.5), abs=1e-6)
    assert obs["relay_w"][3] == pytest.approx(np.log(5.5 / 12.5), abs=1e-6)
    a = 2 * 4 + 1                   # blocks [0, 2) on the server
    assert env.action_masks()[a]
    obs, *_ = env.step(a)
    assert env.relays == {1}
    assert obs["relay_w"][[0, 1, 2]].tolist() == [none] * 3     # the source, a relay already, used
    assert obs["relay_w"][3] == pytest.approx(np.log(0.5 / 12.5), abs=1e-6)
    xd = head_columns({k: v.astype("float64") for k, v in obs.items()})[0]
    assert xd[3, _IDLE] == pytest.approx(np.log(2.5 / 12.5), abs=1e-6)
    without = head_columns({k: v.astype("float64") for k, v in obs.items() if k != "relay_w"})[0]
    assert without[3, _IDLE] == pytest.approx(np.log(2.0 / 12.5), abs=1e-6)


def _relay_chain(objective="latency", min_battery_hours=None, **workload):
    """docs/cost-model.md's worked example 5 (cam - phone - server, 1e7 B/s links of 2 ms,
    cam the source) without its battery target unless given."""
    from tests.toy import RELAY, scenario

    qoe = {"objective": objective, "min_battery_hours": min_battery_hours}
    d = {**RELAY, "qoe": {k: v for k, v in qoe.items() if v is not None},
         "workload": {**RELAY["workload"], **workload}}
    env = StageEnv(scenario=scenario(d), max_devices=3, max_blocks=4, qoe_masks=False)
    obs, _ = env.reset(seed=0)
    return env, obs


def test_two_stage_is_the_latency_of_the_plan_that_ends_on_one_more_device():
    """The "two_stage" key by hand (T* = 2 x 10 GFLOP / 625 GFLOP/s = 0.032 s; toy blocks of
    2, 4, 3, 1 GFLOP and 200, 100, 50, 4 kB out per sample, 100 kB in; m = 2, M = 1, so the
    latency is the fill). Ending on the server: in 0.004 + 0.02, compute 0.04, back to cam
    0.004 + 0.0008: 0.0688 (the doc's 68.8 ms). Block 0 on the server, then the rest on
    the phone: 0.024 + 0.008 + (0.002 + 0.04) + 0.16 + (0.002 + 0.0008) = 0.2368 (on the
    camera: 0.024 + 0.008 + 0.044 + 0.64 = 0.716). Blocks 0-2 on the server, then the phone:
    0.024 + 0.036 + 0.012 + 0.02 + 0.0028 = 0.0948. Block 0 on the camera, then the server:
    0.16 + (0.004 + 0.04) + 0.032 + 0.0048 = 0.2408 (the phone: 0.3648)."""
    env, obs = _relay_chain()
    assert env.inst.tstar == pytest.approx(0.032)
    two = obs["two_stage"].astype(float)
    ts = 0.032
    assert two[2, 3] == pytest.approx(np.log(0.0688 / ts), abs=1e-5)
    assert two[2, 0] == pytest.approx(np.log(0.2368 / ts), abs=1e-5)
    assert two[2, 2] == pytest.approx(np.log(0.0948 / ts), abs=1e-5)
    assert two[0, 0] == pytest.approx(np.log(0.2408 / ts), abs=1e-5)
    # two micro-batches of one sample: the period term, (M - 1) T. Ending on the server:
    # fill 0.014 + 0.02 + 0.0044, T = max(0.01 in, 0.02) -> 0.0584; block 0 on the server
    # then the phone: fill 0.014 + 0.004 + 0.022 + 0.08 + 0.0024, T = 0.08 (the phone) -> 0.2024
    env, obs = _relay_chain(microbatches=2)
    two = obs["two_stage"].astype(float)
    assert two[2, 3] == pytest.approx(np.log(0.0584 / ts), abs=1e-5)
    assert two[2, 0] == pytest.approx(np.log(0.2024 / ts), abs=1e-5)
    # with no ending close allowed (a model no device holds: here the mask edited by hand)
    # the entries stay: the rule then compares them with the network's close
    env, obs = _relay_chain()
    env._mask[np.arange(3) * 4 + 3], env._two = False, None
    two = two_stage(env, env._bound())
    assert two[2, 0] == pytest.approx(np.log(0.2368 / ts), abs=1e-5)
    assert two[0, 0] == pytest.approx(np.log(0.2408 / ts), abs=1e-5)
    # with a pending group: no estimate (CLIP everywhere)
    env, _ = _relay_chain()
    assert env.action_masks()[3 * 4 + 2]
    obs, *_ = env.step(3 * 4 + 2)           # add the server
    assert env.group == [2] and (obs["two_stage"] == np.float32(CLIP)).all()


def test_two_stage_partners_include_the_source(monkeypatch):
    """The second stage's device is one of the TWO_STAGE_PARTNERS fastest free devices or
    the source (ending there needs no return flow). With one partner (the server, the
    fastest), block 0 on the server then the rest on the camera, the source: 0.024 + 0.008
    + 0.044 + 0.64 = 0.716 s (test above), not the phone's 0.2368; block 0 on the camera
    then the server: 0.2408 as before."""
    from dora_rl.envs import stage_two

    monkeypatch.setattr(stage_two, "TWO_STAGE_PARTNERS", 1)
    env, obs = _relay_chain()
    two = obs["two_stage"].astype(float)
    assert two[2, 0] == pytest.approx(np.log(0.716 / 0.032), abs=1e-5)
    assert two[0, 0] == pytest.approx(np.log(0.2408 / 0.032), abs=1e-5)
    assert env._two[2][2, 0] == 0 and env._two[2][0, 0] == 2          # the camera; the server


def test_two_stage_under_an_energy_objective_is_the_window_energy_with_the_relays_idle():
    """Energy entries by hand (over P* T*, P* = (5 + 5 + 30) / 3 W, T* = 0.032 s), the doc's
    worked example 5 with the request period P = 0.5 s: ending on the server, the cam's 2 W
    and the server's 5 W idle over P (3.5) + the server's 25 W over 0.04 s (1.0) + radio,
    entry 200 kB x (0.08 + 0.05) J/MB (0.026) and return 8 kB x (0.05 + 0.08) (0.00104) + the
    relaying phone's 0.5 W idle over P (0.25): 4.77704 J - the doc's 4.81864 J less the
    phone's relayed radio (0.0416 J; relays' radio is left out). Block 0 on the server then
    the rest on the phone (a participant, no relay): idle (2 + 5 + 0.5) x 0.5 (3.75) + 25 x
    0.008 + 4.5 x 0.16 (0.92) + radio 0.026 + 400 kB x (0.05 + 0.1) (0.06) + 8 kB x (0.1 +
    0.08) (0.00144): 4.75744 J (on the camera instead: 6.678 J, its period 0.64 s)."""
    env, obs = _relay_chain("energy")
    two, unit = obs["two_stage"].astype(float), 40.0 / 3.0 * 0.032
    assert two[2, 3] == pytest.approx(np.log(4.77704 / unit), abs=1e-5)
    assert two[2, 0] == pytest.approx(np.log(4.75744 / unit), abs=1e-5)


def test_two_stage_checks_the_battery_targets_at_each_devices_duty():
    """Worked example 5 with a battery target (the phone: 43 200 J, 0.5 W idle, 4.5 W
    dynamic; targets met by 20 %, TWO_STAGE_MARGIN). Block 0 on the server then the rest on
    the phone: its duty 0.16 s of the 0.5 s period (0.32), its radio 400 kB + 8 kB x 0.1
    J/MB over 0.5 s (0.0816 W): 0.5 + 4.5 x 0.32 + 0.0816 = 2.0216 W, 5.936 h - kept under a
    4.9 h target (5.88 h with the margin); under 5 h (6 h) the entry is the plan with the
    rest on the camera instead (0.716 s, the camera has no battery). Ending on the server, the
    phone relays: its idle alone lasts 24 h - kept under a 19 h target (22.8), CLIP under
    22 h (26.4)."""
    from dora_rl.envs.qoe_bound import QoEBound as QB

    ts = 0.032
    for hours, want in ((4.9, 0.2368), (5.0, 0.716)):
        _, obs = _relay_chain(min_battery_hours=hours)
        assert float(obs["two_stage"][2, 0]) == pytest.approx(np.log(want / ts), abs=1e-5)
    for hours, ok in ((19.0, True), (22.0, False)):
        _, obs = _relay_chain(min_battery_hours=hours)
        got = float(obs["two_stage"][2, 3])
        assert (got == pytest.approx(np.log(0.0688 / ts), abs=1e-5)) if ok else got == np.float32(CLIP)

    class Phone:            # QoEBound.battery_ok_at's fields only
        bj, idle, dyn_w, min_h = np.array([43200.0]), np.array([0.5]), np.array([4.5]), 5.0
    at = np.array([0])
    assert QB.battery_ok_at(Phone, at, 0.32, 0.0816)[0]                       # 5.936 h >= 5 h
    assert not QB.battery_ok_at(Phone, at, 0.32, 0.0816, 1.2)[0]              # < 6 h
    assert not QB.battery_ok_at(Phone, at, 0.5, 0.0)[0]                       # 2.75 W: 4.36 h


def test_group_key_marks_the_group_whose_plan_beats_the_two_stage_rules_choices():
    """docs/cost-model.md's worked example 4 (cam feeding boardA and boardB, 200 GFLOP/s
    each): the whole model on {boardA, boardB} takes 0.05 + 0.017 + 0.00164 = 68.64 ms, on
    boardA alone 0.1 + 0.017 + 0.00164 = 118.64 ms (the best ending close; a two-stage plan
    computes the 0.1 s in sequence too), so the "group" key marks both boards; after boardA's
    add it marks boardB, the member still to add, and the stage closed on it is the plan
    the key was computed for. An add outside the group drops it."""
    from dora_rl.envs.stage_group import group_plan
    from tests.toy import HUB, scenario

    env = StageEnv(scenario=scenario(HUB), max_devices=3, max_blocks=4, qoe_masks=False)
    obs, _ = env.reset(seed=0)
    assert group_plan(env) == [(0, 4, (1, 2))] and obs["group"].tolist() == [0.0, 1.0, 1.0]    # ends at 4 = Bm
    assert env.inst.finish([(0, 4, (1, 2))])[2].latency_ms == pytest.approx(68.64)
    assert env.inst.finish([(0, 4, (1,))])[2].latency_ms == pytest.approx(118.64)
    obs, *_ = env.step(3 * 4 + 1)                   # add boardA
    assert env._gplan == [(0, 4, (1, 2))] and obs["group"].tolist() == [0.0, 0.0, 1.0]
    _, _, done, _, info = env.step(2 * 4 + 3)       # close [0, 4) on the group + boardB
    assert done and info["objective"] == pytest.approx(68.64)
    env.reset(seed=0)
    assert env.action_masks()[3 * 4 + 0]
    obs, *_ = env.step(3 * 4 + 0)                   # add the camera: not a member
    assert env._gplan is None and not obs["group"].any()


def test_a_two_stage_entry_below_every_ending_close_is_a_plan_better_on_the_cost_model():
    """Along random rollouts on random instances (6-12 devices, 24-60 blocks), wherever the
    least allowed entry of a close that leaves a rest is below the least allowed ending
    close's (the two-stage rule takes it), that close and its partner make a plan better, by
    the planners' order on the cost model, than ending on the best allowed ending close
    (`stage_two._verify`: the estimate is optimistic, and its entries are CLIP where the
    exact plans disagree: without it, 2 of these 17 states broke this). Some state has such
    an entry."""
    from dora_rl.envs.stage_two import plan_preference

    rng, seen = np.random.default_rng(5), 0
    for n, B in ((6, 24), (8, 40), (12, 60)):
        for sc in _scenarios(n, B, 10, 35):
            env = StageEnv(scenario=sc, max_devices=16, max_blocks=64)
            obs, _ = env.reset(seed=0)
            while not env.done:
                D, Bm, p = env.max_devices, env.max_blocks, env.p
                cm = env._mask[:D * Bm].reshape(D, Bm)[:n]
                two = obs["two_stage"].astype(float)[:n]
                ends = np.where(cm[:, B - 1], two[:, B - 1], np.inf)
                rest = np.where(cm[:, :B - 1], two[:, :B - 1], np.inf)
                bar = min(ends.min(), CLIP)
                if not env.group and np.isfinite(ends.min()) and rest.size and rest.min() < bar - 1e-4:
                    d, j = (int(x) for x in np.unravel_index(int(rest.argmin()), rest.shape))
                    e = int(env._two[2][d, j])
                    pair = plan_preference(env, [(p, j + 1, (d,)), (j + 1, B, (e,))])
                    one = plan_preference(env, [(p, B, (int(ends.argmin()),))])
                    assert pair is not None and (one is None or pair < one)
                    seen += 1
                allowed = np.flatnonzero(env.action_masks())
                obs, *_ = env.step(int(rng.choice(allowed)))
    assert seen >= 3


def test_a_marked_plan_is_compliant_better_than_both_rule_choices_and_followed():
    """Along random rollouts on random latency instances (8-16 devices, 40-60 blocks), wherever
    the group key marks a plan at a state with no pending group (`stage_group.group_plan`: a
    data-parallel group or a balanced chain), that plan is compliant on the cost model and
    better, by the planners' order, than both plans the two-stage rule would take; the key
    marks its first stage's members with its end (0.5 + 0.5 r / Bm); and taking that stage's
    steps leaves the env following the rest of it (`_gplan`). Some marked plan is a chain of
    two or more stages."""
    from dora_rl.envs.stage_group import group_plan
    from dora_rl.envs.stage_two import plan_preference, rule_choices

    rng, seen, chains = np.random.default_rng(7), 0, 0
    for n, B in ((8, 40), (12, 50), (16, 60)):
        for sc in _scenarios(n, B, 20, 36, objective="latency"):
            env = StageEnv(scenario=sc, max_devices=16, max_blocks=64)
            obs, _ = env.reset(seed=0)
            while not env.done:
                plan = None if env.group or env._gplan else group_plan(env)
                if plan:
                    seen, chains = seen + 1, chains + (len(plan) > 1)
                    got = plan_preference(env, plan)
                    alts = [plan_preference(env, a) for a in rule_choices(env, obs["two_stage"].astype(float),
                                                                           env._two[2])[:2] if a is not None]
                    assert got is not None and not got[0] and all(k is None or got < k for k in alts)
                    l, r, devs = plan[0]
                    want = np.zeros(16, np.float32)
                    want[list(devs)] = 0.5 + 0.5 * r / 64
                    assert obs["group"].tolist() == want.tolist()
                    for d in devs[:-1]:
                        obs, *_ = env.step(16 * 64 + d)
                    obs, *_ = env.step(devs[-1] * 64 + r - 1)
                    assert env.done or env._gplan == plan[1:]
                    continue
                allowed = np.flatnonzero(env.action_masks())
                obs, *_ = env.step(int(rng.choice(allowed)))
    assert seen >= 3 and chains >= 1


def test_two_stage_key_computes_the_closes_that_can_be_least_and_any_other_on_demand(monkeypatch):
    """`stage_two._two_stage` computes exact candidates only for the closes whose lower bound
    is within _SLACK of the least entry found (in rising bound, in chunks). Along random
    rollouts on random instances (10-16 devices, 40-60 blocks, both objectives), against the
    whole table (_SLACK infinite: every close computed), with the defaults and with chunks
    of 3 closes (_FIRST = _CHUNK = 3): every entry of the key is the whole table's or CLIP,
    the same wherever the whole table's is within _SLACK of its least (so the least and the
    first close at it, which the rules take, are the same), and every allowed close's
    partner and `Partners.entry` are the whole table's. Some state leaves closes out, and
    some has finite entries."""
    from dora_rl.envs import stage_two

    rng, finite, pruned, SLACK = np.random.default_rng(9), 0, 0, stage_two._SLACK
    for n, B in ((10, 40), (16, 60)):
        for objective in ("latency", "energy"):
            for sc in _scenarios(n, B, 2, 38, objective=objective):
                env = StageEnv(scenario=sc, max_devices=16, max_blocks=64)
                env.reset(seed=0)
                while not env.done:
                    got = {}
                    for first, chunk, slack in ((3, 3, SLACK), (64, 2048, SLACK), (64, 2048, np.inf)):
                        for k, v in (("_FIRST", first), ("_CHUNK", chunk), ("_SLACK", slack)):
                            monkeypatch.setattr(stage_two, k, v)
                        env._two = None
                        two = two_stage(env, env._bound()).copy()
                        part = env._two[2]
                        allowed = list(zip(*np.nonzero(env._mask[:16 * 64].reshape(16, 64))))
                        got[chunk, slack] = (two, [part[d, j] for d, j in allowed], [part.entry((d, j))
                                                                                      for d, j in allowed])
                    full = got[2048, np.inf]
                    rest = full[0][:, :env.inst.B - 1]
                    near = rest <= rest.min() + np.log1p(SLACK) - 1e-9
                    for key in ((3, SLACK), (2048, SLACK)):
                        two, partners, entries = got[key]
                        assert partners == full[1] and entries == full[2]
                        assert ((two == full[0]) | (two == CLIP)).all()
                        assert (two[:, :env.inst.B - 1][near] == rest[near]).all()
                        pruned += int((two != full[0]).sum())
                    finite += sum(e >= 0 for e in full[1])
                    env.advance(int(rng.choice(np.flatnonzero(env._mask))))
    assert finite > 0 and pruned > 0


def test_energy_terms_of_a_subset_equal_terms_built_for_it():
    """`Energy.subset` (the live devices' slice `_two_stage` takes) equals the terms built
    for those devices anew, at the first state and after a close, relays included."""
    from dora_rl.envs.stage_energy import Energy

    checked = 0
    for sc in _scenarios(12, 30, 4, 41):
        env = StageEnv.planning(Instance(sc, 12))
        for step in range(2):
            qb = env._bound()
            free = np.array([d for d in range(env.inst.n) if d not in env.used], dtype=np.int64)
            keep = np.arange(len(free)) % 2 == 0
            whole = Energy(env, qb, free)
            _ = whole.r_in                       # cached before the slice, as `_two_stage` has it
            part, fresh = whole.subset(keep), Energy(env, qb, free[keep])
            for k in ("free", "rin_own", "rin", "send_d", "r_in"):
                np.testing.assert_array_equal(getattr(part, k), getattr(fresh, k))
            e = free[:3]
            np.testing.assert_array_equal(part.rel_pairs(e), fresh.rel_pairs(e))
            checked += 1
            closes = np.flatnonzero(env._mask[:env.max_devices * env.max_blocks])
            if step == 0 and len(closes):
                env.advance(int(closes[len(closes) // 2]))
                if env.done:
                    break
    assert checked >= 6
