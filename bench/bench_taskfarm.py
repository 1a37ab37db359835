"""taskfarm's stress pattern with the real `TaskFarmWorker`, farmstead against taskfarm 0.4.0.

Per task, as taskfarm's own stress harness does: a claim (`POST …/task`), one `GET` of the
task (both inside the client's `task` property), ten progress `PUT`s and one `PUT` of done: 13
calls. Each client is a separate process running taskfarm-worker 0.4.0 unchanged (a
`requests` session per worker: keep-alive, its token as the Basic user name); it registers,
then waits until every client is ready, and works the run until no task is left. The clock
runs from that common start to the last client's last answer.

The servers, both on the same PostgreSQL, each on a fresh database per repetition:
farmstead (`farmstead serve`, auth on: the clients sign in with a worker user's password and
then use their token) and taskfarm 0.4.0 itself (Flask under gunicorn with 2 workers, installed
in its own virtualenv by bench/peers/taskfarm_peer.py). Client counts and servers are
interleaved (the server order alternates each repetition); medians with min-max.

Every hand-out is counted: a task handed to two workers, or a run that does not end with every
task done, is printed as a failure.

Usage:
    python bench/peers/taskfarm_peer.py setup        # once: taskfarm's server in its own venv
    python bench/bench_taskfarm.py                   # 1, 4, 16, 64 clients, 3 repetitions
    python bench/bench_taskfarm.py --clients 16 --reps 1 --servers fs-pg1,fs-sqlite1,taskfarm
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil

from _harness import (
    PG_ADMIN,
    Server,
    _busy,
    _drop,
    _pg_admin,
    _postgres_pids,
    cpu_of,
    free_port,
    fresh_database,
    pct,
    process_tree,
    profiled,
    stop_process,
)

USER, PASSWORD = "bench", "a bench password, long enough"
TARGET = 5.0  # farmstead's tasks/s over taskfarm's, at 16 and 64 clients
KINDS = ("claim", "get", "progress", "done")

#: one client process: taskfarm-worker 0.4.0 unchanged; each call timed where it is sent
CLIENT = r"""
import json, sys, time
import requests
from taskfarm_worker import TaskFarmWorker

base, user, password, run = sys.argv[1:5]
lat = {"claim": [], "get": [], "progress": [], "done": []}
slow = []  # (seconds since the start, kind, seconds) of calls over half a second
timing = False
send = requests.Session.request

def timed(self, method, url, *args, **kwargs):
    start = time.perf_counter()
    try:
        return send(self, method, url, *args, **kwargs)
    finally:
        if timing:
            if method == "POST":
                kind = "claim"
            elif method == "GET":
                kind = "get"
            else:
                kind = "done" if "status" in (kwargs.get("json") or {}) else "progress"
            took = time.perf_counter() - start
            lat[kind].append(took)
            if took > 0.5:
                slow.append((round(start - go, 3), kind, round(took, 3)))

requests.Session.request = timed
worker = TaskFarmWorker(user, password, run, url_base=base)
print("ready", flush=True)
sys.stdin.readline()
timing = True
go = time.perf_counter()
cpu = time.process_time()
got = []
for n in worker.tasks:
    got.append(n)
    for p in range(1, 11):
        worker.update(p * 10)
    worker.done()
cpu = time.process_time() - cpu
print(json.dumps({"tasks": got, "lat": lat, "end": time.time(), "cpu": cpu, "slow": slow}),
      flush=True)
