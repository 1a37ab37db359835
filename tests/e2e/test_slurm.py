"""End to end through a real Slurm: `farmstead executor slurm` against a real server process and
a private single-node cluster (slurmctld, slurmd and munged of its own, started for this
session and removed after; tests/slurm_cluster.py).

Each test runs on SQLite and PostgreSQL, with authentication on: the executor holds an
operator token and gives each job a worker token of its workflow.
"""

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from farmstead import credentials
from helpers import wait_for
from slurm_cluster import SlurmCluster

pytestmark = pytest.mark.e2e
EXECUTOR = [sys.executable, "-m", "farmstead.cli.main", "executor", "slurm"]


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """A private Slurm cluster for the session (skipped without Slurm; a failure in CI)."""
    why = SlurmCluster.available()
    if why is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"no Slurm cluster in CI: {why} (.ci/run installs it)")
        pytest.skip(f"no Slurm cluster: {why} (scripts/slurm-cluster install)")
    started = SlurmCluster.start(tmp_path_factory.mktemp("slurm"), cpus=16, memory_mb=8000)
    try:
        yield started
    finally:
        started.stop()


class Farm:
    """A server with auth on, an operator token, and a Slurm executor process."""

    def __init__(self, server: Any, cluster: SlurmCluster, tmp_path: Path) -> None:
        self.url = server.url
        self.cluster = cluster
        admin = credentials.token_for(self.url)
        self.headers = {"Authorization": f"Bearer {admin}"}
        made = self.post("/v3/tokens", {"name": "slurm executor", "role": "operator"})
        self.operator = made["token"]
        self.log = tmp_path / "executor.log"
        self.output = tmp_path / "jobs"
        self.output.mkdir()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, report_increment: float = 20) -> "Farm":
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FARMSTEAD_", "SLURM_"))}
        env |= {**self.cluster.env, "FARMSTEAD_TOKEN": self.operator, "PYTHONUNBUFFERED": "1"}
        args = ["--server-url", self.url, "--poll-interval", "0.2", "--status-interval", "1",
                "--heartbeat-interval", "2", "--report-increment", str(report_increment), "-v",
                "--output", str(self.output / "%A_%a.out")]  # fmt: skip
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [*EXECUTOR, *args], env=env, stdout=log, stderr=subprocess.STDOUT
            )
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def post(self, path: str, body: Any = None) -> Any:
        resp = httpx.post(f"{self.url}{path}", json=body, headers=self.headers, timeout=30)
        assert resp.status_code < 300, resp.text
        return resp.json()

    def get(self, path: str, **params: Any) -> Any:
        resp = httpx.get(f"{self.url}{path}", params=params, headers=self.headers, timeout=30)
        assert resp.status_code == 200, resp.text
        return resp.json()

    def submit(self, **body: Any) -> int:
        return int(self.post("/v3/workflows", {"name": "on slurm", **body})["id"])

    def tasks(self, workflow_id: int) -> list[dict[str, Any]]:
        return list(self.get(f"/v3/workflows/{workflow_id}/tasks", limit=1000)["data"])

    def detail(self, task_id: int) -> dict[str, Any]:
        out = dict(self.get(f"/v3/tasks/{task_id}"))
        out["instances"].sort(key=lambda i: i["id"])
        return out

    def wait_status(self, workflow_id: int, status: str, timeout: float) -> dict[str, Any]:
        def settled() -> dict[str, Any] | None:
            wf = self.get(f"/v3/workflows/{workflow_id}")
            return dict(wf) if wf["status_name"] == status else None

        try:
            return dict(wait_for(settled, timeout, f"workflow {workflow_id} {status}"))
        except BaseException:
            print(self.log.read_text()[-5000:], file=sys.stderr)
            raise

    def wait_running(self, workflow_id: int, count: int) -> None:
        """Until the workflow's `count` tasks all run."""

        def running() -> bool:
            return [t["status"] for t in self.tasks(workflow_id)] == ["R"] * count

        wait_for(running, 120, f"{count} elements running")

    def job(self, element: str) -> dict[str, str]:
        """`scontrol show job` of an element, as key=value pairs."""
        out = self.cluster.run("scontrol", "--oneliner", "show", "job", element).stdout
        return dict(w.split("=", 1) for w in out.split() if "=" in w)


@pytest.fixture
def farm(server_factory: Any, cluster: SlurmCluster, tmp_path: Path) -> Iterator[Farm]:
    one = Farm(server_factory(auth="true"), cluster, tmp_path).start()
    try:
        yield one
    finally:
        one.stop()
        cluster.cancel_all()


