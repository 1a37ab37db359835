"""Who may do what (issue 10), on an in-process app with auth on, on both databases.

The route-by-role walk reads every operation from the OpenAPI schema (so a route added later is
walked too) and checks the server answers as the schema documents (`x-roles`).
"""

import asyncio
import base64
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from factories import app_client, sql_rows
from pydantic import ValidationError

from farmstead.api.app import create_app
from farmstead.db.engine import Database, make_database
from farmstead.services.auth import bootstrap_admin
from farmstead.settings import Settings


@dataclass
class Farm:
    """An app with auth on, an admin token, two workflows and a token per role."""

    client: httpx.AsyncClient
    tokens: dict[str, str]
    wf_a: int
    wf_b: int
    array_a: int
    array_b: int
    task_a: int
    ti_a: int
    ti_b: int

    def as_(self, who: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"} if who else {}

    async def call(self, who: str | None, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {**self.as_(who), **kw.pop("headers", {})}
        return await self.client.request(method, path, headers=headers, **kw)


def secured_settings(db_url: str, **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": db_url,
        "reconciler_enabled": False,
        "auth": True,
        "trusted_networks": [],
        "token_cache_seconds": 0,
    }
    return Settings(**(values | extra))


async def _admin_token(db_url: str) -> str:
    db = make_database(db_url)
    try:
        token, new = await bootstrap_admin(db, [])
    finally:
        await db.dispose()
    assert token and new
    return token


async def _build(client: httpx.AsyncClient, admin: str) -> Farm:
    auth = {"Authorization": f"Bearer {admin}"}

    async def post(path: str, body: Any, code: int = 200) -> Any:
        resp = await client.post(path, json=body, headers=auth)
        assert resp.status_code == code, resp.text
        return resp.json()

    a = await post(
        "/v3/workflows",
        {
            "name": "a",
            "tasks": [{"name": "t", "command": "true"}, {"name": "u", "command": "true"}],
        },
        201,
    )
    b = await post("/v3/workflows", {"name": "b", "tasks": [{"name": "t", "command": "true"}]}, 201)
    (claim_a,) = (await post("/v3/claims", {"limit": 1, "workflow_id": a["id"]}))["data"]
    (claim_b,) = (await post("/v3/claims", {"limit": 1, "workflow_id": b["id"]}))["data"]
    tokens: dict[str, str] = {"admin": admin}
    for role in ("operator", "viewer", "worker"):
        tokens[role] = (await post("/v3/tokens", {"name": role, "role": role}, 201))["token"]
    for name, wf in (("worker_a", a["id"]), ("worker_b", b["id"])):
        body = {"name": name, "role": "worker", "workflow_ids": [wf]}
        tokens[name] = (await post("/v3/tokens", body, 201))["token"]
    return Farm(
        client,
        tokens,
        a["id"],
        b["id"],
        a["array_ids"][0],
        b["array_ids"][0],
        claim_a["task_id"],
        claim_a["task_instance_id"],
        claim_b["task_instance_id"],
    )


@pytest.fixture
async def farm(db_url: str) -> AsyncIterator[Farm]:
    admin = await _admin_token(db_url)
    async with app_client(secured_settings(db_url)) as client:
        yield await _build(client, admin)


# --- the route-by-role walk ----------------------------------------------------------------

#: a few routes whose permission is pinned here, so a wrong table fails (not only a server
#: that disagrees with its own documentation)
PINNED = {
    ("GET", "/health"): "public",
    ("GET", "/v3/workflows"): "read",
    ("GET", "/v3/events"): "read",
    ("GET", "/metrics"): "read",
    ("GET", "/v3/tasks/{task_id}"): "read",
    ("POST", "/v3/workflows"): "operate",
    ("POST", "/v3/workflows/{workflow_id}/cancel"): "operate",
    ("POST", "/v3/workflows/{workflow_id}/resume"): "operate",
    ("POST", "/v3/fsm/task_instance/{task_instance_id}/log_done"): "work",
    ("POST", "/api/v3/task_instance/{task_instance_id}/log_running"): "work",
    ("POST", "/v3/claims"): "work",
    ("GET", "/v3/users"): "admin",
    ("POST", "/v3/users"): "admin",
    ("GET", "/v3/tokens"): "admin",
    ("POST", "/api/run"): "operate",
    ("POST", "/api/runs/{uuid}/restart"): "operate",
    ("DELETE", "/api/runs/{uuid}"): "operate",
    ("GET", "/api/runs"): "read_or_work",
    ("GET", "/api/runs/{uuid}"): "read_or_work",
    ("GET", "/api/token"): "read_or_work",
    ("POST", "/api/runs/{uuid}/task"): "work",
    ("PUT", "/api/runs/{uuid}/tasks/{n}"): "work",
    ("POST", "/api/worker"): "work",
    ("GET", "/v3/queues"): "read",
    ("POST", "/v3/queues"): "operate",
    ("PATCH", "/v3/queues/{path}"): "operate",
    ("DELETE", "/v3/queues/{path}"): "operate",
    ("PATCH", "/v3/workflows/{workflow_id}"): "operate",
    ("POST", "/v3/agents"): "work",
    ("POST", "/v3/agents/{agent_id}/heartbeat"): "work",
    ("GET", "/v3/agents"): "read",
    ("GET", "/v3/tasks/{task_id}/explain"): "read",
}
WHO = ["admin", "operator", "viewer", "worker", "worker_b"]
ROLE_OF = {"worker_b": "worker"}


def _operations() -> list[tuple[str, str, dict[str, Any]]]:
    schema = create_app(Settings(auth=True)).openapi()
    return [(m.upper(), p, op) for p, ops in schema["paths"].items() for m, op in ops.items()]


def _fill(farm: Farm, path: str) -> str:
    values = {
        "task_instance_id": farm.ti_a,
        "array_id": farm.array_a,
        "workflow_id": farm.wf_a,
        "task_id": farm.task_a,
        "batch_num": 1,
        "step_id": 0,
        "cluster_name": "local",
        "token_id": 999_999,
        "name": "nobody",
        "uuid": "0123456789abcdef0123456789abcdef",  # no such taskfarm run: 404 once let in
        "n": 0,
        "path": "no/such/queue",  # 404 once let in
        "agent_id": 999_999,
    }
    return re.sub(r"\{(\w+)\}", lambda m: str(values[m[1]]), path)


def test_every_operation_documents_its_permission() -> None:
    ops = _operations()
    assert len(ops) > 40
    documented = {(m, p): op.get("x-permission") for m, p, op in ops}
    assert None not in documented.values(), [k for k, v in documented.items() if v is None]
    for key, permission in PINNED.items():
        assert documented[key] == permission, key


async def test_every_route_answers_every_role_as_documented(farm: Farm) -> None:
    wrong = []
    for method, path, op in _operations():
        url = _fill(farm, path)
        body = {"json": {}} if method in ("POST", "PUT") else {}
        scoped_ids = "{task_instance_id}" in path or "{array_id}" in path
        for who in [None, *WHO]:
            resp = await farm.call(who, method, url, **body)
            if who is None:
                want = "ok" if op["x-permission"] == "public" else 401
            elif ROLE_OF.get(who, who) not in op["x-roles"]:
                want = 403
            elif who == "worker_b" and scoped_ids:
                want = 403  # a worker token of workflow b, on workflow a's instance or array
            else:
                want = "ok"
            got = "ok" if resp.status_code not in (401, 403) else resp.status_code
            if got != want:
                wrong.append(f"{method} {path} as {who}: {resp.status_code} {resp.text[:120]}")
            if resp.status_code >= 500:
                wrong.append(f"{method} {path} as {who}: 500 {resp.text[:200]}")
    assert not wrong, "\n".join(wrong)


# --- tokens, users, passwords -------------------------------------------------------------


async def test_a_token_is_refused_once_revoked_or_expired(farm: Farm) -> None:
    made = await farm.call(
        "admin", "POST", "/v3/tokens", json={"name": "short", "role": "viewer", "expires_in": 1}
    )
    assert made.status_code == 201, made.text
    short = made.json()
    farm.tokens["short"] = short["token"]
    assert (await farm.call("short", "GET", "/v3/workflows")).status_code == 200
    listed = (await farm.call("admin", "GET", "/v3/tokens")).json()["data"]
    (row,) = [t for t in listed if t["id"] == short["id"]]
    assert row["last_used_date"] is not None and "token" not in row
    await asyncio.sleep(1.2)
    expired = await farm.call("short", "GET", "/v3/workflows")
    assert expired.status_code == 401 and "www-authenticate" in expired.headers

    assert (await farm.call("viewer", "GET", "/v3/workflows")).status_code == 200
    viewer_id = next(t["id"] for t in listed if t["name"] == "viewer")
    revoked = await farm.call("admin", "DELETE", f"/v3/tokens/{viewer_id}")
    assert revoked.status_code == 200, revoked.text
    assert (await farm.call("viewer", "GET", "/v3/workflows")).status_code == 401
    again = (await farm.call("admin", "GET", "/v3/tokens", params={"revoked": True})).json()
    assert any(t["id"] == viewer_id and t["revoked_date"] for t in again["data"])


async def test_users_passwords_and_basic_auth(farm: Farm) -> None:
    added = await farm.call(
        "admin",
        "POST",
        "/v3/users",
        json={"name": "alice", "role": "operator", "password": "s3cret-pw"},
    )
    assert added.status_code == 201 and added.json()["has_password"] is True
    dup = await farm.call("admin", "POST", "/v3/users", json={"name": "alice", "role": "viewer"})
    assert dup.status_code == 409

    def basic(user: str, password: str) -> dict[str, str]:
        raw = base64.b64encode(f"{user}:{password}".encode()).decode()
        return {"Authorization": f"Basic {raw}"}

    ok = await farm.client.get("/v3/workflows", headers=basic("alice", "s3cret-pw"))
    assert ok.status_code == 200
    bad = await farm.client.get("/v3/workflows", headers=basic("alice", "wrong"))
    assert bad.status_code == 401
    as_user = await farm.client.get("/v3/workflows", headers=basic(farm.tokens["viewer"], ""))
    assert as_user.status_code == 200
    # alice (an operator) may make worker tokens for a workflow, nothing more
    mine = await farm.client.post(
        "/v3/tokens",
        headers=basic("alice", "s3cret-pw"),
        json={"name": "node", "role": "worker", "workflow_ids": [farm.wf_a]},
    )
    assert mine.status_code == 201 and mine.json()["owner"] == "alice"
    for body in (
        {"name": "x", "role": "admin"},
        {"name": "x", "role": "worker"},
        {"name": "x", "role": "worker", "workflow_ids": [1], "owner": "admin"},
    ):
        refused = await farm.client.post(
            "/v3/tokens", headers=basic("alice", "s3cret-pw"), json=body
        )
        assert refused.status_code == 403, (body, refused.text)
    assert (
        await farm.client.get("/v3/users", headers=basic("alice", "s3cret-pw"))
    ).status_code == 403

    users = (await farm.call("admin", "GET", "/v3/users")).json()["data"]
    assert {u["name"]: u["tokens"] for u in users}["alice"] == 1
    gone = await farm.call("admin", "DELETE", "/v3/users/alice")
    assert gone.status_code == 200
    assert (
        await farm.client.get("/v3/workflows", headers=basic("alice", "s3cret-pw"))
    ).status_code == 401
    node = {"Authorization": f"Bearer {mine.json()['token']}"}
    assert (
        await farm.client.post("/v3/claims", json={"limit": 1}, headers=node)
    ).status_code == 401


# --- worker scope -------------------------------------------------------------------------


async def test_a_worker_token_acts_only_on_its_own_workflow(farm: Farm) -> None:
    beat = {"next_report_increment": 60}
    for prefix in ("/v3/fsm", "/api/v3"):
        other = await farm.call(
            "worker_a", "POST", f"{prefix}/task_instance/{farm.ti_b}/log_report_by", json=beat
        )
        assert other.status_code == 403, other.text
        running = await farm.call(
            "worker_a",
            "POST",
            f"{prefix}/task_instance/{farm.ti_b}/log_running",
            json={"nodename": "node-EVIL"},
        )
        assert running.status_code == 403
        unknown = await farm.call(
            "worker_a", "POST", f"{prefix}/task_instance/999999/log_done", json={}
        )
        assert unknown.status_code == 403
    own = await farm.call(
        "worker_a", "POST", f"/v3/fsm/task_instance/{farm.ti_a}/log_report_by", json=beat
    )
    assert own.status_code == 200, own.text

    batch = "/v3/fsm/task_instance/log_report_by/batch"
    mixed = await farm.call(
        "worker_a", "POST", batch, json={"task_instance_ids": [farm.ti_a, farm.ti_b], **beat}
    )
    assert mixed.status_code == 403
    mine = await farm.call(
        "worker_a", "POST", batch, json={"task_instance_ids": [farm.ti_a], **beat}
    )
    assert mine.status_code == 200, mine.text
    status = await farm.call(
        "worker_a", "POST", "/v3/task_instances/status", json={"task_instance_ids": [farm.ti_b]}
    )
    assert status.status_code == 403
    lookup = await farm.call(
        "worker_a", "GET", f"/v3/fsm/get_array_task_instance_id/{farm.array_b}/1/0"
    )
    assert lookup.status_code == 403

    theirs = await farm.call(
        "worker_a", "POST", "/v3/claims", json={"limit": 5, "workflow_id": farm.wf_b}
    )
    assert theirs.status_code == 403
    claimed = await farm.call("worker_a", "POST", "/v3/claims", json={"limit": 5})
    assert claimed.status_code == 200, claimed.text
    assert {c["workflow_id"] for c in claimed.json()["data"]} == {farm.wf_a}


async def test_worker_routes_open_to_trusted_networks_only(db_url: str) -> None:
    admin = await _admin_token(db_url)
    beat = {"next_report_increment": 60}
    # the in-process client comes from 127.0.0.1, a trusted network by default
    async with app_client(secured_settings(db_url, trusted_networks=["127.0.0.0/8"])) as client:
        farm = await _build(client, admin)
        path = f"/api/v3/task_instance/{farm.ti_a}/log_report_by"
        assert (await farm.call(None, "POST", path, json=beat)).status_code == 200
        assert (await farm.call(None, "GET", "/v3/workflows")).status_code == 401
        assert (await farm.call(None, "POST", "/v3/workflows/1/cancel")).status_code == 401
    async with app_client(secured_settings(db_url, trusted_networks=["10.0.0.0/8"])) as client:
        path = f"/api/v3/task_instance/{farm.ti_a}/log_report_by"
        assert (await client.post(path, json=beat)).status_code == 401


# --- browsers -----------------------------------------------------------------------------


async def test_cross_site_forms_forged_hosts_and_security_headers(farm: Farm) -> None:
    cancel = f"/v3/workflows/{farm.wf_a}/cancel"
    form = await farm.call(
        "operator",
        "POST",
        cancel,
        content=b"x=1",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert form.status_code == 415
    plain = await farm.call(
        None, "POST", cancel, content=b"{}", headers={"Content-Type": "text/plain"}
    )
    assert plain.status_code == 415
    evil = await farm.call("operator", "POST", cancel, headers={"Origin": "https://evil.example"})
    assert evil.status_code == 403 and "cross-site" in evil.json()["detail"]
    rebound = await farm.call(
        "viewer", "GET", "/v3/workflows", headers={"Host": "attacker.example"}
    )
    assert rebound.status_code == 403
    assert (
        await farm.call(None, "GET", "/health", headers={"Host": "localhost:8000"})
    ).status_code == 200
    same = await farm.call("operator", "POST", cancel, headers={"Origin": "http://localhost"})
    assert same.status_code == 200, same.text
    answer = await farm.call("viewer", "GET", "/v3/workflows")
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["x-frame-options"] == "DENY"
    assert "default-src 'none'" in answer.headers["content-security-policy"]
    events = (await farm.call("viewer", "GET", f"/v3/workflows/{farm.wf_a}/events")).json()["data"]
    cancels = [
        e
        for e in events
        if e["entity"] == "workflow" and (e["details"] or {}).get("action") == "cancel"
    ]
    assert cancels and cancels[0]["details"]["by"] == "admin (token 'operator')"
    submitted = [e for e in events if (e["details"] or {}).get("submitted_tasks")]
    assert submitted[0]["details"]["by"] == "admin (token 'admin')" or submitted[0]["details"][
        "by"
    ].startswith("admin")


async def test_cors_preflight_only_for_configured_origins(db_url: str) -> None:
    settings = secured_settings(db_url, cors_origins=["https://ui.example"])
    async with app_client(settings) as client:
        asked = {
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        }
        ok = await client.options(
            "/v3/workflows", headers={"Origin": "https://ui.example", **asked}
        )
        assert ok.status_code == 200
        assert ok.headers["access-control-allow-origin"] == "https://ui.example"
        other = await client.options(
            "/v3/workflows", headers={"Origin": "https://evil.example", **asked}
        )
        assert other.status_code == 400
        assert "access-control-allow-origin" not in other.headers


def test_auth_off_is_refused_on_an_open_address() -> None:
    with pytest.raises(ValidationError, match="auth is off"):
        Settings(auth=False, host="0.0.0.0")
    assert Settings(auth=False, host="127.0.0.1").auth is False


async def test_tokens_are_stored_only_as_hashes(farm: Farm, db: Database) -> None:
    stored = [r["token_hash"] for r in await sql_rows(db, "SELECT token_hash FROM api_token")]
    assert stored and not set(stored) & set(farm.tokens.values())
    assert all(len(h) == 64 for h in stored)


async def test_only_the_worker_that_started_an_instance_reports_for_it(farm: Farm) -> None:
    body = {"name": "second", "role": "worker", "workflow_ids": [farm.wf_a]}
    made = await farm.call("admin", "POST", "/v3/tokens", json=body)
    farm.tokens["second"] = made.json()["token"]
    fsm = f"/v3/fsm/task_instance/{farm.ti_a}"
    launched = await farm.call(
        "admin",
        "POST",
        f"{fsm}/log_distributor_id",
        json={"distributor_id": "7", "next_report_increment": 60},
    )
    assert launched.status_code == 200, launched.text
    started = await farm.call(
        "worker_a",
        "POST",
        f"{fsm}/log_running",
        json={"nodename": "node-1", "next_report_increment": 60},
    )
    assert started.status_code == 200, started.text

    for prefix in ("/v3/fsm", "/api/v3"):
        path = f"{prefix}/task_instance/{farm.ti_a}"
        for route, report in (
            ("log_done", {"nodename": "node-EVIL"}),
            ("log_report_by", {"next_report_increment": 60}),
            ("log_error_worker_node", {"error_state": "E", "error_description": "x"}),
            ("log_running", {"nodename": "node-EVIL", "next_report_increment": 60}),
        ):
            refused = await farm.call("second", "POST", f"{path}/{route}", json=report)
            assert refused.status_code == 403, (route, refused.text)
    beat = await farm.call(
        "worker_a", "POST", f"{fsm}/log_report_by", json={"next_report_increment": 60}
    )
    assert beat.status_code == 200 and beat.json()["status"] == "R"
    task = (await farm.call("viewer", "GET", f"/v3/tasks/{farm.task_a}")).json()
    (mine,) = [i for i in task["instances"] if i["id"] == farm.ti_a]
    assert mine["nodename"] == "node-1" and mine["status"] == "R"
    done = await farm.call("operator", "POST", f"{fsm}/log_done", json={})
    assert done.status_code == 200 and done.json()["status"] == "D"
