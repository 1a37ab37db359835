"""Transport limits and database failures: 413 on big bodies (declared or streamed), 422 on deep
JSON before it is parsed, `Connection: close` after a 500, client-sized lists of any length in
one statement, and deterministic database errors answered 4xx, never 503."""

import json
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from factories import free_port, ok, sql_rows, sql_scalar, submit_array
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import column, literal, select, table, text

from farmstead.api.middleware import nesting_exceeds
from farmstead.bounds import IDS_MAX
from farmstead.db.engine import Conn, Database, make_database
from farmstead.services import nodes
from farmstead.services.errors import BadRequest, Conflict, NotFound, Unavailable
from farmstead.services.uow import in_transaction
from helpers import wait_for

MiB = 1024 * 1024
BATCH = "/v3/fsm/task_instance/log_report_by/batch"


def _error_body(resp: httpx.Response, code: int, error: str) -> dict[str, Any]:
    assert resp.status_code == code, f"{resp.status_code} {resp.text[:300]}"
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert body["error"] == error and isinstance(body["detail"], str), body
    return body  # type: ignore[no-any-return]


def _raw_response(sock: socket.socket) -> tuple[str, dict[str, str], bytes]:
    """Read one HTTP response (Content-Length framed) from a socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines)}
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        assert chunk, "connection closed inside the body"
        body += chunk
    return status, headers, body


# ---- body size: a real server process ------------------------------------------------------


def test_413_from_content_length_before_the_body_is_sent(server: Any) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        sock.sendall(
            f"POST {BATCH} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            f"Content-Length: {50 * MiB}\r\n\r\n".encode()
        )
        status, _headers, body = _raw_response(sock)  # not one byte of the body was sent
    assert status.split()[1] == "413", status
    assert json.loads(body)["error"] == "PayloadTooLarge"


def test_413_on_a_50_mb_body_and_the_connection_stays_usable(server: Any) -> None:
    padding = b'{"next_report_increment": 60, "task_instance_ids": [], "pad": "'
    body = padding + b"x" * (50 * MiB) + b'"}'
    with httpx.Client(base_url=server.url, timeout=60) as client:
        _error_body(client.post(BATCH, content=body, headers={"content-type": "application/json"}),
                    413, "PayloadTooLarge")
        assert client.get("/health").status_code == 200


def test_413_on_a_chunked_body(server: Any) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"next_report_increment": 60, "task_instance_ids": [], "pad": "'
        for _ in range(20):
            yield b"x" * MiB
        yield b'"}'

    with httpx.Client(base_url=server.url, timeout=60) as client:
        resp = client.post(BATCH, content=chunks(), headers={"content-type": "application/json"})
        assert resp.request.headers.get("transfer-encoding") == "chunked"
        _error_body(resp, 413, "PayloadTooLarge")


def test_a_chunked_body_under_the_limit_is_read_whole(server: Any) -> None:
    tasks = [{"name": f"t{i}", "command": f"echo {i}"} for i in range(2000)]
    raw = json.dumps({"name": "chunked", "tasks": tasks}).encode()

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(raw), 4096):
            yield raw[start : start + 4096]

    resp = httpx.post(f"{server.url}/v3/workflows", content=chunks(),
                      headers={"content-type": "application/json"}, timeout=60)
    assert resp.status_code == 201, resp.text
    assert resp.json()["total"] == 2000


# ---- JSON depth ----------------------------------------------------------------------------


def _nested(depth: int) -> str:
    return '{"a": ' * depth + "1" + "}" * depth


@pytest.mark.parametrize("depth", [40, 300, 100_000])
async def test_deep_json_is_422_before_it_is_parsed(client: httpx.AsyncClient, depth: int) -> None:
    task = '{"name": "t", "command": "c", "resources": ' + _nested(depth) + "}"
    raw = '{"name": "w", "tasks": [' + task + "]}"
    resp = await client.post("/v3/workflows", content=raw,
                             headers={"content-type": "application/json"})
    body = _error_body(resp, 422, "ValidationError")
    assert "nested deeper than 32" in body["detail"]
    assert body["errors"] == [{"field": "body", "message": "JSON nested deeper than 32 levels"}]


async def test_unbalanced_deep_json_is_422(client: httpx.AsyncClient) -> None:
    resp = await client.post(BATCH, content="[" * 100_000,
                             headers={"content-type": "application/json"})
    _error_body(resp, 422, "ValidationError")


async def test_brackets_inside_strings_do_not_count(client: httpx.AsyncClient) -> None:
    command = "echo '" + "[{" * 200 + "\\\"" + "}]" * 200 + "'"
    body = {"name": "w", "tasks": [{"name": "t", "command": command}]}
    await ok(client.post("/v3/workflows", json=body), 201)


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


_JSON = st.recursive(
    st.none() | st.integers() | st.text(alphabet='[]{}"\\ab\n\u00e9'),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner,
                                                                 max_size=3),
    max_leaves=30,
)


@settings(max_examples=300, derandomize=True, database=None)
@given(value=_JSON, limit=st.integers(1, 8), ascii_only=st.booleans())
def test_nesting_scan_agrees_with_a_parser(value: Any, limit: int, ascii_only: bool) -> None:
    raw = json.dumps(value, ensure_ascii=ascii_only).encode()
    assert nesting_exceeds(raw, limit) == (_depth(value) > limit)


# ---- Connection: close after an unexpected error ------------------------------------------

_FAILING_SERVER = textwrap.dedent(
    """
    import sys
    import uvicorn
    from farmstead.api.app import create_app
    from farmstead.settings import Settings

    app = create_app(Settings(database_url=sys.argv[1], reconciler_enabled=False))

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("a bug")

    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
    """
)


def test_a_500_says_connection_close(db_url: str, tmp_path: Path) -> None:
    port = free_port()
    script = tmp_path / "failing_server.py"
    script.write_text(_FAILING_SERVER)
    log = (tmp_path / "server.log").open("wb")
    proc = subprocess.Popen([sys.executable, str(script), db_url, str(port)], stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        def up() -> bool:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            try:
                return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).is_success
            except httpx.HTTPError:
                return False

        wait_for(up, 30, "the server with a failing route")
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            sock.sendall(b"GET /boom HTTP/1.1\r\nHost: localhost\r\n\r\n")
            status, headers, body = _raw_response(sock)
            assert status.split()[1] == "500", status
            assert headers.get("connection") == "close", headers
            assert json.loads(body) == {
                "error": "InternalError",
                "detail": "internal error; the server log has the details",
            }
            assert sock.recv(1) == b""  # closed, as announced
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
        assert "RuntimeError: a bug" in (tmp_path / "server.log").read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        log.close()


# ---- lists of any length in one statement --------------------------------------------------


async def _array_instances(client: httpx.AsyncClient, db: Database, count: int) -> tuple[
        int, list[int]]:
    await submit_array(client, 0, count - 1, command="run {i}")
    rows = await sql_rows(db, "SELECT id, array_id FROM task_instance ORDER BY id")
    assert len(rows) == count
    return int(rows[0]["array_id"]), [int(r["id"]) for r in rows]


@pytest.mark.parametrize("count", [20_000, IDS_MAX])
async def test_distributor_ids_of_a_whole_array_over_http(
    client: httpx.AsyncClient, db: Database, count: int
) -> None:
    array_id, ids = await _array_instances(client, db, count)
    mapping = {str(i): f"{4000 + i}_{i % 7}" for i in ids}
    for prefix in ("/v3/fsm", "/api/v3"):
        resp = await client.post(f"{prefix}/array/{array_id}/log_distributor_id", json=mapping,
                                 timeout=120)
        assert resp.status_code == 200, resp.text[:300]
    written = await sql_scalar(
        db, "SELECT count(*) FROM task_instance WHERE distributor_id = "
        + ("CAST(id + 4000 AS TEXT) || '_' || CAST(id % 7 AS TEXT)"))
    assert written == count


async def test_200000_distributor_ids_in_one_call(client: httpx.AsyncClient, db: Database) -> None:
    array_id, ids = await _array_instances(client, db, 200_000)
    assert await nodes.set_distributor_ids(db, array_id, {i: f"job{i}" for i in ids}) == 200_000
    assert await sql_scalar(
        db, "SELECT count(*) FROM task_instance WHERE distributor_id = 'job' || CAST(id AS TEXT)"
    ) == 200_000


# ---- database errors: deterministic ones are 4xx, transient ones 503 -----------------------

WORKFLOW = table("workflow", column("id"), column("name"), column("retry_delay"),
                 column("created_date"))


async def _raises(db: Database, statement: Any, params: Any = None) -> Exception:
    try:
        await in_transaction(db, lambda conn: conn.execute(statement, params))
    except Exception as exc:
        return exc
    raise AssertionError(f"no error from {statement}")


async def test_deterministic_database_errors_are_4xx_never_503(db: Database, backend: str) -> None:
    pg = backend == "postgresql"
    new = {"retry_delay": 0.0, "created_date": text("CURRENT_TIMESTAMP")}
    cases: dict[str, tuple[Any, Any, type[Exception]]] = {
        "id over 2**63-1": (select(WORKFLOW.c.id).where(WORKFLOW.c.id == literal(2**63)),
                            None, BadRequest),
        "lone surrogate": (WORKFLOW.insert().values(name="\ud800", **new), None, BadRequest),
        "duplicate key": (WORKFLOW.insert().values(id=1, name="w", **new), None, Conflict),
    }
    if pg:
        cases |= {
            "int32 column over 2**31-1": (
                text("UPDATE task SET priority = :p"), {"p": 2**31}, BadRequest),
            "NUL in text": (WORKFLOW.insert().values(name="a\x00b", **new), None, BadRequest),
            "text over its column": (WORKFLOW.insert().values(name="n" * 300, **new), None,
                                     BadRequest),
            "40,000 bind parameters": (
                text("SELECT 1 WHERE 1 IN (" + ",".join(f":p{i}" for i in range(40_000)) + ")"),
                {f"p{i}": i for i in range(40_000)}, BadRequest),
        }
    first = WORKFLOW.insert().values(id=1, name="first", **new)
    await in_transaction(db, lambda c: c.execute(first))
    found = {name: await _raises(db, stmt, params) for name, (stmt, params, _) in cases.items()}
    wrong = {n: repr(e)[:200] for n, e in found.items() if type(e) is not cases[n][2]}
    assert not wrong, wrong
    with pytest.raises(BadRequest):  # through a service, past any validation
        await nodes.array_instance(db, 2**63, 0, 0)
    with pytest.raises(BadRequest if pg else NotFound):
        await nodes.array_instance(db, 1, 2**31, 0)


async def test_a_busy_database_is_503(db_url: str, db: Database, backend: str) -> None:
    new = {"name": "w", "retry_delay": 0.0, "created_date": text("CURRENT_TIMESTAMP")}
    await in_transaction(db, lambda c: c.execute(WORKFLOW.insert().values(id=1, **new)))
    impatient = make_database(db_url, lock_timeout=0.2)

    async def hold(holder: Conn) -> Exception:
        # the row (SQLite: the database) stays locked while the impatient one tries
        await holder.execute(text("UPDATE workflow SET name = 'held' WHERE id = 1"))
        return await _raises(impatient, text("UPDATE workflow SET name = 'x' WHERE id = 1"))

    try:
        error = await in_transaction(db, hold)
        assert isinstance(error, Unavailable), repr(error)
    finally:
        await impatient.dispose()
