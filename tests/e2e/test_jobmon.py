"""Jobmon's real worker node (jobmon-core 3.4.8) against a real `farmstead serve` process.

The worker is started as Jobmon's distributors start it, as the console script
`worker_node_entry_point`, and it is configured only by environment variables:
JOBMON__HTTP__SERVICE_URL (the server), JOBMON__HTTP__ROUTE_PREFIX=/api/v3, plus a 1 s heartbeat
and a short interrupt timeout to keep the tests fast. The test plays the distributor: it submits
a workflow (POST /v3/workflows), claims the instances (POST /v3/claims, → INSTANTIATED) and logs
their launch (log_distributor_id or the array's transition_to_launched, → LAUNCHED).

Needs the `jobmon` extra (`pip install -e '.[test,jobmon]'`). Without it the module is skipped,
except in CI (CI=true), which installs the extra: there it fails.
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import httpx
import pytest

from farmstead import credentials

JOBMON_VERSION = "3.4.8"
IN_CI = os.environ.get("CI", "").lower() == "true"
HEARTBEAT_SECONDS = 1
REPORT_BY_BUFFER = 3.1  # Jobmon's default heartbeat.report_by_buffer
WORKER_TIMEOUT = 90.0


def _find_worker() -> tuple[str | None, str]:
    """The worker entry point, or None and why it cannot run here."""
    try:
        installed = version("jobmon-core")
    except PackageNotFoundError:
        return None, "jobmon-core is not installed: pip install -e '.[test,jobmon]'"
    if installed != JOBMON_VERSION:
        return None, f"jobmon-core {installed} is installed; these tests need {JOBMON_VERSION}"
    try:
        # The CLI imports jobmon.core.task_generator, which needs jobmon.client, sphinx, docutils.
        import jobmon.worker_node.cli  # noqa: F401
    except ImportError as exc:
        return None, f"the Jobmon worker node cannot be imported: {exc!r}"
    beside = Path(sys.executable).parent / "worker_node_entry_point"
    entry = str(beside) if beside.exists() else shutil.which("worker_node_entry_point")
    if entry is None:
        return None, "the console script worker_node_entry_point is not on PATH"
    return entry, ""


WORKER, WHY_NOT = _find_worker()
if WORKER is None:
    if IN_CI:
        pytest.fail(f"CI installs the jobmon extra, but: {WHY_NOT}", pytrace=False)
    pytest.skip(WHY_NOT, allow_module_level=True)

pytestmark = [pytest.mark.e2e, pytest.mark.jobmon]


class Farm:
    """farmstead's HTTP API, as the test's stand-in distributor uses it (with the admin token
    the server wrote on its first start: auth is on, as it is by default; Jobmon's worker sends
    no credentials and is let in as a worker from the trusted loopback network)."""

    def __init__(self, url: str) -> None:
        self.url = url
        token = credentials.token_for(url)
        assert token, "the server wrote no admin token for its URL"
        self.http = httpx.Client(
            base_url=url, timeout=30, headers={"Authorization": f"Bearer {token}"}
        )

    def post(self, path: str, body: Any = None, expect: int = 200) -> Any:
        resp = self.http.post(path, json=body if body is not None else {})
        assert resp.status_code == expect, f"POST {path} → {resp.status_code}: {resp.text}"
        return resp.json()

    def get(self, path: str) -> Any:
        resp = self.http.get(path)
        assert resp.status_code == 200, f"GET {path} → {resp.status_code}: {resp.text}"
        return resp.json()

    def submit(self, **body: Any) -> dict[str, Any]:
        """Create a workflow; answers it (id, array_ids)."""
        result: dict[str, Any] = self.post("/v3/workflows", {"retry_delay": 0, **body}, 201)
        return result

    def claim(self, workflow_id: int, limit: int = 100) -> list[dict[str, Any]]:
        """The workflow's QUEUED instances → INSTANTIATED."""
        data: list[dict[str, Any]] = self.post(
            "/v3/claims", {"limit": limit, "workflow_id": workflow_id}
        )["data"]
        return data

    def launch(self, ti_id: int, distributor_id: str) -> None:
        """INSTANTIATED → LAUNCHED, as a distributor logs a submitted job."""
        out = self.post(
            f"/v3/fsm/task_instance/{ti_id}/log_distributor_id",
            {"distributor_id": distributor_id, "next_report_increment": 600},
        )
        assert out == {"message": "Task instance transitioned to LAUNCHED"}

    def submit_one(self, command: str, distributor_id: str, **body: Any) -> dict[str, Any]:
        """One task, claimed and launched: answers its claim row."""
        wf = self.submit(name="jobmon", tasks=[{"name": "job", "command": command}], **body)
        (claimed,) = self.claim(wf["id"])
        self.launch(claimed["task_instance_id"], distributor_id)
        return claimed

    def task(self, task_id: int) -> dict[str, Any]:
        detail: dict[str, Any] = self.get(f"/v3/tasks/{task_id}")
        return detail

    def instance(self, task_id: int, ti_id: int) -> dict[str, Any]:
        found: list[dict[str, Any]] = [
            i for i in self.task(task_id)["instances"] if i["id"] == ti_id
        ]
        assert len(found) == 1, found
        return found[0]

    def close(self) -> None:
        self.http.close()


