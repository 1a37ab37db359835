"""`farmstead queues …` and `farmstead agents list`: the farm's queues and its claimers."""

from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from farmstead.cli.common import err
from farmstead.cli.http import DEFAULT_URL, AsJson, Server, ServerUrl
from farmstead.cli.views import print_json

app = typer.Typer(
    help="Queues (a tree, e.g. /render/film-a): priority, weight, minimum and maximum agents.",
    no_args_is_help=True,
)
agents = typer.Typer(help="Agents: every claimer (executors, workers).", no_args_is_help=True)

Priority = Annotated[int | None, typer.Option(help="higher first (default 0)")]
Weight = Annotated[
    float | None, typer.Option(help="share of agents among its siblings (default 10)")
]
MinAgents = Annotated[int | None, typer.Option("--min-agents", min=0, help="agents it gets first")]
MaxAgents = Annotated[
    int | None, typer.Option("--max-agents", min=0, help="agents it never goes above")
]


def knobs(
    priority: int | None, weight: float | None, low: int | None, high: int | None
) -> dict[str, Any]:
    """The knobs given on the command line, as the API names them."""
    given = {"priority": priority, "weight": weight, "minimum_agents": low, "maximum_agents": high}
    return {k: v for k, v in given.items() if v is not None}


def _url(path: str) -> str:
    return "/v3/queues/" + path.strip("/")


def _limit(value: int | None) -> str:
    return "-" if value is None else str(value)


def _print(queues: list[dict[str, Any]]) -> None:
    table = Table("path", "priority", "weight", "min", "max", "agents", "queued", "workflows")
    for q in queues:
        table.add_row(
            Text(q["path"]),
            str(q["priority"]),
            f"{q['weight']:g}",
            _limit(q["minimum_agents"]),
            _limit(q["maximum_agents"]),
            str(q["agents"]),
            str(q["queued"]),
            ", ".join(map(str, q["workflows"])) or "-",
        )
    Console().print(table)


@app.command("list")
def list_cmd(as_json: AsJson = False, server_url: ServerUrl = DEFAULT_URL) -> None:
    """Every queue with the agents working in it now and its QUEUED instances."""
    server = Server(server_url)
    out = server.expect(server.get("/v3/queues"), "data")
    if as_json:
        print_json(out)
        return
    if not out["data"]:
        err.print("no queues yet: every workflow is in the root queue /")
        return
    _print(out["data"])


@app.command("create")
def create(
    path: Annotated[str, typer.Argument(help="e.g. /render/film-a (its parent must exist)")],
    priority: Priority = None,
    weight: Weight = None,
    min_agents: MinAgents = None,
    max_agents: MaxAgents = None,
    as_json: AsJson = False,
    server_url: ServerUrl = DEFAULT_URL,
) -> None:
    """Create a queue."""
    server = Server(server_url)
    body = {"path": path, **knobs(priority, weight, min_agents, max_agents)}
    out = server.expect(server.post("/v3/queues", body), "path")
    if as_json:
        print_json(out)
        return
    err.print(f"queue {out['path']} created", markup=False)


@app.command("set")
def set_cmd(
    path: Annotated[str, typer.Argument(help="the queue, e.g. /render/film-a")],
    priority: Priority = None,
    weight: Weight = None,
    min_agents: MinAgents = None,
    max_agents: MaxAgents = None,
    no_min: Annotated[bool, typer.Option("--no-min", help="unset its minimum")] = False,
    no_max: Annotated[bool, typer.Option("--no-max", help="unset its maximum")] = False,
    move_to: Annotated[
        str | None, typer.Option(help="a new parent queue ('/' for the root)")
    ] = None,
    as_json: AsJson = False,
    server_url: ServerUrl = DEFAULT_URL,
) -> None:
    """Change a queue's knobs, or move it (with everything in it) under another parent."""
    server = Server(server_url)
    body: dict[str, Any] = knobs(priority, weight, min_agents, max_agents)
    body["clear"] = [k for k, on in (("minimum_agents", no_min), ("maximum_agents", no_max)) if on]
    if move_to is not None:
        body["move_to"] = move_to
    out = server.expect(server.call("PATCH", _url(path), json=body), "path")
    if as_json:
        print_json(out)
        return
    _print([out])


@app.command("delete")
def delete(
    path: Annotated[str, typer.Argument(help="an empty queue")],
    server_url: ServerUrl = DEFAULT_URL,
) -> None:
    """Delete an empty queue."""
    server = Server(server_url)
    server.delete(_url(path))
    err.print(f"queue {path} deleted", markup=False)


@agents.command("list")
def agents_list(
    seen_within: Annotated[
        float | None, typer.Option(min=0.001, help="only those seen in the last seconds")
    ] = None,
    as_json: AsJson = False,
    server_url: ServerUrl = DEFAULT_URL,
) -> None:
    """Agents with their host, kind, slots and last heartbeat."""
    server = Server(server_url)
    params = {} if seen_within is None else {"seen_within": seen_within}
    out = server.expect(server.get("/v3/agents", **params), "data")
    if as_json:
        print_json(out)
        return
    table = Table("id", "name", "host", "kind", "slots", "last seen", "last got work")
    for a in out["data"]:
        table.add_row(
            str(a["id"]),
            Text(a["name"]),
            Text(a["hostname"]),
            a["kind"],
            str(a["slots"]),
            str(a["last_seen_date"]),
            str(a["last_claim_date"] or "-"),
        )
    Console().print(table)
