"""`farmstead tasks …`: a workflow's tasks, one task's history, an instance's output."""

import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from farmstead.cli.common import err
from farmstead.cli.http import (
    DEFAULT_URL,
    EXIT_UNKNOWN,
    MAX_ID,
    AsJson,
    Server,
    ServerUrl,
    TaskId,
    WorkflowId,
    fail_lines,
    usage,
)
from farmstead.cli.views import (
    INSTANCE_STYLE,
    TASK_STYLE,
    first_line,
    print_json,
    styled,
    task_status_name,
)
from farmstead.fsm import TaskStatus

app = typer.Typer(
    help="A workflow's tasks, a task's tries, and their output.", no_args_is_help=True
)
TASK_KEYS = ("id", "name", "status", "command", "instances", "error_log")


def task_letters(values: list[str] | None) -> list[str] | None:
    """`--status F --status done` → ["F", "D"]; an unknown status is a usage error."""
    if not values:
        return None
    out = []
    for value in values:
        v = value.strip().upper()
        if v in TaskStatus._value2member_map_:
            out.append(v)
        elif v in TaskStatus.__members__:
            out.append(TaskStatus[v].value)
        else:
            known = ", ".join(f"{s.value} ({s.name})" for s in TaskStatus)
            usage(f"--status {value!r}: not a task status; one of {known}")
    return out


@app.command("list")
def list_cmd(
    workflow: WorkflowId,
    status: Annotated[
        list[str] | None,
        typer.Option(help="only tasks in this status, e.g. F or ERROR_FATAL; repeatable"),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="at most this many")] = 100,
    after_id: Annotated[
        int, typer.Option(min=0, max=MAX_ID, help="only task ids above this (paging)")
    ] = 0,
    as_json: AsJson = False,
    server_url: ServerUrl = DEFAULT_URL,
) -> None:
    """A workflow's tasks by id: status, tries, and the last error of each."""
    server = Server(server_url)
    out = server.expect(
        server.get(
            f"/v3/workflows/{workflow}/tasks",
            status=task_letters(status),
            limit=limit,
            after_id=after_id,
        ),
        "data",
        "count",
    )
    if as_json:
        print_json(out)
        return
    # progress is what a task reports itself (taskfarm's percentCompleted): shown when any has
    reported = any(t.get("progress") for t in out["data"])
    table = Table(
        "id", "name", "status", "tries", *(["progress"] if reported else []), "last error"
    )
    for t in out["data"]:
        table.add_row(
            str(t["id"]),
            Text(t["name"]),
            styled(task_status_name(t["status"]), TASK_STYLE.get(t["status"])),
            f"{t['num_attempts']}/{t['max_attempts']}",
            *([percent(t.get("progress"))] if reported else []),
            Text(first_line(t.get("last_error"))),
        )
    Console().print(table)
    shown = len(out["data"])
    more = f"; next page: --after-id {out['data'][-1]['id']}" if shown < out["count"] else ""
    err.print(f"{shown} of {out['count']} tasks{more}", markup=False)


def percent(value: float | None) -> str:
    """A task's reported progress (0-100) as shown."""
    return f"{value or 0:g} %"


def _fetch_task(server: Server, task_id: int) -> dict[str, Any]:
    return server.expect(server.get(f"/v3/tasks/{task_id}"), *TASK_KEYS)


