"""Discrete-event simulator of one plan under one schedule, and the network scheduler
that searches schedules on it (docs/simulator.md). Imports only the layers below
(cost, plan, scenario)."""

from dora_rl.sim.scheduler import Scheduled, schedule_plan
from dora_rl.sim.simulate import SimResult, simulate

__all__ = ["Scheduled", "SimResult", "schedule_plan", "simulate"]
