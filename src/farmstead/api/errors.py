"""HTTP codes for domain errors, assigned in this one place. Never a traceback to a client."""

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from farmstead.services.errors import (
    BadRequest,
    Conflict,
    FarmsteadError,
    InvalidTransition,
    NotFound,
    Unavailable,
)

log = logging.getLogger("farmstead.api")

STATUS: dict[type[FarmsteadError], int] = {
    NotFound: 404,
    InvalidTransition: 409,
    Conflict: 409,
    BadRequest: 422,
    Unavailable: 503,
}
RETRY_AFTER_SECONDS = "2"


async def _domain(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, FarmsteadError)
    code = next((c for t, c in STATUS.items() if isinstance(exc, t)), 400)
    headers = {"Retry-After": RETRY_AFTER_SECONDS} if code == 503 else None
    details = dict(exc.details)
    internal = details.pop("error_detail", None)  # the database's own words: for the log only
    if internal is not None:
        log.warning("%s for %s %s: %s", code, request.method, request.url.path, internal)
    body = {"detail": exc.message, **details, "error": type(exc).__name__}
    return JSONResponse(body, status_code=code, headers=headers)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error for %s %s", request.method, request.url.path)
    return JSONResponse(
        {"detail": "internal error; the server log has the details", "error": "InternalError"},
        status_code=500,
    )


def install(app: FastAPI) -> None:
    """Register the handlers."""
    app.add_exception_handler(FarmsteadError, _domain)
    app.add_exception_handler(Exception, _unexpected)