@app.command("show")
def show(
    task_id: TaskId,
    lines: Annotated[int, typer.Option(min=0, help="tail lines of the latest try to show")] = 10,
    as_json: AsJson = False,
    server_url: ServerUrl = DEFAULT_URL,
) -> None:
    """A task: its command, every try (instance) with its node and usage, errors, output tails."""
    task = _fetch_task(Server(server_url), task_id)
    if as_json:
        print_json(task)
        return
    console = Console()
    about = Table.grid(padding=(0, 2))
    about.add_row("task", f"{task['id']} ({task['name']})", style=None)
    about.add_row("workflow", str(task.get("workflow_id")))
    about.add_row(
        "status", styled(task_status_name(task["status"]), TASK_STYLE.get(task["status"]))
    )
    about.add_row("tries", f"{task.get('num_attempts')}/{task.get('max_attempts')}")
    if task.get("progress"):
        about.add_row("progress", percent(task["progress"]))
    about.add_row("command", Text(task["command"]))
    console.print(about)
    tries = Table("instance", "status", "since", "node", "wallclock s", "max RSS MB", title="tries")
    for i in task["instances"]:
        rss = i.get("maxrss")
        tries.add_row(
            str(i["id"]),
            styled(i["status"], INSTANCE_STYLE.get(i["status"])),
            str(i.get("status_date"))[:19],
            Text(i.get("nodename") or ""),
            "" if i.get("wallclock") is None else f"{i['wallclock']:.1f}",
            "" if rss is None else f"{rss / 2**20:.0f}",
        )
    console.print(tries)
    if task["error_log"]:
        errors = Table("instance", "time", "error", title="errors")
        for e in task["error_log"]:
            errors.add_row(
                str(e["task_instance_id"]), str(e["error_time"])[:19], Text(e["description"])
            )
        console.print(errors)
    if task["instances"] and lines:
        latest = task["instances"][-1]
        for stream in ("stdout", "stderr"):
            tail = (latest.get(f"{stream}_log") or "").splitlines()[-lines:]
            if tail:
                console.print(f"[bold]{stream} of instance {latest['id']}[/] (last lines)")
                console.print(Text("\n".join(tail)))


@app.command("logs")
def logs(
    task_id: TaskId,
    stderr: Annotated[bool, typer.Option("--stderr", help="stderr instead of stdout")] = False,
    instance: Annotated[
        int | None,
        typer.Option(min=1, max=MAX_ID, help="this instance id (see tasks show); default: latest"),
    ] = None,
    as_json: AsJson = False,
    server_url: ServerUrl = DEFAULT_URL,
) -> None:
    """Print the tail of a try's stdout (or --stderr) as the server recorded it."""
    task = _fetch_task(Server(server_url), task_id)
    instances = {int(i["id"]): i for i in task["instances"]}
    if not instances:
        fail_lines([f"task {task_id} has no instances yet"], EXIT_UNKNOWN)
    chosen = max(instances) if instance is None else instance
    if chosen not in instances:
        ids = ", ".join(map(str, sorted(instances)))
        fail_lines([f"task {task_id} has no instance {chosen}; its instances: {ids}"], EXIT_UNKNOWN)
    ti = instances[chosen]
    if as_json:
        print_json(ti)
        return
    stream = "stderr" if stderr else "stdout"
    tail = ti.get(f"{stream}_log")
    if not tail:
        where = f"; its file: {ti[stream]}" if ti.get(stream) else ""
        err.print(
            f"instance {chosen} ({ti['status']}) has no {stream} tail recorded{where}", markup=False
        )
        return
    sys.stdout.write(tail if tail.endswith("\n") else tail + "\n")


@app.command("explain")
def explain(task_id: TaskId, as_json: AsJson = False, server_url: ServerUrl = DEFAULT_URL) -> None:
    """Why a task is where it is: what it waits for (retry delay, array limit, a queue at its
    maximum, no agent), or where it runs, or who cancelled it."""
    server = Server(server_url)
    out = server.expect(server.get(f"/v3/tasks/{task_id}/explain"), "status", "reasons")
    if as_json:
        print_json(out)
        return
    console = Console()
    name = task_status_name(out["status"])
    console.print(
        Text.assemble(
            f"task {task_id}: ",
            styled(name, TASK_STYLE.get(out["status"])),
            f" ({out['attempts']} attempt(s), {out['failures']} failure(s))",
        )
    )
    for reason in out["reasons"]:
        console.print(Text(f"  - {reason['message']}"))
