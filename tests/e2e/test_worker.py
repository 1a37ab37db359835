"""End to end: `farmstead worker run` as a real process against a real server process.

No local executor: each test submits work over HTTP, then runs the worker by hand, as a Slurm
array element (or an operator) would, and checks what the server recorded.
"""

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers import wait_for

pytestmark = pytest.mark.e2e

WORKER = [sys.executable, "-m", "farmstead.cli.main", "worker", "run"]


# ---- helpers ------------------------------------------------------------------------------


def _clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without FARMSTEAD_* or SLURM_* variables, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FARMSTEAD_", "SLURM_"))}
    return env | {"PYTHONUNBUFFERED": "1"} | extra


def run_worker(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`farmstead worker run ARGS` to its end."""
    return subprocess.run(
        [*WORKER, *args],
        env=env or _clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start_worker(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """`farmstead worker run ARGS` in the background."""
    return subprocess.Popen(
        [*WORKER, *args],
        env=env or _clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def submit(url: str, **body: Any) -> dict[str, Any]:
    """POST /v3/workflows; the created workflow."""
    resp = httpx.post(f"{url}/v3/workflows", json={"name": "wf", **body}, timeout=30)
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


def tasks_of(url: str, workflow_id: int) -> list[dict[str, Any]]:
    """A workflow's tasks (one page is enough here), by id."""
    resp = httpx.get(f"{url}/v3/workflows/{workflow_id}/tasks", params={"limit": 1000})
    assert resp.status_code == 200, resp.text
    return sorted(resp.json()["data"], key=lambda t: t["id"])


def task_detail(url: str, task_id: int) -> dict[str, Any]:
    """GET /v3/tasks/{id}: the task, its instances (oldest first) and error log."""
    resp = httpx.get(f"{url}/v3/tasks/{task_id}", timeout=30)
    assert resp.status_code == 200, resp.text
    detail = dict(resp.json())
    detail["instances"].sort(key=lambda i: i["id"])
    return detail


def one_task(url: str, **task: Any) -> tuple[int, int, int]:
    """Submit a workflow of one task: (workflow id, task id, its QUEUED instance id)."""
    wf = submit(url, tasks=[{"name": "t", **task}])
    (t,) = tasks_of(url, wf["id"])
    (ti,) = task_detail(url, t["id"])["instances"]
    assert ti["status"] == "Q"
    return wf["id"], t["id"], ti["id"]



def instance_status(url: str, task_id: int, index: int = 0) -> str:
    instances = task_detail(url, task_id)["instances"]
    return str(instances[index]["status"]) if len(instances) > index else ""


def one_line_error(stderr: str) -> str:
    """The worker's stderr must be one clear line, no traceback."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.fixture
def background() -> Iterator[list[subprocess.Popen[str]]]:
    """Worker processes started by a test; killed at teardown if still running."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


# ---- tests --------------------------------------------------------------------------------


def test_runs_a_queued_instance_and_reports_done(server: Any, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    env_file = tmp_path / "env.txt"
    command = (
        f"env | grep ^FARMSTEAD_ | sort > {env_file}; "
        "echo hello-out; echo hello-err >&2; "
        f"{sys.executable} -c 'sum(range(3_000_000))'"
    )
    wf_id, task_id, ti_id = one_task(
        server.url,
        command=command,
        resources={"stdout": str(logs), "stderr": str(logs)},
    )

    res = run_worker("--server-url", server.url, "--task-instance-id", str(ti_id))

    assert res.returncode == 0, res.stderr
    seen = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
    assert seen == {
        "FARMSTEAD_TASK_ID": str(task_id),
        "FARMSTEAD_TASK_INSTANCE_ID": str(ti_id),
        "FARMSTEAD_WORKFLOW_ID": str(wf_id),
    }
    detail = task_detail(server.url, task_id)
    assert detail["status"] == "D"
    assert detail["num_attempts"] == 1
    assert detail["time_started"] is not None and detail["time_finished"] is not None
    (ti,) = detail["instances"]
    assert ti["status"] == "D"
    assert ti["stdout_log"].strip() == "hello-out"
    assert ti["stderr_log"].strip() == "hello-err"
    assert ti["wallclock"] is not None and ti["wallclock"] > 0
    assert ti["maxrss"] is not None and ti["maxrss"] > 1024 * 1024
    assert ti["cpu"] is not None and ti["cpu"] > 0
    assert ti["nodename"]
    out_file, err_file = logs / f"t.o{ti_id}", logs / f"t.e{ti_id}"
    assert ti["stdout"] == str(out_file)
    assert ti["stderr"] == str(err_file)
    assert out_file.read_text() == "hello-out\n"
    assert err_file.read_text() == "hello-err\n"

    # the instance is DONE now: a second worker on it runs nothing and exits 3
    env_file.unlink()
    again = run_worker("--server-url", server.url, "--task-instance-id", str(ti_id))
    assert again.returncode == 3, again.stderr
    assert not env_file.exists()
    assert task_detail(server.url, task_id)["instances"][0]["status"] == "D"


def test_failing_command_is_error_and_retried(server: Any) -> None:
    _, task_id, ti_id = one_task(server.url, command="echo bad thing >&2; exit 3")

    res = run_worker("--server-url", server.url, "--task-instance-id", str(ti_id))

    assert res.returncode == 3, res.stderr
    detail = task_detail(server.url, task_id)
    first, retry = detail["instances"]
    assert first["id"] == ti_id and first["status"] == "E"
    assert first["stderr_log"].strip() == "bad thing"
    assert retry["status"] == "Q"
    assert detail["status"] == "Q"
    assert detail["num_attempts"] == 2
    (entry,) = detail["error_log"]
    assert entry["task_instance_id"] == ti_id
    assert "exit code 3" in entry["description"]
    assert "bad thing" in entry["description"]


def test_memory_limit_is_resource_error_and_retried_with_more(server: Any) -> None:
    command = f'{sys.executable} -c "b=bytearray(200*1024*1024); import time; time.sleep(3)"'
    _, task_id, ti_id = one_task(server.url, command=command, resources={"memory": 0.05})

    started = time.monotonic()
    res = run_worker("--server-url", server.url, "--task-instance-id", str(ti_id))

    assert res.returncode != 0
    assert time.monotonic() - started < 15
    detail = task_detail(server.url, task_id)
    first, retry = detail["instances"]
    assert first["status"] == "Z"
    assert first["resources"]["memory"] == pytest.approx(0.05)
    assert retry["status"] == "Q"
    assert retry["resources"]["memory"] == pytest.approx(0.075)
    assert detail["status"] == "Q"
    (entry,) = detail["error_log"]
    assert "memory" in entry["description"]


@pytest.mark.parametrize("variable", ["FARMSTEAD_ARRAY_STEP_ID", "SLURM_ARRAY_TASK_ID"])
def test_array_step_resolves_the_instance(server: Any, tmp_path: Path, variable: str) -> None:
    wf = submit(
        server.url,
        array={
            "command": f"echo $FARMSTEAD_TASK_INSTANCE_ID > {tmp_path}/ran_{{i}}",
            "first": 10,
            "last": 13,
            "name": "step_{i}",
        },
    )
    (array_id,) = wf["array_ids"]
    by_step = {}
    for t in tasks_of(server.url, wf["id"]):
        (ti,) = task_detail(server.url, t["id"])["instances"]
        by_step[ti["array_step_id"]] = (t, ti)
    assert sorted(by_step) == [0, 1, 2, 3]
    task, ti = by_step[2]
    env = _clean_env(**{variable: "2"})
    if variable == "SLURM_ARRAY_TASK_ID":
        env |= {"SLURM_JOB_ID": "5001", "SLURM_ARRAY_JOB_ID": "5000"}

    res = run_worker(
        "--server-url",
        server.url,
        "--array-id",
        str(array_id),
        "--batch",
        str(ti["array_batch_num"]),
        env=env,
    )

    assert res.returncode == 0, res.stderr
    assert task["name"] == "step_12"
    assert sorted(p.name for p in tmp_path.glob("ran_*")) == ["ran_12"]
    assert (tmp_path / "ran_12").read_text().strip() == str(ti["id"])
    done = task_detail(server.url, task["id"])["instances"][0]
    assert done["status"] == "D"
    if variable == "SLURM_ARRAY_TASK_ID":
        assert done["distributor_id"] == "5000_2"
    for step in (0, 1, 3):
        assert instance_status(server.url, by_step[step][0]["id"]) == "Q"


def test_cancel_makes_the_worker_kill_its_command(
    server_factory: Any, background: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    server = server_factory(heartbeat_interval=0.5)
    pid_file = tmp_path / "pid"
    wf_id, task_id, ti_id = one_task(server.url, command=f"echo $$ > {pid_file}; exec sleep 30")
    worker = start_worker("--server-url", server.url, "--task-instance-id", str(ti_id))
    background.append(worker)
    wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), 20, "the command")
    assert instance_status(server.url, task_id) == "R"
    command_pid = int(pid_file.read_text())

    resp = httpx.post(f"{server.url}/v3/workflows/{wf_id}/cancel", timeout=30)
    assert resp.status_code == 200, resp.text
    assert resp.json()["changed"] == {"K": 1}
    cancelled = time.monotonic()
    wait_for(lambda: not _alive(command_pid), 10, "the worker to stop its command")
    assert time.monotonic() - cancelled < 5
    try:
        worker.wait(timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail("the worker did not exit within 15 s of the cancel")

    assert worker.returncode != 0
    detail = task_detail(server.url, task_id)
    (ti,) = detail["instances"]
    assert ti["status"] == "F"
    assert detail["status"] == "F"
    wf = httpx.get(f"{server.url}/v3/workflows/{wf_id}").json()
    assert wf["status"] == "C"  # CANCELLED
    events = httpx.get(f"{server.url}/v3/workflows/{wf_id}/events").json()["data"]
    moves = [
        (e["from_status"], e["to_status"])
        for e in events
        if e["entity"] == "task_instance" and e["entity_id"] == ti_id
    ]
    assert moves[-2:] == [("R", "K"), ("K", "F")]


def test_final_report_survives_a_server_restart(
    server_factory: Any,
    db_url: str,
    background: list[subprocess.Popen[str]],
    tmp_path: Path,
) -> None:
    settings = {"heartbeat_interval": 1, "reconciler_enabled": "false"}
    first = server_factory(**settings)
    finished = tmp_path / "finished"
    _, task_id, ti_id = one_task(first.url, command=f"sleep 3; echo bye; touch {finished}")
    worker = start_worker("--server-url", first.url, "--task-instance-id", str(ti_id))
    background.append(worker)
    wait_for(lambda: instance_status(first.url, task_id) == "R", 20, "the instance to run")

    first.stop()
    wait_for(finished.exists, 20, "the command to finish")
    time.sleep(1)
    assert worker.poll() is None, "the worker gave up while the server was away"

    second = type(first)(db_url, tmp_path / "second.log", **settings)
    second.port, second.url = first.port, first.url
    try:
        second.start()
        try:
            worker.wait(timeout=45)
        except subprocess.TimeoutExpired:
            pytest.fail("the final report was not delivered to the restarted server")
        assert worker.returncode == 0, worker.stderr.read() if worker.stderr else ""
        detail = task_detail(second.url, task_id)
        (ti,) = detail["instances"]
        assert ti["status"] == "D"
        assert ti["stdout_log"].strip() == "bye"
        assert detail["status"] == "D"
    finally:
        second.stop()


def test_unusable_log_dir_is_reported_not_left_running(server: Any, tmp_path: Path) -> None:
    not_a_dir = tmp_path / "a-file"
    not_a_dir.write_text("")
    logs = str(not_a_dir / "logs")
    ran = tmp_path / "ran"
    _, task_id, ti_id = one_task(
        server.url, command=f"touch {ran}", resources={"stdout": logs, "stderr": logs}
    )

    res = run_worker("--server-url", server.url, "--task-instance-id", str(ti_id))

    assert res.returncode != 0
    assert "Traceback" not in res.stderr, res.stderr
    assert "logs" in res.stderr
    first = task_detail(server.url, task_id)["instances"][0]
    assert first["status"] == "E", "the instance was left RUNNING for the reconciler to expire"
    time.sleep(1)
    assert not ran.exists(), "the command ran although its output had nowhere to go"


def test_no_server_url_is_a_configuration_error() -> None:
    res = run_worker("--task-instance-id", "1", timeout=30)

    assert res.returncode == 2
    line = one_line_error(res.stderr)
    assert "server" in line.lower() and "FARMSTEAD_SERVER_URL" in line


def test_array_without_step_is_a_configuration_error(server: Any) -> None:
    res = run_worker("--server-url", server.url, "--array-id", "1", "--batch", "1")

    assert res.returncode == 2
    line = one_line_error(res.stderr)
    assert "step" in line.lower()


def test_unknown_instance_is_refused(server: Any) -> None:
    res = run_worker("--server-url", server.url, "--task-instance-id", "987654")

    assert res.returncode == 2
    line = one_line_error(res.stderr)
    assert "404" in line and "not found" in line.lower() and "987654" in line


def _alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
