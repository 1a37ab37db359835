"""The real taskfarm client (taskfarm-worker 0.4.0) against a real farmstead server process
(issue 11): a run worked to its end by several `TaskFarmWorker` processes with progress, a
worker killed mid-task whose task is handed out again, `manageTF` listing, info, restart and
delete. On SQLite and PostgreSQL."""

import json
import os
import subprocess
import sys
from typing import Any

import httpx
import pytest

from farmstead import credentials
from helpers import wait_for

pytestmark = pytest.mark.e2e
taskfarm_worker = pytest.importorskip("taskfarm_worker")

PW = "a long enough password"
N = 30
#: a worker: works tasks until none is left, with progress, and prints one JSON line per task
#: it finished; a task that moved on (409: it went silent too long) is left, as a user's
#: script would
WORKER = """
import json, sys
from taskfarm_worker import TaskFarmWorker
url, uuid, pw = sys.argv[1:4]
w = TaskFarmWorker("wk", pw, uuid, url_base=url)
for n in w.tasks:
    try:
        for p in (10, 40, 70, 100):
            w.update(p)
        w.done()
        print(json.dumps({"done": n}), flush=True)
    except RuntimeError as exc:
        print(json.dumps({"lost": n, "why": str(exc)[:200]}), flush=True)
        w._task = None
"""
#: a worker that takes one task, reports 10 %, says which, and hangs until it is killed
VICTIM = """
import sys, time
from taskfarm_worker import TaskFarmWorker
w = TaskFarmWorker("wk", sys.argv[3], sys.argv[2], url_base=sys.argv[1])
n = w.task
w.update(10)
print(n, flush=True)
time.sleep(600)
"""


def manage(base: str, *args: str) -> str:
    cmd = [sys.executable, "-m", "taskfarm_worker.manage", "-b", base, "-u", "op", "-p", PW]
    res = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, (args, res.stdout, res.stderr)
    return res.stdout


def farmstead(url: str, *args: str) -> str:
    """farmstead's own CLI against the server (the admin token from the credentials file)."""
    cmd = [sys.executable, "-m", "farmstead.cli.main", *args, "--server-url", url]
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False, env=env)
    assert res.returncode == 0, (args, res.stdout, res.stderr)
    return res.stdout


def workers(base: str, uuid: str, count: int) -> list[dict[str, Any]]:
    """Run `count` worker processes side by side to the end; their reports."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, base, uuid, PW],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(count)
    ]
    reports = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
        reports += [json.loads(line) for line in out.splitlines() if line.strip()]
    return reports


def test_the_real_taskfarm_client_works_a_run_to_its_end(server_factory: Any) -> None:
    from taskfarm_worker import TaskFarm, TaskFarmWorker, tfRuns

    # a claimed task with no update for 6.2 s (heartbeat interval x buffer) expires
    server = server_factory(
        auth="true", reconciler_enabled="true", reconciler_interval="0.5",
        heartbeat_interval="2", triage_grace="0",
    )  # fmt: skip
    url, base = server.url, server.url + "/api/"
    admin = {"Authorization": f"Bearer {credentials.token_for(url)}"}
    for name, role in (("op", "operator"), ("wk", "worker")):
        body = {"name": name, "role": role, "password": PW}
        assert httpx.post(f"{url}/v3/users", json=body, headers=admin).status_code == 201

    run = TaskFarm("op", PW, numTasks=N, url_base=base)
    assert (run.numTasks, run.numWaiting, run.percentDone) == (N, N, 0)
    assert run.uuid in [r["uuid"] for r in tfRuns("op", PW, url_base=base)]

    victim = subprocess.Popen(
        [sys.executable, "-c", VICTIM, base, run.uuid, PW], stdout=subprocess.PIPE, text=True
    )
    assert victim.stdout is not None
    held = int(victim.stdout.readline())
    assert run.getTaskInfo(held, "status") == "computing"
    assert run.getTaskInfo(held, "percentCompleted") == 10
    # the progress shows in farmstead's own CLI, and the run is a workflow there
    wf_id = str(run.info("")["id"])
    assert run.uuid in farmstead(url, "workflows", "show", wf_id)
    tasks = json.loads(farmstead(url, "tasks", "list", wf_id, "--json"))["data"]
    held_id = next(t["id"] for t in tasks if t["progress"] == 10)
    assert "10 %" in farmstead(url, "tasks", "list", wf_id)
    assert "progress  10 %" in farmstead(url, "tasks", "show", str(held_id))
    victim.kill()
    victim.wait()
    victim.stdout.close()

    reports = workers(base, run.uuid, 4)
    finished = [r["done"] for r in reports if "done" in r]
    assert len(finished) == len(set(finished)), "a task was finished twice"
    # the killed worker's task expires, the reconciler hands it out again, a worker does it
    wait_for(lambda: run.numComputing == 0, 60, "the killed worker's task to expire")
    finished += [r["done"] for r in workers(base, run.uuid, 1) if "done" in r]
    assert sorted(finished) == list(range(N))
    assert held in finished
    assert (run.numDone, run.numWaiting, run.percentDone) == (N, 0, 100)

    listed = manage(base, "--list")
    assert f"{run.uuid} {N}" in listed
    info = manage(base, "--info", run.uuid)
    assert info.split()[1:] == [run.uuid, str(N), f"(0,0,{N})", "100.0"], info
    manage(base, "--reset", run.uuid)  # nothing unfinished: nothing moves
    assert run.numDone == N
    manage(base, "--reset-all", run.uuid)
    assert (run.numWaiting, run.percentDone) == (N, 0)
    # the run is a workflow in farmstead's own API too
    workflow = httpx.get(f"{url}/v3/workflows/{wf_id}", headers=admin).json()
    assert workflow["counts"] == {"Q": N}
    # farmstead's own cancel and resume act on the run: cancelled, no task is handed out
    farmstead(url, "workflows", "cancel", wf_id)
    assert "CANCELLED" in farmstead(url, "workflows", "show", wf_id)
    assert TaskFarmWorker("wk", PW, run.uuid, url_base=base).task is None
    farmstead(url, "workflows", "resume", wf_id)
    workflow = httpx.get(f"{url}/v3/workflows/{wf_id}", headers=admin).json()
    assert workflow["counts"] == {"Q": N}
    manage(base, "--delete", run.uuid)
    assert run.uuid not in manage(base, "--list")
