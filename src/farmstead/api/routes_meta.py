"""Operator routes: liveness, readiness, the state machine tables."""

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from farmstead.api.deps import DatabaseDep
from farmstead.fsm import tables_as_json
from farmstead.services.lifecycle import readiness

router = APIRouter(tags=["operators"])


@router.get("/health")
async def health() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/ready")
async def ready(db: DatabaseDep) -> Any:
    """The database is reachable and its schema is at the head revision."""
    ok, detail = await readiness(db)
    if ok:
        return {"status": "ready", **detail}
    return JSONResponse(
        {"status": "not ready", **detail}, status_code=503, headers={"Retry-After": "5"}
    )


@router.get("/v3/fsm/transitions")
async def transitions() -> dict[str, Any]:
    """The state machines the server enforces: valid, untimely and rewritten moves."""
    return tables_as_json()
