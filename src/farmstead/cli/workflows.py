"""`farmstead workflows …`: list, show, cancel and resume workflows."""

from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from farmstead.cli.http import (
    DEFAULT_URL,
    MAX_ID,
    AsJson,
    Server,
    ServerUrl,
    WorkflowId,
    usage,
)
from farmstead.cli.queues import MaxAgents, MinAgents, Priority, Weight, knobs
from farmstead.cli.status import fetch
from farmstead.cli.views import counts_table, print_json, workflow_status, workflows_table

app = typer.Typer(help="List, show, cancel and resume workflows.", no_args_is_help=True)

#: Workflow statuses by letter and by name (any case): R RUNNING, D DONE, F FAILED, C CANCELLED.
STATUSES = {"R": "RUNNING", "D": "DONE", "F": "FAILED", "C": "CANCELLED"}


def status_letters(values: list[str] | None) -> list[str] | None:
    """`--status F --status running` → ["F", "R"]; an unknown status is a usage error."""
    if not values:
        return None
    by_name = {name: letter for letter, name in STATUSES.items()}
    out = []
    for value in values:
        v = value.strip().upper()
        letter = v if v in STATUSES else by_name.get(v)
        if letter is None:
            known = ", ".join(f"{k} ({n})" for k, n in STATUSES.items())
            usage(f"--status {value!r}: not a workflow status; one of {known}")
        out.append(letter)
    return out


@app.command("list")
def list_cmd(
    status: Annotated[
        list[str] | None,
        typer.Option(help="only R, D, F or C (or RUNNING, DONE, FAILED, CANCELLED); repeatable"),
    ] = None,
    name: Annotated[str | None, typer.Option(help="only names containing this (any case)")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="at most this many")] = 20,
    offset: Annotated[
        int, typer.Option(min=0, max=MAX_ID, help="skip this many (newest first)")
    ] = 0,
    as_json: AsJson = False,
    server_url: ServerUrl = DEFAULT_URL,
) -> None:
    """Workflows, newest first, with their progress."""
    server = Server(server_url)
    params: dict[str, Any] = {"limit": limit, "offset": offset, "name": name or None}
    params["status"] = status_letters(status)
    out = server.expect(server.get("/v3/workflows", **params), "data")
    if as_json:
        print_json(out)
        return
    if not out["data"]:
        typer.echo("no workflows match")
        return
    Console().print(workflows_table(out["data"]))


@app.command("show")
def show(
    workflow: WorkflowId,
    as_json: AsJson = False,
    server_url: ServerUrl = DEFAULT_URL,
) -> None:
    """A workflow: its status, dates, settings and task counts."""
    server = Server(server_url)
    wf = fetch(server, workflow)
    if as_json:
        print_json(wf)
        return
    about = Table.grid(padding=(0, 2))
    about.add_row("id", str(wf["id"]))
    about.add_row("name", Text(wf["name"]))
    if wf.get("uuid"):
        about.add_row("taskfarm run", f"{wf['uuid']} (its tasks are claimed through /api/)")
    about.add_row("status", workflow_status(wf))
    limits = [
        f"{k} {wf.get(k + '_agents')}"
        for k in ("minimum", "maximum")
        if wf.get(k + "_agents") is not None
    ]
    about.add_row(
        "queue",
        Text(
            f"{wf.get('queue', '/')} (priority {wf.get('priority', 0)}, weight "
            f"{wf.get('weight', 10):g}{''.join(', ' + x + ' agents' for x in limits)})"
        ),
    )
    about.add_row("tasks", f"{wf['total']} ({wf['percent_done']:.1f}% done)")
    about.add_row("created", str(wf.get("created_date")))
    if wf.get("cancelled_date"):
        about.add_row("cancelled", str(wf["cancelled_date"]))
    about.add_row("retry delay", f"{wf.get('retry_delay', 0):g} s")
    if wf.get("array_ids"):
        about.add_row("arrays", ", ".join(map(str, wf["array_ids"])))
    console = Console()
    console.print(about)
    console.print(counts_table(wf))
    if wf["counts"].get("F"):
        console.print(f"failed tasks: farmstead tasks list {wf['id']} --status F")


def _action(server: Server, workflow: int, verb: str, as_json: bool, **params: Any) -> None:
    out = server.expect(
        server.post(f"/v3/workflows/{workflow}/{verb}", **params), "changed", "total"
    )
    if as_json:
        print_json(out)
        return
    moved = ", ".join(f"{n} → {s}" for s, n in sorted(out["changed"].items())) or "nothing"
    typer.echo(f"workflow {workflow}: {verb} moved {out['total']} ({moved})")


@app.command("cancel")
def cancel(
    workflow: WorkflowId,
    as_json: AsJson = False,
    server_url: ServerUrl = DEFAULT_URL,
) -> None:
    """Cancel: waiting work is dropped, running commands are stopped; it ends CANCELLED."""
    _action(Server(server_url), workflow, "cancel", as_json)


@app.command("resume")
def resume(
    workflow: WorkflowId,
    all_tasks: Annotated[
        bool, typer.Option("--all", help="also give unfinished tasks fresh tries")
    ] = False,
    as_json: AsJson = False,
    server_url: ServerUrl = DEFAULT_URL,
) -> None:
    """Resume: failed (ERROR_FATAL) tasks get fresh tries; DONE tasks are left alone."""
    _action(Server(server_url), workflow, "resume", as_json, all=all_tasks or None)


@app.command("place")
def place(
    workflow: WorkflowId,
    queue: Annotated[str | None, typer.Option(help="move it to this queue ('/': the root)")] = None,
    priority: Priority = None,
    weight: Weight = None,
    min_agents: MinAgents = None,
    max_agents: MaxAgents = None,
    server_url: ServerUrl = DEFAULT_URL,
) -> None:
    """Move a workflow to another queue, or change its priority, weight, minimum or maximum
    agents; the next claims follow them."""
    body: dict[str, Any] = knobs(priority, weight, min_agents, max_agents)
    if queue is not None:
        body["queue"] = queue
    if not body:
        usage("give --queue or a knob (--priority, --weight, --min-agents, --max-agents)")
    server = Server(server_url)
    server.call("PATCH", f"/v3/workflows/{workflow}", json=body)
    typer.echo(f"workflow {workflow}: {', '.join(f'{k} {v}' for k, v in body.items())}")
