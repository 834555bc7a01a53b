"""``/api/schedules/{id}``: who hears about a schedule's runs (administrators), and the runs
themselves (producers), each turned into e-mails to the lists whose rule matches, or only
shown them (a dry run)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, status
from fastapi.responses import JSONResponse

from api.auth import Admin, Caller
from api.errors import answers
from api.key_limits import new_deliveries
from api.services import ApiServices, services
from config.errors import InvalidInputError
from tasks.message_input import MessageInput
from tasks.reports.model import SCHEDULE_ID_PATTERN, RunReport
from tasks.reports.rules import Notification
from tasks.reports.service import RunPreview, RunResult

__all__ = ["router"]

router = APIRouter(prefix="/api/schedules", tags=["schedules"], responses=answers(401, 503))
WITH_BODY = answers(400, 403, 413, 422)

Services = Annotated[ApiServices, Depends(services)]
ScheduleId = Annotated[str, Path(pattern=SCHEDULE_ID_PATTERN)]


@router.put("/{schedule_id}/notification", responses=WITH_BODY)
def save_notification(
    schedule_id: ScheduleId, notification: Notification, _: Admin, found: Services
) -> dict[str, Any]:
    """Save the schedule's recipient lists and rules (replaces what was saved)."""
    found.context.schedules.save(schedule_id, notification)
    return {"schedule_id": schedule_id, **notification.model_dump(mode="json")}


@router.get("/{schedule_id}/notification", responses=answers(403, 404, 422))
def read_notification(schedule_id: ScheduleId, _: Admin, found: Services) -> dict[str, Any]:
    notification = found.context.schedules.get(schedule_id)
    return {"schedule_id": schedule_id, **notification.model_dump(mode="json")}


@router.delete(
    "/{schedule_id}/notification",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=answers(403, 404, 422),
)
def delete_notification(schedule_id: ScheduleId, _: Admin, found: Services) -> None:
    found.context.schedules.delete(schedule_id)


@router.post(
    "/{schedule_id}/runs",
    status_code=status.HTTP_202_ACCEPTED,
    # The real run's answer; a dry run's is the 200 below, returned as it is.
    response_model=RunResult,
    responses={
        status.HTTP_200_OK: {
            "model": RunPreview,
            "description": "`dry_run=true`: what the run would send; nothing was accepted",
        },
        **WITH_BODY,
        **answers(404, 429),
    },
)
def post_run(
    schedule_id: ScheduleId,
    run: RunReport,
    key: Caller,
    found: Services,
    dry_run: Annotated[bool, Query()] = False,
) -> RunResult | JSONResponse:
    """E-mail a finished run's results to each list whose rule matches; a run posted again
    sends nothing and answers what was sent the first time.

    With `dry_run=true` nothing is sent, stored or counted against the key's limits (no
    delivery, no idempotency key taken, the schedule's previous status unchanged): the
    answer (200) says per list whether its rule matched and, if so, the e-mail it would get,
    `preview: {subject, text, html, to}`, with `"dry_run": true`. The run is validated as a
    real one is, with the same errors (except 429: a dry run is not counted); a run posted
    before previews nothing (`"repeated": true`), since posting it again would send nothing."""
    if run.schedule_id != schedule_id:
        raise InvalidInputError(
            f"the run is of schedule {run.schedule_id!r}, posted to {schedule_id!r}",
            field="schedule_id",
        )
    if dry_run:
        preview = found.reports.preview(run)
        return JSONResponse(preview.model_dump(mode="json"), status_code=status.HTTP_200_OK)

    def admit(messages: list[MessageInput]) -> None:
        found.key_quota.admit(
            key, new_deliveries(found.context.deliveries, key, messages, shared=True)
        )

    return found.reports.post(run, created_by=key.name, admit=admit)
