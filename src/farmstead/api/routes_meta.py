"""Operator routes: liveness, readiness, the state machine tables."""

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST as CONTENT

from farmstead.api.deps import DatabaseDep
from farmstead.api.errors import error_body
from farmstead.fsm import tables_as_json
from farmstead.schemas import ErrorOut
from farmstead.services import metrics
from farmstead.services.lifecycle import readiness

router = APIRouter(tags=["operators"])


@router.get("/health")
async def health() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/ready", responses={503: {"model": ErrorOut, "description": "Not ready"}})
async def ready(db: DatabaseDep) -> Any:
    """The database is reachable and its schema is at the head revision."""
    ok, detail = await readiness(db)
    if ok:
        return {"status": "ready", **detail}
    cause = detail.pop("error", None)
    why = (
        f"database unreachable ({cause})"
        if cause
        else f"schema at {detail.get('revision')}, head is {detail.get('head')}: "
        "run farmstead db upgrade"
    )
    body = error_body("NotReady", why, status="not ready", **detail)
    return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT: {}}}})
async def prometheus(db: DatabaseDep) -> Response:
    """Prometheus metrics (the text format): requests by route, transitions by (from, to),
    events written and streamed, subscribers, reconciler sweeps and lag, executor slots,
    instances and tasks by status. Added up over every server process."""
    return Response(await metrics.exposition(db), media_type=CONTENT)


@router.get("/v3/fsm/transitions")
async def transitions() -> dict[str, Any]:
    """The state machines the server enforces: valid, untimely and rewritten moves."""
    return tables_as_json()
