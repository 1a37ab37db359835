"""End to end: the `farmstead` CLI in real subprocesses against a real server process.

Commands run with a local executor (`--local-workers`), so what a submitted command prints is
checked by running it, not by reading what was stored.
"""

import itertools
import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers import wait_for

pytestmark = pytest.mark.e2e

CLI = [sys.executable, "-m", "farmstead.cli.main"]
FAST = {"heartbeat_interval": 0.5, "report_by_buffer": 3, "reconciler_enabled": "true"}
LEAKS = ("Traceback", "{'", "[{", "<html", "<!DOCTYPE", "HTTPStatusError")


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cli(url: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run `farmstead ARGS` against the server at `url` (given in the environment)."""
    env = {**os.environ, "FARMSTEAD_SERVER_URL": url, "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run(
        [*CLI, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def ok(url: str, *args: str) -> str:
    """Run a command that must succeed; its stdout."""
    res = cli(url, *args)
    assert res.returncode == 0, (args, res.stdout, res.stderr)
    return res.stdout


def read_json(url: str, *args: str) -> Any:
    """Run a read command with --json; its parsed output."""
    return json.loads(ok(url, *args, "--json"))


def errors(res: subprocess.CompletedProcess[str]) -> list[str]:
    """The `error:` lines a command printed; none of them a repr, traceback or HTML."""
    for leak in LEAKS:
        assert leak not in res.stderr + res.stdout, res.stderr
    return [line for line in res.stderr.splitlines() if line.startswith("error:")]


def api(url: str, path: str, **params: Any) -> Any:
    resp = httpx.get(f"{url}{path}", params=params, timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.json()


def submit(url: str, *args: str) -> int:
    """`farmstead submit ARGS`; the new workflow's id (printed on stdout)."""
    return int(ok(url, "submit", *args).strip())


def watch(url: str, workflow_id: int) -> subprocess.CompletedProcess[str]:
    """`status --watch` until the workflow ends (stdout is a pipe: plain progress lines)."""
    return cli(url, "status", str(workflow_id), "--watch", "--interval", "0.3", timeout=180)


def tasks_of(url: str, workflow_id: int) -> list[dict[str, Any]]:
    return list(api(url, f"/v3/workflows/{workflow_id}/tasks", limit=1000)["data"])


def latest(url: str, task_id: int) -> dict[str, Any]:
    """A task's newest instance."""
    return dict(max(api(url, f"/v3/tasks/{task_id}")["instances"], key=lambda i: i["id"]))


@pytest.fixture
def local(server_factory: Any) -> Any:
    """A server that runs tasks itself (two at a time)."""
    return server_factory(local_workers=2, **FAST)


# ---- 1. commands run as the argv that was typed ------------------------------------------

ARGV: list[tuple[list[str], Callable[[int], str]]] = [
    (["sh", "-c", "echo hello {i} world"], lambda i: f"hello {i} world\n"),
    (
        ["printf", "%s|", "a  b", "it's", '"q"', "(x)", "$HOME", "{i}", "x {i} y", "a'{i}'b"],
        lambda i: f"a  b|it's|\"q\"|(x)|$HOME|{i}|x {i} y|a'{i}'b|",
    ),
    (["sh", "-c", 'echo "$1-$((10 + {i}))"', "sh", "arg {i}"], lambda i: f"arg {i}-{10 + i}\n"),
    (["echo {i} | wc -c"], lambda i: "2\n"),  # one word: a shell command, pipes and all
]


def test_several_words_run_as_that_argv(local: Any) -> None:
    url = local.url
    ids = [submit(url, "--array", "0-1", "--", *words) for words, _ in ARGV]
    for wf_id in ids:
        res = watch(url, wf_id)
        assert res.returncode == 0, (res.stdout, res.stderr)
    for wf_id, (_, expected) in zip(ids, ARGV, strict=True):
        for task in tasks_of(url, wf_id):
            i = int(task["name"].rsplit("_", 1)[1])
            assert latest(url, task["id"])["stdout_log"] == expected(i), task
    first = tasks_of(url, ids[0])[0]
    assert api(url, f"/v3/tasks/{first['id']}")["command"] == "sh -c 'echo hello 0 world'"


# ---- 2. --array -----------------------------------------------------------------------------


def test_one_index_and_refused_ranges(server: Any) -> None:
    url = server.url
    wf_id = submit(url, "--array", "5", "--", "echo", "{i}")
    assert [(t["name"], t["status"]) for t in tasks_of(url, wf_id)] == [("workflow_5", "Q")]
    assert api(url, f"/v3/tasks/{tasks_of(url, wf_id)[0]['id']}")["command"] == "echo '5'"
    for bad in ("--array=-3-2", "--array=-3", "--array=3-1", "--array=a-b", "--array=1-2-3"):
        res = cli(url, "submit", bad, "--", "echo", "{i}")
        assert res.returncode == 2, (bad, res.stdout, res.stderr)
        lines = errors(res)
        assert len(lines) == 1 and "--array" in lines[0], res.stderr
    assert [w["id"] for w in api(url, "/v3/workflows")["data"]] == [wf_id]


# ---- 3. errors and exit codes -----------------------------------------------------------


def test_refusals_are_one_line_per_problem_exit_1(server: Any) -> None:
    url = server.url
    res = cli(url, "submit", "--", "")
    assert res.returncode == 1, res.stderr
    lines = errors(res)
    assert len(lines) == 1 and lines[0].startswith("error: tasks[0].command: "), res.stderr
    res = cli(url, "submit", "--max-attempts", "0", "--retry-delay", "-1", "--", "true")
    assert res.returncode == 1, res.stderr
    lines = errors(res)
    assert len(lines) == 2, res.stderr
    assert {line.split(":")[1].strip() for line in lines} == {"max_attempts", "retry_delay"}


UNKNOWN = [
    ["status", "999"],
    ["workflows", "show", "999"],
    ["workflows", "cancel", "999"],
    ["workflows", "resume", "999"],
    ["tasks", "list", "999"],
    ["tasks", "show", "999"],
    ["tasks", "logs", "999"],
]


def test_unknown_ids_exit_2(server: Any) -> None:
    for args in UNKNOWN:
        res = cli(server.url, *args)
        assert res.returncode == 2, (args, res.stderr)
        lines = errors(res)
        assert len(lines) == 1 and "999" in lines[0] and "not found" in lines[0], res.stderr


EVERY = [
    ["submit", "--", "true"],
    ["status"],
    ["status", "1", "--watch"],
    ["workflows", "list"],
    ["workflows", "show", "1"],
    ["workflows", "cancel", "1"],
    ["workflows", "resume", "1"],
    ["tasks", "list", "1"],
    ["tasks", "show", "1"],
    ["tasks", "logs", "1"],
]


@pytest.fixture
def not_farmstead(tmp_path: Path) -> Iterator[str]:
    """Another HTTP server (Python's file server): HTML pages, 404 and 501."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(url, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(up, 30, "python -m http.server")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_no_server_or_another_server_exit_2(not_farmstead: str) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    for args in EVERY:
        res = cli(nobody, *[a for a in args if a != "--watch"])
        assert res.returncode == 2, (args, res.stderr)
        lines = errors(res)
        assert len(lines) == 1 and lines[0].startswith(f"error: cannot reach {nobody}"), args
        res = cli(not_farmstead, *args)
        assert res.returncode == 2, (args, res.stderr)
        lines = errors(res)
        assert len(lines) == 1, (args, res.stderr)
        assert f"{not_farmstead} did not answer like a farmstead server" in lines[0], args


USAGE = [
    ["submit", "--memory", "nan", "--", "true"],
    ["submit", "--retry-delay", "inf", "--", "true"],
    ["status", "0"],
    ["workflows", "show", str(2**63)],
    ["tasks", "list", "-1"],
    ["tasks", "logs", "1", "--instance", "0"],
    ["workflows", "list", "--status", "QQ"],
    ["tasks", "list", "1", "--status", "done-ish"],
]


def test_usage_errors_exit_2_before_asking() -> None:
    nobody = f"http://127.0.0.1:{free_port()}"  # never asked: the usage is wrong first
    for args in USAGE:
        res = cli(nobody, *args)
        assert res.returncode == 2, (args, res.stderr)
        assert "cannot reach" not in res.stderr and "Traceback" not in res.stderr, args


# ---- 4. status --watch without a terminal ---------------------------------------------------


def test_watch_prints_lines_and_says_nothing_runs(server: Any, tmp_path: Path) -> None:
    url = server.url  # no executor: nothing will claim the work
    wf_id = submit(url, "--array", "0-2", "--", "echo", "{i}")
    out, err = tmp_path / "out", tmp_path / "err"
    env = {**os.environ, "FARMSTEAD_SERVER_URL": url}
    with out.open("w") as o, err.open("w") as e:
        proc = subprocess.Popen(
            [*CLI, "status", str(wf_id), "--watch", "--interval", "0.2", "--idle-after", "1"],
            env=env,
            stdout=o,
            stderr=e,
            text=True,
        )
    try:
        wait_for(lambda: "nothing is running" in err.read_text(), 60, "the idle hint")
        assert f"workflow {wf_id}: 0/3 done, 0 failed, 0 running, 3 waiting" in out.read_text()
        assert proc.poll() is None  # still watching
        assert "cancel" in ok(url, "workflows", "cancel", str(wf_id))
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    wf = api(url, f"/v3/workflows/{wf_id}")
    assert code == 1 and wf["status"] in ("F", "C"), out.read_text()
    assert f"workflow {wf_id}: {wf['status_name']}" in out.read_text().splitlines()
    assert err.read_text().count("nothing is running") == 1


# ---- 5. the operator's nouns ---------------------------------------------------------------


def test_operator_nouns(local: Any) -> None:
    url = local.url
    script = "echo out{i}; echo err{i} >&2; [ {i} -ne 2 ]"
    bad = submit(
        url,
        "--name",
        "Nouns Run",
        "--array",
        "0-3",
        "--max-attempts",
        "1",
        "--",
        "sh",
        "-c",
        script,
    )
    res = watch(url, bad)
    assert res.returncode == 1, (res.stdout, res.stderr)
    assert f"workflow {bad}: FAILED" in res.stdout.splitlines()
    good = submit(url, "--name", "other", "--", "true")
    res = watch(url, good)
    assert res.returncode == 0 and f"workflow {good}: 1/1 done" in res.stdout, res.stderr

    # colours on a terminal: the bar of a DONE workflow is green (not rich's default red)
    env = {**os.environ, "FARMSTEAD_SERVER_URL": url, "FORCE_COLOR": "1", "TERM": "xterm"}
    env.pop("NO_COLOR", None)
    coloured = subprocess.run(
        [*CLI, "status", str(good)], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert "\x1b[1;32m━" in coloured and "\x1b[32m1 done" in coloured, repr(coloured)

    # workflows list / show
    def listed(*args: str) -> list[int]:
        return [w["id"] for w in read_json(url, "workflows", "list", *args)["data"]]

    assert listed() == [good, bad]
    assert listed("--status", "F") == [bad]
    assert listed("--status", "done") == [good]
    assert listed("--status", "F", "--status", "D") == [good, bad]
    assert listed("--name", "nouns") == [bad]
    assert listed("--limit", "1") == [good]
    res = cli(url, "workflows", "list", "--status", "Q")
    assert res.returncode == 2 and len(errors(res)) == 1, res.stderr
    human = ok(url, "workflows", "list")
    assert "Nouns Run" in human and "FAILED" in human and "DONE" in human
    assert read_json(url, "workflows", "show", str(bad)) == api(url, f"/v3/workflows/{bad}")
    assert "FAILED" in ok(url, "workflows", "show", str(bad))
    res = cli(url, "status", str(bad), "--json")  # status says how it went: FAILED, exit 1
    assert res.returncode == 1 and json.loads(res.stdout)["status"] == "F", res.stderr

    # tasks list / show / logs
    failed = read_json(url, "tasks", "list", str(bad), "--status", "F")
    assert failed["count"] == 1 and failed["data"][0]["name"] == "Nouns Run_2"
    task = failed["data"][0]
    assert "exit code 1" in task["last_error"]
    assert "exit code 1" in ok(url, "tasks", "list", str(bad), "--status", "ERROR_FATAL")
    assert len(read_json(url, "tasks", "list", str(bad))["data"]) == 4
    shown = ok(url, "tasks", "show", str(task["id"]))
    ti = latest(url, task["id"])
    assert str(ti["id"]) in shown and "err2" in shown and "exit code 1" in shown
    assert read_json(url, "tasks", "show", str(task["id"])) == api(url, f"/v3/tasks/{task['id']}")
    assert ok(url, "tasks", "logs", str(task["id"])) == "out2\n"
    assert ok(url, "tasks", "logs", str(task["id"]), "--stderr") == "err2\n"
    assert ok(url, "tasks", "logs", str(task["id"]), "--instance", str(ti["id"])) == "out2\n"
    assert read_json(url, "tasks", "logs", str(task["id"]))["id"] == ti["id"]
    res = cli(url, "tasks", "logs", str(task["id"]), "--instance", "999999")
    assert res.returncode == 2 and str(ti["id"]) in errors(res)[0], res.stderr

    # resume, then cancel
    resumed = read_json(url, "workflows", "resume", str(bad))
    assert resumed["workflow_id"] == bad and resumed["total"] >= 1, resumed
    assert watch(url, bad).returncode == 1  # it fails again, as it must
    assert len(api(url, f"/v3/tasks/{task['id']}")["instances"]) == 2
    assert "cancel" in ok(url, "workflows", "cancel", str(good))


# ---- queues, agents and explain ----------------------------------------------------------


def test_a_queue_maximum_the_executor_keeps_and_explain(local: Any) -> None:
    url = local.url
    assert "no queues yet" in cli(url, "queues", "list").stderr
    ok(url, "queues", "create", "/render")
    ok(url, "queues", "create", "/render/film-a", "--max-agents", "1", "--weight", "3")
    listed = read_json(url, "queues", "list")["data"]
    assert [(q["path"], q["maximum_agents"]) for q in listed] == [
        ("/render", None),
        ("/render/film-a", 1),
    ]
    wf = submit(url, "--queue", "/render/film-a", "--array", "0-3", "--", "sleep", "1")
    shown = ok(url, "workflows", "show", str(wf))
    assert "/render/film-a" in shown

    def held() -> str | None:
        for t in tasks_of(url, wf):
            if t["status"] == "Q":
                out = ok(url, "tasks", "explain", str(t["id"]))
                if "maximum of 1 agents" in out:
                    return out
        return None

    text = wait_for(held, 30, "a task held by its queue's maximum")
    assert "queue /render/film-a is at its maximum of 1 agents" in text
    agents = read_json(url, "agents", "list")["data"]
    assert [a["kind"] for a in agents] == ["local"] and agents[0]["slots"] == 2
    assert watch(url, wf).returncode == 0
    # two local slots, but the queue allows one agent: the tries never overlapped
    detail = [api(url, f"/v3/tasks/{t['id']}") for t in tasks_of(url, wf)]
    times = sorted((d["time_started"], d["time_finished"]) for d in detail)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(times)), times
    done_text = ok(url, "tasks", "explain", str(tasks_of(url, wf)[0]["id"]))
    assert "DONE" in done_text and "1 attempt(s)" in done_text

    refused = cli(url, "queues", "delete", "/render/film-a")
    assert refused.returncode == 1 and "holds 0 queue(s) and 1 workflow(s)" in refused.stderr
    ok(url, "workflows", "place", str(wf), "--queue", "/", "--priority", "2")
    ok(url, "queues", "set", "/render/film-a", "--no-max", "--move-to", "/")
    assert [q["path"] for q in read_json(url, "queues", "list")["data"]] == [
        "/film-a",
        "/render",
    ]
    ok(url, "queues", "delete", "/film-a")
    missing = cli(url, "submit", "--queue", "/nope", "--", "true")
    assert missing.returncode == 2 and "no queue /nope" in missing.stderr


# ---- dependencies ---------------------------------------------------------------------------


def test_a_graph_from_a_file_runs_in_order_through_the_executor(local: Any, tmp_path: Path) -> None:
    """`submit --file` with depends_on by name, `--after` another workflow; the local executor
    runs each task only after its upstream; a failure blocks what is downstream of it."""
    url = local.url
    out = tmp_path / "order.txt"
    graph = [
        {"name": "fetch", "command": f"echo fetch >> {out}"},
        {"name": "left", "command": f"echo left >> {out}", "depends_on": ["fetch"]},
        {"name": "right", "command": f"echo right >> {out}", "depends_on": ["fetch"]},
        {"name": "join", "command": f"echo join >> {out}", "depends_on": ["left", "right"]},
    ]
    path = tmp_path / "graph.json"
    path.write_text(json.dumps({"name": "pipeline", "tasks": graph}))
    wf = submit(url, "--file", str(path))
    after = submit(url, "--after", str(wf), "--", "sh", "-c", f"echo after >> {out}")
    assert watch(url, wf).returncode == 0 and watch(url, after).returncode == 0
    lines = out.read_text().split()
    assert lines[0] == "fetch" and set(lines[1:3]) == {"left", "right"}
    assert lines[3:] == ["join", "after"]

    # a cycle is refused with its names; a failure blocks its downstream, named by explain
    path.write_text(json.dumps([
        {"name": "a", "command": "true", "depends_on": ["b"]},
        {"name": "b", "command": "true", "depends_on": ["a"]},
    ]))  # fmt: skip
    refused = cli(url, "submit", "--file", str(path))
    assert refused.returncode == 1 and "'a' → 'b' → 'a'" in refused.stderr, refused.stderr
    path.write_text(json.dumps([
        {"name": "bad", "command": "exit 3"},
        {"name": "next", "command": "true", "depends_on": ["bad"]},
    ]))  # fmt: skip
    failing = submit(url, "--file", str(path), "--max-attempts", "1")
    assert watch(url, failing).returncode == 1
    blocked = [t for t in tasks_of(url, failing) if t["status"] == "B"]
    assert len(blocked) == 1
    text = ok(url, "tasks", "explain", str(blocked[0]["id"]))
    assert "cannot run: upstream task" in text and "ended ERROR_FATAL" in text
    shown = cli(url, "status", str(failing))
    assert shown.returncode == 1 and "1 blocked" in shown.stdout, shown.stdout


# ---- events: the history and the live stream -------------------------------------------------


def test_events_history_and_follow(local: Any, tmp_path: Path) -> None:
    url = local.url
    out = tmp_path / "follow"
    env = {**os.environ, "FARMSTEAD_SERVER_URL": url, "COLUMNS": "200", "NO_COLOR": "1"}
    wait_for(lambda: api(url, "/v3/agents")["data"], 30, "the executor's agent")
    now = api(url, "/v3/events", limit=1000)["next_after"]  # the follower goes on from here
    with out.open("w") as o:
        follower = subprocess.Popen(
            [*CLI, "events", "--follow", "--json", "--type", "task-sent,task-succeeded",
             "--after", str(now)],
            env=env, stdout=o, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
    try:
        wf_id = submit(url, "--array", "0-2", "--max-attempts", "1", "--", "test {i} -ne 1")
        assert watch(url, wf_id).returncode == 1  # task 1 failed
        wait_for(lambda: out.read_text().count("task-succeeded") == 2, 30, "the live events")
    finally:
        follower.terminate()
        follower.wait(timeout=30)
    live = [json.loads(line) for line in out.read_text().splitlines()]
    assert [e["type"] for e in live] == ["task-sent"] * 3 + ["task-succeeded"] * 2
    assert all(e["workflow_id"] == wf_id for e in live)

    failed = read_json(url, "events", "--workflow", str(wf_id), "--type", "task-failed")
    assert failed["type"] == "task-failed" and failed["exception"]
    text = ok(url, "events", "--workflow", str(wf_id))
    lines = text.splitlines()
    assert lines[0].split()[3] == "workflow-submitted"
    assert sum("task-succeeded" in line for line in lines) == 2
    assert any("task-failed" in line and "exit code 1" in line for line in lines), text
    one = ok(url, "events", "--workflow", str(wf_id), "--limit", "2").splitlines()
    assert len(one) == 2
    res = cli(url, "events", "--after", "1", "--type", "nonsense")
    assert res.returncode == 0 and res.stdout == ""
