"""One command in its own process group: output streamed to files with tails kept, usage
measured by wait4 (this command's own max RSS and CPU), memory and time limits enforced."""

import asyncio
import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import psutil

TAIL_CHARS = 10_000


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
    maxrss: int  # bytes
    cpu: float  # seconds
    io: int  # bytes (block I/O)
    killed_for: str | None = None  # "memory" / "runtime" / "stop", when we killed it
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
    pumps: list[asyncio.Task[None]] = field(default_factory=list)
    killed_for: str | None = None
    detail: str = ""

    @classmethod
    async def start(
        cls, command: str, env: dict[str, str], stdout: Path | None, stderr: Path | None
    ) -> "Command":
        """Start `command`; raises OSError (nothing started) if a log file cannot be opened."""
        out = Tail(stdout)
        try:
            err = Tail(stderr)
        except OSError:
            out.close()
            raise
        proc = subprocess.Popen(
            command,
            shell=True,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        cmd = cls(proc, time.monotonic(), out, err)
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
        """SIGTERM the group, then SIGKILL after `grace` seconds."""
        if self.killed_for is None:
            self.killed_for, self.detail = reason, detail
        self.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and self.proc.returncode is None and _alive(self.pid):
            await asyncio.sleep(0.05)
        self.signal_group(signal.SIGKILL)

    def check_limits(self, limits: Limits) -> tuple[str, str] | None:
        """("memory" | "runtime", why) if the command went over a limit."""
        elapsed = time.monotonic() - self.started
        if limits.runtime is not None and elapsed > limits.runtime:
            return "runtime", f"ran {elapsed:.1f} s, over the runtime limit of {limits.runtime:g} s"
        if limits.memory_bytes is not None:
            rss = _tree_rss(self.pid)
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
        _, status, usage = os.wait4(self.pid, 0)
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
        return Exit(
            returncode,
            wallclock,
            usage.ru_maxrss * 1024,
            usage.ru_utime + usage.ru_stime,
            (usage.ru_inblock + usage.ru_oublock) * 512,
            self.killed_for,
            self.detail,
        )


def _set_once(future: "asyncio.Future[None]") -> None:
    if not future.done():
        future.set_result(None)


def _die_with_parent() -> None:
    """In the child: be killed when the worker dies, so a lost worker leaves no orphan running."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


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


def _tree_rss(pid: int) -> int:
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total
