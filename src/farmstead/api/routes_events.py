"""farmstead's own API: the event stream (Server-Sent Events) and its paged JSON form."""

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from pydantic import Field
from sse_starlette import EventSourceResponse

from farmstead.api.deps import DatabaseDep, PrincipalDep
from farmstead.fsm.roles import Role
from farmstead.metrics import EVENTS_STREAMED
from farmstead.schemas import EventPageOut
from farmstead.services import events
from farmstead.services.errors import BadRequest

router = APIRouter(tags=["events"])
EVENT_STREAM = "text/event-stream"
#: one `type` filter value (a type, or several comma-separated)
TypeName = Annotated[str, Field(max_length=500)]


def _filters(
    who: Any, workflow: int | None, task: int | None, types: list[str] | None
) -> events.Filters:
    wanted: set[str] = set()
    for t in types or []:
        wanted |= {part.strip() for part in t.split(",") if part.strip()}
    return events.Filters(
        workflow_id=workflow,
        task_id=task,
        types=frozenset(wanted) if wanted else None,
        audit=who.role == Role.ADMIN,
    )


def _after(last_event_id: str | None, after: int | None) -> int | None:
    if last_event_id is not None and last_event_id.strip():
        try:
            value = int(last_event_id.strip())
        except ValueError:
            raise BadRequest(
                "Last-Event-ID must be an event id (a whole number)", field="Last-Event-ID"
            ) from None
        if value < 0:
            raise BadRequest("Last-Event-ID must not be negative", field="Last-Event-ID")
        return value
    return after


@router.get(
    "/events",
    response_model=EventPageOut,
    responses={
        200: {
            "content": {EVENT_STREAM: {}},
            "description": "JSON page, or with `Accept: text/event-stream` a live stream",
        },
        410: {"description": "Events after the id asked for were removed by retention"},
    },
)
async def stream_events(
    request: Request,
    db: DatabaseDep,
    who: PrincipalDep,
    after: Annotated[int | None, Query(ge=0, le=2**62)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    workflow: Annotated[int | None, Query(ge=1, le=2**62)] = None,
    task: Annotated[int | None, Query(ge=1, le=2**62)] = None,
    type: Annotated[list[TypeName] | None, Query(max_length=50)] = None,
    accept: Annotated[str | None, Header(max_length=1000)] = None,
    last_event_id: Annotated[str | None, Header(max_length=30)] = None,
) -> Any:
    """Every move as an event, in Celery's words where Celery has them (`task-sent`,
    `task-received`, `task-started`, `task-succeeded`, `task-failed`, `task-retried`,
    `task-revoked`, `worker-online`, `worker-heartbeat`, `worker-offline`) and farmstead's
    otherwise (`task-held`, `task_instance-launched`, `workflow-cancel`, …), oldest first.

    With `Accept: text/event-stream`: a Server-Sent Events stream, each event's `id` its row
    id. From `Last-Event-ID` (or `after`) on: a client that reconnects, to this server process
    or another on the same database, gets exactly what it missed; with neither, from now on.
    Otherwise a JSON page of up to `limit` events after `after` (default 0: the oldest kept);
    `next_after` is where to ask next. Filters: `workflow`, `task`, `type` (repeat it, or
    comma-separate). An id older than what retention kept is answered 410."""
    feed: events.EventFeed = request.app.state.events
    filters = _filters(who, workflow, task, type)
    start = _after(last_event_id, after)
    if start is not None:
        await events.check_not_pruned(db, start)
    if EVENT_STREAM in (accept or ""):
        return EventSourceResponse(_sse(feed, start, filters), ping=15, send_timeout=30)
    found, next_after = await feed.page(start or 0, limit, filters)
    return {"data": found, "next_after": next_after}


async def _sse(feed: events.EventFeed, start: int | None, filters: events.Filters) -> Any:
    async for batch in feed.follow(start, filters):
        if batch:  # (an empty one is a keep-alive: sse-starlette sends its own pings)
            EVENTS_STREAMED.inc(len(batch))
            yield b"".join(feed.frame(event) for event in batch)  # one send for the batch
