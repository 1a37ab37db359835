"""Dependencies: the database and settings of the running app.

They are `async def` on purpose: FastAPI runs a plain `def` dependency in a worker thread.
"""

from typing import Annotated

from fastapi import Depends, Request

from farmstead.db.engine import Database
from farmstead.services.auth import NOBODY, Principal
from farmstead.settings import Settings


async def _db(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


async def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


DatabaseDep = Annotated[Database, Depends(_db)]
SettingsDep = Annotated[Settings, Depends(_settings)]


async def _principal(request: Request) -> Principal:
    """Who is asking (resolved once per request by api.auth.AuthGuard)."""
    principal: Principal = request.scope.get("state", {}).get("principal", NOBODY)
    return principal


PrincipalDep = Annotated[Principal, Depends(_principal)]


async def require_instances(request: Request, who: Principal, ti_ids: list[int]) -> None:
    """403 unless a scoped worker's workflows hold every one of `ti_ids`."""
    if who.workflows is not None:
        await request.app.state.auth.require_instances(who, ti_ids)
