"""The small process between an executor and a task's command (run as a script, stdlib only).

`python -I -S launcher.py REPORT_FD GRACE SHELL COMMAND`. It forks the command, waits for it
and writes the command's own wait status and usage (wait4) as JSON to REPORT_FD.

Why it exists: a process forked from the server inherits the server's resident size as its
maxrss (Linux keeps the pre-exec high-water mark), so the server cannot measure a command it
forks itself. Forked from this small process instead, the command's maxrss is its own (with a
floor of this process's few MB). It also ends the command's process group when its parent dies
(PR_SET_PDEATHSIG): SIGTERM, then SIGKILL after GRACE seconds, so a killed server or worker
leaves nothing running. It ignores SIGTERM/SIGINT/SIGHUP sent to the group (the command gets
them) so it can still report the command's end.
"""

import contextlib
import os
import signal
import sys


def _ignore(signum: int, frame: object) -> None:
    """The group's SIGTERM/SIGINT/SIGHUP are for the command; this process reports its end."""


def main() -> None:
    """Fork the command, wait for it, report its status and usage."""
    report_fd, grace, shell, command = int(sys.argv[1]), float(sys.argv[2]), *sys.argv[3:5]
    parent = os.getppid()
    os.set_inheritable(report_fd, False)  # the command must not hold the report pipe open
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _ignore)
    pid = os.fork()
    if pid == 0:
        for sig in (signal.SIGPIPE, signal.SIGXFSZ):  # Python ignores them; a command must not
            signal.signal(sig, signal.SIG_DFL)
        try:
            os.execve(shell, [shell, "-c", command], os.environ)
        finally:
            os._exit(127)

    def parent_died(signum: int, frame: object) -> None:
        with contextlib.suppress(OSError):
            os.killpg(0, signal.SIGTERM)
        signal.signal(signal.SIGALRM, lambda s, f: os.killpg(0, signal.SIGKILL))
        signal.setitimer(signal.ITIMER_REAL, max(grace, 0.01))

    signal.signal(signal.SIGUSR1, parent_died)
    _die_with_parent(signal.SIGUSR1)
    if os.getppid() != parent:  # the parent died before the request took effect
        parent_died(signal.SIGUSR1, None)
    _, status, usage = os.wait4(pid, 0)
    import json  # after the fork: nothing imported before it weighs on the command's maxrss

    report = {
        "status": status,
        "maxrss": usage.ru_maxrss * 1024,
        "cpu": usage.ru_utime + usage.ru_stime,
        "io": (usage.ru_inblock + usage.ru_oublock) * 512,
    }
    os.write(report_fd, json.dumps(report).encode())
    os.close(report_fd)


def _die_with_parent(sig: int) -> None:
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, sig)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


if __name__ == "__main__":
    main()
