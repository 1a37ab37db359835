"""The CLI's HTTP calls to a farmstead server: exit codes, retries, and readable errors.

Exit codes, the same in every command:

- 0: success (for `status`: the workflow is DONE, or still running without `--watch`);
- 1: the answer is no: the workflow FAILED or was CANCELLED, or the server refused (4xx);
- 2: no answer: a usage error, an unknown id (404), the server unreachable, failing (5xx)
  or not a farmstead server.
"""

import json
import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any, NoReturn

import httpx
import typer
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_exponential_jitter

from farmstead import credentials
from farmstead.cli.common import err
from farmstead.client.api import is_transient, transient_status

EXIT_OK = 0
EXIT_NO = 1
EXIT_UNKNOWN = 2

DEFAULT_URL = "http://127.0.0.1:8000"
#: Ids are positive 64-bit integers: anything else is a usage error, found before asking.
MAX_ID = 2**63 - 1
#: Locations FastAPI puts before a field's path in its validation errors.
_LOC_ROOTS = {"body", "query", "path", "header", "cookie"}


def fail_lines(lines: list[str], code: int, hint: str | None = None) -> NoReturn:
    """Print one `error:` line per problem (and a hint) to stderr and exit with `code`."""
    for line in lines or ["unknown error"]:
        err.print("[bold red]error:[/] ", end="")
        err.print(" ".join(str(line).split("\n")), markup=False)
    if hint:
        err.print(f"hint: {hint}", markup=False, style="dim")
    sys.exit(code)


def usage(message: str) -> NoReturn:
    """A usage error found before asking the server: exit 2."""
    fail_lines([message], EXIT_UNKNOWN)


def finite(value: float | None) -> float | None:
    """A number option must be a number: `nan` and `inf` are usage errors."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a finite number")
    return value


def field_path(loc: list[Any]) -> str:
    """FastAPI's `["body", "tasks", 0, "command"]` as `tasks[0].command`."""
    parts = list(loc)
    if parts and parts[0] in _LOC_ROOTS and len(parts) > 1:
        parts = parts[1:]
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def problems(body: Any) -> list[str] | None:
    """The problems a farmstead error body names, one line each; None if it is not one.

    Understands the one error shape (`error`, `detail`, `errors: [{field, message}]`) and the
    older FastAPI shapes (`detail` a string, or a list of `{loc, msg}`).
    """
    if not isinstance(body, dict) or "detail" not in body:
        return None
    errors, detail = body.get("errors"), body["detail"]
    if isinstance(errors, list) and errors:
        lines = []
        for e in errors:
            if isinstance(e, dict):
                field, message = e.get("field"), e.get("message", e.get("msg", ""))
                lines.append(f"{field}: {message}" if field else str(message))
        if lines:
            return lines
    if isinstance(detail, str):
        return [detail]
    if isinstance(detail, list):
        return [
            f"{field_path(d.get('loc', []))}: {d.get('msg', '')}"
            if d.get("loc")
            else str(d.get("msg", d))
            for d in detail
            if isinstance(d, dict)
        ] or None
    return None


def _not_farmstead(url: str, resp: httpx.Response) -> NoReturn:
    kind = resp.headers.get("content-type", "no content type").split(";")[0]
    fail_lines(
        [f"{url} did not answer like a farmstead server (HTTP {resp.status_code}, {kind})"],
        EXIT_UNKNOWN,
    )


class StreamLost(Exception):
    """The event stream was refused, or lost for longer than the patience."""


