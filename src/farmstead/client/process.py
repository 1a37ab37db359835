"""One command in its own process group: output streamed to files with tails kept, usage
measured by wait4 in the launcher (this command's own max RSS and CPU), memory and time limits
enforced."""

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psutil

TAIL_CHARS = 10_000
SHELL = "/bin/sh"
#: how a command is started: under the launcher, a small stdlib-only Python process
LAUNCHER = [sys.executable, "-I", "-S", str(Path(__file__).with_name("launcher.py"))]


class Tail:
    """The last TAIL_CHARS characters of a stream, and its log file if there is one."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.chunks: deque[str] = deque()
        self.size = 0
        self.file: IO[bytes] | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.file = open(path, "ab")  # noqa: SIM115 - closed in close()

    def feed(self, data: bytes) -> None:
        if self.file is not None:
            self.file.write(data)
            self.file.flush()
        text = data.decode(errors="replace")
        self.chunks.append(text)
        self.size += len(text)
        while self.size - len(self.chunks[0]) >= TAIL_CHARS:
            self.size -= len(self.chunks.popleft())

    @property
    def text(self) -> str:
        return "".join(self.chunks)[-TAIL_CHARS:]

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


@dataclass
class Exit:
    """How the command ended, and what it used."""

    returncode: int  # negative: killed by that signal
    wallclock: float
    maxrss: int | None  # bytes: the command's own peak (None: unknown, the launcher was killed)
    cpu: float | None  # seconds
    io: int | None  # bytes (block I/O)
    killed_for: str | None = None  # "memory" / "runtime" / "stop" / "shutdown": why we killed it
    detail: str = ""

    @property
    def exit_code(self) -> int:
        """A shell-style exit code: 128 + signal when killed."""
        return 128 - self.returncode if self.returncode < 0 else self.returncode


@dataclass
class Limits:
    """Resource limits from the instance's resources (memory in GB, runtime in seconds)."""

    memory_bytes: int | None = None
    runtime: float | None = None

    @classmethod
    def from_resources(cls, resources: dict[str, object] | None) -> "Limits":
        res = resources or {}
        mem, rt = res.get("memory"), res.get("runtime")
        return cls(
            int(float(mem) * 1024**3) if isinstance(mem, int | float) and mem > 0 else None,
            float(rt) if isinstance(rt, int | float) and rt > 0 else None,
        )


@dataclass
class Command:
    """A running command."""

    proc: subprocess.Popen[bytes]
    started: float
    stdout: Tail
    stderr: Tail
    report_fd: int
    pumps: list[asyncio.Task[None]] = field(default_factory=list)
    killed_for: str | None = None
    detail: str = ""

    @classmethod
    async def start(
        cls,
        command: str,
        env: dict[str, str],
        stdout: Path | None,
        stderr: Path | None,
        grace: float = 10.0,
    ) -> "Command":
        """Start `command` under the launcher, in a new session (its process group).

        Raises OSError (nothing started) if a log file cannot be opened. `grace`: if this
        process dies, the launcher SIGTERMs the group, then SIGKILLs it `grace` s later."""
        out = Tail(stdout)
        try:
            err = Tail(stderr)
        except OSError:
            out.close()
            raise
        report_r, report_w = os.pipe()
        try:
            proc = subprocess.Popen(
                [*LAUNCHER, str(report_w), str(grace), SHELL, command],
                env=env,
                start_new_session=True,
                pass_fds=(report_w,),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        except BaseException:
            os.close(report_r)
            out.close()
            err.close()
            raise
        finally:
            os.close(report_w)
        cmd = cls(proc, time.monotonic(), out, err, report_r)
        assert proc.stdout is not None and proc.stderr is not None
        cmd.pumps = [
            asyncio.create_task(_pump(proc.stdout, cmd.stdout)),
            asyncio.create_task(_pump(proc.stderr, cmd.stderr)),
        ]
        return cmd

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    async def stop(self, reason: str, detail: str, grace: float) -> None:
        """SIGTERM the group, then SIGKILL the command's processes after `grace` seconds.

        The launcher outlives the SIGKILL of its command for a moment, to report its usage.
        A stop while another is under way does nothing more."""
        if self.killed_for is not None:
            return
        self.killed_for, self.detail = reason, detail
        self.signal_group(signal.SIGTERM)
        if await self._ended_within(grace):
            return
        for proc in _descendants(self.pid):
            with contextlib.suppress(psutil.Error):
                proc.kill()
        if not await self._ended_within(1.0):
            self.signal_group(signal.SIGKILL)

    async def _ended_within(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while self.proc.returncode is None and _alive(self.pid):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    def check_limits(self, limits: Limits) -> tuple[str, str] | None:
        """("memory" | "runtime", why) if the command went over a limit."""
        elapsed = time.monotonic() - self.started
        if limits.runtime is not None and elapsed > limits.runtime:
            return "runtime", f"ran {elapsed:.1f} s, over the runtime limit of {limits.runtime:g} s"
        if limits.memory_bytes is not None:
            rss = _tree_rss(self.pid)  # the launcher's few MB are not the command's
            if rss > limits.memory_bytes:
                return "memory", (
                    f"used {rss / 1024**2:.0f} MiB, over the memory limit of "
                    f"{limits.memory_bytes / 1024**2:.0f} MiB"
                )
        return None

    async def wait(self) -> Exit:
        """Wait for the command without blocking the loop; measure it with wait4."""
        loop = asyncio.get_running_loop()
        pidfd = os.pidfd_open(self.pid)
        exited: asyncio.Future[None] = loop.create_future()
        loop.add_reader(pidfd, _set_once, exited)
        try:
            await exited
        finally:
            loop.remove_reader(pidfd)
            os.close(pidfd)
        _, status, _usage = os.wait4(self.pid, 0)  # the launcher's: its size is the server's
        report = _read_report(self.report_fd)
        if report is not None:
            status = int(report["status"])
        returncode = os.waitstatus_to_exitcode(status)
        self.proc.returncode = returncode  # we reaped it: keep Popen from warning
        wallclock = time.monotonic() - self.started
        # the group may linger (a background child holding the pipes): stop it
        self.signal_group(signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*self.pumps), timeout=5)
        for pump in self.pumps:
            pump.cancel()
        self.stdout.close()
        self.stderr.close()
        if report is None:  # the launcher was killed: the command's usage is unknown
            return Exit(returncode, wallclock, None, None, None, self.killed_for, self.detail)
        return Exit(
            returncode,
            wallclock,
            int(report["maxrss"]),
            float(report["cpu"]),
            int(report["io"]),
            self.killed_for,
            self.detail,
        )


def _read_report(fd: int) -> dict[str, Any] | None:
    """The launcher's JSON report (None if it died before writing one)."""
    chunks = []
    try:
        os.set_blocking(fd, False)
        while data := os.read(fd, 65536):
            chunks.append(data)
    except BlockingIOError:
        pass  # a writer still holds the pipe open: take what is there
    finally:
        os.close(fd)
    try:
        report = json.loads(b"".join(chunks))
    except ValueError:
        return None
    return report if isinstance(report, dict) else None


def _set_once(future: "asyncio.Future[None]") -> None:
    if not future.done():
        future.set_result(None)


async def _pump(pipe: IO[bytes], tail: Tail) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
    try:
        while data := await reader.read(65536):
            tail.feed(data)
    finally:
        transport.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return list(psutil.Process(pid).children(recursive=True))
    except psutil.Error:
        return []


def _tree_rss(pid: int) -> int:
    """Resident size of the processes under `pid` (the launcher's own not counted)."""
    total = 0
    for p in _descendants(pid):
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total
