"""opskit's data: inventory, runbook, plan. Pure pydantic models, no I/O."""

from .common import Duration, StrictModel, did_you_mean, format_duration, parse_duration
from .inventory import (
    LOCAL,
    Guest,
    HealthCheck,
    Host,
    Inventory,
    ProxmoxCluster,
    SelectorError,
    Service,
    Target,
)
from .plan import Change, ChangeKind, Outcome, Risk
from .runbook import Param, Runbook, Step, suggest_kind

__all__ = [
    "LOCAL",
    "Change",
    "ChangeKind",
    "Duration",
    "Guest",
    "HealthCheck",
    "Host",
    "Inventory",
    "Outcome",
    "Param",
    "ProxmoxCluster",
    "Risk",
    "Runbook",
    "SelectorError",
    "Service",
    "Step",
    "StrictModel",
    "Target",
    "did_you_mean",
    "format_duration",
    "parse_duration",
    "suggest_kind",
]
