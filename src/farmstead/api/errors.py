"""The one error body, for every 4xx and 5xx, and the HTTP codes of domain errors (assigned here).

    {"error": "ValidationError", "detail": "tasks[0].command: must not be empty",
     "errors": [{"field": "tasks[0].command", "message": "must not be empty"}]}

`error` and `detail` always; `errors` on every 422; domain errors may add keys of their own. A
body quotes at most a short excerpt of the client's input. Never a traceback to a client.
"""

import logging
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from farmstead.bounds import clean_text
from farmstead.schemas import ErrorOut, ValidationErrorOut
from farmstead.services.errors import (
    BadRequest,
    Conflict,
    FarmsteadError,
    Forbidden,
    Gone,
    InvalidTransition,
    Malformed,
    NotFound,
    Unauthorized,
    Unavailable,
)

log = logging.getLogger("farmstead.api")

STATUS: dict[type[FarmsteadError], int] = {
    NotFound: 404,
    InvalidTransition: 409,
    Conflict: 409,
    BadRequest: 422,
    Malformed: 400,
    Unauthorized: 401,
    Forbidden: 403,
    Gone: 410,
    Unavailable: 503,
}
RETRY_AFTER_SECONDS = "2"
EXCERPT = 80  # characters of the client's input a message may quote
MESSAGE_MAX = 300  # characters of one message
LISTED = 50  # problems listed in `errors`; `detail` says how many more there were
IN_DETAIL = 5  # problems spelled out in `detail`
_SOURCES = {"path", "query", "header", "cookie"}
_NAMES = {400: "BadRequest", 413: "PayloadTooLarge", 422: "ValidationError"}
#: FastAPI's 400 for a body it could not decode (not UTF-8, a number past 4,300 digits...)
_UNPARSEABLE = "There was an error parsing the body"

#: the error answers every route may give, as the OpenAPI documents them
RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "No credentials, or unknown/expired/revoked ones"},
    403: {"model": ErrorOut, "description": "The role or the token's scope does not allow it"},
    404: {"model": ErrorOut, "description": "No such id (or no such route)"},
    409: {"model": ErrorOut, "description": "Invalid transition: the answer has `status`"},
    413: {"model": ErrorOut, "description": "Request body over the size limit"},
    415: {"model": ErrorOut, "description": "A form or plain-text body: send JSON"},
    422: {"model": ValidationErrorOut, "description": "A value is not acceptable"},
    503: {"model": ErrorOut, "description": "Database busy or down: retry after Retry-After"},
}


def excerpt(text: str, most: int = EXCERPT) -> str:
    """`text` made safe to quote: storable characters, at most `most` of them."""
    return clean_text(text, most)


def error_body(error: str, detail: str, **extra: Any) -> dict[str, Any]:
    """The one error body."""
    return {"error": error, "detail": excerpt(detail, MESSAGE_MAX * 2), **extra}


def field_path(loc: Sequence[int | str]) -> str:
    """A readable path: `tasks[0].command` in the body, `path.task_instance_id`, `query.limit`."""
    parts = list(loc)
    out = ""
    if parts and parts[0] in _SOURCES:
        out = str(parts.pop(0))
    elif parts and parts[0] == "body":
        parts.pop(0)
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part == "[key]":
            out += "[key]"
        else:
            out += ("." if out else "") + excerpt(str(part), 40)
    return out or "body"


def _message(error: dict[str, Any]) -> str:
    if error.get("type") == "json_invalid":
        return f"invalid JSON: {error.get('ctx', {}).get('error', 'cannot parse')}"
    message = str(error.get("msg", "invalid"))
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    return excerpt(message, MESSAGE_MAX)


def validation_body(items: list[dict[str, str]], error: str = "ValidationError") -> dict[str, Any]:
    """A 422 body from (field, message) items."""
    shown = "; ".join(f"{i['field']}: {i['message']}" for i in items[:IN_DETAIL])
    if len(items) > IN_DETAIL:
        shown += f" (and {len(items) - IN_DETAIL} more)"
    return {"error": error, "detail": shown, "errors": items[:LISTED]}


async def _validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    items = []
    for e in exc.errors():
        loc = e.get("loc", ())
        if e.get("type") == "json_invalid":
            loc = ("body",)
        items.append({"field": field_path(loc), "message": _message(e)})
    # taskfarm's clients are answered 400 for any bad input, as taskfarm answers them
    code = 400 if is_taskfarm(request.url.path) else 422
    return JSONResponse(validation_body(items), status_code=code)


def is_taskfarm(path: str) -> bool:
    """Whether a path is on the taskfarm face (`/api/…`, but not Jobmon's `/api/v3/…`)."""
    return path.startswith("/api/") and not path.startswith("/api/v3/")


def domain_answer(
    exc: FarmsteadError, method: str, path: str
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """The status, body and headers that answer a domain error (the database's own words,
    when it gave any, go to the log only)."""
    code = next((c for t, c in STATUS.items() if isinstance(exc, t)), 400)
    headers = {"Retry-After": RETRY_AFTER_SECONDS} if code == 503 else {}
    if code == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="farmstead"'
    details = dict(exc.details)
    internal = details.pop("error_detail", None)
    if internal is not None:
        log.warning("%s for %s %s: %s", code, method, path, internal)
    body = error_body(type(exc).__name__, exc.message, **details)
    if code == 422:
        body["errors"] = [{"field": str(details.get("field", "body")), "message": body["detail"]}]
    return code, body, headers


async def _domain(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, FarmsteadError)
    code, body, headers = domain_answer(exc, request.method, request.url.path)
    return JSONResponse(body, status_code=code, headers=headers or None)


async def _http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    code = exc.status_code
    if code == 400 and exc.detail == _UNPARSEABLE:  # like invalid JSON: a 422 on the body
        item = {"field": "body", "message": "invalid JSON: the body cannot be decoded"}
        return JSONResponse(validation_body([item]), status_code=422)
    try:
        name = _NAMES.get(code) or HTTPStatus(code).phrase.title().replace(" ", "")
    except ValueError:
        name = "HTTPError"
    body = error_body(name, str(exc.detail))
    if code == 422:
        body["errors"] = [{"field": "body", "message": body["detail"]}]
    return JSONResponse(body, status_code=code, headers=exc.headers)


def install(app: FastAPI) -> None:
    """Register the handlers, and document the error answers on every route included after.

    An unexpected error is answered by the request guard (`api/middleware.py`), which can also
    end the connection cleanly."""
    app.router.responses = {**RESPONSES, **app.router.responses}
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(FarmsteadError, _domain)
    app.add_exception_handler(HTTPException, _http)
