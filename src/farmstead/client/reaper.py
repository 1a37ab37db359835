"""What the local executor leaves on disk and how it ends process trees.

The executor records each running command's process group (group id, the leader's start time,
the instance) in a small state file (JSON lines). If the server is killed (kill -9, a crash), the
commands' launchers end their groups when they see their parent die; a restarted executor reads
the file, ends whatever is left of those groups (checking they are still the same processes:
the leader's start time, or the instance id in their environment), and reports each instance
so it is retried at once. Commands also carry `FARMSTEAD_EXECUTOR_KEY` in their environment,
which finds a command that left its group (setsid, a daemon).
"""

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

log = logging.getLogger("farmstead.executor")
KEY_ENV = "FARMSTEAD_EXECUTOR_KEY"
TI_ENV = "FARMSTEAD_TASK_INSTANCE_ID"


@dataclass(frozen=True)
class Record:
    """One running command (or worker process) of an instance."""

    task_instance_id: int
    pgid: int
    start: float  # the group leader's start time (psutil create_time)


class StateFile:
    """The executor's records of running process groups: a journal of one JSON line per change
    (`[ti, pgid, start]` added, `ti` removed), appended with one write each (a rename per change
    cost more than the rest of a short task's bookkeeping) and rewritten whole, atomically, when
    it has grown to several times what it holds. A torn last line (a crash in a write) is
    skipped when read. No file is left once nothing runs."""

    #: rewrite once the journal holds this many lines more than there are records
    COMPACT_AFTER = 1000

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: dict[int, Record] = {}
        self._fd: int | None = None
        self._lines = 0

    def load(self) -> list[Record]:
        """The records a previous run left (unreadable lines count as none)."""
        try:
            text = self.path.read_text()
        except OSError:
            return []
        found: dict[int, Record] = {}
        for line in text.splitlines():
            try:
                item = json.loads(line)
                if isinstance(item, list):
                    found[int(item[0])] = Record(int(item[0]), int(item[1]), float(item[2]))
                else:
                    found.pop(int(item), None)
            except (ValueError, TypeError, IndexError):
                continue
        return list(found.values())

    def add(self, ti_id: int, pid: int) -> None:
        """Record the group led by `pid` (just started) for `ti_id`."""
        try:
            start = psutil.Process(pid).create_time()
        except psutil.Error:
            return  # already gone: nothing to reap later
        self.records[ti_id] = Record(ti_id, pid, start)
        self._append([ti_id, pid, start])

    def remove(self, ti_id: int) -> None:
        """Forget `ti_id`: its command ended and was reported."""
        if self.records.pop(ti_id, None) is None:
            return
        if not self.records:  # nothing running: leave no file behind
            self.clear()
        else:
            self._append(ti_id)

    def clear(self) -> None:
        """Forget everything (after the leftovers were reaped and reported)."""
        self.records.clear()
        self._close()
        try:
            self.path.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("cannot remove the executor state file %s: %s", self.path, exc)

    def _append(self, item: object) -> None:
        try:
            if self._fd is None or self._lines > self.COMPACT_AFTER + 4 * len(self.records):
                self._rewrite()
            else:
                os.write(self._fd, json.dumps(item).encode() + b"\n")
                self._lines += 1
        except OSError as exc:
            log.warning("cannot write the executor state file %s: %s", self.path, exc)

    def _rewrite(self) -> None:
        """The journal anew, holding the records alone (written aside, then renamed)."""
        self._close()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        lines = [json.dumps([r.task_instance_id, r.pgid, r.start]) for r in self.records.values()]
        tmp.write_text("".join(line + "\n" for line in lines))
        os.replace(tmp, self.path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        self._lines = len(lines)

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _leftovers(records: list[Record], key: str) -> list[psutil.Process]:
    """Processes that belong to `records`: in a recorded group whose leader is still the same
    process, or carrying the executor key and a recorded instance id in their environment."""
    groups = {r.pgid: r for r in records}
    same_leader = set()
    for r in records:
        with contextlib.suppress(psutil.Error):
            if abs(psutil.Process(r.pgid).create_time() - r.start) < 0.01:
                same_leader.add(r.pgid)
    wanted = {str(r.task_instance_id) for r in records}
    found = []
    me = os.getpid()
    for proc in psutil.process_iter():
        if proc.pid == me:
            continue
        try:
            if os.getpgid(proc.pid) in same_leader:
                found.append(proc)
                continue
            if os.getpgid(proc.pid) not in groups and not key:
                continue
            env = proc.environ()
        except (psutil.Error, OSError):
            continue
        if env.get(TI_ENV) in wanted and (not key or env.get(KEY_ENV) == key):
            found.append(proc)
    return found


def reap(records: list[Record], key: str, grace: float) -> int:
    """End every process left by `records`: SIGTERM, SIGKILL after `grace`. How many were found.

    Blocking (it sleeps): run it in a thread."""
    total = 0
    for _round in range(3):  # a shell may fork while it is being stopped: look again
        procs = _leftovers(records, key)
        if not procs:
            break
        total += len(procs)
        log.warning(
            "ending %s process(es) left by an earlier run of this executor: %s",
            len(procs),
            ", ".join(str(p.pid) for p in procs[:20]),
        )
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.terminate()
        _, alive = psutil.wait_procs(procs, timeout=grace)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(alive, timeout=5)
    return total


async def end_tree(pid: int, grace: float) -> None:
    """End process `pid` and everything under it, group by group: SIGTERM, then SIGKILL once
    everything under it ended or after `grace` seconds. For a worker process whose command
    runs in a session of its own."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return
    groups = set()
    for proc in procs:
        with contextlib.suppress(OSError):
            groups.add(os.getpgid(proc.pid))
    _signal(groups, procs, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_running(p) for p in procs[1:]):
        await asyncio.sleep(0.05)
    _signal(groups, procs, signal.SIGKILL)


def _signal(groups: set[int], procs: list[psutil.Process], sig: int) -> None:
    for pgid in groups:
        if pgid not in (0, os.getpgid(0)):  # never our own group
            with contextlib.suppress(OSError):
                os.killpg(pgid, sig)
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(sig)


def _running(proc: psutil.Process) -> bool:
    try:
        return bool(proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False
