"""A posted run becomes one e-mail per recipient list whose rule matches, once per run."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel

from tasks.context import OutboxContext
from tasks.message_input import MessageInput
from tasks.producer import Producer
from tasks.reports.model import RunReport, RunStatus
from tasks.reports.render import ReportRenderer
from tasks.reports.rules import Notification, Rule
from tasks.reports.store import ScheduleStore
from worker.records import Priority

__all__ = [
    "ListPreview",
    "ListResult",
    "PreviewEmail",
    "ReportService",
    "RunPreview",
    "RunResult",
    "report_service",
]


class ListResult(BaseModel):
    """What became of one recipient list: whether its rule matched, and the e-mail if so."""

    rule: Rule
    to: list[str]
    matched: bool
    delivery_id: str | None = None


class RunResult(BaseModel):
    schedule_id: str
    run_id: str
    status: RunStatus
    previous_status: RunStatus | None
    # True when the run had been posted before: nothing was sent again.
    repeated: bool = False
    lists: list[ListResult]


class PreviewEmail(BaseModel):
    """The e-mail a matched list would get, as it would be stored (attachments aside)."""

    subject: str
    text: str | None
    html: str | None
    to: list[str]


class ListPreview(ListResult):
    # None where the rule did not match, or the run was posted before: nothing would be sent.
    preview: PreviewEmail | None = None


class RunPreview(BaseModel):
    """A run's dry run: what posting it would send, with nothing sent, stored or counted."""

    schedule_id: str
    run_id: str
    status: RunStatus
    previous_status: RunStatus | None
    # True when the run had been posted before: posting it would send nothing again.
    repeated: bool = False
    dry_run: Literal[True] = True
    lists: list[ListPreview]


def _no_limit(messages: list[MessageInput]) -> None:
    """The ``admit`` of a caller without limits (the CLI, Python code)."""


class ReportService:
    def __init__(
        self, schedules: ScheduleStore, producer: Producer, renderer: ReportRenderer
    ) -> None:
        self._schedules = schedules
        self._producer = producer
        self._renderer = renderer

    def post(
        self,
        report: RunReport,
        *,
        created_by: str | None = None,
        admit: Callable[[list[MessageInput]], None] = _no_limit,
    ) -> RunResult:
        """Send the run's e-mails, or, for a run posted before, say what was sent then.

        ``created_by`` is the API key that posted it: its e-mails are that key's to read.
        ``admit`` is shown the e-mails the run sends before any is stored, and raises to
        refuse them (the key's own limits); a run posted again sends nothing and is not
        counted.
        """
        recorded = self._schedules.recorded_run(report.schedule_id, report.run_id)
        if recorded is not None:
            return RunResult.model_validate({**recorded, "repeated": True})
        notification, previous, messages = self._emails(report)
        delivery_ids = self._enqueue(messages, created_by, admit)
        result = RunResult(
            schedule_id=report.schedule_id,
            run_id=report.run_id,
            status=report.status,
            previous_status=previous,
            lists=_list_results(notification, delivery_ids),
        )
        if not self._schedules.record_run(
            report.schedule_id,
            report.run_id,
            report.status,
            report.finished_at.timestamp(),
            result.model_dump(mode="json"),
        ):
            # A concurrent post of the same run recorded first; its e-mails are these ones
            # (same idempotency keys), so its answer is ours.
            return self.post(report)
        return result

    def _enqueue(
        self,
        messages: dict[int, MessageInput],
        created_by: str | None,
        admit: Callable[[list[MessageInput]], None],
    ) -> dict[int, str]:
        """The delivery id of each list's e-mail (by the list's index), once ``admit`` let
        them all in."""
        if not messages:
            return {}
        admit(list(messages.values()))
        # Their idempotency keys name the run, whoever posts it: shared, not the key's own.
        created = self._producer.enqueue_many(
            list(messages.values()), created_by=created_by, shared_idempotency=True
        )
        return {index: c.id for index, c in zip(messages, created, strict=True)}

    def preview(self, report: RunReport) -> RunPreview:
        """What ``post`` would send for the run, per list, without sending, storing or
        counting anything: no delivery, no idempotency key taken, no last status moved.

        It validates and raises as ``post`` does (unknown schedule, a template that fails,
        an e-mail over the size or recipient limits); a run posted before previews nothing,
        since posting it again would send nothing."""
        recorded = self._schedules.recorded_run(report.schedule_id, report.run_id)
        if recorded is not None:
            return RunPreview.model_validate({**recorded, "repeated": True})
        notification, previous, messages = self._emails(report)
        return RunPreview(
            schedule_id=report.schedule_id,
            run_id=report.run_id,
            status=report.status,
            previous_status=previous,
            lists=[
                ListPreview(
                    rule=recipients.rule,
                    to=recipients.to,
                    matched=index in messages,
                    preview=_preview(messages[index]) if index in messages else None,
                )
                for index, recipients in enumerate(notification.lists)
            ],
        )

    def _emails(
        self, report: RunReport
    ) -> tuple[Notification, RunStatus | None, dict[int, MessageInput]]:
        """The schedule's lists, its previous status, and the e-mail of each list (by its
        index) whose rule matches, checked against the producer's limits. Only reads: a post
        and its preview share it, so a preview shows exactly what the post sends."""
        notification = self._schedules.get(report.schedule_id)
        previous = self._schedules.last_status(report.schedule_id)
        matched = [
            (index, recipients)
            for index, recipients in enumerate(notification.lists)
            if recipients.rule.matches(report.status, previous)
        ]
        if not matched:
            return notification, previous, {}
        rendered = self._renderer.render(report)
        messages = {
            index: MessageInput(
                to=recipients.to,
                subject=rendered.subject,
                text=rendered.text,
                html=rendered.html,
                attachments=report.attachments,
                priority=Priority.HIGH,
                # Posting the run again after a crash finds these, not new e-mails.
                idempotency_key=f"report:{report.schedule_id}:{report.run_id}:{index}",
            )
            for index, recipients in matched
        }
        # Before any key's limits count them: a run refused for its size uses up nothing.
        for message in messages.values():
            self._producer.check_limits(message)
        return notification, previous, messages


def _list_results(notification: Notification, delivery_ids: dict[int, str]) -> list[ListResult]:
    """Each list of the schedule: matched when its e-mail was enqueued, with its delivery id."""
    return [
        ListResult(
            rule=recipients.rule,
            to=recipients.to,
            matched=index in delivery_ids,
            delivery_id=delivery_ids.get(index),
        )
        for index, recipients in enumerate(notification.lists)
    ]


def _preview(message: MessageInput) -> PreviewEmail:
    return PreviewEmail(
        subject=message.subject, text=message.text, html=message.html, to=list(message.to)
    )


def report_service(context: OutboxContext, producer: Producer) -> ReportService:
    """The report service of a process: its schedules, its producer, the operator's
    templates (``OUTBOX_TEMPLATE_DIR``) before outbox's own."""
    return ReportService(context.schedules, producer, ReportRenderer(context.settings.template_dir))