def _element(instance: dict[str, Any]) -> str:
    assert re.fullmatch(r"\d+_\d+", instance["distributor_id"] or ""), instance
    return str(instance["distributor_id"])


def test_an_array_of_200_tasks_runs_as_one_job_array(farm: Farm) -> None:
    wf = farm.submit(array={"command": "echo element {i}", "first": 0, "last": 199})
    farm.wait_status(wf, "DONE", timeout=300)
    tasks = farm.tasks(wf)
    assert len(tasks) == 200 and {t["status"] for t in tasks} == {"D"}
    jobs = set()
    for t in tasks[::20]:
        (ti,) = farm.detail(t["id"])["instances"]
        job, step = _element(ti).split("_")
        assert int(step) == ti["array_step_id"]
        jobs.add(job)
    assert len(jobs) == 1, jobs  # one sbatch for the batch
    assert farm.job(f"{jobs.pop()}_0")["JobState"] == "COMPLETED"
    # each job held a worker token of its own workflow only, made by the executor
    tokens = farm.get("/v3/tokens")["data"]
    mine = [t for t in tokens if t["name"].endswith(f"workflow {wf}")]
    assert len(mine) == 1 and mine[0]["role"] == "worker", mine
    assert mine[0]["workflow_ids"] == [wf]


def test_failures_are_retried_through_slurm(farm: Farm, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    command = f"test -e {marks}/{{i}} || {{ touch {marks}/{{i}}; echo boom >&2; exit 3; }}"
    wf = farm.submit(array={"command": command, "first": 0, "last": 3}, max_attempts=2)
    farm.wait_status(wf, "DONE", timeout=180)
    for t in farm.tasks(wf):
        first, second = farm.detail(t["id"])["instances"]
        assert (first["status"], second["status"]) == ("E", "D")
        assert _element(first) != _element(second)
        assert farm.job(_element(first))["JobState"] == "FAILED"


def test_a_task_over_its_memory_is_retried_with_more(farm: Farm) -> None:
    grab = "python3 -c 'import time; b = bytearray(250 * 2**20); time.sleep(4)'"
    wf = farm.submit(
        tasks=[{"name": "big", "command": grab}],
        resources={"memory": 0.1},
        resource_scales={"memory": 4.0},
    )
    farm.wait_status(wf, "DONE", timeout=180)
    (t,) = farm.tasks(wf)
    detail = farm.detail(t["id"])
    first, second = detail["instances"]
    assert first["status"] == "Z" and second["status"] == "D"
    assert second["resources"]["memory"] == pytest.approx(0.4)
    assert farm.job(_element(first))["MinMemoryNode"] == "103M"
    assert farm.job(_element(second))["MinMemoryNode"] == "410M"
    errors = " ".join(e["description"] for e in detail["error_log"])
    assert "memory" in errors.lower(), errors


def test_a_task_over_its_time_is_retried_with_more(farm: Farm, tmp_path: Path) -> None:
    mark = tmp_path / "timed-out-once"
    command = f"test -e {mark} || {{ touch {mark}; sleep 600; }}"
    wf = farm.submit(
        tasks=[{"name": "slow", "command": command}],
        resources={"runtime": 60},
        resource_scales={"runtime": 2.0},
    )
    farm.wait_status(wf, "DONE", timeout=300)
    (t,) = farm.tasks(wf)
    detail = farm.detail(t["id"])
    first, second = detail["instances"]
    assert first["status"] == "Z" and second["status"] == "D"
    assert farm.job(_element(first))["JobState"] == "TIMEOUT"
    assert farm.job(_element(first))["TimeLimit"] == "00:01:00"
    assert farm.job(_element(second))["TimeLimit"] == "00:02:00"
    errors = " ".join(e["description"] for e in detail["error_log"])
    assert "TIMEOUT" in errors, errors


def test_a_cancel_scancels_the_running_elements(farm: Farm, tmp_path: Path) -> None:
    flag = tmp_path / "cancel-me"
    wf = farm.submit(array={"command": f"sleep 300 # {flag}", "first": 0, "last": 3})
    farm.wait_running(wf, 4)
    elements = [_element(farm.detail(t["id"])["instances"][0]) for t in farm.tasks(wf)]
    farm.post(f"/v3/workflows/{wf}/cancel")

    def cancelled() -> bool:
        return all(farm.job(e).get("JobState") == "CANCELLED" for e in elements)

    wait_for(cancelled, 60, "Slurm to cancel the elements")
    wait_for(
        lambda: all(farm.detail(t["id"])["instances"][0]["status"] == "F" for t in farm.tasks(wf)),
        60,
        "the instances to be settled",
    )
    left = subprocess.run(["pgrep", "-f", str(flag)], capture_output=True, text=True, check=False)
    assert left.stdout == "", "a cancelled task's command is still running"


def test_a_job_cancelled_in_slurm_by_someone_else_is_an_error(farm: Farm) -> None:
    wf = farm.submit(tasks=[{"name": "victim", "command": "sleep 300"}], max_attempts=1)
    (t,) = farm.tasks(wf)
    wait_for(lambda: farm.detail(t["id"])["instances"][0]["status"] == "R", 120, "running")
    element = _element(farm.detail(t["id"])["instances"][0])
    farm.cluster.run("scancel", element)
    farm.wait_status(wf, "FAILED", timeout=60)
    detail = farm.detail(t["id"])
    assert detail["instances"][0]["status"] == "E"
    errors = " ".join(e["description"] for e in detail["error_log"])
    assert "CANCELLED" in errors and "not by farmstead" in errors, errors


def test_a_bad_option_fails_the_task_instead_of_waiting(farm: Farm) -> None:
    wf = farm.submit(
        tasks=[
            {"name": "no-partition", "command": "true",
             "resources": {"custom": {"slurm_partition": "no-such-partition"}}},
            {"name": "reserved", "command": "true",
             "resources": {"custom": {"slurm_options": "--array=0-9"}}},
            {"name": "fine", "command": "true"},
        ],
        max_attempts=1,
    )  # fmt: skip
    farm.wait_status(wf, "FAILED", timeout=120)
    by_name = {t["name"]: t for t in farm.tasks(wf)}
    assert by_name["fine"]["status"] == "D"
    for name, words in (("no-partition", "Slurm refuses"), ("reserved", "--array is set")):
        detail = farm.detail(by_name[name]["id"])
        assert detail["status"] == "F" and detail["instances"][0]["status"] == "W"
        errors = " ".join(e["description"] for e in detail["error_log"])
        assert words in errors, errors


def test_slurmd_stopped_mid_run_and_restarted(farm: Farm) -> None:
    wf = farm.submit(array={"command": "sleep 12", "first": 0, "last": 5})
    farm.wait_running(wf, 6)
    farm.cluster.stop_slurmd()
    time.sleep(5)
    farm.cluster.start_slurmd()
    farm.wait_status(wf, "DONE", timeout=180)
    for t in farm.tasks(wf):
        assert [i["status"] for i in farm.detail(t["id"])["instances"]] == ["D"]


def test_submissions_wait_out_a_controller_outage_without_double_submitting(farm: Farm) -> None:
    def listed() -> set[str]:
        out = farm.cluster.run("squeue", "--noheader", "--states=all", "--format=%F").stdout
        return set(out.split())

    before = listed()
    farm.cluster.stop_slurmctld()
    try:
        wf = farm.submit(array={"command": "true", "first": 0, "last": 4})
        wait_for(lambda: "failed" in farm.log.read_text(), 60, "a failed submission")
        time.sleep(3)  # at least one retry with backoff while the controller is away
    finally:
        farm.cluster.start_slurmctld()
    farm.wait_status(wf, "DONE", timeout=180)
    jobs = set()
    for t in farm.tasks(wf):
        (ti,) = farm.detail(t["id"])["instances"]  # one try each: nothing lost, none twice
        jobs.add(_element(ti).split("_")[0])
    assert len(jobs) == 1, jobs
    assert listed() - before == jobs  # the controller holds no second submission of the batch


def test_an_element_queued_in_slurm_past_its_deadline_is_kept_alive(
    server_factory: Any, cluster: SlurmCluster, tmp_path: Path
) -> None:
    """The reconciler fails a LAUNCHED instance that does not report by its deadline; an element
    that Slurm holds in its queue longer than that (here `--begin`, 25 s against a 6 s
    deadline) has its deadline pushed on by the executor, so it runs once, when Slurm starts it."""
    server = server_factory(
        auth="true", reconciler_enabled="true", reconciler_interval="1", no_heartbeat_min_age="0"
    )
    farm = Farm(server, cluster, tmp_path).start(report_increment=6)
    try:
        later = {"custom": {"slurm_options": "--begin=now+25"}}
        wf = farm.submit(tasks=[{"name": "later", "command": "true", "resources": later}])
        farm.wait_status(wf, "DONE", timeout=120)
        (t,) = farm.tasks(wf)
        (ti,) = farm.detail(t["id"])["instances"]  # one try: never expired while queued
        assert farm.job(_element(ti))["JobState"] == "COMPLETED"
    finally:
        farm.stop()
        cluster.cancel_all()
