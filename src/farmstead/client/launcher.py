"""The small process that starts an executor's commands (run as a script, stdlib only).

`python -I -S launcher.py SOCKET_FD LIFELINE_FD` serves one executor (or worker) process: it
reads launch requests from a Unix socket and forks, for each, a *launcher*: a copy of itself
that starts a new session, forks the command (`SHELL -c COMMAND`), waits for it and writes the
command's own wait status and usage (wait4) as JSON to the request's report pipe.

Why it exists: a process forked from the server inherits the server's resident size as its
maxrss (Linux keeps the pre-exec high-water mark), so the server cannot measure a command it
forks itself. Forked from this small process instead, the command's maxrss is its own (with a
floor of this process's few MB). And it is started once: a fork of a small process costs about a
millisecond where starting a Python interpreter per command cost twenty.

Dying with the executor: LIFELINE_FD is the read end of a pipe whose write end only the
executor's process holds. Each launcher waits for its command *or* the end of that pipe: when
the executor's process ends (however it ends), the launcher ends the command's process group
(SIGTERM, then SIGKILL after the request's grace). The launchers do not depend on this server
process: it may die or be replaced without touching a running command. A launcher ignores
SIGTERM/SIGINT/SIGHUP sent to the group (the command gets them) so it can still report.

The protocol (SOCK_SEQPACKET, one message each way per command): the request is JSON
`{"shell", "command", "env", "grace"}` with the descriptors [stdout, stderr, report] attached;
the answer is `{"pid": N}` with a pidfd of the launcher attached (the launcher's process group
exists by then), or `{"error": "..."}`.
"""

import contextlib
import json
import os
import select
import signal
import socket
import sys

#: the largest request read (a command and its environment)
MAX_REQUEST = 1 << 20


def _ignore(signum: int, frame: object) -> None:
    """The group's SIGTERM/SIGINT/SIGHUP are for the command; the launcher reports its end."""


def serve(sock: socket.socket, lifeline: int) -> None:
    """Fork a launcher per request until the executor's end of the socket closes."""
    sock.settimeout(1.0)  # wake up now and then to reap launchers that ended
    while True:
        _reap()
        try:
            msg, fds, _, _ = socket.recv_fds(sock, MAX_REQUEST, 3)
        except TimeoutError:
            continue
        except OSError:
            return
        if not msg:
            return  # the executor's process is gone
        answer: dict[str, object]
        pidfd = None
        try:
            answer, pidfd = _fork(sock, json.loads(msg), fds, lifeline)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            for fd in fds:
                os.close(fd)
        try:
            socket.send_fds(sock, [json.dumps(answer).encode()], [] if pidfd is None else [pidfd])
        except OSError:
            return
        finally:
            if pidfd is not None:
                os.close(pidfd)


def _reap() -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


def _fork(
    sock: socket.socket, req: dict[str, object], fds: list[int], lifeline: int
) -> tuple[dict[str, object], int]:
    """Fork a launcher for `req`; its pid and a pidfd, once its session exists."""
    out, err, report = fds
    shell, command, env = str(req["shell"]), str(req["command"]), req["env"]
    grace = float(req["grace"])  # type: ignore[arg-type]
    if not isinstance(env, dict):
        raise TypeError("env is not an object")
    ready_r, ready_w = os.pipe()
    try:
        pid = os.fork()
    except OSError:
        os.close(ready_r)
        os.close(ready_w)
        raise
    if pid == 0:  # the launcher
        try:
            sock.close()
            os.close(ready_r)
            os.setsid()
            os.close(ready_w)  # its session (and process group) exists now
            os.dup2(out, 1)
            os.dup2(err, 2)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            for fd in (null, out, err):
                os.close(fd)
            os.set_inheritable(report, False)  # the command must not hold the report pipe
            environ = {str(k): str(v) for k, v in env.items()}
            launch(report, grace, shell, command, environ, lifeline)
        finally:
            os._exit(127)
    os.close(ready_w)
    os.read(ready_r, 1)  # end-of-file once the launcher made its session (or died)
    os.close(ready_r)
    return {"pid": pid}, os.pidfd_open(pid)


def launch(
    report_fd: int, grace: float, shell: str, command: str, env: dict[str, str], lifeline: int
) -> None:
    """Fork the command, wait for it (or for the executor's end), report its status and usage."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _ignore)
    pid = os.fork()
    if pid == 0:
        for sig in (signal.SIGPIPE, signal.SIGXFSZ):  # Python ignores them; a command must not
            signal.signal(sig, signal.SIG_DFL)
        try:
            os.execve(shell, [shell, "-c", command], env)
        finally:
            os._exit(127)
    ended = os.pidfd_open(pid)
    ready, _, _ = select.select([ended, lifeline], [], [])
    orphaned = ended not in ready
    if orphaned:  # the executor is gone: end the command's group, SIGKILL after the grace
        with contextlib.suppress(OSError):
            os.killpg(0, signal.SIGTERM)
        if not select.select([ended], [], [], max(grace, 0.01))[0]:
            with contextlib.suppress(OSError):
                os.killpg(0, signal.SIGKILL)
    _, status, usage = os.wait4(pid, 0)
    if orphaned:  # and whatever the command left running in its group
        with contextlib.suppress(OSError):
            os.killpg(0, signal.SIGKILL)
    report = {
        "status": status,
        "maxrss": usage.ru_maxrss * 1024,
        "cpu": usage.ru_utime + usage.ru_stime,
        "io": (usage.ru_inblock + usage.ru_oublock) * 512,
    }
    with contextlib.suppress(OSError):  # nobody may be left to read it
        os.write(report_fd, json.dumps(report).encode())
    os.close(report_fd)


def main() -> None:
    sock = socket.socket(fileno=int(sys.argv[1]))
    lifeline = int(sys.argv[2])
    os.set_inheritable(lifeline, False)  # launchers are forks: no command inherits it
    serve(sock, lifeline)


if __name__ == "__main__":
    main()