@pytest.fixture
def farm(server_factory: Any) -> Iterator[Farm]:
    """A real server process on the test's backend (the reconciler off, auth on), and a client
    for it."""
    client = Farm(server_factory(auth="true").url)
    yield client
    client.close()


def _worker_env(farm: Farm, **extra: str) -> dict[str, str]:
    """The environment a cluster job would have: only the JOBMON__ variables set here."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("JOBMON__") and k not in ("JOB_ID", "ARRAY_STEP_ID")
    }
    env.update(
        JOBMON__HTTP__SERVICE_URL=farm.url,
        JOBMON__HTTP__ROUTE_PREFIX="/api/v3",
        JOBMON__HEARTBEAT__TASK_INSTANCE_INTERVAL=str(HEARTBEAT_SECONDS),
        JOBMON__WORKER_NODE__COMMAND_INTERRUPT_TIMEOUT="2",
    )
    env.update(extra)
    return env


class Worker:
    """One `worker_node_entry_point` process, its output in a log file."""

    def __init__(self, farm: Farm, cwd: Path, args: list[str], **env: str) -> None:
        assert WORKER is not None
        self.log = cwd / f"worker-{time.monotonic_ns()}.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [WORKER, *args, "--expected_jobmon_version", JOBMON_VERSION],
                env=_worker_env(farm, **env),
                cwd=cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group, so a timeout kills it all
            )

    @classmethod
    def job(cls, farm: Farm, cwd: Path, ti_id: int, cluster: str = "local", **env: str) -> "Worker":
        args = ["worker_node_job", "--task_instance_id", str(ti_id), "--cluster_name", cluster]
        return cls(farm, cwd, args, **env)

    @classmethod
    def array(
        cls, farm: Farm, cwd: Path, array_id: int, batch: int, step: int, **env: str
    ) -> "Worker":
        args = ["worker_node_array", "--array_id", str(array_id), "--batch_number", str(batch)]
        args += ["--cluster_name", "multiprocess"]
        return cls(farm, cwd, args, ARRAY_STEP_ID=str(step), **env)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def running(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout: float = WORKER_TIMEOUT) -> int:
        """The exit code; a worker still running after `timeout` is killed and the test fails."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            pytest.fail(f"the worker did not finish in {timeout} s:\n{self.output()}")

    def finish(self, expect_rc: int = 0, timeout: float = WORKER_TIMEOUT) -> str:
        """Wait for the worker; assert its exit code; answer its output."""
        rc = self.wait(timeout)
        out = self.output()
        assert rc == expect_rc, f"worker exited {rc}, expected {expect_rc}:\n{out}"
        return out

    def kill(self) -> None:
        if self.running():
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    """Workers a test started; any still running at teardown are killed."""
    started: list[Worker] = []
    yield started
    for worker in started:
        worker.kill()


