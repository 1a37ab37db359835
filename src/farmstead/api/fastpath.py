"""The worker-node fast path: the routes every running task calls, without the per-request
machinery of the framework.

Each running task sends log_running, a heartbeat every interval, and log_done (or an error);
schedulers look up array elements. For these calls (and only for a request whose path, method,
ids and JSON body are all well-formed) the request guard calls the route's own function
directly: the body parsed with orjson and validated by the route's own model, the answer
serialised with orjson. What is skipped is routing through every route, dependency
injection, and validating the route's own answer against its response model.

Anything else goes on to FastAPI unchanged: another route, another content type, a body that
is not valid JSON or fails validation, an id out of range. So every error answer still comes
from the one place that words them (api/errors.py); a domain error raised by the route's
function (not found, invalid transition, database busy) is worded by that same code here.
"""

import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.types import Scope, Send

from farmstead.api import routes_fsm
from farmstead.api.errors import domain_answer
from farmstead.api.taskfarm import routes as tf_routes
from farmstead.api.taskfarm import wire as tf_wire
from farmstead.bounds import INT32_MAX, INT32_MIN, INT64_MAX
from farmstead.schemas import LogDone, LogErrorWorkerNode, LogReportBy, LogRunning
from farmstead.services import taskfarm
from farmstead.services.auth import NOBODY
from farmstead.services.errors import FarmsteadError

log = logging.getLogger("farmstead.api")

_PREFIX = rb"/(?:v3/fsm|api/v3)"
_REPORT = re.compile(
    _PREFIX
    + rb"/task_instance/(\d{1,19})/(log_running|log_report_by|log_done|log_error_worker_node)"
)
_LOOKUP = re.compile(_PREFIX + rb"/get_array_task_instance_id/(\d{1,19})/(-?\d{1,10})/(-?\d{1,10})")
#: taskfarm's worker calls: a claim, and the GET and PUT of the claimed task
_RUN = rb"/api/runs/([0-9A-Za-z-]{1,64})"
_TF_CLAIM = re.compile(_RUN + rb"/task")
_TF_TASK = re.compile(_RUN + rb"/tasks/(-?\d{1,10})")
_TF_INFO = re.compile(rb"info=([A-Za-z]{0,64})")

M = TypeVar("M", bound=BaseModel)
Handler = Callable[[Any, Any, Any, Any, int], Awaitable[Any]]

_REPORTS: dict[bytes, tuple[type[BaseModel], Handler]] = {
    b"log_running": (
        LogRunning,
        lambda db, settings, who, body, ti: routes_fsm.log_running(db, settings, who, body, ti),
    ),
    b"log_report_by": (
        LogReportBy,
        lambda db, _settings, who, body, ti: routes_fsm.log_report_by(db, who, body, ti),
    ),
    b"log_done": (
        LogDone,
        lambda db, _settings, who, body, ti: routes_fsm.log_done(db, who, body, ti),
    ),
    b"log_error_worker_node": (
        LogErrorWorkerNode,
        lambda db, _settings, who, body, ti: routes_fsm.log_error_worker_node(db, who, body, ti),
    ),
}


def _json_type(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return bool(value.split(b";", 1)[0].strip().lower() == b"application/json")
    return False


async def _answer(send: Send, status: int, body: Any, headers: list[tuple[bytes, bytes]]) -> None:
    raw = orjson.dumps(body)
    head = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(raw))]
    await send({"type": "http.response.start", "status": status, "headers": head + headers})
    await send({"type": "http.response.body", "body": raw})


