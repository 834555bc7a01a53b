"""A scheduled run's report as producers post it: the run, its flows and their outcomes."""

from __future__ import annotations

import re
from collections import Counter
from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
)

from config.header_text import single_line
from tasks.message_input import AttachmentInput

__all__ = [
    "SCHEDULE_ID_PATTERN",
    "ItemOutcome",
    "ReportItem",
    "RunReport",
    "RunStatus",
    "ScheduleId",
    "web_link",
]


class RunStatus(StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    PARTIALLY_PASSED = "partially_passed"
    STOPPED = "stopped"
    ERROR = "error"

    @property
    def label(self) -> str:
        """As the subject shows it: ``PARTIALLY PASSED``."""
        return self.value.replace("_", " ").upper()


class ItemOutcome(StrEnum):
    # Declared in the order the counts are given: "47 passed, 3 failed".
    PASSED = "passed"
    FAILED = "failed"
    SKIPPED = "skipped"
    ERROR = "error"


# The order a report lists its flows in: what needs attention first.
_ATTENTION_ORDER = (ItemOutcome.FAILED, ItemOutcome.ERROR, ItemOutcome.SKIPPED, ItemOutcome.PASSED)


def web_link(value: str) -> str:
    """Only http(s) links: a report's links become ``href``s (``javascript:`` never does)."""
    if not re.match(r"^https?://[^\s<>\"]+$", value):
        raise ValueError("must be an http:// or https:// URL")
    return value


# Also a Redis key part: no ":" or spaces, so no schedule's keys can be another's.
SCHEDULE_ID_PATTERN = r"^[A-Za-z0-9._-]{1,100}$"
ScheduleId = Annotated[str, Field(pattern=SCHEDULE_ID_PATTERN)]
Line = Annotated[str, Field(min_length=1, max_length=300), AfterValidator(single_line)]
Link = Annotated[str, Field(max_length=2000), AfterValidator(web_link)]


class ReportItem(BaseModel):
    """One flow of the run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    flow: Line
    outcome: ItemOutcome
    duration_seconds: float | None = Field(default=None, ge=0)
    message: str | None = Field(default=None, max_length=10_000)
    link: Link | None = None


class RunReport(BaseModel):
    """A finished run; the counts per outcome are computed from its items."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schedule_id: ScheduleId
    schedule_name: Line
    run_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9._:-]{1,80}$")]
    # With a time zone ("Z" or "+01:00"): a time without one could be any time.
    started_at: AwareDatetime
    finished_at: AwareDatetime
    status: RunStatus
    link: Link | None = None
    items: list[ReportItem] = Field(default_factory=list, max_length=10_000)
    attachments: list[AttachmentInput] = Field(default_factory=list, max_length=20)

    @field_validator("finished_at")
    @classmethod
    def _finished_after_start(cls, value: datetime, info: ValidationInfo) -> datetime:
        started = info.data.get("started_at")
        if started is not None and value < started:
            raise ValueError("is before started_at")
        return value

    @property
    def counts(self) -> dict[ItemOutcome, int]:
        """Items per outcome (passed, failed, skipped, error), only the outcomes that occur."""
        counted = Counter(item.outcome for item in self.items)
        return {outcome: counted[outcome] for outcome in ItemOutcome if counted[outcome]}

    @property
    def items_in_report_order(self) -> list[ReportItem]:
        """Failed and errored flows first, then skipped, then passed; stable within each."""
        return sorted(self.items, key=lambda item: _ATTENTION_ORDER.index(item.outcome))

    @property
    def duration_seconds(self) -> float:
        return (self.finished_at - self.started_at).total_seconds()
