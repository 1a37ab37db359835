"""A private, throw-away PostgreSQL server for tests that stop or break their database.

The shared PostgreSQL (127.0.0.1:5432) belongs to the developer: a test that stops a database
server stops one of its own. `private_cluster()` runs initdb in a new temporary directory and
starts `postgres` on a free port of 127.0.0.1, with its unix socket in that directory and trust
auth; on exit (also when the test failed) it stops the server and deletes the directory.

The binaries are found at run time: `pg_config --bindir`, then `pg_ctl` on PATH, then the
Debian layout (/usr/lib/postgresql/<version>/bin, newest first).

PostgreSQL refuses to run as root. When the tests run as root, the cluster is run as the
`nobody` account (it exists on every Linux and owns nothing, so this server cannot touch any
other server's files or processes); nothing is created on the machine but the temporary
directory, which is handed to that account and removed at the end.
"""

import contextlib
import glob
import os
import pwd
import shlex
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

UNPRIVILEGED_USER = "nobody"
_TOOLS = ("initdb", "pg_ctl", "postgres")


def find_bindir() -> Path | None:
    """The directory holding initdb, pg_ctl and postgres (None if PostgreSQL's server is not
    installed)."""
    candidates: list[str] = []
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True,
                             check=True, timeout=10).stdout.strip()
        candidates.append(out)
    if pg_ctl := shutil.which("pg_ctl"):
        candidates.append(str(Path(pg_ctl).resolve().parent))
    debian = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += sorted(debian, key=lambda p: int(Path(p).parent.name)
                         if Path(p).parent.name.isdigit() else 0, reverse=True)
    for candidate in candidates:
        if candidate and all((Path(candidate) / tool).is_file() for tool in _TOOLS):
            return Path(candidate)
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateCluster:
    """One PostgreSQL server in `root` (a directory this object owns), on its own port."""

    def __init__(self, bindir: Path, root: Path) -> None:
        self.bindir = bindir
        self.root = root
        self.data = root / "data"
        self.log = root / "server.log"
        self.port = _free_port()
        self._as: dict[str, Any] = {}
        if os.geteuid() == 0:
            try:
                account = pwd.getpwnam(UNPRIVILEGED_USER)
            except KeyError:
                raise RuntimeError(f"PostgreSQL does not run as root, and there is no account "
                                   f"{UNPRIVILEGED_USER!r} to run it as") from None
            os.chown(root, account.pw_uid, account.pw_gid)
            self._as = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
        # nothing of the caller's PostgreSQL environment may steer these commands elsewhere
        self._env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}

    def url(self, database: str = "postgres") -> str:
        """An asyncpg URL for `database` on this server, as the superuser `postgres`."""
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, tool: str, *args: str, check: bool = True) -> None:
        result = subprocess.run([str(self.bindir / tool), *args], capture_output=True,
                                text=True, timeout=120, check=False, cwd=self.root,
                                env=self._env, **self._as)
        if check and result.returncode != 0:
            log = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{tool} {' '.join(args)} failed ({result.returncode}):\n"
                               f"{result.stdout}{result.stderr}{log}")

    def init(self) -> None:
        """Create the cluster: superuser `postgres`, trust auth, no fsync (it is thrown away)."""
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust",
                  "-E", "UTF8", "--locale=C", "--no-sync")

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        options = (f"-p {self.port} -k {shlex.quote(str(self.root))} "
                   "-c listen_addresses=127.0.0.1 -c fsync=off")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options,
                  "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (fast: end the sessions, then shut down cleanly)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def running(self) -> bool:
        """Whether the server is up."""
        result = subprocess.run([str(self.bindir / "pg_ctl"), "-D", str(self.data), "status"],
                                capture_output=True, check=False, env=self._env, **self._as)
        return result.returncode == 0


@contextlib.contextmanager
def private_cluster(bindir: Path) -> Iterator[PrivateCluster]:
    """A started private cluster; stopped and deleted on exit, whatever happened."""
    root = Path(tempfile.mkdtemp(prefix="farmstead-pg-"))
    try:
        cluster = PrivateCluster(bindir, root)
        cluster.init()
        cluster.start()
        try:
            yield cluster
        finally:
            if cluster.running():
                cluster.stop("immediate")
    finally:
        shutil.rmtree(root, ignore_errors=True)
