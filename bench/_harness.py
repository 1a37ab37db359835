"""Benchmark harness: fresh databases, a real `farmstead serve` process, CPU accounting, py-spy."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN = os.environ.get("FARMSTEAD_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


# ---- databases ------------------------------------------------------------------------------


async def _pg_admin(sql: str) -> None:
    import asyncpg  # the server's own driver; imported here so SQLite-only runs need no PG

    conn = await asyncpg.connect(PG_ADMIN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextlib.contextmanager
def fresh_database(backend: str, keep: bool) -> Iterator[str]:
    """A new, empty database URL (PostgreSQL: migrated here); removed afterwards unless `keep`."""
    if backend == "sqlite":
        tmp = Path(tempfile.mkdtemp(prefix="farmstead_bench_"))
        try:
            yield f"sqlite+aiosqlite:///{tmp / 'bench.db'}"  # the server creates and migrates it
        finally:
            if keep:
                print(f"  kept {tmp}")
            else:
                shutil.rmtree(tmp, ignore_errors=True)
        return
    name = f"farmstead_bench_{uuid.uuid4().hex[:10]}"
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    url = "postgresql+asyncpg://" + PG_ADMIN.split("://", 1)[1].rsplit("/", 1)[0] + f"/{name}"
    try:
        subprocess.run(
            [sys.executable, "-m", "farmstead.cli.main", "db", "upgrade", "--database-url", url],
            check=True, capture_output=True, cwd=ROOT,
        )
        yield url
    finally:
        if keep:
            print(f"  kept database {name}")
        else:
            _drop(name)


def _drop(name: str, patience: float = 60) -> None:
    """DROP the bench database, waiting a little if PostgreSQL is restarting."""
    deadline = time.monotonic() + patience
    while True:
        try:
            asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            return
        except Exception as exc:  # asyncpg raises many kinds; retry any
            if time.monotonic() > deadline:
                print(f"  could not drop database {name}: {exc}")
                return
            time.sleep(2)


# ---- the server process ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """`python -m farmstead.cli.main serve --port N --workers W` on `db_url`."""

    def __init__(self, db_url: str, workers: int, log_path: Path,
                 env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.host = "127.0.0.1"
        self.url = f"http://{self.host}:{self.port}"
        self.db_url = db_url
        self.workers = workers
        self.log_path = log_path
        self.env = {f"FARMSTEAD_{k.upper()}": str(v) for k, v in (env or {}).items()}
        self.credentials_file = log_path.with_suffix(".credentials.json")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> Server:
        # auth off unless asked (bench_speed's *auth servers measure it); the admin token of a
        # server with auth on is kept beside its log, never in the user's own credentials
        env = {**os.environ, "FARMSTEAD_DATABASE_URL": self.db_url,
               "FARMSTEAD_LOG_LEVEL": "warning", "FARMSTEAD_AUTH": "false",
               "FARMSTEAD_CREDENTIALS_FILE": str(self.credentials_file), **self.env}
        cmd = [sys.executable, "-m", "farmstead.cli.main", "serve", "--port", str(self.port),
               "--workers", str(self.workers)]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         cwd=ROOT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log_path.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                ready = httpx.get(f"{self.url}/ready", timeout=2).status_code == 200
                # every worker process is up (with one worker, uvicorn serves in its parent)
                if ready and (self.workers == 1 or len(self.pids()) > self.workers):
                    time.sleep(1.0)  # let the other workers finish their start-up too
                    return self
            time.sleep(0.2)
        raise RuntimeError(f"server did not start: {self.log_path.read_text()[-3000:]}")

    def pids(self) -> list[int]:
        """The server's own processes: the uvicorn parent and its workers."""
        return process_tree(self.proc)

    def stop(self) -> None:
        stop_process(self.proc)


