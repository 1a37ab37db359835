"""farmstead event-stream benchmark (issue 13): 100 subscribers while transitions flow at full rate.

One `farmstead serve` process on a fresh database per run. The load: 100 workflows of
`--tasks` tasks each, and `--workers` simulated workers (bare keep-alive HTTP connections in one
process, light enough that the server, not the load generator, sets the pace) each looping
claim -> log_running -> log_done as fast as the server answers. The measure: tasks
finished a second over `--seconds` (each is six moves: its instance Q->I->R->D and its task's).

Runs alternate (A B A B ...): A with no subscriber, B with `--subscribers` SSE subscribers
(another process), each following one of the 100 workflows (`GET /v3/events?workflow=W`, what
`farmstead status --watch` does), or with `--firehose`, every event. For every event a
subscriber receives, its delivery latency is the receive time minus the event's own
`timestamp` (the database's clock at the move, before its commit). Targets: delivery p99 under
1 s; the rate with subscribers within 10 % of the rate without.

    .venv/bin/python bench/bench_events.py                 # both databases, 2 rounds (~4 min)
    .venv/bin/python bench/bench_events.py --db sqlite --rounds 1 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from _harness import CpuMeter, Server, cpu_of, cpu_used, fresh_database, pct

CONTENT_LENGTH = re.compile(rb"(?i)\r\ncontent-length: *([0-9]+)")
TIMESTAMP = re.compile(rb'"timestamp":([0-9]+\.[0-9]+)')
WORKFLOWS = 100


# ---- subscribers (their own process) ------------------------------------------------------------


async def _subscribe(
    host: str, port: int, query: str, latencies: list[float], ready: list[int]
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        f"GET /v3/events{query} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        "Accept: text/event-stream\r\n\r\n".encode()
    )
    await writer.drain()
    rest = b""
    opened = False
    try:
        while chunk := await reader.read(65536):
            now = time.time()
            if not opened:
                opened = True
                ready.append(1)
            data = rest + chunk
            end = 0
            for m in TIMESTAMP.finditer(data):
                latencies.append(now - float(m[1]))
                end = m.end()
            rest = data[end:][-200:]
    finally:
        writer.close()


def subscribers_main(
    host: str, port: int, queries: list[str], out: Any, started: Any, stop: Any, nice: int
) -> None:
    """A process of SSE subscribers, connected until `stop` (and a second more for what is
    on its way); sends back every delivery latency."""
    if nice:
        os.nice(nice)

    async def main() -> list[float]:
        latencies: list[float] = []
        ready: list[int] = []
        tasks = [
            asyncio.create_task(_subscribe(host, port, q, latencies, ready)) for q in queries
        ]
        while len(ready) < len(queries):
            await asyncio.sleep(0.05)
        started.set()
        while not stop.is_set():
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return latencies

    out.put(asyncio.run(main()))


# ---- the load ------------------------------------------------------------------------------------


class Connection:
    """A bare keep-alive HTTP/1.1 connection that POSTs JSON: a load generator that costs the
    machine a few dozen microseconds a request (httpx costs a millisecond or two, and one
    process of it ran out of CPU before the server did, so it measured itself)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port

    async def __aenter__(self) -> Connection:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.writer.close()

    async def post(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        data = orjson.dumps(body)
        self.writer.write(
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n".encode() + data
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        m = CONTENT_LENGTH.search(head)
        if m is None:
            raise RuntimeError(f"an answer with no Content-Length: {head[:200]!r}")
        payload = await self.reader.readexactly(int(m[1]))
        return status, orjson.loads(payload) if payload else None


async def _worker(host: str, port: int, until: float, done: list[int]) -> None:
    async with Connection(host, port) as conn:
        while time.time() < until:
            status, answer = await conn.post("/v3/claims", {"limit": 1})
            got = answer.get("data") if status == 200 else None
            if not got:
                await asyncio.sleep(0.05)
                continue
            ti = got[0]["task_instance_id"]
            await conn.post(f"/v3/fsm/task_instance/{ti}/log_running",
                            {"nodename": "bench", "next_report_increment": 600})  # fmt: skip
            status, _ = await conn.post(f"/v3/fsm/task_instance/{ti}/log_done", {"wallclock": 0.0})
            if status == 200:
                done.append(1)


async def _load(
    server: Server, workers: int, warmup: float, seconds: float, meter: CpuMeter, watched: list[int]
) -> tuple[float, float]:
    """Tasks finished a second after the warm-up; and the cores `watched` used meanwhile."""
    done: list[int] = []
    until = time.time() + warmup + seconds
    tasks = [
        asyncio.create_task(_worker(server.host, server.port, until, done)) for _ in range(workers)
    ]
    await asyncio.sleep(warmup)
    before = len(done)
    with meter:
        other0 = cpu_of(watched)
        await asyncio.gather(*tasks)
        other = cpu_used(other0, cpu_of(watched))
    return (len(done) - before) / seconds, other / meter.wall


def measured_run(
    backend: str, args: argparse.Namespace, subscribers: int, work: Path
) -> dict[str, Any]:
    """One run on a fresh database and server: its rate, CPU and delivery latencies."""
    with fresh_database(backend, keep=False) as url:
        env = {"event_poll_interval": args.poll, "reconciler_enabled": "false"}
        server = Server(url, workers=1, log_path=work / f"events-{backend}.log", env=env).start()
        try:
            ids = []
            with httpx.Client(base_url=server.url, timeout=120) as c:
                for w in range(WORKFLOWS):
                    r = c.post("/v3/workflows", json={"name": f"e{w}", "array": {
                        "command": "true", "first": 0, "last": args.tasks - 1}})  # fmt: skip
                    r.raise_for_status()
                    ids.append(r.json()["id"])
            proc = out = stop = None
            if subscribers:  # connected before the load starts; the same warm-up either way
                queries = (
                    [""] * subscribers
                    if args.firehose
                    else [f"?workflow={ids[i % WORKFLOWS]}" for i in range(subscribers)]
                )
                ctx = mp.get_context("spawn")
                out, started, stop = ctx.Queue(), ctx.Event(), ctx.Event()
                where = (server.host, server.port)
                proc = ctx.Process(
                    target=subscribers_main,
                    args=(*where, queries, out, started, stop, args.subscriber_nice),
                )
                proc.start()
                if not started.wait(60):
                    raise RuntimeError("the subscribers did not connect")
            meter = CpuMeter(server, backend)
            watched = [proc.pid] if proc is not None and proc.pid else []
            rate, sub_cores = asyncio.run(
                _load(server, args.workers, args.warmup, args.seconds, meter, watched)
            )
            latencies: list[float] = []
            if proc is not None and out is not None and stop is not None:
                stop.set()
                latencies = out.get(timeout=120)
                proc.join(30)
            cores = meter.cores
            return {
                "rate": rate,
                "latencies": latencies,
                "subscribers": subscribers,
                # the server's CPU (and PostgreSQL's) per finished task, in ms
                "server_ms": (cores["server"] + cores["postgres"]) / max(rate, 1e-9) * 1000,
                "cores": f"server {cores['server']:.2f}, postgres {cores['postgres']:.2f}, "
                f"load {cores['client']:.2f}, subscribers {sub_cores:.2f}, "
                f"machine {cores['machine']:.2f}",
            }
        finally:
            server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--workers", type=int, default=32)
    ap.add_argument("--tasks", type=int, default=300, help="tasks per workflow (100 workflows)")
    ap.add_argument("--subscribers", type=int, default=100)
    ap.add_argument("--poll", type=float, default=0.25, help="the feed's poll interval (s)")
    ap.add_argument("--firehose", action="store_true", help="subscribers take every event")
    ap.add_argument("--subscriber-nice", type=int, default=0, metavar="N",
                    help="run the subscribers' process at this nice level (they stand for "
                    "clients on other machines; 0: compete for the cores as equals)")
    args = ap.parse_args()
    backends = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for backend in backends:
            plain: list[float] = []
            watched: list[float] = []
            cost: dict[bool, list[float]] = {False: [], True: []}
            latencies: list[float] = []
            for r in range(args.rounds):
                order = [0, args.subscribers] if r % 2 == 0 else [args.subscribers, 0]
                for subs in order:
                    res = measured_run(backend, args, subs, Path(tmp))
                    (watched if subs else plain).append(res["rate"])
                    cost[bool(subs)].append(res["server_ms"])
                    latencies += res["latencies"]
                    lat = res["latencies"]
                    seen = f", {len(lat)} deliveries, p99 {pct(lat, 99) * 1000:.0f} ms"
                    print(f"[{backend}] round {r + 1}, {subs} subscribers: "
                          f"{res['rate']:.0f} tasks/s" + (seen if subs else "")
                          + f"; server+db CPU {res['server_ms']:.2f} ms/task; "
                          f"cores: {res['cores']}")  # fmt: skip
            rows.append((backend, statistics.median(plain), statistics.median(watched),
                         latencies, statistics.median(cost[False]),
                         statistics.median(cost[True])))  # fmt: skip
    kind = "every event" if args.firehose else "one workflow each"
    print()
    print(f"| figure ({args.subscribers} subscribers, {kind}) | target | "
          + " | ".join(b for b, *_ in rows) + " |")  # fmt: skip
    print("|---|---|" + "---|" * len(rows))
    print("| tasks/s, no subscriber (median) | - | "
          + " | ".join(f"{r[1]:.0f}" for r in rows) + " |")  # fmt: skip
    cells = [f"{r[2]:.0f} ({(r[2] / r[1] - 1) * 100:+.1f} %)" for r in rows]
    print("| tasks/s, with subscribers | within 10 % | " + " | ".join(cells) + " |")
    print("| delivery p50 / p99 | p99 < 1 s | " + " | ".join(
        f"{pct(lat, 50) * 1000:.0f} / {pct(lat, 99) * 1000:.0f} ms ({len(lat):,})"
        for _, _, _, lat, _, _ in rows) + " |")  # fmt: skip
    print("| server+database CPU per task, without / with | - | " + " | ".join(
        f"{r[4]:.2f} / {r[5]:.2f} ms ({(r[5] / r[4] - 1) * 100:+.1f} %)" for r in rows) + " |")


if __name__ == "__main__":
    main()
