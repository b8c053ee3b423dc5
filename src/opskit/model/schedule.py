"""A runbook's `schedule:` block: when it runs on its own, within which window, what it may
pass unattended, and whom it tells. Pure data; OnCalendar expressions are checked by
opskit.schedule (a parser, or systemd itself where it is installed)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, WithJsonSchema, field_validator

from .common import Duration, Name, SecretRef, StrictModel


def _listed(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def one_or_more(item_schema: dict[str, Any]) -> WithJsonSchema:
    return WithJsonSchema({"anyOf": [item_schema, {"type": "array", "items": item_schema}]})


# One expression, or a list of them (systemd takes several OnCalendar= lines).
Expressions = Annotated[list[str], BeforeValidator(_listed), one_or_more({"type": "string"})]

NotifyEvent = Literal["failure", "success", "approval"]
# The risks a standing approval may name: read-only steps never ask.
ApprovableRisk = Literal["change", "destructive"]
DEFAULT_EVENTS: tuple[NotifyEvent, ...] = ("failure", "approval")


class Window(StrictModel):
    """A maintenance window: open for `duration` from each elapse of `start` (by default the
    schedule's own `on:`). A scheduled run outside it refuses to start; one still running
    when it closes starts nothing new, lets running steps finish and is journaled
    interrupted, for `opskit resume` or the next window to continue."""

    start: Expressions | None = Field(
        None, description="OnCalendar expression(s) opening the window (default: `on:`)"
    )
    duration: Duration = Field(..., description="how long the window stays open")


class Approve(StrictModel):
    """Standing approvals: the gates a scheduled run may pass with nobody at the terminal.
    A gate not named here fails closed before any change, as without a terminal."""

    steps: list[Name] = Field(default_factory=list, description="gated step ids it may pass")
    risk: list[ApprovableRisk] = Field(
        default_factory=list, description="risk levels whose gates it may pass"
    )
    max_targets: int | None = Field(
        None, ge=0, description="at most this many targets changed, else the run needs approval"
    )


class Notify(StrictModel):
    """Who hears about a scheduled run: apprise URLs and an Uptime Kuma push URL, both as
    secret references (a URL holds its token), never a value in the runbook."""

    on: Annotated[list[NotifyEvent], BeforeValidator(_listed)] = Field(
        default_factory=lambda: list(DEFAULT_EVENTS),
        description="failure (failed or interrupted), success, approval (needs approval)",
    )
    urls: Annotated[list[SecretRef], BeforeValidator(_listed)] = Field(
        default_factory=list, description="apprise URLs (ntfy://, gotify://, discord://, ...)"
    )
    heartbeat: SecretRef | None = Field(
        None, description="an Uptime Kuma push monitor URL: status=up|down after every run"
    )


class Schedule(StrictModel):
    """When the runbook runs on its own (a systemd timer on the controller) and how."""

    on: Expressions = Field(..., min_length=1, description="systemd OnCalendar expression(s)")
    window: Window | None = None
    approve: Approve = Field(default_factory=Approve)
    notify: Notify | None = None
    randomized_delay: Duration | None = Field(
        None, description="spread the start by up to this much (RandomizedDelaySec=)"
    )
    timeout: Duration | None = Field(
        None, description="systemd stops the run after this long (TimeoutStartSec=)"
    )
    lock_wait: Duration | None = Field(
        None, description="wait this long for targets another run holds (else exit 5)"
    )

    @field_validator("window", mode="before")
    @classmethod
    def _duration_alone(cls, value: Any) -> Any:
        # `window: 2h`: open for two hours from each elapse of `on:`.
        return {"duration": value} if isinstance(value, str | int | float) else value

    @property
    def window_start(self) -> list[str]:
        if self.window is not None and self.window.start:
            return self.window.start
        return self.on


def schedule_from(value: Any) -> Any:
    """A bare string stays valid: `schedule: "*:0/15"` is `schedule: {on: "*:0/15"}`."""
    return {"on": value} if isinstance(value, str) else value
