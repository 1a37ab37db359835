"""End to end: the local executor's life cycle: shutdown, drain, kill -9 and restart, cancel,
what it measures; and the workflow fields it relies on (CANCELLED, array_ids).

Each command carries a unique marker in its environment, so the test finds its processes (and
only them) with psutil, whatever shell or session they run in.
"""

import asyncio
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from helpers import wait_for

pytestmark = pytest.mark.e2e
MARK = "FARMSTEAD_TEST_MARK"
#: no heartbeat, deadline or reconciler comes into play within a test: only the executor acts
SLOW = {"heartbeat_interval": 600, "reconciler_enabled": "false"}


@pytest.fixture
def mark() -> Iterator[str]:
    """A marker for this test's commands; at teardown, any process still carrying it is killed."""
    value = uuid.uuid4().hex
    yield value
    for proc in marked(value):
        proc.kill()


def marked(value: str) -> list[psutil.Process]:
    """Live processes whose environment carries the marker `value`."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(MARK) == value and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def sleeps(value: str) -> list[psutil.Process]:
    """The marked `sleep` processes (children of the tasks' shells)."""
    out = []
    for proc in marked(value):
        try:
            if proc.name() == "sleep":
                out.append(proc)
        except psutil.Error:
            continue
    return out


def submit(url: str, body: dict[str, Any]) -> dict[str, Any]:
    resp = httpx.post(f"{url}/v3/workflows", json=body, timeout=60)
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


def get(url: str, path: str) -> Any:
    resp = httpx.get(f"{url}{path}", timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.json()


def tasks_of(url: str, workflow_id: int) -> list[dict[str, Any]]:
    data = get(url, f"/v3/workflows/{workflow_id}/tasks?limit=1000")["data"]
    return [get(url, f"/v3/tasks/{t['id']}") for t in data]


def statuses_of(url: str, workflow_id: int) -> list[str]:
    return [t["status"] for t in get(url, f"/v3/workflows/{workflow_id}/tasks")["data"]]


def stop_server(server: Any, sig: int) -> None:
    assert server.proc is not None
    server.proc.send_signal(sig)
    server.proc.wait(timeout=120)


# ---- 1. SIGTERM: every command's tree ends, every instance is retried at once --------------


@pytest.mark.parametrize("mode", ["coroutine", "subprocess"])
def test_sigterm_ends_whole_trees_and_queues_retries(
    server_factory: Any, mark: str, mode: str
) -> None:
    server = server_factory(local_workers=3, local_mode=mode, shutdown_grace=5, **SLOW)
    # the shell forks `sleep` (no exec): the tree is sh -> sh -> sleep
    command = f"{MARK}={mark} sh -c 'sleep 25; echo x'"
    wf = submit(
        server.url,
        {"name": "s", "tasks": [{"name": f"t{i}", "command": command} for i in range(3)]},
    )
    wait_for(lambda: len(sleeps(mark)) == 3, 60, "three running sleeps")

    stop_server(server, signal.SIGTERM)

    wait_for(lambda: not marked(mark), 15, "every process of the tasks to end")
    reader = server_factory()  # the same database, no executor
    for task in tasks_of(reader.url, wf["id"]):
        first, retry = task["instances"]
        assert first["status"] == "U", task
        assert "server shutting down" in task["error_log"][0]["description"]
        assert retry["status"] == "Q", task
        assert task["num_attempts"] == 2


def test_drain_lets_running_commands_finish(server_factory: Any, mark: str) -> None:
    server = server_factory(local_workers=2, drain="true", **SLOW)
    command = f"{MARK}={mark} sh -c 'sleep 3; echo drained'"
    wf = submit(server.url, {"name": "d", "tasks": [{"name": "t", "command": command}]})
    wait_for(lambda: sleeps(mark), 60, "the task to run")

    stop_server(server, signal.SIGTERM)

    reader = server_factory()
    (task,) = tasks_of(reader.url, wf["id"])
    (ti,) = task["instances"]
    assert (task["status"], ti["status"]) == ("D", "D"), task
    assert ti["stdout_log"].strip() == "drained"


# ---- 2. kill -9: nothing of the first try runs beside the retry -------------------------------


@pytest.fixture
def restart() -> Iterator[Any]:
    """Start a server again on the same port and settings (so it is the same executor)."""
    started: list[Any] = []

    def again(old: Any) -> Any:
        new = type(old)(old.db_url, old.log_path.with_suffix(".restart.log"))  # ServerProcess
        new.env, new.port, new.url = old.env, old.port, old.url
        started.append(new)
        return new.start()

    yield again
    for server in started:
        server.stop()


def test_kill_9_leaves_no_copy_running_beside_the_retry(
    server_factory: Any, restart: Any, mark: str, tmp_path: Path
) -> None:
    pids = tmp_path / "pids"
    # The first try starts a sleep in its group and one in a session of its own (setsid, as a
    # daemon would), then waits; the retry says whether any process of the first try still runs.
    command = (
        f"export {MARK}={mark}; "
        f"if [ -s {pids} ]; then "
        f"  for p in $(cat {pids}); do kill -0 $p 2>/dev/null && echo still running: $p; done; "
        f"  echo retry done; exit 0; "
        f"fi; "
        f"setsid sleep 60 & echo $! >> {pids}; sleep 60 & echo $! >> {pids}; wait"
    )
    server = server_factory(local_workers=1, shutdown_grace=2, **SLOW)
    wf = submit(server.url, {"name": "k", "tasks": [{"name": "t", "command": command}]})
    wait_for(lambda: len(sleeps(mark)) == 2, 60, "both sleeps of the first try")

    stop_server(server, signal.SIGKILL)
    restarted = restart(server)

    wait_for(lambda: statuses_of(restarted.url, wf["id"]) == ["D"], 60, "the retry to finish")
    (task,) = tasks_of(restarted.url, wf["id"])
    first, retry = task["instances"]
    assert retry["stdout_log"].strip() == "retry done", retry["stdout_log"]
    assert first["status"] == "U"
    assert "the server ended while it ran" in task["error_log"][0]["description"]
    assert not sleeps(mark)


# ---- 3. cancel: running commands stop at once, the workflow ends CANCELLED --------------------


@pytest.mark.parametrize("mode", ["coroutine", "subprocess"])
def test_cancel_stops_running_commands_at_once(server_factory: Any, mark: str, mode: str) -> None:
    server = server_factory(local_workers=4, local_mode=mode, **SLOW)
    command = f"{MARK}={mark} sh -c 'sleep 300; echo finished'"
    body = {"name": "c", "tasks": [{"name": f"t{i}", "command": command} for i in range(6)]}
    wf = submit(server.url, body)
    wait_for(lambda: len(sleeps(mark)) == 4, 60, "four running sleeps")
    wait_for(lambda: statuses_of(server.url, wf["id"]).count("R") == 4, 30, "four RUNNING tasks")

    resp = httpx.post(f"{server.url}/v3/workflows/{wf['id']}/cancel", timeout=30)

    assert resp.status_code == 200, resp.text
    assert resp.json()["changed"] == {"F": 2, "K": 4}
    wait_for(lambda: not marked(mark), 30, "the cancelled commands to be stopped")
    final = wait_for(
        lambda: (w := get(server.url, f"/v3/workflows/{wf['id']}"))["status"] != "R" and w,
        30,
        "the workflow to settle",
    )
    assert (final["status"], final["status_name"]) == ("C", "CANCELLED")
    for task in tasks_of(server.url, wf["id"]):
        assert task["status"] == "F"
        assert [i["status"] for i in task["instances"]] == ["F"], task
        assert "finished" not in (task["instances"][0]["stdout_log"] or "")


# ---- 4. maxrss: the command's own peak, not the server's ---------------------------------------


def test_maxrss_is_the_commands_own(server_factory: Any) -> None:
    server = server_factory(local_workers=2, **SLOW)
    grow = f'{sys.executable} -c "b = bytearray(200 * 2**20)"'
    body = {
        "name": "m",
        "tasks": [{"name": "true", "command": "true"}, {"name": "grow", "command": grow}],
    }
    wf = submit(server.url, body)
    wait_for(lambda: statuses_of(server.url, wf["id"]) == ["D", "D"], 60, "both tasks to finish")

    rss = {t["name"]: t["instances"][0]["maxrss"] for t in tasks_of(server.url, wf["id"])}

    assert rss["true"] < 20 * 2**20, rss
    assert rss["grow"] >= 200 * 2**20, rss


# ---- 6, 7 and the status route: what the executor and the CLI read ----------------------------


async def test_workflow_reads_carry_array_ids_and_cancelled(client: httpx.AsyncClient) -> None:
    body = {"name": "a", "array": {"command": "echo {i}", "first": 1, "last": 3, "name": "a{i}"}}
    created = (await client.post("/v3/workflows", json=body)).json()
    assert created["array_ids"]

    read = (await client.get(f"/v3/workflows/{created['id']}")).json()
    listed = (await client.get("/v3/workflows")).json()["data"]

    assert read["array_ids"] == created["array_ids"]
    assert [w["array_ids"] for w in listed if w["id"] == created["id"]] == [created["array_ids"]]
    assert (await client.post(f"/v3/workflows/{created['id']}/cancel")).status_code == 200
    cancelled = (await client.get(f"/v3/workflows/{created['id']}")).json()
    assert (cancelled["status"], cancelled["status_name"]) == ("C", "CANCELLED")
    resumed = await client.post(f"/v3/workflows/{created['id']}/resume")
    assert resumed.status_code == 200
    assert (await client.get(f"/v3/workflows/{created['id']}")).json()["status"] == "R"


async def test_instance_statuses_in_one_request(client: httpx.AsyncClient) -> None:
    body = {
        "name": "s",
        "tasks": [{"name": "a", "command": "true"}, {"name": "b", "command": "true"}],
    }
    wf = (await client.post("/v3/workflows", json=body)).json()
    tasks = (await client.get(f"/v3/workflows/{wf['id']}/tasks")).json()["data"]
    ids = [(await client.get(f"/v3/tasks/{t['id']}")).json()["instances"][0]["id"] for t in tasks]

    resp = await client.post("/v3/task_instances/status", json={"task_instance_ids": [*ids, 10**9]})

    assert resp.status_code == 200, resp.text
    assert resp.json()["data"] == [{"task_instance_id": i, "status": "Q"} for i in sorted(ids)]
    bad = await client.post("/v3/task_instances/status", json={"task_instance_ids": [False]})
    assert bad.status_code == 422


def test_submit_resolves_log_dir_where_the_user_is(server: Any, tmp_path: Path) -> None:
    cwd = tmp_path / "here"
    cwd.mkdir()
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "farmstead.cli.main",
            "submit",
            "--log-dir",
            "logs",
            "--server-url",
            server.url,
            "--",
            "true",
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert res.returncode == 0, res.stdout + res.stderr
    (wf,) = get(server.url, "/v3/workflows")["data"]
    (task,) = tasks_of(server.url, wf["id"])
    assert task["resources"]["stdout"] == str(cwd / "logs")


# ---- 5. an expired instance's error names its last report, not its deadline -------------------


async def test_expiry_names_the_last_report(
    client: httpx.AsyncClient, db: Any, db_url: str
) -> None:
    from datetime import datetime

    from farmstead.services.reconciler import Reconciler
    from farmstead.settings import Settings

    body = {"name": "x", "tasks": [{"name": "a", "command": "true"}]}
    wf = (await client.post("/v3/workflows", json=body)).json()
    (claimed,) = (await client.post("/v3/claims", json={"limit": 1})).json()["data"]
    ti = claimed["task_instance_id"]
    fsm = f"/v3/fsm/task_instance/{ti}"
    await client.post(
        f"{fsm}/log_distributor_id", json={"distributor_id": "j", "next_report_increment": 60}
    )
    running = await client.post(f"{fsm}/log_running", json={"next_report_increment": 60})
    assert running.status_code == 200, running.text
    await asyncio.sleep(0.3)
    beat = await client.post(f"{fsm}/log_report_by", json={"next_report_increment": 0.05})
    assert beat.json()["status"] == "R"
    await asyncio.sleep(0.3)

    settings = Settings(database_url=db_url, reconciler_enabled=False, triage_grace=0)
    moved = (await Reconciler(db, settings).sweep()).moved

    assert moved.get("U") == 1, moved
    (task,) = (await client.get(f"/v3/workflows/{wf['id']}/tasks")).json()["data"]
    text = task["last_error"]
    since, deadline = re.search(
        r"no heartbeat since (\S+) \(deadline (\S+) passed\)", text
    ).groups()  # type: ignore[union-attr]
    events = (await client.get(f"/v3/workflows/{wf['id']}/events")).json()["data"]
    moves = {(e["entity"], e["from_status"], e["to_status"]): e for e in events}
    ran = moves["task_instance", "O", "R"]

    def at(value: str) -> datetime:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))

    # the heartbeat came 0.3 s after log_running, and set the deadline 0.05 s after itself
    assert at(ran["time"]) < at(since) < at(deadline)


