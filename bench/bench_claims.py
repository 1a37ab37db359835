"""Scheduling benchmark (issue 12): claims under fair share, and dependency graphs.

1. Claims: 1,000,000 QUEUED instances in 100 queues (weights 1..10, one workflow of 10,000
   tasks each), 64 agents claiming concurrently, each over its own keep-alive connection: claim
   one instance, report it running, hold it for about `--hold` seconds (its "task": 0.5 to 1.5
   times it, at random; the agents start at random within it; default 2 s, 32 claims a second
   in all), report it done, claim again; then once with no hold at all (each
   agent claims again at once: the most claims a second one server process gives). Claim
   latency p50/p99 as the claimers see it. The same 64 clients then drive a
   bare FastAPI app (bench/peers/bare_app.py: the framework's own cost, no database) with the
   same three requests, interleaved round by round, and the ratio is printed.
2. A graph of 100,000 tasks (1,000 chains of 100, by name): time to submit it (one POST).
3. The local executor (`--local-workers 8`) running a smaller graph of `true` (chains), against
   the same number of tasks with no edges, and against a bare process pool (the commands run by
   asyncio subprocesses, 8 at a time): what farmstead adds per task, and what edges add.

Target (issue 12): claim p99 under 20 ms on PostgreSQL; submit of the 100,000-task graph under
10 s; farmstead adding under 5 ms per task through the local executor.

Usage: python bench/bench_claims.py [--db sqlite|postgresql|both] [--per-queue 10000]
       [--claimers 64] [--claims 30] [--hold 0.5] [--rounds 2] [--skip-claims] [--skip-graph]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from _harness import Server, fresh_database, pct
from _load import RawHTTP
from _peers import BarePeer

QUEUES = 100
INCREMENT = 86400.0


# ---- 1. claims --------------------------------------------------------------------------------


def fill(url: str, per_queue: int) -> float:
    """100 queues, one workflow of `per_queue` tasks in each; seconds to submit them all."""
    with httpx.Client(base_url=url, timeout=600) as http:
        for q in range(QUEUES):
            body = {"path": f"/q{q:02d}", "weight": 1 + q % 10}
            http.post("/v3/queues", json=body).raise_for_status()
        start = time.perf_counter()
        for q in range(QUEUES):
            http.post("/v3/workflows", json={
                "name": f"w{q}", "queue": f"/q{q:02d}",
                "array": {"command": "true", "first": 0, "last": per_queue - 1},
            }).raise_for_status()  # fmt: skip
        return time.perf_counter() - start


def agents(url: str, n: int) -> list[int]:
    with httpx.Client(base_url=url, timeout=60) as http:
        return [
            int(http.post("/v3/agents", json={"name": f"a{i}", "hostname": f"node{i}",
                                               "kind": "worker"}).json()["id"])
            for i in range(n)
        ]


async def _claimer(
    port: int, agent: int | None, claims: int, hold: float, lat: list[float], errors: list[str]
) -> int:
    """One agent: claim, run (hold), done; `claims` times. How many it got."""
    http = RawHTTP("127.0.0.1", port)
    got = 0
    body = json.dumps({"limit": 1, "agent_id": agent} if agent else {"limit": 1}).encode()
    try:
        await asyncio.sleep(random.uniform(0, hold))  # agents start at different times
        for _ in range(claims):
            t0 = time.perf_counter()
            status, data = await http.request("POST", "/v3/claims", body)
            lat.append(time.perf_counter() - t0)
            if status != 200:
                errors.append(f"claim {status} {data[:200]!r}")
                continue
            answer = json.loads(data)
            rows = answer.get("data", [{"task_instance_id": 1}])
            if not rows:
                errors.append("claim gave nothing")
                continue
            ti = rows[0]["task_instance_id"]
            got += 1
            running = json.dumps({"next_report_increment": INCREMENT, "nodename": "n"}).encode()
            await http.request("POST", f"/v3/fsm/task_instance/{ti}/log_running", running)
            await asyncio.sleep(hold * random.uniform(0.5, 1.5))  # tasks differ in length
            await http.request("POST", f"/v3/fsm/task_instance/{ti}/log_done", b"{}")
    finally:
        await http.aclose()
    return got


async def claim_round(
    port: int, agent_ids: list[int | None], claims: int, hold: float
) -> tuple[list[float], int, list[str], float]:
    lat: list[float] = []
    errors: list[str] = []
    start = time.perf_counter()
    got = await asyncio.gather(
        *(_claimer(port, a, claims, hold, lat, errors) for a in agent_ids)
    )
    return lat, sum(got), errors, time.perf_counter() - start


def shares(url: str) -> list[tuple[str, int]]:
    with httpx.Client(base_url=url, timeout=60) as http:
        return [(q["path"], q["agents"]) for q in http.get("/v3/queues").json()["data"]]


def bench_claims(backend: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    print(f"[{backend}] {QUEUES} queues x {args.per_queue} QUEUED, {args.claimers} claimers, "
          f"{args.claims} claims each per round, hold {args.hold} s")  # fmt: skip
    out: dict[str, Any] = {"backend": backend}
    with fresh_database(backend, keep=False) as url:
        server = Server(url, workers=1, log_path=work / f"claims-{backend}.log",
                        env={"reconciler_enabled": "false"}).start()  # fmt: skip
        bare = BarePeer(work)
        bare_url = bare.start()
        try:
            out["fill_s"] = fill(server.url, args.per_queue)
            print(f"  submitted {QUEUES * args.per_queue:,} tasks in {out['fill_s']:.1f} s")
            ids: list[int | None] = list(agents(server.url, args.claimers))
            fs, bs = [], []
            for r in range(args.rounds):
                lat, got, errors, wall = asyncio.run(
                    claim_round(server.port, ids, args.claims, args.hold))
                if errors:
                    raise RuntimeError(f"farmstead claims failed: {errors[:3]}")
                fs += lat
                print(f"  round {r + 1} farmstead: {got} claims in {wall:.1f} s "
                      f"({got / wall:.0f}/s), p50 {pct(lat, 50) * 1000:.1f} ms, "
                      f"p99 {pct(lat, 99) * 1000:.1f} ms")  # fmt: skip
                port = int(bare_url.rsplit(":", 1)[1])
                lat, got, _errors, wall = asyncio.run(
                    claim_round(port, [None] * args.claimers, args.claims, args.hold))
                bs += lat
                print(f"  round {r + 1} bare FastAPI: p50 {pct(lat, 50) * 1000:.1f} ms, "
                      f"p99 {pct(lat, 99) * 1000:.1f} ms")  # fmt: skip
            out |= {
                "p50": pct(fs, 50) * 1000, "p99": pct(fs, 99) * 1000,
                "bare_p50": pct(bs, 50) * 1000, "bare_p99": pct(bs, 99) * 1000,
            }  # fmt: skip
            lat, got, errors, wall = asyncio.run(
                claim_round(server.port, ids, args.claims, 0.0))
            out |= {"sat_rate": got / wall, "sat_p50": pct(lat, 50) * 1000,
                    "sat_p99": pct(lat, 99) * 1000}
            print(f"  saturated (no hold): {got / wall:.0f} claims/s, p50 {out['sat_p50']:.1f} ms, "
                  f"p99 {out['sat_p99']:.1f} ms")
        finally:
            server.stop()
            bare.stop()
    return out


# ---- 2. and 3. graphs -------------------------------------------------------------------------


def chains(n: int, length: int, command: str = "true") -> list[dict[str, Any]]:
    tasks = []
    for c in range(n):
        for k in range(length):
            task: dict[str, Any] = {"name": f"c{c}-{k}", "command": command}
            if k:
                task["depends_on"] = [f"c{c}-{k - 1}"]
            tasks.append(task)
    return tasks


def submit_graph(backend: str, n: int, length: int, work: Path) -> float:
    """Seconds for the POST of a graph of n chains of `length` (server: no executor)."""
    with fresh_database(backend, keep=False) as url:
        server = Server(url, workers=1, log_path=work / f"graph-{backend}.log").start()
        try:
            body = json.dumps({"name": "graph", "tasks": chains(n, length)}).encode()
            with httpx.Client(base_url=server.url, timeout=600) as http:
                start = time.perf_counter()
                r = http.post("/v3/workflows", content=body,
                              headers={"content-type": "application/json"})  # fmt: skip
                took = time.perf_counter() - start
                r.raise_for_status()
                counts = r.json()["counts"]
            assert counts == {"Q": n, "H": n * (length - 1)}, counts
            return took
        finally:
            server.stop()


def run_through_executor(backend: str, body: dict[str, Any], slots: int, work: Path) -> float:
    """Seconds from submit to the end of a workflow run by `--local-workers slots`."""
    with fresh_database(backend, keep=False) as url:
        server = Server(url, workers=1, log_path=work / f"exec-{backend}.log",
                        env={"local_workers": slots}).start()  # fmt: skip
        try:
            with httpx.Client(base_url=server.url, timeout=600) as http:
                start = time.perf_counter()
                wf = http.post("/v3/workflows", json=body)
                wf.raise_for_status()
                while True:
                    state = http.get(f"/v3/workflows/{wf.json()['id']}").json()
                    if state["status"] != "R":
                        if state["status"] != "D":
                            raise RuntimeError(f"workflow ended {state}")
                        return time.perf_counter() - start
                    time.sleep(0.05)
        finally:
            server.stop()


async def _bare_pool(tasks: int, slots: int) -> float:
    """The same commands with no server: asyncio subprocesses, `slots` at a time."""
    gate = asyncio.Semaphore(slots)

    async def one() -> None:
        async with gate:
            proc = await asyncio.create_subprocess_shell("true")
            await proc.wait()

    start = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(tasks)))
    return time.perf_counter() - start


def bench_graph(backend: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"backend": backend}
    n, length = args.graph_chains, args.graph_length
    out["submit_s"] = submit_graph(backend, n, length, work)
    print(f"[{backend}] submit of {n * length:,} tasks ({n} chains of {length}): "
          f"{out['submit_s']:.2f} s")  # fmt: skip
    rn, rl, slots = args.run_chains, args.run_length, args.slots
    tasks = rn * rl
    graph = {"name": "chains", "tasks": chains(rn, rl)}
    flat = {"name": "flat", "array": {"command": "true", "first": 0, "last": tasks - 1}}
    g, f, b = [], [], []
    for _ in range(args.rounds):
        g.append(run_through_executor(backend, graph, slots, work))
        f.append(run_through_executor(backend, flat, slots, work))
        b.append(asyncio.run(_bare_pool(tasks, slots)))
    out |= {"graph_s": min(g), "flat_s": min(f), "bare_s": min(b), "tasks": tasks}
    print(f"[{backend}] {tasks} tasks of `true`, --local-workers {slots} (best of "
          f"{args.rounds}): chains {min(g):.1f} s, no edges {min(f):.1f} s, bare pool "
          f"{min(b):.1f} s; farmstead adds {(min(g) - min(b)) / tasks * 1000:.1f} ms/task "
          f"with edges, {(min(f) - min(b)) / tasks * 1000:.1f} ms/task without")  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    ap.add_argument("--per-queue", type=int, default=10_000)
    ap.add_argument("--claimers", type=int, default=64)
    ap.add_argument("--claims", type=int, default=30, help="claims per claimer per round")
    ap.add_argument("--hold", type=float, default=2.0, help="seconds each claimed task runs")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--graph-chains", type=int, default=1000)
    ap.add_argument("--graph-length", type=int, default=100)
    ap.add_argument("--run-chains", type=int, default=50)
    ap.add_argument("--run-length", type=int, default=20)
    ap.add_argument("--slots", type=int, default=8)
    ap.add_argument("--skip-claims", action="store_true")
    ap.add_argument("--skip-graph", action="store_true")
    args = ap.parse_args()
    backends = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for backend in backends:
            row: dict[str, Any] = {"backend": backend}
            if not args.skip_claims:
                row |= bench_claims(backend, args, Path(tmp))
            if not args.skip_graph:
                row |= bench_graph(backend, args, Path(tmp))
            results.append(row)
    print()
    print("| figure | target | " + " | ".join(r["backend"] for r in results) + " |")
    print("|---|---|" + "---|" * len(results))

    def line(name: str, target: str, fmt: Any) -> None:
        cells = []
        for r in results:
            try:
                cells.append(fmt(r))
            except KeyError:
                cells.append("-")
        print(f"| {name} | {target} | " + " | ".join(cells) + " |")

    line("claim p50 (1M QUEUED, 100 queues, 64 claimers)", "-",
         lambda r: f"{r['p50']:.1f} ms (bare {r['bare_p50']:.1f})")
    line("claim p99", "< 20 ms (PG)",
         lambda r: f"{r['p99']:.1f} ms (bare {r['bare_p99']:.1f}, {r['p99'] / r['bare_p99']:.1f}x)")
    line("claims/s with no hold (p50 / p99)", "-",
         lambda r: f"{r['sat_rate']:.0f}/s ({r['sat_p50']:.0f} / {r['sat_p99']:.0f} ms)")
    line("submit of 1M tasks in 100 workflows", "-", lambda r: f"{r['fill_s']:.1f} s")
    line(f"submit of a {args.graph_chains * args.graph_length:,}-task graph", "< 10 s",
         lambda r: f"{r['submit_s']:.2f} s")
    line("local executor, farmstead per task (chains)", "< 5 ms",
         lambda r: f"{(r['graph_s'] - r['bare_s']) / r['tasks'] * 1000:.1f} ms")
    line("local executor, farmstead per task (no edges)", "-",
         lambda r: f"{(r['flat_s'] - r['bare_s']) / r['tasks'] * 1000:.1f} ms")


if __name__ == "__main__":
    main()
