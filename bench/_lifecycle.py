"""The worker-lifecycle load generator of bench_speed.py: Jobmon's worker protocol over raw HTTP.

A simulated worker takes an instance and sends what Jobmon's worker node sends for it:
`log_running`, 5 x `log_report_by`, `log_done`. Two connection modes:

- `new`: a new TCP connection per request (connect, one request, read the answer, close), as
  Jobmon's worker does (its requester opens a fresh connection for every call);
- `keep`: one keep-alive connection per simulated worker.

The client is an asyncio Protocol (on uvloop when installed) that does no more than write the
request bytes and split the answer on Content-Length: about 0.05 ms of client CPU per request
with keep-alive and a little more with a new connection each time; the caller prints its CPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any

INCREMENT = 86400.0  # next_report_increment: a day, so no deadline passes during a run
SEQUENCE = ("log_running",) + ("log_report_by",) * 5 + ("log_done",)
KINDS = ("log_running", "log_report_by", "log_done")
EXPECT = {"log_running": "R", "log_report_by": "R", "log_done": "D"}


def new_loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop's event loop when installed (cheaper for the client), else asyncio's."""
    try:
        import uvloop

        return uvloop.new_event_loop  # type: ignore[no-any-return]
    except ImportError:
        return asyncio.new_event_loop


class _Answer(asyncio.Protocol):
    """One HTTP/1.1 connection: collects the answer to the request in flight."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.waiter is not None and not self.waiter.done():
            done = self._parse()
            if done is not None:
                self.waiter.set_result(done)

    def _parse(self) -> tuple[int, bytes] | None:
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = bytes(self.buf[:end]).lower()
        status = int(head[9:12])
        start = end + 4
        if b"transfer-encoding: chunked" in head:
            stop = self.buf.find(b"\r\n0\r\n\r\n", start)
            if stop < 0:
                return None
            body, pos, parts = bytes(self.buf[start:stop + 7]), 0, []
            while True:
                eol = body.index(b"\r\n", pos)
                size = int(body[pos:eol].split(b";")[0], 16)
                if not size:
                    break
                parts.append(body[eol + 2:eol + 2 + size])
                pos = eol + 4 + size
            del self.buf[:stop + 7]
            return status, b"".join(parts)
        at = head.find(b"content-length:")
        length = 0
        if at >= 0:
            eol = head.find(b"\r\n", at)
            length = int(head[at + 15:eol if eol >= 0 else len(head)])
        if len(self.buf) < start + length:
            return None
        data = bytes(self.buf[start:start + length])
        del self.buf[:start + length]
        return status, data

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection closed by the server"))


class Client:
    """Requests of one simulated worker, one at a time; `new` or `keep` connection mode."""

    def __init__(self, host: str, port: int, mode: str, header: str = "") -> None:
        self.host, self.port, self.mode = host, port, mode
        self.header = header  # e.g. "Authorization: Bearer …\r\n"
        self.conn: _Answer | None = None
        self.connects = 0

    async def _open(self) -> _Answer:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_connection(_Answer, self.host, self.port)
        self.connects += 1
        return proto

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        conn = self.conn
        fresh = conn is None or conn.lost
        if fresh:
            conn = await self._open()
        assert conn is not None and conn.transport is not None
        waiter = conn.waiter = asyncio.get_running_loop().create_future()
        conn.transport.write(
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n{self.header}"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        try:
            answer = await waiter
        except ConnectionError:
            if fresh or self.mode == "new":
                raise
            self.conn = None  # a stale keep-alive connection: once more on a new one
            return await self.request(method, path, body)
        finally:
            conn.waiter = None
        if self.mode == "new":
            conn.transport.close()  # the client closes, as Jobmon's worker does
            self.conn = None
        else:
            self.conn = conn
        return answer

    def close(self) -> None:
        if self.conn is not None and self.conn.transport is not None:
            self.conn.transport.close()
        self.conn = None


def _bodies(name: str, given: dict[str, dict[str, Any]] | None) -> dict[str, bytes]:
    """The request bodies of one worker: farmstead's, or those a peer `given` (its nodename
    replaced by this worker's)."""
    bodies = given or {
        "log_running": {"nodename": name, "process_group_id": 1,
                        "next_report_increment": INCREMENT},
        "log_report_by": {"next_report_increment": INCREMENT},
        "log_done": {"nodename": name, "wallclock": 1.0, "maxrss": 1 << 20},
    }
    return {k: json.dumps({**v, "nodename": name} if "nodename" in v else v).encode()
            for k, v in bodies.items()}