async def test_a_worker_that_exited_a_moment_ago_does_not_end_the_executor(
    client: httpx.AsyncClient,
) -> None:
    """The status check finds a cancelled instance whose worker process has already exited
    and been reaped, its `wait()` not yet resumed: nothing to stop, and the executor goes on
    (it once raised ProcessLookupError there and stopped claiming for good)."""
    from farmstead.client.api import Api
    from farmstead.client.executor import STOP_IN, LocalExecutor
    from farmstead.client.runner import Runner

    body = {"name": "gone", "tasks": [{"name": "a", "command": "true"}]}
    wf = (await client.post("/v3/workflows", json=body)).json()
    api = Api("http://localhost", retry_limit=5, client=client)
    (item,) = await api.claim(1, wf["id"])
    ti_id = int(item["task_instance_id"])
    assert (await client.post(f"/v3/workflows/{wf['id']}/cancel")).status_code == 200
    assert (await api.statuses([ti_id], retry_limit=5))[ti_id] in STOP_IN  # cancelled

    worker = await asyncio.create_subprocess_exec("true")
    while worker.returncode is None:  # reaped by the child watcher; wait() not called
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)
    executor = LocalExecutor("http://localhost", 1, mode="subprocess", client=client)
    executor.workers[ti_id] = worker
    executor._settled = {ti_id}  # seen settled at the last check too: stop it now

    await executor._stop_moved_on(api, Runner(api))

    assert ti_id in executor._told
    await worker.wait()
