"""The FastAPI application: routers, lifespan (schema check, background loops), docs offline."""

import gc
import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.routing import APIRoute
from fastapi_offline import FastAPIOffline

from farmstead import __version__, logs
from farmstead.api import errors, local_executor, web
from farmstead.api.auth import AuthGuard, permission
from farmstead.api.middleware import RequestGuard
from farmstead.api.routes_auth import router as auth_router
from farmstead.api.routes_events import router as events_router
from farmstead.api.routes_fsm import router as fsm_router
from farmstead.api.routes_instances import router as instances_router
from farmstead.api.routes_meta import router as meta_router
from farmstead.api.routes_queues import router as queues_router
from farmstead.api.routes_workflows import router as workflows_router
from farmstead.api.taskfarm import router as taskfarm_router
from farmstead.db.engine import make_database
from farmstead.fsm.roles import ALLOWED, Permission
from farmstead.services.auth import Authenticator
from farmstead.services.celery_relay import CeleryRelay
from farmstead.services.events import EventFeed
from farmstead.services.lifecycle import Background, SchemaNotReady, check_schema
from farmstead.settings import Settings

log = logging.getLogger("farmstead")


def _relay_lock(settings: Settings) -> str | None:
    """SQLite: the side file whose lock makes one process the Celery relay (on PostgreSQL the
    relay's row lock does)."""
    if not settings.is_sqlite:
        return None
    path = settings.database_url.split("///", 1)[-1].partition("?")[0]
    if not path or path == ":memory:":
        return None
    return f"{path}.celery-relay.lock"


def _unique_id(prefix: str) -> Any:
    def make(route: APIRoute) -> str:
        return f"{prefix}_{route.name}"

    return make


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app for `settings` (read from the environment when not given)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = make_database(settings.database_url, settings.lock_timeout, settings.pool_size)
        app.state.db = db
        app.state.auth = Authenticator(db, settings.token_cache_seconds)
        app.state.events = EventFeed(db, settings.event_poll_interval)
        try:
            await check_schema(db)
        except SchemaNotReady as exc:
            log.error("%s", exc)
            await db.dispose()
            raise
        background = Background(db, settings)
        background.start()
        if settings.celery_broker_url:
            relay = CeleryRelay(db, app.state.events, settings)
            background.add("celery relay", relay.run, _relay_lock(settings))
        executor = local_executor.build(app, settings) if settings.local_workers else None
        executor_task = executor and local_executor.start(background, executor, settings)
        if getattr(app.state, "freeze_after_start", False):
            # What start-up built (modules, the app, its routes) lives as long as the process:
            # out of the collector's scans, so no full collection stalls a request for long.
            gc.collect()
            gc.freeze()
        try:
            yield
        finally:
            if executor and executor_task:  # first: it reports through this app and database
                await local_executor.stop(background, executor_task, executor)
            await background.stop()
            await app.state.events.stop()
            await db.dispose()

    app = FastAPIOffline(
        title="farmstead",
        version=__version__,
        description="Task-farm state server. `/v3/fsm` and `/api/v3`: worker-node and "
        "distributor routes, wire-compatible with Jobmon. `/v3`: workflows and tasks. `/api`: "
        "taskfarm's runs and tasks, for taskfarm-worker's clients.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    #: the bearer token of this process's own local executor (known to nothing else)
    app.state.internal_token = secrets.token_urlsafe(32)
    errors.install(app)
    app.add_middleware(
        RequestGuard,
        max_body_bytes=settings.max_body_bytes,
        max_json_depth=settings.max_json_depth,
    )
    app.add_middleware(AuthGuard, settings=settings, internal_token=app.state.internal_token)
    if settings.cors_origins:  # outermost: a preflight carries no credentials
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
            max_age=600,
        )
    app.include_router(meta_router)
    app.include_router(fsm_router, prefix="/v3/fsm", generate_unique_id_function=_unique_id("fsm"))
    app.include_router(
        fsm_router,
        prefix="/api/v3",
        tags=["jobmon compatible"],
        generate_unique_id_function=_unique_id("jobmon"),
    )
    app.include_router(workflows_router, prefix="/v3", generate_unique_id_function=_unique_id("v3"))
    app.include_router(instances_router, prefix="/v3", generate_unique_id_function=_unique_id("v3"))
    app.include_router(queues_router, prefix="/v3", generate_unique_id_function=_unique_id("v3"))
    app.include_router(auth_router, prefix="/v3", generate_unique_id_function=_unique_id("v3"))
    app.include_router(events_router, prefix="/v3", generate_unique_id_function=_unique_id("v3"))
    app.include_router(
        taskfarm_router, prefix="/api", generate_unique_id_function=_unique_id("taskfarm")
    )
    app.include_router(web.router)
    app.mount("/ui/static", web.static, name="ui-static")
    _document_permissions(app)
    return app


def _document_permissions(app: FastAPI) -> None:
    """Each operation of the OpenAPI schema says what it needs (`x-permission`, the roles
    allowed, the bearer or Basic schemes), from the same table the server enforces."""
    plain = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = plain()
        schema.setdefault("components", {})["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer"},
            "basic": {"type": "http", "scheme": "basic"},
        }
        for path, ops in schema.get("paths", {}).items():
            for method, op in ops.items():
                needed = permission(method.upper(), path)
                roles = sorted(ALLOWED[needed])
                op["x-permission"] = str(needed)
                op["x-roles"] = roles
                if needed is Permission.PUBLIC:
                    op["security"] = []
                    continue
                op["security"] = [{"bearer": []}, {"basic": []}]
                note = f"Needs the role {', '.join(roles[:-1])} or {roles[-1]}."
                if needed is Permission.WORK:
                    note += (
                        " Without credentials from a trusted network (FARMSTEAD_TRUSTED_NETWORKS)."
                    )
                op["description"] = f"{op.get('description', '')}\n\n{note}".strip()
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def app_from_env() -> FastAPI:
    """Factory for uvicorn (`--factory`): settings from FARMSTEAD_* variables."""
    settings = Settings()
    logs.configure(settings.log_level, settings.log_format)
    app = create_app(settings)
    app.state.freeze_after_start = True  # a server process of its own (not a test's app)
    return app
