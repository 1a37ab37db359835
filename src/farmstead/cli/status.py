"""`farmstead status`: a workflow's counts and progress, once or live (`--watch`)."""

import threading
import time
from typing import Annotated, Any

import typer
from rich.console import Console

from farmstead.cli.common import err
from farmstead.cli.http import (
    DEFAULT_URL,
    EXIT_NO,
    EXIT_OK,
    EXIT_UNKNOWN,
    MAX_ID,
    AsJson,
    Server,
    ServerUrl,
    fail_lines,
    finite,
)
from farmstead.cli.views import Tally, counts_table, print_json, progress

#: Without a terminal, a progress line at most this often (when something changed) ...
LINE_EVERY = 5.0
#: ... and at least this often (so a log shows the watch is alive).
LINE_AT_LEAST = 60.0
IDLE_HINT = (
    "nothing is running: no executor has claimed work for {s:g} s; start the server with "
    "--local-workers N or run workers (farmstead worker run)"
)
WORKFLOW_KEYS = ("id", "name", "status", "counts", "total", "percent_done")


def exit_code(wf: dict[str, Any]) -> int:
    """0 unless the workflow ended FAILED or CANCELLED (1)."""
    return EXIT_NO if wf["status"] in ("F", "C") else EXIT_OK


def fetch(server: Server, workflow: int) -> dict[str, Any]:
    """A workflow, checked to look like farmstead's answer."""
    return server.expect(server.get(f"/v3/workflows/{workflow}"), *WORKFLOW_KEYS)


class IdleWatch:
    """Notices work that sits waiting while nothing is claimed, and says so once."""

    def __init__(self, after: float) -> None:
        self.after = after
        self.last: Tally | None = None
        self.since = time.monotonic()
        self.told = False

    def see(self, tally: Tally) -> None:
        """Look at the newest tally; print the hint once when idle for `after` seconds."""
        now = time.monotonic()
        if tally != self.last or tally.running or not tally.waiting:
            self.last, self.since = tally, now
            return
        if not self.told and self.after > 0 and now - self.since >= self.after:
            self.told = True
            err.print(f"[yellow]{IDLE_HINT.format(s=self.after)}[/]")


def status(
    workflow: Annotated[
        int | None, typer.Argument(min=1, max=MAX_ID, help="workflow id (default: newest)")
    ] = None,
    watch: Annotated[bool, typer.Option(help="follow it until the workflow ends")] = False,
    interval: Annotated[
        float, typer.Option(min=0.1, callback=finite, help="seconds between refreshes")
    ] = 1.0,
    idle_after: Annotated[
        float,
        typer.Option(
            min=0,
            callback=finite,
            help="with --watch: say so when nothing runs for this long (0: never)",
        ),
    ] = 10.0,
    as_json: AsJson = False,
    server_url: ServerUrl = DEFAULT_URL,
) -> None:
    """A workflow's task counts and progress; with --watch, follow it until it ends.

    Exit 0 if DONE (or, without --watch, still running), 1 if FAILED or CANCELLED,
    2 if it cannot be told (unknown workflow, server unreachable: for a minute with --watch).
    """
    server = Server(server_url, patience=60 if watch else 0)
    if workflow is None:
        data = server.expect(server.get("/v3/workflows", limit=1), "data")["data"]
        if not data:
            fail_lines(["no workflows yet"], EXIT_UNKNOWN)
        workflow = int(data[0]["id"])
    wf = fetch(server, workflow)
    if watch:
        console = Console()
        follow = _follow_live if console.is_terminal else _follow_plain
        wf = follow(server, wf, console, interval, IdleWatch(idle_after))
    if as_json:
        print_json(wf)
    else:
        console = Console()
        console.print(counts_table(wf))
        if not watch:
            with progress(console) as bar:
                t = Tally.of(wf["counts"])
                bar.add_task("progress", total=t.total or 1, completed=t.done, tally=t.markup())
    raise typer.Exit(exit_code(wf))


class Changes:
    """Wakes the watch when the workflow's events say something moved (the event stream, read
    in a thread); where the stream cannot be had, every `interval` seconds instead."""

    def __init__(self, server: Server, workflow: int, interval: float) -> None:
        self.interval = interval
        self.changed = threading.Event()
        self.opened = threading.Event()
        self.streaming = True
        quiet = Server(server.url, patience=server.patience, token=server.token)
        thread = threading.Thread(target=self._read, args=(quiet, workflow), daemon=True)
        thread.start()
        self.opened.wait(timeout=5)  # events from here on wake the watch

    def _read(self, server: Server, workflow: int) -> None:
        try:
            events = server.stream(
                "/v3/events", on_open=self.opened.set, quiet=True, workflow=workflow
            )
            for _ in events:
                self.changed.set()
        except Exception:  # an older server, a proxy that buffers: the watch polls instead
            pass
        self.streaming = False  # no stream (an older server, a proxy): poll
        self.opened.set()
        self.changed.set()

    def wait(self, timeout: float) -> bool:
        """Until something moved (True) or `timeout` seconds (False)."""
        if not self.streaming:
            time.sleep(min(timeout, self.interval))
            return True
        moved = self.changed.wait(timeout)
        if moved:
            self.changed.clear()
            time.sleep(min(0.2, self.interval))  # let a burst of events settle into one read
        return moved


def _follow_live(
    server: Server, wf: dict[str, Any], console: Console, interval: float, idle: IdleWatch
) -> dict[str, Any]:
    """A live bar on a terminal until the workflow ends; returns its last state."""
    changes = Changes(server, wf["id"], interval)
    wf = fetch(server, wf["id"])  # after the stream opened: no move is missed in between
    with progress(console) as bar:
        task = bar.add_task(f"workflow {wf['id']}", total=wf["total"] or 1, tally="")
        while True:
            t = Tally.of(wf["counts"])
            bar.update(task, completed=t.done, tally=t.markup())
            idle.see(t)
            if wf["status"] != "R":
                return wf
            if changes.wait(interval):
                wf = fetch(server, wf["id"])


def _follow_plain(
    server: Server, wf: dict[str, Any], console: Console, interval: float, idle: IdleWatch
) -> dict[str, Any]:
    """One progress line every few seconds (a log, a pipe) until the workflow ends."""
    changes = Changes(server, wf["id"], interval)
    wf = fetch(server, wf["id"])
    printed: Tally | None = None
    printed_at = 0.0
    while True:
        t = Tally.of(wf["counts"])
        now = time.monotonic()
        ended = wf["status"] != "R"
        due = now - printed_at >= (LINE_EVERY if t != printed else LINE_AT_LEAST)
        if ended or due:
            typer.echo(f"workflow {wf['id']}: {t.line()}", nl=True)
            printed, printed_at = t, now
        idle.see(t)
        if ended:
            typer.echo(f"workflow {wf['id']}: {wf.get('status_name', wf['status'])}")
            return wf
        if changes.wait(interval):
            wf = fetch(server, wf["id"])