async def handle(scope: Scope, body: bytes, send: Send) -> bool:
    """Answer the request if it is one the fast path takes; False to let FastAPI answer it."""
    method = scope["method"]
    path = scope["raw_path"] if scope.get("raw_path") else scope["path"].encode()
    if path.startswith(b"/api/runs/"):
        return await _taskfarm(scope, method, path, body, send)
    call: Callable[[Any, Any], Awaitable[Any]]
    if method == "POST":
        match = _REPORT.fullmatch(path)
        if match is None or not _json_type(scope):
            return False
        ti = int(match[1])
        model, handler = _REPORTS[match[2]]
        if not 1 <= ti <= INT64_MAX:
            return False
        try:
            parsed = model.model_validate(orjson.loads(body))
        except (orjson.JSONDecodeError, ValidationError):
            return False  # FastAPI words the 422

        # who is asking: api.auth.AuthGuard resolved it (outside this guard)
        who = scope.get("state", {}).get("principal", NOBODY)

        def call(db: Any, settings: Any) -> Awaitable[Any]:
            return handler(db, settings, who, parsed, ti)

    elif method == "GET":
        match = _LOOKUP.fullmatch(path)
        if match is None:
            return False
        array_id, batch, step = int(match[1]), int(match[2]), int(match[3])
        if not (1 <= array_id <= INT64_MAX and min(batch, step) >= INT32_MIN):
            return False
        if max(batch, step) > INT32_MAX:
            return False

        def call(db: Any, _settings: Any) -> Awaitable[Any]:
            return routes_fsm.get_array_task_instance_id(db, array_id, batch, step)

    else:
        return False
    state = scope["app"].state
    try:
        answer = await call(state.db, state.settings)
    except FarmsteadError as exc:
        status, error, headers = domain_answer(exc, method, scope["path"])
        await _answer(send, status, error, [(k.encode(), v.encode()) for k, v in headers.items()])
        return True
    await _answer(send, 200, answer, [])
    return True


async def _taskfarm(scope: Scope, method: str, path: bytes, body: bytes, send: Send) -> bool:
    """taskfarm's worker calls (routes in api/taskfarm/routes.py): a claim (201 or 204), task n
    (200, optionally one `info` key) and its update (204)."""
    who = scope.get("state", {}).get("principal", NOBODY)
    query = scope.get("query_string", b"")
    call: Callable[[Any], Awaitable[tuple[int, Any]]]
    if method == "POST" and (match := _TF_CLAIM.fullmatch(path)):
        parsed = _parsed(scope, body, tf_wire.ClaimIn)
        if parsed is None or query:
            return False
        uuid = match[1].decode()

        async def call(db: Any) -> tuple[int, Any]:
            task = await taskfarm.claim(db, uuid, parsed.worker_uuid, who)
            return (204, None) if task is None else (201, task)

    elif method in ("GET", "PUT") and (match := _TF_TASK.fullmatch(path)):
        uuid, number = match[1].decode(), int(match[2])
        if abs(number) > INT32_MAX:
            return False
        if method == "GET":
            info = _TF_INFO.fullmatch(query) if query else None
            if query and info is None:
                return False
            key = info[1].decode() if info else ""

            async def call(db: Any) -> tuple[int, Any]:
                task = await taskfarm.get_task(db, uuid, number, who)
                return 200, tf_routes.pick(task, key, taskfarm.TASK_INFO_KEYS)

        else:
            update = _parsed(scope, body, tf_wire.TaskUpdate)
            if update is None or query:
                return False

            async def call(db: Any) -> tuple[int, Any]:
                await taskfarm.update_task(
                    db, uuid, number, who, update.percentCompleted, update.status
                )
                return 204, None

    else:
        return False
    try:
        status, answer = await call(scope["app"].state.db)
    except FarmsteadError as exc:
        status, error, headers = domain_answer(exc, method, scope["path"])
        await _answer(send, status, error, [(k.encode(), v.encode()) for k, v in headers.items()])
        return True
    if answer is None:
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})
    else:
        await _answer(send, status, answer, [])
    return True


def _parsed(scope: Scope, body: bytes, model: type[M]) -> M | None:
    """The JSON body as `model`, or None (FastAPI then answers, and words the error)."""
    if not _json_type(scope):
        return None
    try:
        return model.model_validate(orjson.loads(body))
    except (orjson.JSONDecodeError, ValidationError):
        return None
