"""One command in its own process group: output streamed to files with tails kept, usage
measured by wait4 in the launcher (this command's own max RSS and CPU), memory and time limits
enforced."""

import asyncio
import contextlib
import json
import os
import signal
import socket
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


class Launcher:
    """This process's launcher server (launcher.py), started on first use and kept.

    Each command is a fork of that small process (see launcher.py for why). Requests go one at
    a time; the loop waits for each answer (the server forks meanwhile) without blocking. A
    launcher server that died is started again for the next command."""

    def __init__(self) -> None:
        self._lock: asyncio.Lock | None = None
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._owner = 0  # the pid that started it (a forked child starts its own)
        self._lifeline: tuple[int, int] | None = None

    async def launch(
        self, command: str, env: dict[str, str], fds: list[int], grace: float
    ) -> tuple[int, int]:
        """Start `command` with stdout, stderr, report = `fds`; its launcher's pid and pidfd."""
        msg = json.dumps({"shell": SHELL, "command": command, "env": env, "grace": grace}).encode()
        if self._lock is None or self._owner != os.getpid():
            self._lock = asyncio.Lock()
        async with self._lock:
            for attempt in (1, 2):
                sock = self._connected()
                try:
                    answer, got = await self._ask(sock, msg, fds)
                except OSError:
                    answer, got = b"", []
                except asyncio.CancelledError:
                    self._close()  # its answer may come later: never read it as another's
                    raise
                if answer:
                    break
                self._close()  # it died (or hung): start a new one, once
                if attempt == 2:
                    raise OSError("the launcher process does not answer")
        reply = json.loads(answer)
        if "error" in reply:
            for fd in got:
                os.close(fd)
            raise OSError(f"could not start the command: {reply['error']}")
        return int(reply["pid"]), got[0]

    @staticmethod
    async def _ask(sock: socket.socket, msg: bytes, fds: list[int]) -> tuple[bytes, list[int]]:
        socket.send_fds(sock, [msg], fds)  # a datagram: sent whole or refused
        loop = asyncio.get_running_loop()
        readable: asyncio.Future[None] = loop.create_future()
        loop.add_reader(sock.fileno(), _set_once, readable)
        try:
            await asyncio.wait_for(readable, timeout=30)
        finally:
            loop.remove_reader(sock.fileno())
        answer, got, _, _ = socket.recv_fds(sock, 4096, 1)
        return answer, got

    def _connected(self) -> socket.socket:
        if self._sock is not None and self._owner == os.getpid():
            return self._sock
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        if self._lifeline is None or self._owner != os.getpid():
            # kept open by this process alone, for its life: its end tells every launcher
            self._lifeline = os.pipe()
        life_r = self._lifeline[0]
        try:
            # its own session: a Ctrl-C at the terminal is for the executor, not for it
            self._proc = subprocess.Popen(
                [*LAUNCHER, str(theirs.fileno()), str(life_r)],
                pass_fds=(theirs.fileno(), life_r),
                start_new_session=True,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
            )
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        mine.setblocking(False)
        self._sock, self._owner = mine, os.getpid()
        return mine

    def _close(self) -> None:
        """Let go of a launcher server that died or does not answer (what it started goes on)."""
        if self._sock is not None:
            self._sock.close()
        if self._proc is not None and self._owner == os.getpid():
            with contextlib.suppress(OSError):
                self._proc.kill()
            self._proc.wait()
        self._sock = self._proc = None


#: one per process
LAUNCHER_SERVER = Launcher()


@dataclass
class Command:
    """A running command (its launcher's pid leads its process group)."""

    pid: int
    pidfd: int
    exited: "asyncio.Future[None]"
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
        """Start `command` under a launcher, in a new session (its process group).

        Raises OSError (nothing started) if a log file cannot be opened or the launcher cannot
        fork. `grace`: if this process dies, the launcher SIGTERMs the group, then SIGKILLs it
        `grace` s later."""
        out = Tail(stdout)
        try:
            err = Tail(stderr)
        except OSError:
            out.close()
            raise
        pipes = [os.pipe(), os.pipe(), os.pipe()]  # stdout, stderr, report
        try:
            pid, pidfd = await LAUNCHER_SERVER.launch(command, env, [w for _, w in pipes], grace)
        except BaseException:
            for r, _ in pipes:
                os.close(r)
            out.close()
            err.close()
            raise
        finally:
            for _, w in pipes:
                os.close(w)
        loop = asyncio.get_running_loop()
        exited: asyncio.Future[None] = loop.create_future()
        loop.add_reader(pidfd, _set_once, exited)
        cmd = cls(pid, pidfd, exited, time.monotonic(), out, err, pipes[2][0])
        cmd.pumps = [
            asyncio.create_task(_pump(pipes[0][0], cmd.stdout)),
            asyncio.create_task(_pump(pipes[1][0], cmd.stderr)),
        ]
        return cmd

    def signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

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
        while not self.exited.done():
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
        """Wait for the command without blocking the loop; its usage as the launcher measured
        it with wait4."""
        try:
            await self.exited
        finally:
            loop = asyncio.get_running_loop()
            loop.remove_reader(self.pidfd)
            os.close(self.pidfd)
        report = _read_report(self.report_fd)
        if report is None:  # the launcher itself was killed (it ignores the group's SIGTERM)
            returncode = -signal.SIGKILL
        else:
            returncode = os.waitstatus_to_exitcode(int(report["status"]))
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


async def _pump(fd: int, tail: Tail) -> None:
    loop = asyncio.get_running_loop()
    pipe = open(fd, "rb", buffering=0)  # noqa: SIM115 - the transport closes it
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
    try:
        while data := await reader.read(65536):
            tail.feed(data)
    finally:
        transport.close()


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
