"""Dependencies: the database and settings of the running app.

They are `async def` on purpose: FastAPI runs a plain `def` dependency in a worker thread.
"""

from typing import Annotated

from fastapi import Depends, Request

from farmstead.db.engine import Database
from farmstead.settings import Settings


async def _db(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


async def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


DatabaseDep = Annotated[Database, Depends(_db)]
SettingsDep = Annotated[Settings, Depends(_settings)]
