"""Who hears about a schedule's runs: recipient lists, each with the rule that sends to it."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from config.addresses import mailbox_address
from config.header_text import single_line
from tasks.reports.model import RunStatus

__all__ = ["Notification", "RecipientList", "Rule"]


class Rule(StrEnum):
    ALWAYS = "always"
    ON_FAILURE = "on_failure"  # any status but passed
    # The status differs from the schedule's previous run: the one that finished last of
    # those posted before (a run posted late is compared with the latest known).
    ON_CHANGE = "on_change"

    def matches(self, status: RunStatus, previous: RunStatus | None) -> bool:
        """Whether a run ending in ``status`` is sent to a list with this rule; a schedule's
        first run (``previous`` None) counts as a change."""
        match self:
            case Rule.ALWAYS:
                return True
            case Rule.ON_FAILURE:
                return status is not RunStatus.PASSED
            case Rule.ON_CHANGE:
                return status is not previous


class RecipientList(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rule: Rule
    to: list[Annotated[str, AfterValidator(mailbox_address)]] = Field(min_length=1, max_length=500)


class Notification(BaseModel):
    """A schedule's notification settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(min_length=1, max_length=300), AfterValidator(single_line)]
    lists: list[RecipientList] = Field(min_length=1, max_length=20)
