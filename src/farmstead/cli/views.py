"""How the CLI shows workflows and tasks to people: tallies, colours, tables, JSON."""

import json
from dataclasses import dataclass
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from farmstead.fsm import TaskStatus

T = TaskStatus
#: Tasks that an executor has claimed and not yet reported on.
CLAIMED = frozenset({T.INSTANTIATING, T.LAUNCHED, T.RUNNING})
#: The usual meanings: green done, red failed, yellow running, blue a workflow going on.
WORKFLOW_STYLE = {"R": "blue", "D": "green", "F": "red", "C": "magenta"}
TASK_STYLE = {
    T.DONE: "green",
    T.ERROR_FATAL: "red",
    T.BLOCKED: "red",
    T.HELD: "bright_black",
    T.ERROR_RECOVERABLE: "dark_orange",
    T.ADJUSTING_RESOURCES: "dark_orange",
    **{s: "yellow" for s in CLAIMED},
}
INSTANCE_STYLE = {"D": "green", "F": "red", "R": "yellow", "O": "yellow", "I": "yellow"}


@dataclass(frozen=True)
class Tally:
    """A workflow's tasks in piles: done, failed, claimed (running), waiting (queued, or held
    for upstream tasks), and blocked by a failed upstream task (shown when there are any)."""

    total: int
    done: int
    failed: int
    running: int
    waiting: int
    blocked: int = 0

    @classmethod
    def of(cls, counts: dict[str, int]) -> "Tally":
        """From the API's counts by task status letter."""
        done, failed = counts.get(T.DONE, 0), counts.get(T.ERROR_FATAL, 0)
        blocked = counts.get(T.BLOCKED, 0)
        running = sum(n for s, n in counts.items() if s in CLAIMED)
        total = sum(counts.values())
        waiting = total - done - failed - running - blocked
        return cls(total, done, failed, running, waiting, blocked)

    def line(self) -> str:
        """`120/1000 done, 2 failed, 40 running, 838 waiting` (`, 5 blocked`)."""
        return (
            f"{self.done}/{self.total} done, {self.failed} failed, "
            f"{self.running} running, {self.waiting} waiting"
            + (f", {self.blocked} blocked" if self.blocked else "")
        )

    def markup(self) -> str:
        """The same, coloured for a terminal."""
        return (
            f"[green]{self.done} done[/] [red]{self.failed} failed[/] "
            f"[yellow]{self.running} running[/] {self.waiting} waiting"
            + (f" [red]{self.blocked} blocked[/]" if self.blocked else "")
        )


def print_json(data: Any) -> None:
    """The API's JSON, indented, on stdout (for scripts)."""
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False))


def task_status_name(letter: str) -> str:
    """`ERROR_FATAL (F)`; an unknown letter as it is."""
    try:
        return f"{TaskStatus(letter).name} ({letter})"
    except ValueError:
        return letter


def styled(text: str, style: str | None) -> Text:
    """Text with a style; never parsed as markup (names and errors come from users)."""
    return Text(text, style=style or "")


def workflow_status(wf: dict[str, Any]) -> Text:
    """The workflow's status name in its colour."""
    return styled(str(wf.get("status_name", wf["status"])), WORKFLOW_STYLE.get(wf["status"]))


def counts_table(wf: dict[str, Any]) -> Table:
    """A workflow's tasks by status, titled with its status and percent done."""
    title = Text(f"workflow {wf['id']} ({wf['name']}): ")
    title.append_text(workflow_status(wf))
    title.append(f", {wf['percent_done']:.1f}% done")
    table = Table("status", "tasks", title=title)
    for letter, n in sorted(wf["counts"].items()):
        table.add_row(styled(task_status_name(letter), TASK_STYLE.get(letter)), str(n))
    return table


def workflows_table(rows: list[dict[str, Any]]) -> Table:
    """One line per workflow."""
    table = Table("id", "name", "status", "done", "failed", "running", "waiting", "created")
    for wf in rows:
        t = Tally.of(wf["counts"])
        table.add_row(
            str(wf["id"]),
            Text(wf["name"]),
            workflow_status(wf),
            f"{t.done}/{t.total}",
            styled(str(t.failed), "red" if t.failed else None),
            str(t.running),
            str(t.waiting),
            str(wf["created_date"])[:16].replace("T", " "),
        )
    return table


def progress(console: Console) -> Progress:
    """The live bar of `status --watch`: green as tasks finish, counts coloured beside it."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(complete_style="green", finished_style="bold green", pulse_style="yellow"),
        TaskProgressColumn(),
        TextColumn("{task.fields[tally]}"),
        TimeElapsedColumn(),
        console=console,
    )


def first_line(text: str | None, width: int = 80) -> str:
    """The first line of `text`, cut to `width` characters."""
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return line if len(line) <= width else line[: width - 1] + "…"
