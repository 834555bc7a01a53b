"""A posted run becomes one e-mail per recipient list whose rule matches, once per run."""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel

from tasks.context import OutboxContext
from tasks.message_input import MessageInput
from tasks.producer import Producer
from tasks.reports.model import RunReport, RunStatus
from tasks.reports.render import ReportRenderer
from tasks.reports.rules import Rule
from tasks.reports.store import ScheduleStore
from worker.records import Priority

__all__ = ["ListResult", "ReportService", "RunResult", "report_service"]


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
        notification = self._schedules.get(report.schedule_id)
        previous = self._schedules.last_status(report.schedule_id)
        matched = [
            (index, recipients)
            for index, recipients in enumerate(notification.lists)
            if recipients.rule.matches(report.status, previous)
        ]
        delivery_ids: dict[int, str] = {}
        if matched:
            rendered = self._renderer.render(report)
            messages = [
                MessageInput(
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
            ]
            admit(messages)
            # Their idempotency keys name the run, whoever posts it: shared, not the key's own.
            created = self._producer.enqueue_many(
                messages, created_by=created_by, shared_idempotency=True
            )
            delivery_ids = {index: c.id for (index, _), c in zip(matched, created, strict=True)}
        result = RunResult(
            schedule_id=report.schedule_id,
            run_id=report.run_id,
            status=report.status,
            previous_status=previous,
            lists=[
                ListResult(
                    rule=recipients.rule,
                    to=recipients.to,
                    matched=index in delivery_ids,
                    delivery_id=delivery_ids.get(index),
                )
                for index, recipients in enumerate(notification.lists)
            ],
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


def report_service(context: OutboxContext, producer: Producer) -> ReportService:
    """The report service of a process: its schedules, its producer, the operator's
    templates (``OUTBOX_TEMPLATE_DIR``) before outbox's own."""
    return ReportService(context.schedules, producer, ReportRenderer(context.settings.template_dir))