"""


def _load_peer() -> Any:
    path = Path(__file__).resolve().parent / "peers" / "taskfarm_peer.py"
    spec = importlib.util.spec_from_file_location("taskfarm_peer", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Farmstead:
    """`farmstead serve` with auth on; a worker user for the clients, an operator for runs."""

    def __init__(self, backend: str, workers: int, work: Path) -> None:
        self.backend, self.workers, self.work = backend, workers, work
        db = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}[backend]
        self.name = f"farmstead, {db}, {workers} process{'es' if workers > 1 else ''}"
        self._db: contextlib.ExitStack | None = None
        self.server: Server | None = None

    def start(self) -> str:
        self._db = contextlib.ExitStack()
        url = self._db.enter_context(fresh_database(self.backend, keep=False))
        log = self.work / f"{self.backend}{self.workers}-{uuid.uuid4().hex[:6]}.log"
        self.server = Server(url, self.workers, log, env={"auth": "true"}).start()
        from farmstead import credentials

        admin = credentials.token_for(self.server.url, self.server.credentials_file)
        for name, role in ((USER, "worker"), ("op", "operator")):
            answer = httpx.post(f"{self.server.url}/v3/users",
                                json={"name": name, "role": role, "password": PASSWORD},
                                headers={"Authorization": f"Bearer {admin}"}, timeout=30)
            answer.raise_for_status()
        self.operator = "op"
        return self.server.url

    def pids(self) -> list[int]:
        return self.server.pids() if self.server else []

    def database(self) -> str:
        return self.server.db_url.rsplit("/", 1)[-1] if self.server else ""

    def stop(self) -> None:
        if self.server:
            self.server.stop()
        if self._db:
            self._db.close()


class Taskfarm:
    """taskfarm 0.4.0 (gunicorn, 2 workers) on a fresh PostgreSQL database."""

    def __init__(self, work: Path) -> None:
        self.peer_module = _load_peer()
        self.work = work
        self.name = self.peer_module.TaskfarmPeer.name
        self.operator = USER
        self.peer: Any = None
        self.database_name = ""

    def start(self) -> str:
        self.database_name = f"farmstead_bench_tf_{uuid.uuid4().hex[:10]}"
        asyncio.run(_pg_admin(f'CREATE DATABASE "{self.database_name}"'))
        host = PG_ADMIN.split("://", 1)[1].rsplit("/", 1)[0]
        self.peer = self.peer_module.TaskfarmPeer(
            f"postgresql://{host}/{self.database_name}", USER, PASSWORD,
            self.work / f"taskfarm-{uuid.uuid4().hex[:6]}.log")
        return str(self.peer.start(free_port()))

    def pids(self) -> list[int]:
        return process_tree(self.peer.proc) if self.peer else []

    def database(self) -> str:
        return self.database_name

    def stop(self) -> None:
        if self.peer:
            self.peer.stop()
        if self.database_name:
            _drop(self.database_name)


class Bare:
    """The ceiling: bench/peers/taskfarm_bare.py, taskfarm's API from memory (no database)."""

    name = "ceiling: bare FastAPI, no database"
    operator = USER

    def __init__(self, work: Path) -> None:
        self.work = work
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> str:
        port = free_port()
        script = Path(__file__).resolve().parent / "peers" / "taskfarm_bare.py"
        with open(self.work / "taskfarm_bare.log", "ab") as log:
            self.proc = subprocess.Popen([sys.executable, str(script), "--port", str(port)],
                                         stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/", timeout=2).status_code == 200:
                    return url
            time.sleep(0.2)
        raise RuntimeError("the bare taskfarm app did not start")

    def pids(self) -> list[int]:
        return process_tree(self.proc)

    def database(self) -> str:
        return "-"  # none: no PostgreSQL backend matches

    def stop(self) -> None:
        stop_process(self.proc)


def _create_run(url: str, operator: str, tasks: int) -> str:
    auth = (operator, PASSWORD)
    answer = httpx.post(f"{url}/api/run", json={"numTasks": tasks}, auth=auth, timeout=120)
    if answer.status_code != 201:
        raise RuntimeError(f"creating a run: {answer.status_code} {answer.text[:300]}")
    return str(answer.json()["uuid"])


def _run_info(url: str, operator: str, run: str) -> dict[str, Any]:
    answer = httpx.get(f"{url}/api/runs/{run}", auth=(operator, PASSWORD), timeout=60)
    answer.raise_for_status()
    return dict(answer.json())


@contextlib.contextmanager
def _clients(base: str, run: str, count: int) -> Iterator[list[subprocess.Popen[str]]]:
    procs = [subprocess.Popen([sys.executable, "-c", CLIENT, base, USER, PASSWORD, run],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(count)]
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def measure(
    server: Any, url: str, clients: int, tasks: int, profile: Path | None = None
) -> dict[str, Any]:
    """One run of `tasks` tasks worked by `clients` client processes to its end (py-spy'd
    from the common start to the end into `profile`, for farmstead)."""
    run = _create_run(url, server.operator, tasks)
    with _clients(url + "/api/", run, clients) as procs:
        for proc in procs:  # every client registered and holds its token
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"a client did not start: {proc.stderr.read()[-2000:]}")
        spied = getattr(server, "server", None)
        with profiled(spied, profile if spied else None, f"{spied and spied.port}-{clients}"):
            pg_pids = _postgres_pids(server.database())
            pg0 = cpu_of(pg_pids)
            cpu0 = cpu_of(server.pids())
            busy0 = _busy(psutil.cpu_times())
            start = time.time()
            for proc in procs:
                assert proc.stdin is not None
                proc.stdin.write("go\n")
                proc.stdin.flush()
            reports = []
            for proc in procs:
                out, err = proc.communicate(timeout=1800)
                if proc.returncode != 0:
                    raise RuntimeError(f"a client failed: {err[-2000:]}")
                reports.append(json.loads(out.strip().splitlines()[-1]))
            cpu1 = cpu_of(server.pids())
            pg1 = cpu_of(pg_pids)
            busy = _busy(psutil.cpu_times()) - busy0
    end = max(r["end"] for r in reports)
    handed = Counter(n for r in reports for n in r["tasks"])
    info = _run_info(url, server.operator, run)
    lat = {k: [x for r in reports for x in r["lat"][k]] for k in KINDS}
    calls = sum(len(v) for v in lat.values())
    wall = end - start
    server_cpu = sum(cpu1.get(p, 0.0) - cpu0.get(p, 0.0) for p in cpu1)
    return {
        "tasks_per_s": len(handed) / wall,
        "calls_per_s": calls / wall,
        "wall": wall,
        "cpu_ms_per_call": 1000 * server_cpu / max(calls, 1),
        "pg_ms_per_call": 1000 * sum(pg1.get(p, 0.0) - pg0.get(p, 0.0) for p in pg1)
        / max(calls, 1),
        "client_ms_per_call": 1000 * sum(r["cpu"] for r in reports) / max(calls, 1),
        "machine_ms_per_call": 1000 * busy / max(calls, 1),
        "twice": sum(1 for c in handed.values() if c > 1),
        "slow": sorted(x for r in reports for x in r["slow"]),
        "missing": tasks - len(handed),
        "done": info.get("numDone"),
        **{f"{k}_p50": 1000 * pct(v, 50) for k, v in lat.items()},
        **{f"{k}_p99": 1000 * pct(v, 99) for k, v in lat.items()},
    }


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):,.1f} ({min(values):,.1f}-{max(values):,.1f})"


