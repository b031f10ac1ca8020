"""Typed errors. Every user-facing failure is a `DoraError` subclass whose message
names the field that is wrong and how to fix it; the CLI prints it on one line and
exits with code 2. Nothing else is allowed to escape to a user as a traceback."""

from __future__ import annotations


class DoraError(Exception):
    """Base of every error dora_rl raises on purpose (bad input, infeasibility)."""


class ProfileError(DoraError):
    """A model name or model profile is unknown or malformed."""


class ClusterError(DoraError):
    """A device, link or medium is malformed, or the cluster is disconnected."""


class ScenarioError(DoraError):
    """A scenario (YAML or dict) is malformed or inconsistent."""


class PlanError(DoraError):
    """A plan is malformed or does not fit its scenario (blocks, devices, shares)."""


class NoFeasiblePlan(DoraError):
    """No plan meets the constraints; the message says which one and by how much the
    best plan missed it (`constraint`, `best`, `required` carry the numbers)."""

    def __init__(self, message: str, *, constraint: str = "", best: float | None = None,
                 required: float | None = None):
        super().__init__(message)
        self.constraint = constraint
        self.best = best
        self.required = required


class PlannerError(DoraError):
    """A planner cannot handle this request (unknown name, unsupported workload, too
    large an instance for an exact search)."""


class AgentError(DoraError):
    """A trained agent is missing, corrupt or does not match the scenario."""


class RuntimeFault(DoraError):
    """The runtime could not start, reach or keep its workers."""


class OutputError(DoraError):
    """An output file or folder (--out, --plot, ...) cannot be written."""


class TraceError(DoraError):
    """A bandwidth trace is empty, non-monotonic or otherwise unusable."""


class ScheduleError(PlanError):
    """A plan's `schedule` section is malformed or names a flow or medium the plan does
    not have (docs/formats.md, "Schedule")."""
