"""farmstead core benchmark: a real `farmstead serve` process on a fresh database, over HTTP.

Figures (per backend), in the order they are printed:
  1. transition requests/s and p50/p99 latency with 64 concurrent simulated worker nodes, each
     taking instances and doing log_running, one log_report_by heartbeat, log_done;
  2. one batch heartbeat (log_report_by/batch) of 10,000 LAUNCHED instances, median of calls;
  3. array lookup (get_array_task_instance_id) p99 with the 1,000,000-instance array in place;
  4. submit time of a 1,000,000-task array (POST /v3/workflows), which seeds (3).

The phases run in the order 4, 3, 2, 1 on one server and one database, so the transition load
runs against a table that already holds the big array.

    .venv/bin/python bench/bench_core.py                  # both backends, full sizes
    .venv/bin/python bench/bench_core.py --quick --db sqlite
    .venv/bin/python bench/bench_core.py --profile /tmp/prof   # py-spy the server per phase
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN = os.environ.get("FARMSTEAD_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
INCREMENT = 600.0  # next_report_increment: long, so nothing expires during a run
KINDS = ("log_running", "log_report_by", "log_done")
EXPECT = {"log_running": "R", "log_report_by": "R", "log_done": "D"}


# ---- sizes and targets ----------------------------------------------------------------------


@dataclass
class Sizes:
    array: int  # tasks of the big array (figures 3 and 4)
    transitions: int  # tasks driven through log_running / log_report_by / log_done (figure 1)
    heartbeat_ids: int  # ids per batch heartbeat (figure 2)
    heartbeat_calls: int
    lookups: int
    lookup_concurrency: int


FULL = Sizes(1_000_000, 20_000, 10_000, 9, 5_000, 8)
QUICK = Sizes(20_000, 2_000, 10_000, 5, 1_000, 8)


@dataclass
class Target:
    key: str
    label: str
    target: float
    unit: str
    higher_is_better: bool

    def ratio(self, value: float) -> float:
        """>= 1 means the target is met: measured/target for rates, target/measured for times."""
        if value <= 0:
            return float("inf") if not self.higher_is_better else 0.0
        return value / self.target if self.higher_is_better else self.target / value

    def text(self) -> str:
        return f"{'>=' if self.higher_is_better else '<'} {fmt(self.target)} {self.unit}"


TARGETS = [
    Target("tps", "1. transition requests/s (64 nodes)", 1000, "req/s", True),
    Target("tp50", "1. transition latency p50", 0, "ms", False),
    Target("tp99", "1. transition latency p99", 250, "ms", False),
    Target("hb", "2. batch heartbeat, 10,000 ids (median)", 200, "ms", False),
    Target("lk99", "3. array lookup p99 (1M instances)", 10, "ms", False),
    Target("submit", "4. submit a 1,000,000-task array", 60, "s", False),
]


def fmt(x: float) -> str:
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


# ---- databases and the server process --------------------------------------------------------


async def _pg_admin(sql: str) -> None:
    import asyncpg  # the server's own driver; imported here so SQLite-only runs need no PG

    conn = await asyncpg.connect(PG_ADMIN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextlib.contextmanager
def fresh_database(backend: str, keep: bool) -> Iterator[str]:
    """A new, empty, migrated database URL; removed afterwards unless `keep`."""
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
            asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """`python -m farmstead.cli.main serve --port N --workers W` on `db_url`."""

    def __init__(self, db_url: str, workers: int, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.db_url = db_url
        self.workers = workers
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> Server:
        env = {**os.environ, "FARMSTEAD_DATABASE_URL": self.db_url, "FARMSTEAD_LOG_LEVEL": "warning"}
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
                if httpx.get(f"{self.url}/ready", timeout=2).status_code == 200:
                    if len(self.pids()) > self.workers:  # every worker process is up
                        return self
            time.sleep(0.2)
        raise RuntimeError(f"server did not start: {self.log_path.read_text()[-3000:]}")

    def pids(self) -> list[int]:
        """The server's own processes: the uvicorn parent and its workers."""
        if self.proc is None:
            return []
        try:
            parent = psutil.Process(self.proc.pid)
            return [parent.pid] + [c.pid for c in parent.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# ---- where the CPU goes ----------------------------------------------------------------------


def _cpu_of(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
    return total


def _postgres_pids() -> list[int]:
    out = []
    for p in psutil.process_iter(["name"]):
        if p.info["name"] in ("postgres", "postmaster"):
            out.append(p.pid)
    return out


class CpuMeter:
    """CPU used during a phase, in cores: server processes, PostgreSQL, the whole machine."""

    def __init__(self, server: Server, backend: str) -> None:
        self.server, self.backend = server, backend

    def __enter__(self) -> CpuMeter:
        self.pg_pids = _postgres_pids() if self.backend == "postgresql" else []
        self.t0 = time.perf_counter()
        self.srv0 = _cpu_of(self.server.pids())
        self.pg0 = _cpu_of(self.pg_pids)
        self.m0 = psutil.cpu_times()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self.t0
        m1 = psutil.cpu_times()
        busy = (sum(m1) - m1.idle - m1.iowait) - (sum(self.m0) - self.m0.idle - self.m0.iowait)
        self.cores = {
            "server": (_cpu_of(self.server.pids()) - self.srv0) / wall,
            "postgres": (_cpu_of(_postgres_pids()) - self.pg0) / wall if self.pg_pids else 0.0,
            "machine": busy / wall,
        }

    def text(self, client_cores: float | None = None) -> str:
        parts = [f"server {self.cores['server']:.2f}"]
        if self.backend == "postgresql":
            parts.append(f"postgres {self.cores['postgres']:.2f}")
        if client_cores is not None:
            parts.append(f"load generator {client_cores:.2f}")
        parts.append(f"whole machine {self.cores['machine']:.2f} of {os.cpu_count()}")
        return "CPU cores busy: " + ", ".join(parts)


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
        [spy, "record", "--pid", str(server.proc.pid), "--subprocesses", "--nonblocking",
         "--rate", "200", "--format", "raw", "--output", str(raw)],
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


def _package(frame: str) -> str:
    path = frame[frame.rfind("(") + 1:]
    for key in ("farmstead", "sqlalchemy", "asyncpg", "aiosqlite", "sqlite3", "uvicorn",
                "starlette", "fastapi", "pydantic", "httptools", "uvloop", "asyncio", "json"):
        if f"/{key}/" in path or f"/{key}." in path or f"{key}/" in path:
            return key
    return "other"


def hot_spots(raw: Path, top: int = 12) -> str:
    """Summarise a py-spy raw (collapsed stacks) file: by package, and farmstead functions."""
    leaf_pkg: Counter[str] = Counter()
    ours_incl: Counter[str] = Counter()
    ours_self: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = [f for f in stack.split(";") if "(" in f]
        if not frames:
            continue
        total += n
        leaf_pkg[_package(frames[-1])] += n
        seen = set()
        for f in frames:
            if "farmstead/" in f:
                fn = f.split(" (")[0] + " (" + f.split("farmstead/")[-1].rstrip(")").split(":")[0] + ")"
                if fn not in seen:
                    ours_incl[fn] += n
                    seen.add(fn)
        ours = [f for f in frames if "farmstead/" in f]
        if ours and "farmstead/" in frames[-1]:
            ours_self[ours[-1].split(" (")[0]] += n
    if not total:
        return f"  profile {raw}: no samples"
    lines = [f"  py-spy profile {raw} ({total} samples, CPU only):",
             "    where CPU samples end (leaf frame's package): " + ", ".join(
                 f"{k} {100 * v / total:.0f}%" for k, v in leaf_pkg.most_common(8))]
    lines.append("    farmstead functions, inclusive CPU share:")
    lines += [f"      {100 * v / total:5.1f}%  {k}" for k, v in ours_incl.most_common(top)]
    return "\n".join(lines)


# ---- HTTP helpers ---------------------------------------------------------------------------


async def post(client: httpx.AsyncClient, path: str, body: Any, timeout: float = 60) -> Any:
    r = await client.post(path, json=body, timeout=timeout)
    if r.status_code >= 300:
        raise RuntimeError(f"POST {path}: {r.status_code} {r.text[:500]}")
    return r.json()


async def lookup(client: httpx.AsyncClient, array_id: int, batch: int, step: int) -> int:
    r = await client.get(f"/v3/fsm/get_array_task_instance_id/{array_id}/{batch}/{step}")
    r.raise_for_status()
    return int(r.json()["task_instance_id"])


async def submit_array(client: httpx.AsyncClient, name: str, size: int) -> tuple[int, float]:
    """Submit an array of `size` tasks; (array id, seconds)."""
    t0 = time.perf_counter()
    out = await post(client, "/v3/workflows", {
        "name": name, "array": {"command": "echo {i}", "first": 0, "last": size - 1},
    }, timeout=1800)
    elapsed = time.perf_counter() - t0
    if out["total"] != size:
        raise RuntimeError(f"submitted {size} tasks, the server counts {out['total']}")
    return int(out["array_ids"][0]), elapsed


async def instantiate_and_launch(
    client: httpx.AsyncClient, first_id: int, count: int, chunk: int = 5000
) -> tuple[list[int], float]:
    """Instantiate ids first_id.. in chunks, then launch every batch touched; (ids, seconds)."""
    ids: list[int] = []
    batches: set[tuple[int, int]] = set()
    t0 = time.perf_counter()
    for start in range(first_id, first_id + count, chunk):
        wanted = list(range(start, min(start + chunk, first_id + count)))
        out = await post(client, "/v3/fsm/task_instance/instantiate_task_instances",
                         {"task_instance_ids": wanted})
        for array_id, _name, batch, _none, tis in out["task_instance_batches"]:
            batches.add((array_id, batch))
            ids += tis
    for array_id, batch in sorted(batches):
        await post(client, f"/v3/fsm/array/{array_id}/transition_to_launched",
                   {"batch_number": batch, "next_report_increment": INCREMENT})
    if len(ids) != count:
        raise RuntimeError(f"instantiated {len(ids)} of {count} instances")
    return sorted(ids), time.perf_counter() - t0


# ---- figure 1: the load generator (runs in its own processes) --------------------------------


def load_process(args: tuple[str, list[int], int, float]) -> dict[str, Any]:
    """One load-generator process: `nodes` concurrent simulated worker nodes."""
    url, ids, nodes, start_at = args
    return asyncio.run(_load(url, ids, nodes, start_at))


async def _node(client: httpx.AsyncClient, name: str, queue: Iterator[int],
                lat: dict[str, list[float]], errors: list[str]) -> None:
    bodies = {
        "log_running": {"nodename": name, "process_group_id": 1,
                        "next_report_increment": INCREMENT},
        "log_report_by": {"next_report_increment": INCREMENT},
        "log_done": {"nodename": name, "wallclock": 1.0, "maxrss": 1 << 20},
    }
    for ti in queue:
        for kind in KINDS:
            t0 = time.perf_counter()
            try:
                r = await client.post(f"/v3/fsm/task_instance/{ti}/{kind}", json=bodies[kind])
            except httpx.HTTPError as exc:
                errors.append(f"{kind} {ti}: {type(exc).__name__}")
                continue
            lat[kind].append((time.perf_counter() - t0) * 1000)
            if r.status_code != 200:
                errors.append(f"{kind} {ti}: HTTP {r.status_code} {r.text[:200]}")
                continue
            data = r.json()
            status = data["task_instance"][1] if kind == "log_running" else data["status"]
            if status != EXPECT[kind]:
                errors.append(f"{kind} {ti}: answered status {status}")


async def _load(url: str, ids: list[int], nodes: int, start_at: float) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=nodes, max_keepalive_connections=nodes)
    lat: dict[str, list[float]] = {k: [] for k in KINDS}
    errors: list[str] = []
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        await asyncio.gather(*(client.get("/health") for _ in range(nodes)))  # open connections
        await asyncio.sleep(max(0.0, start_at - time.time()))
        cpu0, t0 = time.process_time(), time.time()
        queue = iter(ids)  # shared by the nodes: each id is taken once
        await asyncio.gather(*(_node(client, f"bench-node-{os.getpid()}-{n}", queue, lat, errors)
                               for n in range(nodes)))
        t1, cpu1 = time.time(), time.process_time()
    return {"lat": lat, "errors": errors, "t0": t0, "t1": t1, "cpu": cpu1 - cpu0}


def run_load(url: str, ids: list[int], concurrency: int, procs: int) -> dict[str, Any]:
    """Drive `ids` through the three worker reports from `procs` processes; merged figures."""
    shares = [ids[i::procs] for i in range(procs)]
    nodes = [concurrency // procs + (1 if i < concurrency % procs else 0) for i in range(procs)]
    start_at = time.time() + 3.0 + 0.5 * procs  # every process starts together
    ctx = mp.get_context("spawn")
    with ctx.Pool(procs) as pool:
        parts = pool.map(load_process, [(url, s, n, start_at) for s, n in zip(shares, nodes,
                                                                                strict=True)])
    lat = {k: [x for p in parts for x in p["lat"][k]] for k in KINDS}
    wall = max(p["t1"] for p in parts) - min(p["t0"] for p in parts)
    every = [x for k in KINDS for x in lat[k]]
    return {
        "requests": len(every), "wall": wall, "rps": len(every) / wall,
        "p50": pct(every, 50), "p99": pct(every, 99),
        "by_kind": {k: (pct(v, 50), pct(v, 99)) for k, v in lat.items()},
        "errors": [e for p in parts for e in p["errors"]],
        "client_cores": sum(p["cpu"] for p in parts) / wall,
    }


# ---- one backend ---------------------------------------------------------------------------


@dataclass
class Result:
    backend: str
    values: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


async def phase_submit(client: httpx.AsyncClient, sz: Sizes, res: Result) -> tuple[int, int]:
    array_id, seconds = await submit_array(client, "bench-big-array", sz.array)
    res.values["submit"] = seconds
    first = await lookup(client, array_id, 1, 0)
    print(f"  4. submit {sz.array:,} tasks: {seconds:.2f} s "
          f"({sz.array / seconds:,.0f} tasks/s; array {array_id}, first instance {first})")
    return array_id, first


async def _lookup_pass(client: httpx.AsyncClient, array_id: int, first: int, keys: list[Any],
                       concurrency: int, batch_size: int) -> dict[str, Any]:
    """Look every key up with `concurrency` requests in flight; latencies and surprises."""
    lat: list[float] = []
    missing: list[tuple[int, int]] = []
    other = 0
    it = iter(keys)

    async def one() -> None:
        nonlocal other
        for b, s in it:
            t0 = time.perf_counter()
            r = await client.get(f"/v3/fsm/get_array_task_instance_id/{array_id}/{b}/{s}")
            lat.append((time.perf_counter() - t0) * 1000)
            if r.status_code == 404:
                missing.append((b, s))
            elif r.status_code != 200:
                raise RuntimeError(f"lookup {b}/{s}: {r.status_code} {r.text[:300]}")
            elif r.json()["task_instance_id"] != first + (b - 1) * batch_size + s:
                other += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    return {"lat": lat, "rate": len(keys) / wall, "missing": missing, "other": other}


async def phase_lookups(client: httpx.AsyncClient, array_id: int, first: int, sz: Sizes,
                        batch_size: int, res: Result) -> None:
    rng = random.Random(1)

    def keys(n: int) -> list[tuple[int, int]]:
        return [(i // batch_size + 1, i % batch_size)
                for i in (rng.randrange(sz.array) for _ in range(n))]

    await _lookup_pass(client, array_id, first, keys(200), sz.lookup_concurrency, batch_size)
    serial = await _lookup_pass(client, array_id, first, keys(max(200, sz.lookups // 5)), 1,
                                batch_size)
    main = await _lookup_pass(client, array_id, first, keys(sz.lookups), sz.lookup_concurrency,
                              batch_size)
    lat = main["lat"]
    res.values["lk50"], res.values["lk99"] = pct(lat, 50), pct(lat, 99)
    print(f"  3. array lookup: {len(lat):,} random (batch, step) at concurrency "
          f"{sz.lookup_concurrency}: p50 {pct(lat, 50):.2f} ms, p99 {pct(lat, 99):.2f} ms, "
          f"max {max(lat):.1f} ms ({main['rate']:,.0f} lookups/s); one at a time: "
          f"p50 {pct(serial['lat'], 50):.2f} ms, p99 {pct(serial['lat'], 99):.2f} ms "
          f"({serial['rate']:,.0f}/s)")
    missing = main["missing"] + serial["missing"]
    checked = len(lat) + len(serial["lat"])
    if missing:
        note = (f"array lookup: {len(missing)} of {checked} existing (batch, step) answered "
                f"404, e.g. {missing[:3]}")
        print(f"     WARNING: {note}")
        res.notes.append(note)
    if main["other"] + serial["other"]:
        note = (f"array lookup: {main['other'] + serial['other']} of {checked} answered an "
                f"instance other than the array's ((batch-1)*{batch_size}+step)-th")
        print(f"     WARNING: {note}")
        res.notes.append(note)


async def phase_heartbeat(client: httpx.AsyncClient, first: int, sz: Sizes, res: Result) -> None:
    ids, setup = await instantiate_and_launch(client, first, sz.heartbeat_ids)
    times = []
    for n in range(sz.heartbeat_calls + 1):
        t0 = time.perf_counter()
        out = await post(client, "/v3/fsm/task_instance/log_report_by/batch",
                         {"task_instance_ids": ids, "next_report_increment": INCREMENT})
        if n:  # the first call warms up
            times.append((time.perf_counter() - t0) * 1000)
        if out["updated"] != len(ids):
            raise RuntimeError(f"batch heartbeat updated {out['updated']} of {len(ids)}")
    res.values["hb"] = statistics.median(times)
    print(f"  2. batch heartbeat of {len(ids):,} LAUNCHED ids: median {res.values['hb']:.1f} ms "
          f"(min {min(times):.1f}, max {max(times):.1f}, {len(times)} calls; "
          f"instantiate+launch setup {setup:.2f} s)")


async def prepare_transitions(client: httpx.AsyncClient, n: int) -> tuple[list[int], int, float]:
    """A fresh array of n tasks, instantiated and launched: (instance ids, workflow id, s)."""
    out = await post(client, "/v3/workflows", {
        "name": "bench-transitions", "array": {"command": "echo {i}", "first": 0, "last": n - 1},
    }, timeout=600)
    first = await lookup(client, int(out["array_ids"][0]), 1, 0)
    ids, seconds = await instantiate_and_launch(client, first, n)
    return ids, int(out["id"]), seconds


def phase_transitions(server: Server, backend: str, args: argparse.Namespace, sz: Sizes,
                      res: Result) -> None:
    async def prepare() -> tuple[list[int], int, float]:
        async with httpx.AsyncClient(base_url=server.url, timeout=600) as client:
            return await prepare_transitions(client, sz.transitions)

    ids, wf_id, setup = asyncio.run(prepare())
    print(f"  1. {sz.transitions:,} tasks instantiated and launched in {setup:.2f} s "
          f"({sz.transitions / setup:,.0f}/s); {args.concurrency} simulated nodes in "
          f"{args.clients} load-generator process(es) ...", flush=True)
    with profiled(server, args.profile, f"{backend}-transitions"), \
            CpuMeter(server, backend) as cpu:
        load = run_load(server.url, ids, args.concurrency, args.clients)
    res.values.update(tps=load["rps"], tp50=load["p50"], tp99=load["p99"])
    kinds = "; ".join(f"{k} p50 {a:.1f} / p99 {b:.1f} ms" for k, (a, b) in load["by_kind"].items())
    print(f"  1. transitions: {load['requests']:,} requests in {load['wall']:.1f} s = "
          f"{load['rps']:,.0f} req/s; p50 {load['p50']:.1f} ms, p99 {load['p99']:.1f} ms")
    print(f"     {kinds}")
    print(f"     {cpu.text(load['client_cores'])}")
    res.notes.append(cpu.text(load["client_cores"]))
    if load["errors"]:
        print(f"     {len(load['errors'])} errors, e.g. {load['errors'][:3]}")
        res.notes.append(f"{len(load['errors'])} transition errors")
    counts = httpx.get(f"{server.url}/v3/workflows/{wf_id}", timeout=60).json()["counts"]
    if counts != {"D": sz.transitions}:
        print(f"     WARNING: the transitions workflow's task counts are {counts}")


def run_backend(backend: str, args: argparse.Namespace, sz: Sizes, work: Path) -> Result:
    res = Result(backend)
    print(f"\n=== {backend}: {args.workers} server process(es), fresh database ===", flush=True)
    with fresh_database(backend, args.keep) as url:
        server = Server(url, args.workers, work / f"server-{backend}.log").start()
        try:
            async def api_phases() -> None:
                async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
                    with profiled(server, args.profile, f"{backend}-submit"), \
                            CpuMeter(server, backend) as cpu:
                        array_id, first = await phase_submit(client, sz, res)
                    print(f"     {cpu.text()}")
                    with profiled(server, args.profile, f"{backend}-lookup"):
                        await phase_lookups(client, array_id, first, sz, args.array_batch_size,
                                            res)
                    await phase_heartbeat(client, first, sz, res)

            asyncio.run(api_phases())
            phase_transitions(server, backend, args, sz, res)
        finally:
            server.stop()
    print_backend(res)
    return res


# ---- output -------------------------------------------------------------------------------


def _cell(t: Target, res: Result) -> tuple[str, str, str]:
    v = res.values.get(t.key)
    if v is None:
        return "-", "-", "-"
    if not t.target:
        return f"{fmt(v)} {t.unit}", "", ""
    r = t.ratio(v)
    return f"{fmt(v)} {t.unit}", f"{r:.2f}x", "met" if r >= 1 else "MISSED"


def print_backend(res: Result) -> None:
    print(f"\n  {res.backend} figures (ratio >= 1 means the target is met: measured/target for "
          "a rate, target/measured for a time)")
    print(f"  {'figure':<42} {'measured':>14} {'target':>14} {'ratio':>7}  status")
    for t in TARGETS:
        value, ratio, status = _cell(t, res)
        target = t.text() if t.target else ""
        print(f"  {t.label:<42} {value:>14} {target:>14} {ratio:>7}  {status}")


def print_summary(results: list[Result], args: argparse.Namespace, sz: Sizes) -> None:
    cols = [r.backend for r in results]
    names = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}
    print("\n## farmstead core benchmark\n")
    print("| Figure | Target | " + " | ".join(names[c] for c in cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    for t in TARGETS:
        cells = []
        for r in results:
            value, ratio, status = _cell(t, r)
            cells.append(value if not ratio else f"{value} ({ratio}, {status})")
        target = t.text() if t.target else "-"
        print(f"| {t.label[3:]} | {target} | " + " | ".join(cells) + " |")
    print(f"\nSizes: {sz.array:,}-task array; {sz.transitions:,} tasks x 3 worker reports at "
          f"{args.concurrency} concurrent nodes from {args.clients} load-generator process(es) "
          f"(httpx); {sz.heartbeat_ids:,} ids per batch heartbeat; {sz.lookups:,} lookups at "
          f"concurrency {sz.lookup_concurrency}. Server: `farmstead serve --workers "
          f"{args.workers}` (uvicorn). Machine: {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, {platform.system()} {platform.release()}; the server, "
          f"the database and the load generator share it. Latencies are client-side.")
    print(f"Command: `{' '.join(['python', *sys.argv])}`")
    for r in results:
        for note in r.notes:
            print(f"- {names[r.backend]}: {note}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    p.add_argument("--workers", type=int, default=2, help="server processes (default 2)")
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run under a minute")
    p.add_argument("--clients", type=int, default=1,
                   help="load-generator processes for figure 1 (default 1)")
    p.add_argument("--concurrency", type=int, default=64, help="simulated worker nodes")
    p.add_argument("--tasks", type=int, help="tasks driven in figure 1 (default 20,000)")
    p.add_argument("--array-size", type=int, help="tasks of the big array (default 1,000,000)")
    p.add_argument("--array-batch-size", type=int, default=1000,
                   help="must match the server's FARMSTEAD_ARRAY_BATCH_SIZE (default 1000)")
    p.add_argument("--profile", type=Path, metavar="DIR",
                   help="py-spy the server during submit, lookups and transitions; raw stacks "
                   "in DIR, hot spots printed")
    p.add_argument("--keep", action="store_true", help="keep the databases afterwards")
    args = p.parse_args()
    sz = QUICK if args.quick else FULL
    if args.tasks:
        sz.transitions = args.tasks
    if args.array_size:
        sz.array = args.array_size
    sz.heartbeat_ids = min(sz.heartbeat_ids, sz.array)
    backends = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
    work = Path(tempfile.mkdtemp(prefix="farmstead_bench_logs_"))
    print(f"farmstead core benchmark ({'quick' if args.quick else 'full'}); server logs in {work}")
    results = [run_backend(b, args, sz, work) for b in backends]
    print_summary(results, args, sz)


if __name__ == "__main__":
    main()
