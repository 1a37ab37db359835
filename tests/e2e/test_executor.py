"""End to end: `farmstead serve --local-workers N`, the server running its own work.

The subprocess mode starts one `farmstead worker run` per instance, so a test can `kill -9` a
worker as a cluster would lose a node; the reconciler then has to expire and retry it.
"""

import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from helpers import wait_for

pytestmark = pytest.mark.e2e

CLI = [sys.executable, "-m", "farmstead.cli.main"]
FAST = {
    "reconciler_enabled": "true",
    "reconciler_interval": 0.5,
    "triage_grace": 1,
    "heartbeat_interval": 0.5,
    "report_by_buffer": 3,
}
N_TASKS = 100
FAIL_ONCE = frozenset(range(5, N_TASKS, 10))  # 10 tasks: the first try fails, the retry works
MEMORY = 42  # over its memory limit at first; the retry's 1.5x is enough
KILLED = 77  # its worker is kill -9'd mid-run
#: an instance's moves up to running; a heartbeat late on a loaded machine may add T and back
RUN = "QI IO OR( RT TR)*"
#: ...and done: from TRIAGING too, when the last heartbeat came late just before the report
DONE = "( RD| RT TD)"


# ---- helpers ------------------------------------------------------------------------------



def get(url: str, path: str, **params: Any) -> Any:
    resp = httpx.get(f"{url}{path}", params=params, timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.json()


def submit(url: str, body: dict[str, Any]) -> dict[str, Any]:
    resp = httpx.post(f"{url}/v3/workflows", json=body, timeout=60)
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


def tasks_by_name(url: str, workflow_id: int) -> dict[str, dict[str, Any]]:
    data = get(url, f"/v3/workflows/{workflow_id}/tasks", limit=10_000)["data"]
    return {t["name"]: t for t in data}


def task_detail(url: str, task_id: int) -> dict[str, Any]:
    detail = get(url, f"/v3/tasks/{task_id}")
    detail["instances"].sort(key=lambda i: i["id"])
    return dict(detail)


def events(url: str, workflow_id: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while True:
        page = get(url, f"/v3/workflows/{workflow_id}/events", after_id=out[-1]["id"] if out else 0)
        if not page["data"]:
            return out
        out += page["data"]


def of(evs: list[dict[str, Any]], entity: str, entity_id: int) -> list[dict[str, Any]]:
    return [e for e in evs if e["entity"] == entity and e["entity_id"] == entity_id]


def moves_of(evs: list[dict[str, Any]], entity: str, entity_id: int) -> str:
    """An entity's moves, oldest first, e.g. "-Q QI IO" ("-": created)."""
    return " ".join(
        f"{e['from_status'] or '-'}{e['to_status']}" for e in of(evs, entity, entity_id)
    )


def finish(proc: subprocess.Popen[str], timeout: float, what: str, server: Any) -> tuple[int, str]:
    """Wait for a CLI process: (exit code, its output and the server's complaints)."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"{what} did not end within {timeout} s:\n{out[-2000:]}\n{err[-2000:]}")
    log = server.log_path.read_text(errors="replace").splitlines()
    trouble = [line for line in log if "503" in line or "rror" in line][-20:]
    return proc.returncode, "\n".join([out[-2000:], err[-2000:], "server log:", *trouble])


def db_check(db_url: str) -> None:
    res = subprocess.run(
        [*CLI, "db", "check", "--database-url", db_url],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr


def worker_pids(server_url: str, ti_id: int | None = None) -> list[int]:
    """`farmstead worker run` processes started for this server (for one instance, if given)."""
    pids = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "worker" not in cmd or server_url not in cmd or "--task-instance-id" not in cmd:
            continue
        if ti_id is None or cmd[cmd.index("--task-instance-id") + 1] == str(ti_id):
            pids.append(proc.info["pid"])
    return pids


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def read_pid(path: Path) -> int | None:
    text = path.read_text().strip() if path.exists() else ""
    return int(text) if text else None


@pytest.fixture
def watch() -> Iterator[Callable[[str, int], subprocess.Popen[str]]]:
    """Start `farmstead status ID --watch` in the background; ended at teardown."""
    procs: list[subprocess.Popen[str]] = []

    def start(url: str, workflow_id: int) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [*CLI, "status", str(workflow_id), "--watch", "--interval", "1", "--server-url", url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


@pytest.fixture
def local_server(server_factory: Any) -> Iterator[Callable[..., Any]]:
    """Start a server with a local executor; at teardown, end workers it left behind."""
    servers: list[Any] = []

    def start(**settings: Any) -> Any:
        server = server_factory(**FAST, **settings)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
        for pid in worker_pids(server.url):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# ---- the big one: subprocess mode ---------------------------------------------------------


def _command(i: int, d: Path) -> str:
    if i in FAIL_ONCE:
        return (
            f"if [ -e {d}/fail_{i} ]; then echo second {i}; "
            f"else touch {d}/fail_{i}; echo first try of {i} fails >&2; exit 1; fi"
        )
    if i == MEMORY:  # ~65 MB: over 0.05 GB (54 MB), under the retry's 0.075 GB (80 MB)
        return (
            f'{sys.executable} -c "b = bytearray(55 * 1024 * 1024); import time; '
            'time.sleep(1.5); print(len(b))"'
        )
    if i == KILLED:
        return (
            f"if [ -e {d}/killed ]; then echo retry of {i}; exit 0; fi; "
            f"touch {d}/killed; echo $$ > {d}/killed.pid; exec sleep 20"
        )
    return f"echo task {i}"


def _spec(i: int, d: Path) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": f"t{i}", "command": _command(i, d)}
    if i == MEMORY:
        spec["resources"] = {"memory": 0.05}
    if i in (MEMORY, KILLED):
        spec["priority"] = 5  # start them early, so their retries overlap the rest
    return spec


def _kill_worker_of_running_task(url: str, task_id: int, pid_file: Path) -> tuple[int, int]:
    """kill -9 the worker running `task_id`: (its instance id, the command's pid)."""
    command_pid = wait_for(lambda: read_pid(pid_file), 90, "the task to be killed to start")
    (ti,) = task_detail(url, task_id)["instances"]
    assert ti["status"] in ("R", "T")  # T: a heartbeat late on this loaded machine
    (worker,) = wait_for(lambda: worker_pids(url, ti["id"]), 10, "its worker process")
    os.kill(worker, signal.SIGKILL)
    return ti["id"], command_pid


def _cancel_when_running(url: str, workflow_id: int, task_id: int, pid_file: Path) -> int:
    """Cancel the workflow once its one task runs; the command's pid."""
    command_pid = wait_for(lambda: read_pid(pid_file), 90, "the task to be cancelled to start")
    assert task_detail(url, task_id)["instances"][0]["status"] in ("R", "T")
    resp = httpx.post(f"{url}/v3/workflows/{workflow_id}/cancel", timeout=30)
    assert resp.status_code == 200, resp.text
    assert resp.json()["changed"] == {"K": 1}, f"cancel left the running instance: {resp.json()}"
    return int(command_pid)


def test_subprocess_workers_retry_fail_kill_and_cancel(
    local_server: Any, watch: Any, db_url: str, tmp_path: Path
) -> None:
    server = local_server(local_workers=6, local_mode="subprocess")
    url = server.url
    d = tmp_path
    cancel_wf = submit(
        url,
        {
            "name": "to-cancel",
            "priority": 10,
            "tasks": [{"name": "c", "command": f"echo $$ > {d}/cancel.pid; exec sleep 30"}],
        },
    )
    main_wf = submit(url, {"name": "main", "tasks": [_spec(i, d) for i in range(N_TASKS)]})
    assert main_wf["total"] == N_TASKS
    watch_main, watch_cancel = watch(url, main_wf["id"]), watch(url, cancel_wf["id"])
    tasks = tasks_by_name(url, main_wf["id"])
    (cancel_task,) = tasks_by_name(url, cancel_wf["id"]).values()

    cancelled_pid = _cancel_when_running(url, cancel_wf["id"], cancel_task["id"], d / "cancel.pid")
    killed_ti, killed_pid = _kill_worker_of_running_task(
        url, tasks[f"t{KILLED}"]["id"], d / "killed.pid"
    )
    # the command dies with its worker (no orphan), and the cancelled one is stopped
    wait_for(lambda: not alive(killed_pid), 10, "the killed worker's command to die")
    wait_for(lambda: not alive(cancelled_pid), 10, "the cancelled command to be stopped")

    code, out = finish(watch_cancel, 60, "status --watch of the cancelled workflow", server)
    assert code == 1, out
    code, out = finish(watch_main, 300, "status --watch of the main workflow", server)
    assert code == 0, out

    wf = get(url, f"/v3/workflows/{main_wf['id']}")
    assert (wf["status"], wf["counts"]) == ("D", {"D": N_TASKS})
    evs = events(url, main_wf["id"])
    for i in range(N_TASKS):
        _check_task(url, i, task_detail(url, tasks[f"t{i}"]["id"]), evs, killed_ti)

    cancelled = task_detail(url, cancel_task["id"])
    assert cancelled["status"] == "F"
    (ti,) = cancelled["instances"]
    assert ti["status"] == "F"
    assert moves_of(events(url, cancel_wf["id"]), "task_instance", ti["id"]) == "-Q QI IO OR RK KF"
    assert get(url, f"/v3/workflows/{cancel_wf['id']}")["status"] == "C"  # CANCELLED
    wait_for(lambda: not worker_pids(url), 15, "every worker process to exit")
    db_check(db_url)


def _check_task(
    url: str, i: int, task: dict[str, Any], evs: list[dict[str, Any]], killed_ti: int
) -> None:
    """Task t{i} ended DONE with the tries its command called for."""
    statuses = [ti["status"] for ti in task["instances"]]
    assert task["status"] == "D", (i, task)
    last = task["instances"][-1]
    assert last["distributor_id"].startswith("local:")
    assert last["wallclock"] is not None and last["maxrss"] is not None
    if i in FAIL_ONCE:
        assert statuses == ["E", "D"], (i, task)
        assert last["stdout_log"].strip() == f"second {i}"
        (entry,) = task["error_log"]
        assert "exit code 1" in entry["description"] and f"first try of {i}" in entry["description"]
    elif i == MEMORY:
        assert statuses == ["Z", "D"], task
        first, retry = task["instances"]
        assert first["resources"]["memory"] == pytest.approx(0.05)
        assert retry["resources"]["memory"] == pytest.approx(0.075)
        assert retry["stdout_log"].strip() == str(55 * 1024 * 1024)
        assert "memory" in task["error_log"][0]["description"]
    elif i == KILLED:
        assert statuses == ["U", "D"], task
        first, retry = task["instances"]
        assert first["id"] == killed_ti
        assert retry["stdout_log"].strip() == f"retry of {i}"
        assert re.fullmatch("-Q " + RUN + " RT TU", moves_of(evs, "task_instance", first["id"]))
        assert re.fullmatch("-Q " + RUN + DONE, moves_of(evs, "task_instance", retry["id"]))
        before, after = of(evs, "task_instance", first["id"]), of(evs, "task_instance", retry["id"])
        assert before[-1]["id"] < after[0]["id"]  # expired, then retried
        assert [e["details"]["by"] for e in before[-2:]] == ["reconciler", "reconciler"]
        assert moves_of(evs, "task", task["id"]).endswith("RE EQ QI IO OR RD")
        assert "no heartbeat" in task["error_log"][0]["description"]
    else:
        assert statuses == ["D"], (i, task)
        assert last["stdout_log"].strip() == f"task {i}"
        assert re.fullmatch("-Q " + RUN + DONE, moves_of(evs, "task_instance", last["id"]))


# ---- coroutine mode (the default) ---------------------------------------------------------


def test_coroutine_workers_run_an_array_to_done(local_server: Any, watch: Any, db_url: str) -> None:
    server = local_server(local_workers=8)
    wf = submit(
        server.url,
        {
            "name": "array",
            "array": {"command": "echo item {i}", "first": 1, "last": 50, "name": "a{i}"},
        },
    )

    code, out = finish(watch(server.url, wf["id"]), 120, "status --watch", server)

    assert code == 0, out
    done = get(server.url, f"/v3/workflows/{wf['id']}")
    assert (done["status"], done["counts"], done["percent_done"]) == ("D", {"D": 50}, 100.0)
    tasks = get(server.url, f"/v3/workflows/{wf['id']}/tasks", limit=1000)["data"]
    assert sorted(t["name"] for t in tasks) == sorted(f"a{i}" for i in range(1, 51))
    for t in tasks:
        assert t["num_attempts"] == 1, t
        (ti,) = task_detail(server.url, t["id"])["instances"]
        assert ti["status"] == "D"
        assert ti["stdout_log"].strip() == f"item {t['name'][1:]}"
        assert ti["distributor_id"].startswith("local:")
    assert worker_pids(server.url) == []  # no worker processes: all ran in the server
    db_check(db_url)
