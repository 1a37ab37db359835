"""`farmstead submit` and `farmstead status`: a user's view of workflows over HTTP."""

import re
import time
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_exponential_jitter

from farmstead.cli.common import err, fail
from farmstead.client.api import is_transient, transient_status
from farmstead.fsm import TaskStatus

ServerUrl = Annotated[
    str, typer.Option("--server-url", envvar="FARMSTEAD_SERVER_URL", help="the farmstead server")
]
DEFAULT_URL = "http://127.0.0.1:8000"


def _request(method: str, url: str, patience: float = 0, code: int = 1, **kw: Any) -> Any:
    """One request; transient failures retried for `patience` seconds; else exit `code`."""
    retrying = Retrying(
        retry=retry_if_exception(is_transient),
        wait=wait_exponential_jitter(initial=0.5, max=10),
        stop=stop_after_delay(patience),
        reraise=True,
    )
    try:
        for attempt in retrying:
            with attempt:
                resp = httpx.request(method, url, timeout=600, **kw)
                if transient_status(resp.status_code):
                    resp.raise_for_status()
    except httpx.HTTPStatusError as exc:
        resp = exc.response
    except httpx.HTTPError as exc:
        fail(f"cannot reach {url}: {exc}", code)
    if resp.status_code >= 400:
        try:
            detail = resp.json().get("detail")
        except ValueError:
            detail = resp.text[:300]
        fail(f"{resp.status_code}: {detail}", code)
    return resp.json()


def submit(
    command: Annotated[list[str], typer.Argument(help="the command; {i} is the array index")],
    name: Annotated[str, typer.Option(help="workflow name")] = "workflow",
    array: Annotated[str | None, typer.Option(help="index range, e.g. 0-999")] = None,
    max_attempts: Annotated[int | None, typer.Option(help="tries per task")] = None,
    memory: Annotated[float | None, typer.Option(help="memory limit per task, GB")] = None,
    runtime: Annotated[float | None, typer.Option(help="runtime limit per task, seconds")] = None,
    log_dir: Annotated[str | None, typer.Option(help="directory for stdout/stderr files")] = None,
    retry_delay: Annotated[float, typer.Option(help="seconds before a retry")] = 0.0,
    server_url: ServerUrl = DEFAULT_URL,
) -> None:
    """Submit a workflow: one task, or an array over --array (with {i} in the command)."""
    cmd = " ".join(command)
    resources: dict[str, Any] = {}
    if memory is not None:
        resources["memory"] = memory
    if runtime is not None:
        resources["runtime"] = runtime
    if log_dir is not None:
        resources["stdout"] = resources["stderr"] = log_dir
    body: dict[str, Any] = {
        "name": name,
        "retry_delay": retry_delay,
        "resources": resources or None,
        "max_attempts": max_attempts,
    }
    if array is not None:
        m = re.fullmatch(r"(-?\d+)-(-?\d+)", array.strip())
        if not m:
            fail(f"--array {array!r}: expected FIRST-LAST, e.g. 0-999")
        body["array"] = {
            "command": cmd,
            "first": int(m[1]),
            "last": int(m[2]),
            "name": f"{name}_{{i}}",
        }
    else:
        body["tasks"] = [{"name": name, "command": cmd}]
    out = _request("POST", f"{server_url.rstrip('/')}/v3/workflows", json=body)
    typer.echo(out["id"])
    err.print(f"workflow {out['id']} submitted: {out['total']} tasks")


def _table(wf: dict[str, Any]) -> Table:
    table = Table(
        "status",
        "tasks",
        title=f"workflow {wf['id']} ({wf['name']}): "
        f"{wf['status_name']}, {wf['percent_done']:.1f}% done",
    )
    for letter, n in sorted(wf["counts"].items()):
        table.add_row(f"{TaskStatus(letter).name} ({letter})", str(n))
    return table


def status(
    workflow: Annotated[int | None, typer.Argument(help="workflow id (default: newest)")] = None,
    watch: Annotated[bool, typer.Option(help="keep it live until the workflow ends")] = False,
    interval: Annotated[float, typer.Option(help="seconds between refreshes")] = 1.0,
    server_url: ServerUrl = DEFAULT_URL,
) -> None:
    """Counts by status and a progress bar; with --watch, exit 0 if DONE, 1 if FAILED.

    Exit 2 when the state cannot be told (unknown workflow, server unreachable for a minute).
    """
    base = server_url.rstrip("/")
    if workflow is None:
        data = _request("GET", f"{base}/v3/workflows", code=2, params={"limit": 1})["data"]
        if not data:
            fail("no workflows yet", 2)
        workflow = int(data[0]["id"])
    wf = _request("GET", f"{base}/v3/workflows/{workflow}", code=2)
    console = Console()
    if not watch:
        console.print(_table(wf))
        _bar(console, wf, live=False)
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[counts]}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        bar = progress.add_task(f"workflow {workflow}", total=wf["total"], counts="")
        while True:
            counts = " ".join(f"{k}:{v}" for k, v in sorted(wf["counts"].items()))
            progress.update(bar, completed=wf["counts"].get("D", 0), counts=counts)
            if wf["status"] != "R":
                break
            time.sleep(interval)
            wf = _request("GET", f"{base}/v3/workflows/{workflow}", patience=60, code=2)
    console.print(_table(wf))
    raise typer.Exit(0 if wf["status"] == "D" else 1)


def _bar(console: Console, wf: dict[str, Any], live: bool) -> None:
    with Progress(
        TextColumn("progress"), BarColumn(), TaskProgressColumn(), console=console, transient=live
    ) as progress:
        progress.add_task("", total=wf["total"], completed=wf["counts"].get("D", 0))
