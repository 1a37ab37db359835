"""Transport guards in front of every route: body size, JSON nesting depth, a clean 500.

Pure ASGI (this is the hot path): a request without a body costs one look at its headers; a
request with one is read once (the app would read it whole anyway), checked, and replayed.

- a body over `max_body_bytes` is answered 413, from its Content-Length before a byte of it is
  read, or as soon as the streamed (chunked) bytes pass the limit;
- a JSON body nested deeper than `max_json_depth` is answered 422 before anything parses it
  (Python's parser recursing 100,000 levels deep is never reached);
- an unexpected error is answered with the error body and `Connection: close`, so a keep-alive
  client is told the connection ends instead of finding it dropped;
- the worker-node calls every running task makes take the fast path (api/fastpath.py).

Every answer has farmstead's one error shape: {"error": ..., "detail": ...}.
"""

import logging
import re
import time
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from farmstead.api import fastpath
from farmstead.api.errors import error_body, validation_body
from farmstead.metrics import REQUESTS

log = logging.getLogger("farmstead.api")

_FOLD = bytes.maketrans(b"{}", b"[]")  # for depth, an object is a bracket like an array
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'[]{}"')
_STRING = re.compile(rb'"[^"]*"')


def nesting_exceeds(body: bytes, limit: int) -> bool:
    """Whether JSON `body` nests arrays and objects more than `limit` levels deep.

    Nothing is parsed; every step is a C-speed scan: escapes are dropped, every byte but
    brackets and quotes deleted, strings cut out, then the innermost pairs removed, one level
    per pass, at most `limit` passes. A body that is not balanced JSON is left to the JSON
    parser (which reports it) unless it leaves more than `limit` brackets open.
    """
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    if b"\\" in body:  # an escaped quote must not end a string
        body = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    brackets = body.translate(_FOLD, _NOT_STRUCTURE)
    if b'"' in brackets:  # most strings hold no bracket: drop those first, fast
        brackets = _STRING.sub(b"", brackets.replace(b'""', b""))
    for _ in range(limit):
        if b"[]" not in brackets:
            break
        brackets = brackets.replace(b"[]", b"")
    return b"[]" in brackets or brackets.count(b"[") > limit


async def send_error(
    send: Send,
    status: int,
    body: dict[str, Any],
    close: bool = False,
    headers: dict[str, str] | None = None,
) -> None:
    """Answer with an error body (`close`: and end the connection after it)."""
    raw = orjson.dumps(body)
    head = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(raw))]
    head += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    if close:
        head.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": raw})


class _TooLarge(Exception):
    pass


class _Disconnected(Exception):
    pass


class RequestGuard:
    """ASGI middleware: the body size and JSON depth limits, and the last-resort 500."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, max_json_depth: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_json_depth = max_json_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length, streamed, json_body = _framing(scope["headers"])
        body = b""
        if streamed or length:
            if length is not None and length > self.max_body_bytes:
                await self._too_large(send)
                return
            try:
                body = await self._read(receive)
            except _TooLarge:
                await self._too_large(send)
                return
            except _Disconnected:
                return
            if json_body and nesting_exceeds(body, self.max_json_depth):
                message = f"JSON nested deeper than {self.max_json_depth} levels"
                problem = {"field": "body", "message": message}
                await send_error(send, 422, validation_body([problem]))
                return
            receive = _replay(body, receive)
        await self._call(scope, receive, send, body)

    async def _call(self, scope: Scope, receive: Receive, send: Send, body: bytes) -> None:
        started = False
        status = 500
        begun = time.perf_counter()

        async def tracking_send(message: Message) -> None:
            nonlocal started, status
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
            await send(message)

        fast = False
        try:
            fast = await fastpath.handle(scope, body, tracking_send)
            if not fast:
                await self.app(scope, receive, tracking_send)
        except Exception:
            if started:  # too late for an answer: the server drops the connection
                raise
            log.exception("unhandled error for %s %s", scope.get("method"), scope.get("path"))
            error = error_body("InternalError", "internal error; the server log has the details")
            await send_error(send, 500, error, close=True)
        finally:
            REQUESTS.labels(_route(scope, fast), scope["method"], f"{status // 100}xx").observe(
                time.perf_counter() - begun
            )

    async def _read(self, receive: Receive) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise _TooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _too_large(self, send: Send) -> None:
        detail = f"the request body is over the server's limit of {self.max_body_bytes} bytes"
        await send_error(send, 413, error_body("PayloadTooLarge", detail))


_ID_SEGMENT = re.compile(r"/(?:\d+|[0-9a-fA-F-]{32,36})(?=/|$)")


def _route(scope: Scope, fast: bool) -> str:
    """A request's route template for metrics: its path with each path parameter's value
    replaced by the parameter's name (the fast path's ids by `{id}`); `unmatched` when no
    route matched (no label per unknown path)."""
    if fast:
        return _ID_SEGMENT.sub("/{id}", scope["path"])
    if scope.get("route") is None:
        return "unmatched"
    params = {str(v): k for k, v in (scope.get("path_params") or {}).items()}
    if not params:
        return str(scope["path"])
    return "/".join(f"{{{params[p]}}}" if p in params else p for p in scope["path"].split("/"))


def _framing(headers: list[tuple[bytes, bytes]]) -> tuple[int | None, bool, bool]:
    """(Content-Length, whether the body is streamed, whether it is JSON) from the headers."""
    length: int | None = None
    streamed = False
    json_body = True  # no content type: checked too (a client may still send JSON)
    for name, value in headers:
        if name == b"content-length":
            try:
                length = int(value)
            except ValueError:
                streamed = True  # the server validates framing; read it to be safe
        elif name == b"transfer-encoding":
            streamed = True
        elif name == b"content-type":
            json_body = b"json" in value.lower()
    return length, streamed, json_body


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that yields the already-read body once, then the client's own messages."""
    pending = True

    async def replay() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
