"""`farmstead events`: the farm's events, in Celery's words where it has them; `--follow` for
the live stream."""

import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from farmstead.cli.http import DEFAULT_URL, MAX_ID, AsJson, Server, ServerUrl

#: Celery's types coloured as `status` colours the statuses they lead to
STYLE = {
    "task-succeeded": "green",
    "task-failed": "red",
    "task-revoked": "magenta",
    "task-retried": "dark_orange",
    "task-started": "yellow",
    "task-received": "yellow",
    "worker-offline": "red",
    "worker-online": "green",
}


def line(event: dict[str, Any]) -> str:
    """One event as a line of text (rich markup)."""
    kind = event["type"]
    style = STYLE.get(kind, "bright_black" if kind.startswith("worker-heartbeat") else "")
    who = []
    if event.get("task_id") is not None:
        who.append(f"task {event['task_id']}")
        if event.get("name"):
            who.append(escape(str(event["name"])))
    elif event["entity"] == "workflow":
        who.append(f"workflow {event['workflow_id']}")
    else:
        who.append(f"{event['entity']} {event['entity_id']}")
    extra = []
    if event.get("hostname"):
        extra.append(f"on {escape(str(event['hostname']))}")
    if event.get("runtime") is not None:
        extra.append(f"in {event['runtime']:.1f} s")
    if event.get("exception"):
        extra.append(escape(str(event["exception"]).splitlines()[0][:120]))
    padded = f"{kind:<18}"
    kind_text = f"[{style}]{padded}[/]" if style else padded
    time = str(event["time"]).replace("T", " ")[:19]
    return f"{time}  #{event['id']:<8} {kind_text} {' '.join(who)}  {' '.join(extra)}".rstrip()


def events(
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="go on printing new events as they happen")
    ] = False,
    workflow: Annotated[int | None, typer.Option(min=1, max=MAX_ID, help="one workflow's")] = None,
    task: Annotated[int | None, typer.Option(min=1, max=MAX_ID, help="one task's")] = None,
    type_: Annotated[
        list[str] | None,
        typer.Option("--type", help="only these types (repeat, or comma-separate): task-failed…"),
    ] = None,
    after: Annotated[
        int | None,
        typer.Option(min=0, max=MAX_ID, help="events after this id (default: all; --follow: now)"),
    ] = None,
    limit: Annotated[
        int, typer.Option(min=1, max=1_000_000, help="at most this many (without --follow)")
    ] = 1000,
    as_json: AsJson = False,
    server_url: ServerUrl = DEFAULT_URL,
) -> None:
    """The farm's events, oldest first: every move of a task or instance, in Celery's words
    (task-sent, task-received, task-started, task-succeeded, task-failed, task-retried,
    task-revoked, worker-online/heartbeat/offline) and farmstead's for the rest.

    With --follow, new events as they happen, until Ctrl-C (a dropped connection is resumed
    without losing or repeating any)."""
    server = Server(server_url, patience=60 if follow else 0)
    params: dict[str, Any] = {"workflow": workflow, "task": task, "type": type_ or None}
    console = Console(highlight=False)

    def show(event: dict[str, Any]) -> None:
        if as_json:
            typer.echo(json.dumps(event, separators=(",", ":")))
        else:
            console.print(line(event), soft_wrap=True)

    if follow:
        try:
            for event in server.stream("/v3/events", last_id=after, **params):
                show(event)
        except KeyboardInterrupt:
            raise typer.Exit(0) from None
    shown = 0
    at = after or 0
    while shown < limit:
        page = server.expect(
            server.get("/v3/events", after=at, limit=min(1000, limit - shown), **params),
            "data",
            "next_after",
        )
        for event in page["data"]:
            show(event)
        shown += len(page["data"])
        if page["next_after"] == at:
            break
        at = page["next_after"]