def process_tree(proc: subprocess.Popen[bytes] | None) -> list[int]:
    """A started process and all its children (none once it has exited)."""
    if proc is None:
        return []
    try:
        parent = psutil.Process(proc.pid)
        return [parent.pid] + [c.pid for c in parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def stop_process(proc: subprocess.Popen[bytes] | None, patience: float = 20) -> None:
    """SIGTERM, then SIGKILL after `patience` seconds; wait for the end."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=patience)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# ---- where the CPU goes ---------------------------------------------------------------------


def cpu_of(pids: list[int]) -> dict[int, float]:
    """CPU seconds used so far by each of `pids` that is still alive."""
    out = {}
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            t = psutil.Process(pid).cpu_times()
            out[pid] = t.user + t.system
    return out


def cpu_used(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds used between two snapshots (a process gone by the second one is lost)."""
    return sum(v - before.get(pid, 0.0) for pid, v in after.items())


def _born_since(pids: list[int], known: dict[int, float], since: float) -> list[int]:
    """`pids` minus those missing from `known` that are older than `since`: a process that
    was already running but not listed at the start (its whole CPU would count) is left out."""
    out = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            if pid in known or psutil.Process(pid).create_time() >= since - 1.0:
                out.append(pid)
    return out


def _postgres_pids(database: str) -> list[int]:
    """PostgreSQL's own processes and the backends serving `database`, not other databases."""
    pids = []
    for p in psutil.process_iter(["name", "cmdline"]):
        if p.info["name"] not in ("postgres", "postmaster"):
            continue
        title = " ".join(p.info["cmdline"] or [])
        is_backend = "(" in title or "[local]" in title  # "user db 127.0.0.1(port) state"
        if not is_backend or f" {database} " in title:
            pids.append(p.pid)
    return pids


def _reaped(pids: list[int]) -> float:
    """CPU of the postmaster's exited children (backends that closed), all databases."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            if proc.ppid() in pids:
                continue  # a backend, not the postmaster
            t = proc.cpu_times()
            total += t.children_user + t.children_system
    return total


async def _pg_sessions(database: str) -> int:
    """Sessions (connections) PostgreSQL has opened on `database` so far (PostgreSQL >= 14)."""
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN)
    try:
        n = await conn.fetchval("SELECT sessions FROM pg_stat_database WHERE datname = $1",
                                database)
    finally:
        await conn.close()
    return int(n or 0)


def pg_sessions(database: str) -> int | None:
    """`_pg_sessions`, callable with or without a running event loop (in a thread of its own)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        try:
            return pool.submit(asyncio.run, _pg_sessions(database)).result()
        except Exception:  # an old PostgreSQL, or a busy one: no figure
            return None


def _busy(t: object) -> float:
    idle = getattr(t, "idle", 0.0) + getattr(t, "iowait", 0.0)
    guest = getattr(t, "guest", 0.0) + getattr(t, "guest_nice", 0.0)  # already in user
    return sum(t) - idle - guest  # type: ignore[call-overload, no-any-return]


class CpuMeter:
    """CPU used during a phase, in cores: server, PostgreSQL, load generator, everything else.

    `client` is this process's own CPU plus whatever `add_client` reports (load-generator
    processes). "postgres" is the postmaster, its helpers and the live backends of the bench
    database; "exited backends" the CPU of PostgreSQL backends that ended meanwhile, of any
    database (the bench's own if the server churns connections, anyone's if others use the
    same PostgreSQL). "others" is the machine's busy time nobody here accounts for: other
    programs on the machine, which make the figures less trustworthy.
    """

    def __init__(self, server: Server, backend: str) -> None:
        self.server, self.backend = server, backend
        self.extra_client = 0.0
        self.cores: dict[str, float] = {}
        self.sessions: int | None = None

    def __enter__(self) -> CpuMeter:
        self.database = self.server.db_url.rsplit("/", 1)[-1]
        self.pg_pids = _postgres_pids(self.database) if self.backend == "postgresql" else []
        self.t0 = time.perf_counter()
        self.srv0 = cpu_of(self.server.pids())
        self.pg0 = cpu_of(self.pg_pids)
        self.born = time.time()
        self.reaped0 = _reaped(self.pg_pids)
        self.sessions0 = pg_sessions(self.database) if self.pg_pids else None
        self.me0 = time.process_time()
        self.m0 = _busy(psutil.cpu_times())
        return self

    def add_client(self, cpu_seconds: float) -> None:
        self.extra_client += cpu_seconds

    def __exit__(self, *exc: object) -> None:
        wall = self.wall = time.perf_counter() - self.t0
        pg = exited = 0.0
        self.sessions = None
        if self.pg_pids:
            now = list(set(self.pg_pids) | set(_postgres_pids(self.database)))
            pg = cpu_used(self.pg0, cpu_of(_born_since(now, self.pg0, self.born)))
            exited = _reaped(now) - self.reaped0
            after = pg_sessions(self.database)
            if after is not None and self.sessions0 is not None:
                self.sessions = after - self.sessions0
        self.cores = {
            "server": cpu_used(self.srv0, cpu_of(self.server.pids())) / wall,
            "postgres": pg / wall,
            "exited": exited / wall,
            "client": (time.process_time() - self.me0 + self.extra_client) / wall,
            "machine": (_busy(psutil.cpu_times()) - self.m0) / wall,
        }
        accounted = sum(self.cores[k] for k in ("server", "postgres", "exited", "client"))
        self.cores["others"] = max(0.0, self.cores["machine"] - accounted)

    def text(self) -> str:
        c = self.cores
        parts = [f"server {c['server']:.2f}"]
        if self.backend == "postgresql":
            parts.append(f"postgres {c['postgres']:.2f}")
            if c["exited"] >= 0.01:
                parts.append(f"exited PostgreSQL backends {c['exited']:.2f}")
        parts += [f"load generator {c['client']:.2f}", f"other programs {c['others']:.2f}",
                  f"whole machine {c['machine']:.2f} of {os.cpu_count()}"]
        text = "CPU cores busy: " + ", ".join(parts)
        if self.sessions:
            text += f"; PostgreSQL opened {self.sessions:,} new connections to the database"
        return text


def background_load(seconds: float = 5.0) -> float:
    """Cores the whole machine keeps busy over `seconds` (call it while the bench is idle)."""
    m0, t0 = _busy(psutil.cpu_times()), time.perf_counter()
    time.sleep(seconds)
    return (_busy(psutil.cpu_times()) - m0) / (time.perf_counter() - t0)


def wait_quiet(patience: float, threshold: float = 0.3, window: float = 5.0) -> float:
    """Wait (at most `patience` s) until other programs use under `threshold` cores."""
    deadline = time.monotonic() + patience
    while True:
        load = background_load(window)
        if load < threshold or time.monotonic() > deadline:
            return load
        print(f"  other programs keep {load:.2f} cores busy; waiting for a quieter machine ...",
              flush=True)
        time.sleep(5)


# ---- py-spy ---------------------------------------------------------------------------------


@contextlib.contextmanager
def profiled(server: Server, out_dir: Path | None, name: str) -> Iterator[None]:
    """py-spy the server (parent and workers) while the block runs; print the hot spots."""
    if out_dir is None:
        yield
        return
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = out_dir / f"{name}.txt"
    assert server.proc is not None
    proc = subprocess.Popen(
        [spy, "record", "--pid", str(server.proc.pid), "--subprocesses",
         "--rate", "100", "--format", "raw", "--output", str(raw)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)  # py-spy attaches
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        if raw.exists():
            print(hot_spots(raw))


PACKAGES = ("farmstead", "sqlalchemy", "asyncpg", "aiosqlite", "sqlite3", "uvicorn", "starlette",
            "fastapi", "pydantic_core", "pydantic", "httptools", "uvloop", "asyncio", "json",
            "threading", "concurrent", "anyio")


def _package(frame: str) -> str:
    where = frame[frame.rfind("(") + 1:]
    for key in PACKAGES:
        if where.startswith((f"{key}/", f"{key}.")) or f"/{key}/" in where:
            return key
    return "other"


def _function(frame: str) -> str:
    """`name (farmstead/path.py)`: the frame without its line number."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0]})"


def hot_spots(raw: Path, top: int = 15) -> str:
    """Summarise a py-spy raw (collapsed stacks) file: by package, and farmstead functions."""
    leaf_pkg: Counter[str] = Counter()
    ours_incl: Counter[str] = Counter()
    ours_self: Counter[str] = Counter()  # the innermost farmstead frame of each sample
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = [f for f in stack.split(";") if " (" in f and not f.startswith("process ")]
        if not frames:
            continue
        n = int(count)
        total += n
        leaf_pkg[_package(frames[-1])] += n
        ours = [_function(f) for f in frames if _package(f) == "farmstead"]
        for fn in set(ours):
            ours_incl[fn] += n
        if ours:
            ours_self[ours[-1]] += n
    if not total:
        return f"  py-spy {raw}: no samples"
    lines = [f"  py-spy profile {raw} ({total} CPU samples of the server processes):",
             "    leaf frame by package: " + ", ".join(
                 f"{k} {100 * v / total:.0f}%" for k, v in leaf_pkg.most_common(9)),
             "    farmstead functions, inclusive share of server CPU (innermost farmstead frame):"]
    lines += [f"      {100 * v / total:5.1f}% ({100 * ours_self[k] / total:4.1f}%)  {k}"
              for k, v in ours_incl.most_common(top)]
    return "\n".join(lines)
