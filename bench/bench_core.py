"""farmstead core benchmark: a real `farmstead serve` process on a fresh database, over HTTP.

Figures (per backend):
  1. transition requests/s and p50/p99 latency with 64 concurrent simulated worker nodes, each
     taking instances and doing log_running, one log_report_by heartbeat, log_done;
  2. one batch heartbeat (log_report_by/batch) of 10,000 LAUNCHED instances, median of calls;
  3. array lookup (get_array_task_instance_id) p99 with the 1,000,000-instance array in place;
  4. submit time of a 1,000,000-task array (POST /v3/workflows), which seeds (3).

The phases run in the order 4, 3, 2, 1 on one server and one database, so the transition load
runs against tables that already hold the big array.

    .venv/bin/python bench/bench_core.py                  # both backends, full sizes
    .venv/bin/python bench/bench_core.py --quick --db sqlite
    .venv/bin/python bench/bench_core.py --profile prof   # py-spy the server per phase
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from _harness import ROOT, CpuMeter, Server, fresh_database, pct, profiled, wait_quiet
from _load import INCREMENT, KINDS, load_process, lookup_pass

# ---- sizes and targets ----------------------------------------------------------------------


@dataclass
class Sizes:
    array: int  # tasks of the big array (figures 3 and 4)
    transitions: int  # tasks driven through log_running / log_report_by / log_done (figure 1)
    heartbeat_ids: int  # ids per batch heartbeat (figure 2)
    heartbeat_calls: int
    lookups: int


FULL = Sizes(1_000_000, 20_000, 10_000, 9, 5_000)
QUICK = Sizes(20_000, 2_000, 10_000, 5, 1_000)


@dataclass
class Target:
    key: str
    label: str
    target: float  # 0: shown, no target
    unit: str
    higher_is_better: bool

    def ratio(self, value: float) -> float:
        """>= 1 means the target is met: measured/target for rates, target/measured for times."""
        if value <= 0:
            return 0.0 if self.higher_is_better else float("inf")
        return value / self.target if self.higher_is_better else self.target / value

    def text(self) -> str:
        return f"{'>=' if self.higher_is_better else '<'} {fmt(self.target)} {self.unit}"


TARGETS = [
    Target("tps", "1. transition requests/s, 64 nodes", 1000, "req/s", True),
    Target("tp50", "1. transition latency p50", 0, "ms", False),
    Target("tp99", "1. transition latency p99", 250, "ms", False),
    Target("hb", "2. batch heartbeat of 10,000 ids, median", 200, "ms", False),
    Target("lk99", "3. array lookup p99, 1M instances", 10, "ms", False),
    Target("submit", "4. submit a 1,000,000-task array", 60, "s", False),
]


def fmt(x: float) -> str:
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


@dataclass
class Result:
    backend: str
    values: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        print(f"     {text}")
        self.notes.append(text)


# ---- HTTP helpers (API calls whose client cost does not matter) -----------------------------


async def post(client: httpx.AsyncClient, path: str, body: Any, timeout: float = 120) -> Any:
    r = await client.post(path, json=body, timeout=timeout)
    if r.status_code >= 300:
        raise RuntimeError(f"POST {path}: {r.status_code} {r.text[:500]}")
    return r.json()


async def lookup(client: httpx.AsyncClient, array_id: int, batch: int, step: int) -> int:
    r = await client.get(f"/v3/fsm/get_array_task_instance_id/{array_id}/{batch}/{step}")
    r.raise_for_status()
    return int(r.json()["task_instance_id"])


async def submit_array(client: httpx.AsyncClient, name: str, size: int) -> tuple[dict[str, Any],
                                                                                float]:
    """Submit an array of `size` tasks; (the workflow, seconds)."""
    t0 = time.perf_counter()
    out = await post(client, "/v3/workflows", {
        "name": name, "array": {"command": "echo {i}", "first": 0, "last": size - 1},
    }, timeout=3600)
    elapsed = time.perf_counter() - t0
    if out["total"] != size:
        raise RuntimeError(f"submitted {size} tasks, the server counts {out['total']}")
    return out, elapsed


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
        for array_id, _name, batch, *_rest, tis in out["task_instance_batches"]:
            batches.add((array_id, batch))
            ids += tis
    launched = 0
    for array_id, batch in sorted(batches):
        out = await post(client, f"/v3/fsm/array/{array_id}/transition_to_launched",
                         {"batch_number": batch, "next_report_increment": INCREMENT})
        launched += out["launched"]
    if len(ids) != count or launched != count:
        raise RuntimeError(f"instantiated {len(ids)} and launched {launched} of {count}")
    return sorted(ids), time.perf_counter() - t0


# ---- the phases -----------------------------------------------------------------------------


async def phase_submit(client: httpx.AsyncClient, sz: Sizes, res: Result) -> tuple[int, int]:
    wf, seconds = await submit_array(client, "bench-big-array", sz.array)
    res.values["submit"] = seconds
    array_id = int(wf["array_ids"][0])
    first = await lookup(client, array_id, 1, 0)
    print(f"  4. submit {sz.array:,} tasks: {seconds:.2f} s ({sz.array / seconds:,.0f} tasks/s; "
          f"array {array_id}, first instance {first})")
    return array_id, first


async def phase_lookups(server: Server, args: argparse.Namespace, array_id: int, first: int,
                        sz: Sizes, res: Result) -> None:
    rng = random.Random(1)
    bs = args.array_batch_size

    def keys(n: int) -> list[tuple[int, int]]:
        return [(i // bs + 1, i % bs) for i in (rng.randrange(sz.array) for _ in range(n))]

    def run(n: int, concurrency: int) -> Any:
        return lookup_pass(args.client, server.host, server.port, array_id, first, keys(n),
                           concurrency, bs)

    await run(200, args.lookup_concurrency)  # warm-up
    serial = await run(max(200, sz.lookups // 5), 1)
    main = await run(sz.lookups, args.lookup_concurrency)
    lat = main["lat"]
    res.values["lk50"], res.values["lk99"] = pct(lat, 50), pct(lat, 99)
    print(f"  3. array lookup, {len(lat):,} random (batch, step) at concurrency "
          f"{args.lookup_concurrency}: p50 {pct(lat, 50):.2f} ms, p99 {pct(lat, 99):.2f} ms, "
          f"max {max(lat):.1f} ms ({main['rate']:,.0f}/s)")
    print(f"     one at a time: p50 {pct(serial['lat'], 50):.2f} ms, "
          f"p99 {pct(serial['lat'], 99):.2f} ms ({serial['rate']:,.0f}/s)")
    checked = len(lat) + len(serial["lat"])
    missing = main["missing"] + serial["missing"]
    if missing:
        res.note(f"WARNING array lookup: {len(missing)} of {checked} existing (batch, step) "
                 f"answered 404, e.g. {missing[:3]}")
    if main["other"] + serial["other"]:
        res.note(f"WARNING array lookup: {main['other'] + serial['other']} of {checked} "
                 f"answered an instance other than the ((batch-1)*{bs}+step)-th of the array")


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
          f"instantiate + launch of them took {setup:.2f} s)")


def run_load(server: Server, args: argparse.Namespace, ids: list[int]) -> dict[str, Any]:
    """Drive `ids` through the three worker reports from `args.clients` processes."""
    procs, conc = args.clients, args.concurrency
    shares = [ids[i::procs] for i in range(procs)]
    nodes = [conc // procs + (1 if i < conc % procs else 0) for i in range(procs)]
    start_at = time.time() + 3.0 + 0.5 * procs  # spawned processes import, connect, then start
    jobs = [(args.client, server.host, server.port, share, n, start_at)
            for share, n in zip(shares, nodes, strict=True)]
    with mp.get_context("spawn").Pool(procs) as pool:
        parts = pool.map(load_process, jobs)
    lat = {k: [x for p in parts for x in p["lat"][k]] for k in KINDS}
    wall = max(p["t1"] for p in parts) - min(p["t0"] for p in parts)
    every = [x for k in KINDS for x in lat[k]]
    errors: Counter[str] = Counter()
    for p in parts:
        errors.update(p["errors"])
    return {
        "requests": len(every), "wall": wall, "rps": len(every) / wall,
        "p50": pct(every, 50), "p99": pct(every, 99),
        "by_kind": {k: (pct(v, 50), pct(v, 99)) for k, v in lat.items()},
        "errors": errors, "client_cpu": sum(p["cpu"] for p in parts),
        "reconnects": sum(p["reconnects"] for p in parts),
    }


def phase_transitions(server: Server, backend: str, args: argparse.Namespace, sz: Sizes,
                      res: Result) -> None:
    async def prepare() -> tuple[list[int], int, float]:
        async with httpx.AsyncClient(base_url=server.url, timeout=600) as client:
            wf, _ = await submit_array(client, "bench-transitions", sz.transitions)
            first = await lookup(client, int(wf["array_ids"][0]), 1, 0)
            ids, seconds = await instantiate_and_launch(client, first, sz.transitions)
            return ids, int(wf["id"]), seconds

    quiet(args, res)  # before the instances are launched: their deadlines run from then on
    ids, wf_id, setup = asyncio.run(prepare())
    print(f"  1. {sz.transitions:,} tasks instantiated and launched in {setup:.2f} s; "
          f"{args.concurrency} simulated nodes, {args.client} client, {args.clients} "
          f"load-generator process(es) ...", flush=True)
    with profiled(server, args.profile, f"{backend}-transitions"), \
            CpuMeter(server, backend) as cpu:
        load = run_load(server, args, ids)
        cpu.add_client(load["client_cpu"])
    res.values.update(tps=load["rps"], tp50=load["p50"], tp99=load["p99"])
    print(f"  1. transitions: {load['requests']:,} requests in {load['wall']:.1f} s = "
          f"{load['rps']:,.0f} req/s; p50 {load['p50']:.1f} ms, p99 {load['p99']:.1f} ms")
    print("     " + "; ".join(f"{k} p50 {a:.1f} / p99 {b:.1f} ms"
                              for k, (a, b) in load["by_kind"].items()))
    res.note(f"transitions: {cpu.text()}")
    if load["errors"]:
        total = sum(load["errors"].values())
        res.note(f"WARNING transitions: {total} failed or unexpected answers: "
                 + "; ".join(f"{n} x {e}" for e, n in load["errors"].most_common(4)))
    if load["reconnects"]:
        print(f"     {load['reconnects']} stale keep-alive connections reopened")
    counts = httpx.get(f"{server.url}/v3/workflows/{wf_id}", timeout=60).json()["counts"]
    if counts != {"D": sz.transitions}:
        res.note(f"WARNING transitions: the workflow's task counts are {counts}, "
                 f"not all {sz.transitions} DONE")


def quiet(args: argparse.Namespace, res: Result) -> None:
    """Wait for other programs on the machine to calm down; note how busy they were."""
    load = wait_quiet(args.wait_quiet, window=2.0 if args.quick else 5.0)
    print(f"     background load before the phase: {load:.2f} cores")
    if load >= 0.3:
        res.note(f"WARNING other programs kept {load:.2f} cores busy before a phase")


def run_backend(backend: str, args: argparse.Namespace, sz: Sizes, work: Path) -> Result:
    res = Result(backend)
    print(f"\n=== {backend}: farmstead serve --workers {args.workers}, fresh database ===",
          flush=True)
    quiet(args, res)
    with fresh_database(backend, args.keep) as url:
        server = Server(url, args.workers, work / f"server-{backend}.log").start()
        try:
            async def api_phases() -> None:
                async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
                    with profiled(server, args.profile, f"{backend}-submit"), \
                            CpuMeter(server, backend) as cpu:
                        array_id, first = await phase_submit(client, sz, res)
                    res.note(f"submit: {cpu.text()}")
                    with profiled(server, args.profile, f"{backend}-lookup"), \
                            CpuMeter(server, backend) as cpu:
                        await phase_lookups(server, args, array_id, first, sz, res)
                    res.note(f"lookups: {cpu.text()}")
                    with profiled(server, args.profile, f"{backend}-heartbeat"):
                        await phase_heartbeat(client, first, sz, res)

            asyncio.run(api_phases())
            phase_transitions(server, backend, args, sz, res)
        finally:
            server.stop()
    print_backend(res)
    return res


# ---- output -------------------------------------------------------------------------------

NAMES = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}


def _cell(t: Target, res: Result) -> tuple[str, str, str]:
    v = res.values.get(t.key)
    if v is None:
        return "-", "", ""
    if not t.target:
        return f"{fmt(v)} {t.unit}", "", ""
    r = t.ratio(v)
    return f"{fmt(v)} {t.unit}", f"{r:.2f}x", "met" if r >= 1 else "MISSED"


def print_backend(res: Result) -> None:
    print(f"\n  {NAMES[res.backend]} (ratio >= 1 means met: measured/target for a rate, "
          "target/measured for a time)")
    print(f"  {'figure':<42} {'measured':>12} {'target':>14} {'ratio':>7}  status")
    for t in TARGETS:
        value, ratio, status = _cell(t, res)
        print(f"  {t.label:<42} {value:>12} {t.text() if t.target else '':>14} {ratio:>7}  "
              f"{status}")


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "src"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out + (" + uncommitted changes in src/" if dirty else "")


def print_summary(results: list[Result], args: argparse.Namespace, sz: Sizes) -> None:
    print("\n## farmstead core benchmark\n")
    print("| Figure | Target | " + " | ".join(NAMES[r.backend] for r in results) + " |")
    print("|---|---|" + "---|" * len(results))
    for t in TARGETS:
        cells = []
        for r in results:
            value, ratio, status = _cell(t, r)
            cells.append(f"{value} ({ratio}, {status})" if ratio else value)
        print(f"| {t.label[3:]} | {t.text() if t.target else '-'} | " + " | ".join(cells) + " |")
    print(f"\n{sz.array:,}-task array; {sz.transitions:,} tasks x 3 worker reports from "
          f"{args.concurrency} concurrent simulated nodes ({args.client} HTTP/1.1 keep-alive "
          f"client, {args.clients} load-generator process(es)); {sz.heartbeat_ids:,} ids per "
          f"batch heartbeat, median of {sz.heartbeat_calls}; {sz.lookups:,} lookups at "
          f"concurrency {args.lookup_concurrency}. Server: `farmstead serve --workers "
          f"{args.workers}` (uvicorn; default settings, reconciler on), farmstead "
          f"{_git_commit()}. Machine: {os.cpu_count()} "
          f"cores shared by the server, the database and the load generator; Python "
          f"{platform.python_version()}. Latencies are measured by the client."
          + (" py-spy was attached (figures perturbed)." if args.profile else ""))
    print(f"Command: `{' '.join(['python', *sys.argv])}`\n")
    for r in results:
        for note in r.notes:
            print(f"- {NAMES[r.backend]}: {note}")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=(__doc__ or "").split("\n", 1)[1])
    p.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    p.add_argument("--workers", type=int, default=2, help="server processes (default 2)")
    p.add_argument("--quick", action="store_true",
                   help="small sizes (20k-task array, 2k tasks driven): a smoke run")
    p.add_argument("--client", choices=["raw", "httpx"], default="raw",
                   help="load-generator HTTP client for figures 1 and 3 (default raw: minimal "
                   "asyncio HTTP/1.1, one keep-alive connection per node; httpx: one pooled "
                   "AsyncClient per process, which costs ~20x more client CPU per request)")
    p.add_argument("--clients", type=int, help="load-generator processes for figure 1 "
                   "(default 1 with --client raw, 2 with httpx)")
    p.add_argument("--concurrency", type=int, default=64, help="simulated worker nodes")
    p.add_argument("--lookup-concurrency", type=int, default=4,
                   help="lookups in flight for figure 3 (default 4)")
    p.add_argument("--tasks", type=int, help="tasks driven in figure 1 (default 20,000)")
    p.add_argument("--array-size", type=int, help="tasks of the big array (default 1,000,000)")
    p.add_argument("--array-batch-size", type=int, default=1000,
                   help="must match the server's FARMSTEAD_ARRAY_BATCH_SIZE (default 1000)")
    p.add_argument("--profile", type=Path, metavar="DIR",
                   help="py-spy the server in each phase: raw stacks in DIR, hot spots printed")
    p.add_argument("--wait-quiet", type=float, default=300, metavar="SECONDS",
                   help="before each backend and before figure 1, wait up to this long for "
                   "other programs to use under 0.3 cores (default 300)")
    p.add_argument("--keep", action="store_true", help="keep the databases afterwards")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    if args.clients is None:
        args.clients = 1 if args.client == "raw" else 2
    sz = QUICK if args.quick else FULL
    sz.transitions = args.tasks or sz.transitions
    sz.array = args.array_size or sz.array
    sz.heartbeat_ids = min(sz.heartbeat_ids, sz.array)
    backends = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
    work = Path(tempfile.mkdtemp(prefix="farmstead_bench_logs_"))
    print(f"farmstead core benchmark ({'quick' if args.quick else 'full'} sizes); "
          f"server logs in {work}")
    results = [run_backend(b, args, sz, work) for b in backends]
    print_summary(results, args, sz)


if __name__ == "__main__":
    main()