def report(
    results: dict[tuple[str, int], list[dict[str, Any]]],
    labels: dict[str, str],
    counts: list[int],
    names: list[str],
) -> int:
    """Print the table; the number of tasks handed out twice or never."""
    print("\n| clients | server | tasks/s | calls/s | server CPU/call | claim p50/p99 | GET "
          "p50/p99 | progress PUT p50/p99 | done PUT p50/p99 | handed out twice | ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    failures = 0
    for clients in counts:
        base = results.get(("taskfarm", clients))
        for n in names:
            got = results[(n, clients)]
            rate = [g["tasks_per_s"] for g in got]
            ratio = ""
            ceiling = results.get(("bare", clients))
            if ceiling and n != "bare":
                top = statistics.median(g["tasks_per_s"] for g in ceiling)
                ratio = f"{statistics.median(rate) / top:.2f} of the ceiling; "
            if base and n not in ("taskfarm", "bare"):
                r = statistics.median(rate) / statistics.median(g["tasks_per_s"] for g in base)
                met = "" if clients < 16 else (" met" if r >= TARGET else " NOT met")
                ratio += f"{r:.1f}x taskfarm{met}"
            lat = " | ".join(
                f"{statistics.median(g[f'{k}_p50'] for g in got):.1f} / "
                f"{statistics.median(g[f'{k}_p99'] for g in got):.1f} ms" for k in KINDS)
            twice = sum(g["twice"] for g in got)
            failures += twice + sum(g["missing"] for g in got)
            cpu = statistics.median(g["cpu_ms_per_call"] for g in got)
            print(f"| {clients} | {labels[n]} | {spread(rate)} | "
                  f"{statistics.median(g['calls_per_s'] for g in got):,.0f} | {cpu:.2f} ms | "
                  f"{lat} | {twice} | {ratio} |")
    print(f"\ntarget: farmstead >= {TARGET:g}x taskfarm's tasks/s at 16 and 64 clients; "
          "server CPU counts the server's own processes (not PostgreSQL's)")
    return failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="1,4,16,64")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--servers", default="bare,fs-pg1,taskfarm",
                        help="fs-pg1, fs-pg2, fs-sqlite1, taskfarm, bare (the ceiling)")
    parser.add_argument("--tasks-per-client", type=int, default=10,
                        help="tasks in a run: this many per client, at least 40")
    parser.add_argument("--json", type=Path, help="write every measurement here")
    parser.add_argument("--profile", type=Path,
                        help="py-spy farmstead's servers into this directory (skews figures)")
    args = parser.parse_args()
    counts = [int(c) for c in args.clients.split(",")]
    names = args.servers.split(",")
    if "taskfarm" in names and (why := _load_peer().available()):
        sys.exit(why)
    work = Path(tempfile.mkdtemp(prefix="farmstead_bench_taskfarm_"))

    def make(name: str) -> Any:
        if name == "taskfarm":
            return Taskfarm(work)
        if name == "bare":
            return Bare(work)
        backend = {"pg": "postgresql", "sqlite": "sqlite"}[name[3:-1]]
        return Farmstead(backend, int(name[-1]), work)

    results: dict[tuple[str, int], list[dict[str, Any]]] = {}
    labels: dict[str, str] = {}
    for rep in range(args.reps):
        order = names if rep % 2 == 0 else names[::-1]
        servers = {n: make(n) for n in order}
        urls = {}
        try:
            for n, s in servers.items():
                urls[n] = s.start()
                labels[n] = s.name
            for clients in counts:
                tasks = max(40, args.tasks_per_client * clients)
                for n in order:
                    got = measure(servers[n], urls[n], clients, tasks, args.profile)
                    results.setdefault((n, clients), []).append(got)
                    print(f"rep {rep + 1} {clients:>3} clients {labels[n]:<42} "
                          f"{got['tasks_per_s']:8.1f} tasks/s {got['calls_per_s']:8.0f} calls/s"
                          f"  CPU/call: server {got['cpu_ms_per_call']:.2f}, PostgreSQL "
                          f"{got['pg_ms_per_call']:.2f}, clients "
                          f"{got['client_ms_per_call']:.2f}, "
                          f"machine {got['machine_ms_per_call']:.2f} ms"
                          f"  twice {got['twice']}"
                          f"  missing {got['missing']}  done {got['done']}/{tasks}",
                          flush=True)
        finally:
            for s in servers.values():
                s.stop()

    failures = report(results, labels, counts, names)
    if failures:
        print(f"FAILURES: {failures} tasks handed out twice or never")
    if args.json:
        args.json.write_text(json.dumps(
            {f"{n}/{c}": v for (n, c), v in results.items()}, indent=1))


if __name__ == "__main__":
    main()
