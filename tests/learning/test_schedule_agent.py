"""The schedule agent (dora_rl/learning/schedule_agent.py; trained_agents/dora_rl__Schedule-v0):
it loads in plain SB3 and re-plays its results.json; the `ppo` planner attaches its schedule
only where the simulator rates it no worse than FIFO (else FIFO: the rule); without an agent
the coordinate-search scheduler decides, with a warning."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import yaml

from dora_rl.envs.schedule import ScheduleEnv, contention_instance
from dora_rl.errors import AgentError
from dora_rl.learning.schedule_agent import Decision, ScheduleAgent, default_schedule_agent_path, schedule_for
from dora_rl.scenario import load_scenario
from dora_rl.schedule import Schedule
from dora_rl.sim import simulate
from dora_rl.sim.scheduler import key, objective

FOLDER = default_schedule_agent_path()
shipped = pytest.mark.skipif(not (FOLDER / "model.zip").is_file(), reason="no schedule agent shipped")


@shipped
def test_shipped_agent_loads_in_plain_sb3_and_replays_its_results():
    from sb3_contrib import MaskablePPO

    model = MaskablePPO.load(str(FOLDER / "model.zip"), device="cpu")     # plain SB3, no custom objects
    res = json.loads((FOLDER / "results.json").read_text())
    assert res["check"], "results.json must record the network's schedules to re-play"
    for c in res["check"][:2]:                                           # a cheap subset
        env = ScheduleEnv(instances=[contention_instance(c["seed"])[1:]])
        obs, _ = env.reset(options={"instance": 0})
        done = False
        while not done:
            a, _ = model.predict(obs, deterministic=True, action_masks=env.action_masks())
            obs, _, done, _, info = env.step(int(a))
        assert info["microbatches"] == c["microbatches"] and info["schedule"] == c["schedule"]
        assert info["sim"]["latency_ms"] == pytest.approx(c["objective"], rel=1e-9)    # contention: latency
    cfg = yaml.safe_load((FOLDER / "config.yml").read_text())
    assert cfg["kind"] == "schedule" and cfg["train_seconds"] > 0
    h = res["heldout"]["summary"]
    # the card's headline, as recorded: the network alone beats the uniform masked policy
    assert h["network_gain"] > h["uniform_gain"]
    for part in ("heldout", "presets"):
        for r in res[part]["rows"]:
            assert r["gain"] >= 1 - 1e-9                                 # after the rule: never below FIFO
            assert r["rule"] == (r["network_gain"] < r["gain"] - 1e-12) or r["rule"]


class _Last:
    """A stand-in network that always picks the last allowed choice (most micro-batches
    candidates last, the last priority rule, backward x 8 buckets, the most warm-up)."""

    def predict(self, obs, deterministic=True, action_masks=None):
        return int(np.flatnonzero(action_masks)[-1]), None


def test_the_rule_keeps_fifo_exactly_where_the_agents_schedule_is_worse():
    agent = ScheduleAgent(_Last(), {}, Path("."))
    seen = set()
    for s in range(8):
        _, cm, plan = contention_instance(s)
        d = agent.decide(cm, plan)
        fifo = simulate(cm, plan, validate=False)
        prop = dict(d.proposed)
        mine = dataclasses.replace(plan, microbatches=prop.pop("microbatches"), schedule=Schedule.from_dict(prop))
        own = simulate(cm, mine, validate=False)        # the simulator on the agent's own choice
        assert own.latency_ms == pytest.approx(d.network.latency_ms, rel=1e-12)
        worse = own.latency_ms > fifo.latency_ms * (1 + 1e-9) or key(cm, own) > key(cm, fifo)
        assert (d.by == "rule") == worse, s
        if d.by == "rule":
            assert d.plan.schedule is None and d.plan.microbatches == plan.microbatches
            assert d.result.latency_ms == pytest.approx(fifo.latency_ms, rel=1e-12)
        else:
            assert d.result.latency_ms <= fifo.latency_ms * (1 + 1e-9)
        seen.add(d.by)
    assert seen == {"agent", "rule"}          # both branches exercised on these seeds


def test_without_an_agent_the_scheduler_decides_with_a_warning(tmp_path, caplog):
    _, cm, plan = contention_instance(1)
    with caplog.at_level(logging.WARNING, logger="dora_rl.learning.schedule_agent"):
        d = schedule_for(cm, plan, tmp_path / "nothing")
    assert isinstance(d, Decision) and d.by == "scheduler"
    assert "coordinate-search scheduler" in caplog.text
    assert objective(cm, d.result) <= objective(cm, d.fifo)
    from dora_rl.errors import PlannerError
    from dora_rl.planners import get_planner

    p = get_planner("ppo", schedule_agent=str(tmp_path / "nothing"))
    p.plan(load_scenario("edge_cluster"))
    assert p.schedule_decision.by == "scheduler"
    with pytest.raises(PlannerError, match="schedule="):
        get_planner("ppo", schedule="auto").plan(load_scenario("edge_cluster"))


def test_a_mismatched_agent_is_an_error(tmp_path):
    from dora_rl.learning.schedule_agent import layout, load_schedule_agent

    (tmp_path / "model.zip").write_bytes(b"not a zip")
    (tmp_path / "config.yml").write_text(yaml.safe_dump({**layout(), "n_obs": 3}))
    with pytest.raises(AgentError, match="n_obs"):
        load_schedule_agent(tmp_path)
    (tmp_path / "config.yml").write_text(yaml.safe_dump(layout()))
    with pytest.raises(AgentError, match="corrupt"):
        load_schedule_agent(tmp_path)
    (tmp_path / "config.yml").write_text("kind: [schedule")      # unterminated flow sequence
    with pytest.raises(AgentError, match="not valid YAML"):
        load_schedule_agent(tmp_path)


@shipped
@pytest.mark.parametrize("name", ["traffic_analytics", "edge_cluster"])
def test_ppo_planner_plan_is_rated_no_worse_than_fifo(name):
    from dora_rl.cost import CostModel
    from dora_rl.planners import get_planner

    sc = load_scenario(name)
    cm = CostModel(sc)
    p = get_planner("ppo")
    plan = p.plan(sc, cm)
    fifo_plan = get_planner("ppo", schedule="fifo").plan(sc, cm)
    d = p.schedule_decision
    assert d.by in ("agent", "rule")
    assert [(s.start, s.end, s.devices) for s in plan.stages] == [(s.start, s.end, s.devices)
                                                                   for s in fifo_plan.stages]
    got, fifo = simulate(cm, plan, validate=False), simulate(cm, fifo_plan, validate=False)
    assert fifo_plan.schedule is None
    assert got.latency_ms <= fifo.latency_ms * (1 + 1e-9) and key(cm, got) <= key(cm, fifo)
    rec = {r["instance"]: r for r in json.loads((FOLDER / "results.json").read_text())["presets"]["rows"]}
    if rec[name]["gain"] > 1 + 1e-9:        # edge_cluster: the agent's schedule is kept (4 more warm-up forwards)
        assert d.by == "agent" and plan.schedule is not None
        assert objective(cm, fifo) / objective(cm, got) == pytest.approx(rec[name]["gain"], rel=1e-9)