def _check(kind: str, status: int, data: bytes, checks: bool) -> str | None:
    """What is wrong with an answer, or None."""
    if status != 200:
        try:
            why = json.loads(data)
            why = why.get("error") or why.get("detail") if isinstance(why, dict) else why
        except ValueError:
            why = data[:80].decode("latin-1")
        return f"{kind}: HTTP {status} {str(why)[:80]}"
    answer = json.loads(data)  # every answer is decoded, checked or not: the same client cost
    if not checks:
        return None
    try:
        got = answer["task_instance"][1] if kind == "log_running" else answer["status"]
    except (KeyError, IndexError, TypeError):
        return f"{kind}: unexpected answer {data[:80]!r}"
    return None if got == EXPECT[kind] else f"{kind}: answered status {got}"


class _Tally:
    def __init__(self) -> None:
        self.lat: dict[str, list[float]] = {k: [] for k in KINDS}
        self.errors: Counter[str] = Counter()
        self.in_window = 0
        self.last = 0.0
        self.instances = 0


async def _worker(client: Client, name: str, job: dict[str, Any], queue: Iterator[int],
                  deadline: float, tally: _Tally) -> None:
    bodies = _bodies(name, job.get("bodies"))
    prefix, checks = job["prefix"], job["checks"]
    for ti in queue:
        if time.perf_counter() >= deadline:
            return
        for kind in SEQUENCE:
            t0 = time.perf_counter()
            try:
                status, data = await client.request(
                    "POST", f"{prefix}/task_instance/{ti}/{kind}", bodies[kind])
            except (OSError, ValueError) as exc:
                tally.errors[f"{kind}: {type(exc).__name__} {exc}"[:120]] += 1
                break  # the instance is lost; the worker takes the next one
            t1 = time.perf_counter()
            tally.lat[kind].append((t1 - t0) * 1000)
            tally.in_window += t1 <= deadline
            tally.last = max(tally.last, t1)
            wrong = _check(kind, status, data, checks)
            if wrong:
                tally.errors[wrong] += 1
        tally.instances += 1


def lifecycle_process(job: dict[str, Any]) -> dict[str, Any]:
    """One load-generator process (run in a spawned pool); see `_lifecycle` for `job`."""
    with asyncio.Runner(loop_factory=new_loop_factory()) as runner:
        return runner.run(_lifecycle(job))


async def _lifecycle(job: dict[str, Any]) -> dict[str, Any]:
    """job: host, port, mode, ids (iterable), workers, seconds, start_at (epoch), prefix, checks,
    index (of the process), bodies (optional: the peer's request bodies per route), header
    (optional: an extra request header line, e.g. a bearer token).

    Workers take instances from one shared iterator until it runs out or `seconds` have passed
    (the instance in hand is finished). `in_window` counts requests answered within `seconds`.
    """
    tally = _Tally()
    ids: Iterable[int] = job["ids"]
    header = job.get("header", "")
    clients = [Client(job["host"], job["port"], job["mode"], header)
               for _ in range(job["workers"])]
    if job["mode"] == "keep":  # open the connections before the clock starts
        await asyncio.gather(*(c.request("GET", "/health") for c in clients))
    await asyncio.sleep(max(0.0, job["start_at"] - time.time()))
    cpu0, t0, wall0 = time.process_time(), time.perf_counter(), time.time()
    deadline = t0 + job["seconds"]
    queue = iter(ids)
    await asyncio.gather(*(
        _worker(c, f"bench-node-{job['index']}-{n}", job, queue, deadline, tally)
        for n, c in enumerate(clients)))
    cpu = time.process_time() - cpu0
    for c in clients:
        c.close()
    with contextlib.suppress(Exception):
        await asyncio.sleep(0)
    return {"lat": tally.lat, "errors": tally.errors, "in_window": tally.in_window,
            "t0": wall0, "seconds": min(job["seconds"], max(tally.last - t0, 1e-9)),
            "requests": sum(len(v) for v in tally.lat.values()), "cpu": cpu,
            "instances": tally.instances, "connects": sum(c.connects for c in clients)}


async def one_at_a_time(
    host: str, port: int, calls: list[tuple[str, str, bytes]],
    check: Callable[[int, bytes], str | None],
) -> tuple[list[float], Counter[str]]:
    """Send `calls` (method, path, body) one after another on one keep-alive connection."""
    client = Client(host, port, "keep")
    await client.request("GET", "/health")
    lat: list[float] = []
    errors: Counter[str] = Counter()
    try:
        for method, path, body in calls:
            t0 = time.perf_counter()
            status, data = await client.request(method, path, body)
            lat.append((time.perf_counter() - t0) * 1000)
            wrong = check(status, data)
            if wrong:
                errors[wrong] += 1
    finally:
        client.close()
    return lat, errors