def _when(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def _wait_for(check: Any, what: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


# ---------------------------------------------------------------------------------------------


def test_a_job_that_succeeds_ends_done(farm: Farm, tmp_path: Path, workers: list[Worker]) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    command = (
        'echo "ti=$JOBMON_TASK_INSTANCE_ID task=$JOBMON_TASK_ID wf=$JOBMON_WORKFLOW_ID"; '
        "echo warn >&2"
    )
    claimed = farm.submit_one(command, "4242", resources={"stdout": str(logs), "stderr": str(logs)})
    ti, task_id, wf_id = claimed["task_instance_id"], claimed["task_id"], claimed["workflow_id"]

    workers.append(Worker.job(farm, tmp_path, ti))
    out = workers[-1].finish(0)
    assert "Finished Successfully" in out

    task = farm.task(task_id)
    (inst,) = task["instances"]
    assert (task["status"], inst["status"]) == ("D", "D"), out
    expected = f"ti={ti} task={task_id} wf={wf_id}\n"
    assert inst["stdout_log"] == expected  # the worker's log_done carries the output tails
    assert inst["stderr_log"] == "warn\n"
    assert inst["distributor_id"] == "4242"  # the worker sent none: kept, not nulled
    assert inst["nodename"]
    # The multiprocess plugin's log files, named after the task, in the requested directories.
    assert Path(inst["stdout"]).parent == logs
    assert Path(inst["stdout"]).read_text() == expected
    assert Path(inst["stderr"]).read_text() == "warn\n"
    assert farm.get(f"/v3/workflows/{wf_id}")["status"] == "D"

    # A second worker for the same, finished instance: log_running is answered 200 with "D",
    # so Jobmon's worker refuses to run the command again (TransitionError, exit 199).
    workers.append(Worker.job(farm, tmp_path, ti))
    out = workers[-1].finish(199)
    assert "Current status is D" in out
    again = farm.task(task_id)
    assert again["instances"] == task["instances"]
    assert Path(inst["stdout"]).read_text() == expected


def test_every_seeded_cluster_name_runs_a_job(
    farm: Farm, tmp_path: Path, workers: list[Worker]
) -> None:
    clusters = {"local": "multiprocess", "multiprocess": "multiprocess"}
    clusters |= {"sequential": "sequential", "dummy": "dummy"}
    for name, plugin in clusters.items():
        (_, seen_name, seen_plugin, _) = farm.get(f"/api/v3/cluster/{name}")["cluster"]
        assert (seen_name, seen_plugin) == (name, plugin)
    assert farm.get("/api/v3/cluster/no-such-cluster") == {"cluster": None}

    wf = farm.submit(name="clusters", tasks=[{"name": n, "command": f"echo {n}"} for n in clusters])
    claimed = farm.claim(wf["id"])
    for row, name in zip(claimed, clusters, strict=True):
        farm.launch(row["task_instance_id"], f"job-{name}")
        workers.append(Worker.job(farm, tmp_path, row["task_instance_id"], cluster=name))
    for worker in workers:
        worker.finish(0)
    for row, name in zip(claimed, clusters, strict=True):
        task = farm.task(row["task_id"])
        assert task["name"] == name
        (inst,) = task["instances"]
        assert (task["status"], inst["status"], inst["stdout_log"]) == ("D", "D", f"{name}\n")


def test_a_failing_job_ends_in_error_and_is_retried(
    farm: Farm, tmp_path: Path, workers: list[Worker]
) -> None:
    marker = tmp_path / "tried-once"
    command = (
        f"if [ -e {marker} ]; then echo second try; else touch {marker}; echo boom >&2; exit 3; fi"
    )
    claimed = farm.submit_one(command, "1001", max_attempts=2)
    first, task_id = claimed["task_instance_id"], claimed["task_id"]

    workers.append(Worker.job(farm, tmp_path, first))
    out = workers[-1].finish(0)  # Jobmon's console script exits 0 even when the command failed

    task = farm.task(task_id)
    assert [i["status"] for i in task["instances"]] == ["E", "Q"], out
    assert task["status"] == "Q"  # retried at once: back to QUEUED with a new QUEUED instance
    failed = farm.instance(task_id, first)
    assert failed["stderr_log"] == "boom\n"
    (entry,) = task["error_log"]
    assert entry["task_instance_id"] == first
    assert "Got exit_code: 3" in entry["description"] and "boom" in entry["description"]
    assert (
        farm.get(f"/api/v3/task_instance/{first}/task_instance_error_log")[
            "task_instance_error_log"
        ][0][2]
        == entry["description"]
    )

    # The retry is an ordinary instance: claim it, launch it, and the worker runs it to DONE.
    (retry,) = farm.claim(claimed["workflow_id"])
    second = retry["task_instance_id"]
    assert second != first and retry["task_id"] == task_id
    farm.launch(second, "1002")
    workers.append(Worker.job(farm, tmp_path, second))
    workers[-1].finish(0)

    task = farm.task(task_id)
    assert task["status"] == "D"
    assert [(i["id"], i["status"]) for i in task["instances"]] == [(first, "E"), (second, "D")]
    assert farm.instance(task_id, second)["stdout_log"] == "second try\n"
    assert task["num_attempts"] == 2


def test_a_job_that_outlives_the_heartbeat_interval_sends_heartbeats(
    farm: Farm, tmp_path: Path, workers: list[Worker]
) -> None:
    claimed = farm.submit_one("sleep 3; echo slept", "2002")
    ti, task_id = claimed["task_instance_id"], claimed["task_id"]

    worker = Worker.job(farm, tmp_path, ti)
    workers.append(worker)
    seen: list[datetime] = []
    while worker.running():
        inst = farm.instance(task_id, ti)
        if inst["status"] == "R":
            stamp = _when(inst["report_by_date"])
            if not seen or stamp != seen[-1]:
                seen.append(stamp)
        time.sleep(0.1)
    out = worker.finish(0)

    task = farm.task(task_id)
    (inst,) = task["instances"]
    assert (task["status"], inst["status"], inst["stdout_log"]) == ("D", "D", "slept\n"), out
    # log_running set a deadline; each heartbeat (every 1 s) pushed it further.
    assert len(seen) >= 2, f"report_by_date never moved while RUNNING: {seen}\n{out}"
    assert seen == sorted(seen)
    started = _when(task["time_started"])
    increment = HEARTBEAT_SECONDS * REPORT_BY_BUFFER
    assert (_when(inst["report_by_date"]) - started).total_seconds() > increment + 1


def test_a_job_cancelled_while_running_is_killed_and_ends_error_fatal(
    farm: Farm, tmp_path: Path, workers: list[Worker]
) -> None:
    # `exec`: the shell becomes the command, so the worker's SIGINT reaches it. (A child of a
    # shell would keep the worker's pipes open, and Jobmon's worker waits for them to close.)
    claimed = farm.submit_one("exec sleep 60", "3003")
    ti, task_id, wf_id = claimed["task_instance_id"], claimed["task_id"], claimed["workflow_id"]

    worker = Worker.job(farm, tmp_path, ti)
    workers.append(worker)
    _wait_for(
        lambda: farm.instance(task_id, ti)["status"] == "R" or not worker.running(),
        "the worker to log running",
    )
    assert worker.running(), worker.output()

    cancelled_at = time.monotonic()
    assert farm.post(f"/v3/workflows/{wf_id}/cancel")["changed"] == {"K": 1}
    # The next heartbeat is answered "K": the worker interrupts the command and reports
    # log_error_worker_node(error_state="F").
    out = worker.finish(0, timeout=30)
    assert time.monotonic() - cancelled_at < 20, "the command was not stopped at once"
    assert "got KILL_SELF event" in out

    task = farm.task(task_id)
    (inst,) = task["instances"]
    assert (inst["status"], task["status"]) == ("F", "F"), out
    assert any("KILL_SELF" in e["description"] for e in task["error_log"]), task["error_log"]
    assert farm.get(f"/v3/workflows/{wf_id}")["status"] == "C"  # CANCELLED


def test_array_workers_find_their_instance_by_step(
    farm: Farm, tmp_path: Path, workers: list[Worker]
) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    wf = farm.submit(
        name="array",
        array={
            "command": f'echo "{{i}} $JOBMON_TASK_INSTANCE_ID" > {out_dir}/step_{{i}}.txt',
            "first": 0,
            "last": 2,
            "name": "element_{i}",
        },
    )
    (array_id,) = wf["array_ids"]
    claimed = farm.claim(wf["id"])
    assert len(claimed) == 3
    assert {(c["array_id"], c["array_batch_num"]) for c in claimed} == {(array_id, 1)}
    assert sorted(c["array_step_id"] for c in claimed) == [0, 1, 2]
    launched = farm.post(
        f"/v3/fsm/array/{array_id}/transition_to_launched",
        {"batch_number": 1, "next_report_increment": 600},
    )
    assert launched == {"launched": 3}

    # One array job per step, all at once, as a cluster would run them (multiprocess plugin:
    # ARRAY_STEP_ID is the 0-based step; the distributor id is "{JOB_ID}_{step}").
    for step in (2, 0, 1):
        workers.append(Worker.array(farm, tmp_path, array_id, 1, step, JOB_ID="9000"))
    for worker in workers:
        worker.finish(0)

    for row in claimed:
        task = farm.task(row["task_id"])
        (inst,) = task["instances"]
        i = int(task["name"].removeprefix("element_"))
        step = row["array_step_id"]
        assert (inst["id"], inst["array_step_id"]) == (row["task_instance_id"], step)
        assert (task["status"], inst["status"]) == ("D", "D")
        assert inst["distributor_id"] == f"9000_{step}"
        assert (out_dir / f"step_{i}.txt").read_text() == f"{i} {row['task_instance_id']}\n"

    # A step the batch does not have: farmstead answers 404, so the worker gives up at once
    # (Jobmon's own server answers 500 here, and the worker retries for five minutes). The
    # lookup is outside the worker CLI's error handling: a traceback and exit code 1.
    worker = Worker.array(farm, tmp_path, array_id, 1, 3)
    workers.append(worker)
    started = time.monotonic()
    out = worker.finish(1, timeout=60)
    assert time.monotonic() - started < 30
    assert "InvalidRequest: Client error with status code 404" in out
