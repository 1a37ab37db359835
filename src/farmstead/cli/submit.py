"""`farmstead submit`: one task, or an array of tasks over a range of indices."""

import json
import re
import shlex
from pathlib import Path
from typing import Annotated, Any

import typer

from farmstead.cli.common import err
from farmstead.cli.http import DEFAULT_URL, AsJson, Server, ServerUrl, finite, usage
from farmstead.cli.queues import MaxAgents, MinAgents, Priority, Weight, knobs
from farmstead.cli.views import print_json

_RANGE = re.compile(r"(\d+)(?:-(\d+))?")


def shell_command(words: list[str]) -> str:
    """The shell command the tasks run.

    One word is a shell command as it is (`'echo a | wc -c'`). Several words are an argv: they
    are shell-quoted and joined, so the shell splits them back into exactly those words.
    `{i}` stays inside its word: a quoted word keeps its quotes around the index (a number).
    """
    return words[0] if len(words) == 1 else shlex.join(words)


def parse_array(text: str) -> tuple[int, int]:
    """`0-999` → (0, 999); `5` → (5, 5). Indices are whole numbers from 0; else a usage error."""
    m = _RANGE.fullmatch(text.strip())
    if not m:
        usage(
            f"--array {text!r}: give FIRST-LAST (e.g. 0-999) or one index (e.g. 5); "
            "indices are whole numbers from 0"
        )
    first = int(m[1])
    last = int(m[2]) if m[2] is not None else first
    if last < first:
        usage(f"--array {text!r}: LAST ({last}) is below FIRST ({first})")
    return first, last


def read_file(path: Path) -> dict[str, Any]:
    """A workflow body from a JSON file: an object as POST /v3/workflows takes it, or a list
    of tasks (each with name, command and optional depends_on)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        usage(f"--file {path}: cannot read it ({e})")
    except json.JSONDecodeError as e:
        usage(f"--file {path}: not JSON ({e})")
    if isinstance(data, list):
        return {"tasks": data}
    if not isinstance(data, dict):
        usage(f"--file {path}: give a JSON object (a workflow) or a list of tasks")
    return data


def _resources(memory: float | None, runtime: float | None, log_dir: str | None) -> dict[str, Any]:
    resources: dict[str, Any] = {}
    if memory is not None:
        resources["memory"] = memory
    if runtime is not None:
        resources["runtime"] = runtime
    if log_dir is not None:
        resources["stdout"] = resources["stderr"] = str(Path(log_dir).expanduser().resolve())
    return resources


def _tasks(command: list[str], array: str | None, name: str) -> dict[str, Any]:
    """The tasks part of a body: one task, or an array over `array`."""
    cmd = shell_command(command)
    if array is None:
        return {"tasks": [{"name": name, "command": cmd}]}
    first, last = parse_array(array)
    return {"array": {"command": cmd, "first": first, "last": last, "name": f"{name}_{{i}}"}}


def submit(
    command: Annotated[
        list[str] | None,
        typer.Argument(
            help="after --: one shell command, or several words run as that argv; "
            "{i} is the array index"
        ),
    ] = None,
    name: Annotated[str | None, typer.Option(help="workflow name")] = None,
    file: Annotated[
        Path | None,
        typer.Option(
            "--file",
            help="a JSON workflow (tasks with depends_on: a graph) instead of a command",
        ),
    ] = None,
    after: Annotated[
        list[int] | None,
        typer.Option(help="a workflow all of whose tasks must be DONE first; repeatable"),
    ] = None,
    after_each: Annotated[
        list[int] | None,
        typer.Option(help="a workflow whose task i must be DONE before task i; repeatable"),
    ] = None,
    array: Annotated[
        str | None, typer.Option(help="index range FIRST-LAST (e.g. 0-999) or one index")
    ] = None,
    max_attempts: Annotated[int | None, typer.Option(help="tries per task")] = None,
    memory: Annotated[
        float | None, typer.Option(callback=finite, help="memory limit per task, GB")
    ] = None,
    runtime: Annotated[
        float | None, typer.Option(callback=finite, help="runtime limit per task, seconds")
    ] = None,
    log_dir: Annotated[
        str | None, typer.Option(help="directory for stdout/stderr files (relative: to here)")
    ] = None,
    retry_delay: Annotated[
        float, typer.Option(callback=finite, help="seconds before a retry")
    ] = 0.0,
    queue: Annotated[
        str | None, typer.Option(help="the queue it goes into, e.g. /render/film-a (default /)")
    ] = None,
    priority: Priority = None,
    weight: Weight = None,
    min_agents: MinAgents = None,
    max_agents: MaxAgents = None,
    max_running: Annotated[
        int | None, typer.Option(min=1, help="most of its tasks running at once")
    ] = None,
    as_json: AsJson = False,
    server_url: ServerUrl = DEFAULT_URL,
) -> None:
    """Submit a workflow: one task, an array over --array (with {i} in the command), or a
    graph of tasks from --file.

    Prints the new workflow's id on stdout.
    """
    if (file is None) == (not command):
        usage("give a command (after --) or --file, not both")
    resources = _resources(memory, runtime, log_dir)
    body: dict[str, Any] = read_file(file) if file is not None else {}
    body.setdefault("name", "workflow")
    if name is not None:
        body["name"] = name
    given = {
        "retry_delay": retry_delay,
        "resources": resources or None,
        "max_attempts": max_attempts,
        **knobs(priority, weight, min_agents, max_agents),
    }
    if file is not None:  # the file's own values stand unless an option is given
        given = {k: v for k, v in given.items() if v is not None}
        if not retry_delay:
            del given["retry_delay"]
    body |= given
    deps = [{"workflow": w, "mode": "all"} for w in after or ()]
    deps += [{"workflow": w, "mode": "each"} for w in after_each or ()]
    if deps:
        body["depends_on"] = [*body.get("depends_on", []), *deps]
    if queue is not None:
        body["queue"] = queue
    if max_running is not None:
        body["max_concurrently_running"] = max_running
    if command:
        body |= _tasks(command, array, body["name"])
    elif array is not None:
        usage("--array goes with a command, not with --file")
    server = Server(server_url)
    out = server.expect(server.post("/v3/workflows", body), "id", "total")
    if as_json:
        print_json(out)
        return
    typer.echo(out["id"])
    err.print(f"workflow {out['id']} submitted: {out['total']} tasks")