@dataclass
class Server:
    """A farmstead server as the CLI sees it: `get`/`post` return the JSON answer or exit."""

    url: str
    #: How long to retry when the server is unreachable or answers 5xx (0: fail at once).
    patience: float = 0.0
    #: FARMSTEAD_TOKEN, else the token `farmstead serve` left for this URL on this machine
    token: str | None = None

    def __post_init__(self) -> None:
        self.url = self.url.rstrip("/")
        if self.token is None:
            self.token = os.environ.get("FARMSTEAD_TOKEN") or credentials.token_for(self.url)

    def delete(self, path: str) -> Any:
        """DELETE `path`."""
        return self.call("DELETE", path)

    def get(self, path: str, **params: Any) -> Any:
        """GET `path` with query `params` (None values left out)."""
        return self.call("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, body: Any = None, **params: Any) -> Any:
        """POST `body` as JSON to `path`."""
        clean = {k: v for k, v in params.items() if v is not None}
        return self.call("POST", path, json=body, params=clean)

    def call(self, method: str, path: str, **kw: Any) -> Any:
        """One request; transient failures retried for `patience` seconds; errors exit."""
        target = f"{self.url}{path}"
        retrying = Retrying(
            retry=retry_if_exception(is_transient),
            wait=wait_exponential_jitter(multiplier=0.5, max=10),
            stop=stop_after_delay(self.patience),
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    resp = httpx.request(
                        method,
                        target,
                        timeout=httpx.Timeout(600, connect=10),
                        headers=self._headers(),
                        **kw,
                    )
                    if transient_status(resp.status_code):
                        resp.raise_for_status()
        except httpx.HTTPStatusError as exc:
            resp = exc.response
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            fail_lines(
                [f"cannot reach {self.url}: {exc or type(exc).__name__}"],
                EXIT_UNKNOWN,
                hint="is `farmstead serve` running there? (--server-url or FARMSTEAD_SERVER_URL)",
            )
        if resp.status_code == 204:  # done, nothing to say
            return {}
        try:
            body = resp.json()
        except ValueError:
            _not_farmstead(self.url, resp)
        if resp.status_code < 400:
            return body
        lines = problems(body)
        if lines is None:
            _not_farmstead(self.url, resp)
        if resp.status_code == 401:
            fail_lines(
                lines,
                EXIT_NO,
                hint="set FARMSTEAD_TOKEN to a token of this server (on the server's machine the "
                f"CLI finds the one `farmstead serve` wrote in {credentials.default_path()})",
            )
        if resp.status_code >= 500:
            fail_lines(
                [f"the server failed (HTTP {resp.status_code}): {lines[0]}", *lines[1:]],
                EXIT_UNKNOWN,
            )
        fail_lines(lines, EXIT_UNKNOWN if resp.status_code == 404 else EXIT_NO)

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def stream(
        self,
        path: str,
        last_id: int | None = None,
        on_open: Any = None,
        quiet: bool = False,
        **params: Any,
    ) -> Iterator[dict[str, Any]]:
        """The Server-Sent Events of `path` as JSON objects, for ever: a dropped connection is
        opened again (for `patience` seconds) from the last event seen (`Last-Event-ID`), so
        nothing is lost or repeated. `on_open()` is called each time the stream is open.
        A refusal, or a stream lost for good, exits (`quiet`: raises StreamLost instead)."""
        clean = {k: v for k, v in params.items() if v is not None}
        lost_since: float | None = None
        while True:
            headers = {**self._headers(), "Accept": "text/event-stream"}
            if last_id is not None:
                headers["Last-Event-ID"] = str(last_id)
            try:
                with httpx.stream(
                    "GET",
                    f"{self.url}{path}",
                    params=clean,
                    headers=headers,
                    timeout=httpx.Timeout(60, connect=10),
                ) as resp:
                    if resp.status_code != 200:
                        resp.read()
                        if quiet:
                            raise StreamLost(f"HTTP {resp.status_code}")
                        self._refused(resp)
                    lost_since = None
                    if on_open is not None:
                        on_open()
                    for data in _sse_data(resp.iter_lines()):
                        event = json.loads(data)
                        last_id = int(event["id"])
                        yield event
            except (httpx.TransportError, ValueError) as exc:
                now = time.monotonic()
                lost_since = lost_since or now
                if now - lost_since > self.patience:
                    if quiet:
                        raise StreamLost(str(exc)) from exc
                    fail_lines([f"lost the event stream of {self.url}: {exc}"], EXIT_UNKNOWN)
                time.sleep(1.0)

    def _refused(self, resp: httpx.Response) -> NoReturn:
        """Exit with the server's reason for not streaming."""
        try:
            body = resp.json()
        except ValueError:
            _not_farmstead(self.url, resp)
        lines = problems(body) or [f"HTTP {resp.status_code}"]
        fail_lines(lines, EXIT_UNKNOWN if resp.status_code in (404, 410) else EXIT_NO)

    def expect(self, body: Any, *keys: str) -> dict[str, Any]:
        """`body` if it is an object with `keys`; else exit: the server is not farmstead."""
        if not isinstance(body, dict) or any(k not in body for k in keys):
            fail_lines([f"{self.url} did not answer like a farmstead server"], EXIT_UNKNOWN)
        return body


def _sse_data(lines: Iterator[str]) -> Iterator[str]:
    """The `data` of each event in Server-Sent Events lines (comments, pings: skipped)."""
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield "\n".join(data)
            data = []
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))


ServerUrl = Annotated[
    str, typer.Option("--server-url", envvar="FARMSTEAD_SERVER_URL", help="the farmstead server")
]
AsJson = Annotated[bool, typer.Option("--json", help="print the API's JSON instead of tables")]
WorkflowId = Annotated[int, typer.Argument(min=1, max=MAX_ID, help="workflow id")]
TaskId = Annotated[int, typer.Argument(min=1, max=MAX_ID, help="task id")]
