"""End to end: the server's log lines as JSON (FARMSTEAD_LOG_FORMAT=json), each with the id of
its request (the client's X-Request-ID, echoed back, or a new one); no SQL parameter values."""

import json
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.e2e


def test_json_lines_carry_the_request_id(server_factory: Any) -> None:
    server = server_factory(log_format="json", log_level="info")
    body = {"name": "logged", "array": {"command": "echo SECRET-ARG", "first": 0, "last": 1}}
    r = httpx.post(f"{server.url}/v3/workflows", json=body, headers={"X-Request-ID": "req-42.a"})
    assert r.status_code == 201 and r.headers["x-request-id"] == "req-42.a"
    mine = httpx.get(f"{server.url}/health", headers={"X-Request-ID": "no spaces allowed!"})
    made = mine.headers["x-request-id"]
    assert made != "no spaces allowed!" and len(made) == 16
    bad = httpx.post(f"{server.url}/v3/workflows", json={"name": "x"})
    assert bad.status_code == 422 and bad.headers["x-request-id"]
    server.stop()
    lines = [ln for ln in server.log_path.read_text().splitlines() if ln.startswith("{")]
    records = [json.loads(ln) for ln in lines]
    assert records, server.log_path.read_text()[-2000:]
    assert all({"time", "level", "logger", "request_id", "message"} <= set(r) for r in records)
    audit = [r for r in records if r["logger"] == "farmstead.audit"]
    assert any(r["request_id"] == "req-42.a" and "logged" in r["message"] for r in audit)
    assert "SECRET-ARG" not in server.log_path.read_text()  # no statement parameters logged
