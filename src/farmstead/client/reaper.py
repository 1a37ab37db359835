"""What the local executor leaves on disk and how it ends process trees.

The executor records each running command's process group (group id, the leader's start time,
the instance) in a small JSON state file. If the server is killed (kill -9, a crash), the
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
from dataclasses import asdict, dataclass
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
    """The executor's records of running process groups, rewritten atomically on each change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: dict[int, Record] = {}

    def load(self) -> list[Record]:
        """The records a previous run left (an unreadable file counts as none)."""
        try:
            raw = json.loads(self.path.read_text())
            return [Record(**r) for r in raw]
        except (OSError, ValueError, TypeError):
            return []

    def add(self, ti_id: int, pid: int) -> None:
        """Record the group led by `pid` (just started) for `ti_id`."""
        try:
            start = psutil.Process(pid).create_time()
        except psutil.Error:
            return  # already gone: nothing to reap later
        self.records[ti_id] = Record(ti_id, pid, start)
        self._save()

    def remove(self, ti_id: int) -> None:
        """Forget `ti_id`: its command ended and was reported."""
        if self.records.pop(ti_id, None) is not None:
            self._save()

    def clear(self) -> None:
        """Forget everything (after the leftovers were reaped and reported)."""
        self.records.clear()
        self._save()

    def _save(self) -> None:
        try:
            if not self.records:  # nothing running: leave no file behind
                self.path.unlink(missing_ok=True)
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps([asdict(r) for r in self.records.values()]))
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("cannot write the executor state file %s: %s", self.path, exc)


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
