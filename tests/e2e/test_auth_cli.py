"""Auth as a user meets it (issue 10): a real `farmstead serve` process with auth on (its
default), the CLI in other processes, the local executor's worker processes with their own
scoped tokens."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from farmstead import credentials
from helpers import wait_for

pytestmark = pytest.mark.e2e

CLI = [sys.executable, "-m", "farmstead.cli.main"]


def cli(url: str, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    """`farmstead ARGS` against `url`; FARMSTEAD_TOKEN only when given."""
    env = {k: v for k, v in os.environ.items() if k != "FARMSTEAD_TOKEN"}
    env |= {"FARMSTEAD_SERVER_URL": url, "COLUMNS": "200", "NO_COLOR": "1"}
    if token is not None:
        env["FARMSTEAD_TOKEN"] = token
    return subprocess.run(
        [*CLI, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def ok(url: str, *args: str, token: str | None = None) -> str:
    res = cli(url, *args, token=token)
    assert res.returncode == 0, (args, res.stdout, res.stderr)
    return res.stdout


def test_first_start_leaves_an_admin_token_the_cli_finds(
    server_factory: Any, credentials_file: Path
) -> None:
    server = server_factory(auth="true")
    url = server.url
    token = credentials.token_for(url)
    assert token, "the first start wrote no admin token for its URL"
    assert stat.S_IMODE(credentials_file.stat().st_mode) == 0o600
    assert "auth is on: a new admin token is in" in server.log_path.read_text()

    # no credentials: 401, and the CLI says what to do
    assert httpx.get(f"{url}/v3/workflows").status_code == 401
    bogus = cli(url, "workflows", "list", token="fst_not-a-token")
    assert bogus.returncode == 1 and "FARMSTEAD_TOKEN" in bogus.stderr, bogus.stderr

    # on this machine the CLI needs no set-up
    wf = int(ok(url, "submit", "--name", "laptop", "--", "true").strip())
    viewer = ok(url, "tokens", "create", "dashboard", "--role", "viewer").strip()
    assert viewer.startswith("fst_")
    assert "laptop" in ok(url, "workflows", "list", token=viewer)
    refused = cli(url, "workflows", "cancel", str(wf), token=viewer)
    assert refused.returncode == 1 and "viewer" in refused.stderr, refused.stderr
    ok(url, "workflows", "cancel", str(wf))  # the admin may

    ok(url, "users", "add", "bob", "--role", "operator")
    users = json.loads(ok(url, "users", "list", "--json"))
    assert {u["name"]: u["role"] for u in users}["bob"] == "operator"
    bobs = ok(url, "tokens", "create", "bob-laptop", "--role", "operator", "--owner", "bob")
    listed = json.loads(ok(url, "tokens", "list", "--json", "--owner", "bob"))
    assert [t["name"] for t in listed] == ["bob-laptop"]
    events = httpx.get(
        f"{url}/v3/workflows/{wf}/events", headers={"Authorization": f"Bearer {bobs.strip()}"}
    ).json()["data"]
    assert any(
        (e["details"] or {}).get("by") == "admin (token 'first admin token')"
        for e in events
        if e["entity"] == "workflow"
    )
    ok(url, "users", "remove", "bob")
    gone = httpx.get(f"{url}/v3/workflows", headers={"Authorization": f"Bearer {bobs.strip()}"})
    assert gone.status_code == 401
    everyone = json.loads(ok(url, "tokens", "list", "--json"))
    (dashboard,) = [t["id"] for t in everyone if t["name"] == "dashboard"]
    ok(url, "tokens", "revoke", str(dashboard))
    assert cli(url, "workflows", "list", token=viewer).returncode == 1

    # a restart (another port) keeps the admin token this machine holds
    server.stop()
    again = server_factory(auth="true")
    assert credentials.token_for(again.url) == token
    assert "auth is on: the admin token is in" in again.log_path.read_text()


def test_subprocess_workers_run_with_tokens_of_their_own_workflow(server_factory: Any) -> None:
    server = server_factory(
        auth="true",
        trusted_networks="[]",
        local_workers=2,
        local_mode="subprocess",
        heartbeat_interval=0.5,
    )
    url = server.url
    admin = {"Authorization": f"Bearer {credentials.token_for(url)}"}
    body = {"name": "sub", "array": {"command": "echo {i}", "first": 0, "last": 3}}
    wf = httpx.post(f"{url}/v3/workflows", json=body, headers=admin).json()["id"]

    def done() -> bool:
        counts = httpx.get(f"{url}/v3/workflows/{wf}", headers=admin).json()["counts"]
        return counts == {"D": 4}

    wait_for(done, 120, "the workflow's 4 tasks DONE through worker processes")
    tokens = httpx.get(f"{url}/v3/tokens", headers=admin).json()["data"]
    mine = [t for t in tokens if t["name"] == f"local executor, workflow {wf}"]
    assert len(mine) == 1 and mine[0]["workflow_ids"] == [wf] and mine[0]["role"] == "worker"
    assert mine[0]["last_used_date"] is not None  # the workers used it (no trusted network)


def test_no_auth_only_on_loopback(tmp_path: Path) -> None:
    env = {**os.environ, "FARMSTEAD_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/f.db"}
    res = subprocess.run(
        [*CLI, "serve", "--no-auth", "--host", "0.0.0.0", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode != 0 and "auth is off" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "f.db").exists()
