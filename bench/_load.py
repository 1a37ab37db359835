"""Load generators: simulated worker nodes and array lookups over keep-alive HTTP/1.1.

Two clients: `raw`, a minimal HTTP/1.1 client on asyncio streams, one keep-alive connection per
simulated node (about 0.04 ms of client CPU per request), and `httpx`, one pooled
httpx.AsyncClient per load-generator process (0.7 ms per request and worse with a big pool:
on a 2-core machine it, not the server, sets the pace).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any, Protocol

import httpx

INCREMENT = 86400.0  # next_report_increment: a day, so no deadline passes during a run
KINDS = ("log_running", "log_report_by", "log_done")
EXPECT = {"log_running": "R", "log_report_by": "R", "log_done": "D"}
NETWORK_ERRORS = (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                  httpx.HTTPError, ValueError)


class Sender(Protocol):
    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]: ...

    async def aclose(self) -> None: ...


class RawHTTP:
    """One keep-alive HTTP/1.1 connection; requests on it go one at a time."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.used = 0  # requests answered on the current connection
        self.reconnects = 0

    async def _connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.used = 0

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        if self.writer is None:
            await self._connect()
        try:
            return await self._exchange(method, path, body)
        except (ConnectionError, asyncio.IncompleteReadError):
            if not self.used:
                raise
            # the server closed an idle keep-alive connection as we sent: open a new one, once
            self.reconnects += 1
            await self.aclose()
            await self._connect()
            return await self._exchange(method, path, body)

    async def _exchange(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        assert self.reader is not None and self.writer is not None
        head = (f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
        self.writer.write(head.encode() + body)
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip().lower()
        if headers.get("transfer-encoding") == "chunked":
            data = await self._chunked()
        else:
            data = await self.reader.readexactly(int(headers.get("content-length", "0")))
        self.used += 1
        if headers.get("connection") == "close":
            await self.aclose()
        return status, data

    async def _chunked(self) -> bytes:
        assert self.reader is not None
        parts = []
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunk = await self.reader.readexactly(size + 2)
            if not size:
                return b"".join(parts)
            parts.append(chunk[:-2])

    async def aclose(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.reader = self.writer = None


class HttpxSender:
    """A pooled httpx.AsyncClient shared by every coroutine of a process."""

    def __init__(self, url: str, connections: int) -> None:
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        self.client = httpx.AsyncClient(base_url=url, limits=limits, timeout=120)
        self.reconnects = 0

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        headers = {"content-type": "application/json"} if body else None
        r = await self.client.request(method, path, content=body or None, headers=headers)
        return r.status_code, r.content

    async def aclose(self) -> None:
        await self.client.aclose()


async def open_senders(kind: str, host: str, port: int, n: int) -> list[Any]:
    """n senders (raw: n connections; httpx: one client with a pool of n, n times), warmed up."""
    senders: list[Any]
    if kind == "raw":
        senders = [RawHTTP(host, port) for _ in range(n)]
    else:
        senders = [HttpxSender(f"http://{host}:{port}", n)] * n
    await asyncio.gather(*(s.request("GET", "/health") for s in senders))  # open connections
    return senders


async def close_senders(senders: list[Any]) -> int:
    """Close them; how many stale keep-alive connections had to be reopened."""
    unique = list({id(s): s for s in senders}.values())
    for s in unique:
        await s.aclose()
    return sum(s.reconnects for s in unique)


def _error(kind: str, status: int, data: bytes) -> str:
    try:
        body = json.loads(data)
        why = body.get("error") or body.get("detail")
    except ValueError:
        why = data[:80].decode("latin-1")
    return f"{kind}: HTTP {status} {str(why)[:80]}"


# ---- figure 1: simulated worker nodes ---------------------------------------------------------


async def _node(send: Sender, name: str, queue: Iterator[int], lat: dict[str, list[float]],
                errors: Counter[str]) -> None:
    bodies = {
        "log_running": {"nodename": name, "process_group_id": 1,
                        "next_report_increment": INCREMENT},
        "log_report_by": {"next_report_increment": INCREMENT},
        "log_done": {"nodename": name, "wallclock": 1.0, "maxrss": 1 << 20},
    }
    encoded = {k: json.dumps(v).encode() for k, v in bodies.items()}
    for ti in queue:
        for kind in KINDS:
            t0 = time.perf_counter()
            try:
                status, data = await send.request(
                    "POST", f"/v3/fsm/task_instance/{ti}/{kind}", encoded[kind]
                )
            except NETWORK_ERRORS as exc:
                errors[f"{kind}: {type(exc).__name__}"] += 1
                continue
            lat[kind].append((time.perf_counter() - t0) * 1000)
            if status != 200:
                errors[_error(kind, status, data)] += 1
                continue
            answer = json.loads(data)
            got = answer["task_instance"][1] if kind == "log_running" else answer["status"]
            if got != EXPECT[kind]:
                errors[f"{kind}: answered status {got}"] += 1


def load_process(args: tuple[str, str, int, list[int], int, float]) -> dict[str, Any]:
    """One load-generator process (run in a pool): `nodes` concurrent simulated worker nodes."""
    return asyncio.run(_load(*args))


async def _load(kind: str, host: str, port: int, ids: list[int], nodes: int,
                start_at: float) -> dict[str, Any]:
    lat: dict[str, list[float]] = {k: [] for k in KINDS}
    errors: Counter[str] = Counter()
    await asyncio.sleep(max(0.0, start_at - 1.0 - time.time()))
    senders = await open_senders(kind, host, port, nodes)
    await asyncio.sleep(max(0.0, start_at - time.time()))  # every process starts together
    cpu0, t0 = time.process_time(), time.time()
    queue = iter(ids)  # shared by the nodes: each id is taken once
    await asyncio.gather(*(_node(s, f"bench-node-{os.getpid()}-{n}", queue, lat, errors)
                           for n, s in enumerate(senders)))
    t1, cpu1 = time.time(), time.process_time()
    reconnects = await close_senders(senders)
    return {"lat": lat, "errors": errors, "t0": t0, "t1": t1, "cpu": cpu1 - cpu0,
            "reconnects": reconnects}


# ---- figure 3: array lookups ------------------------------------------------------------------


async def lookup_pass(kind: str, host: str, port: int, array_id: int, first: int,
                      keys: list[tuple[int, int]], concurrency: int,
                      batch_size: int) -> dict[str, Any]:
    """Look every (batch, step) up with `concurrency` requests in flight."""
    lat: list[float] = []
    missing: list[tuple[int, int]] = []
    other = 0
    it = iter(keys)
    senders = await open_senders(kind, host, port, concurrency)

    async def one(send: Sender) -> None:
        nonlocal other
        for b, s in it:
            t0 = time.perf_counter()
            status, data = await send.request(
                "GET", f"/v3/fsm/get_array_task_instance_id/{array_id}/{b}/{s}"
            )
            lat.append((time.perf_counter() - t0) * 1000)
            if status == 404:
                missing.append((b, s))
            elif status != 200:
                raise RuntimeError(f"lookup {b}/{s}: {status} {data[:300]!r}")
            elif json.loads(data)["task_instance_id"] != first + (b - 1) * batch_size + s:
                other += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(one(s) for s in senders))
    wall = time.perf_counter() - t0
    await close_senders(senders)
    return {"lat": lat, "rate": len(keys) / wall, "missing": missing, "other": other}
