"""Servers bench_speed.py drives with the same load: farmstead, a bare FastAPI app, Jobmon.

A *peer* is a server the lifecycle load can run against. The interface (duck-typed; a Jobmon
peer in bench/peers/jobmon_peer.py provides it too):

    name: str                  # "Jobmon 3.6, SQLite"
    backend: str               # "sqlite", "postgresql" or "none"
    prefix: str                # POST {prefix}/task_instance/{id}/log_running etc.
    checks: bool               # answers carry farmstead's statuses (R, R, D): check them
    start(port: int | None) -> str       # start the server as real processes; its base URL
    stop() -> None
    prepare(n: int) -> Sequence[int]     # n instance ids, LAUNCHED, ready for log_running
    pids() -> list[int]                  # the server's processes (for its CPU)
    batch_heartbeat(ids: list[int]) -> None   # optional: one batch heartbeat of `ids`

The server must also answer `GET /health` (the keep-alive warm-up). `load_jobmon_peer()`
imports bench/peers/jobmon_peer.py, which must define `make_peer(work_dir: Path) -> peer`
(or a class `JobmonPeer(work_dir)`), and may define `available() -> str | None` (None when
ready, else why not).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from _harness import ROOT, Server, free_port, fresh_database, process_tree, stop_process
from bench_core import instantiate_and_launch, lookup, submit_array

PEERS = Path(__file__).resolve().parent / "peers"


class FarmsteadPeer:
    """`farmstead serve --workers N` on a fresh database (created by start, dropped by stop)."""

    prefix = "/v3/fsm"
    checks = True

    def __init__(self, backend: str, workers: int, work: Path, keep: bool = False,
                 auth: str = "off") -> None:
        self.backend, self.workers, self.work, self.keep = backend, workers, work, keep
        db = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}[backend]
        self.name = f"farmstead, {db}, {workers} process{'es' if workers > 1 else ''}"
        #: off; token: auth on, each request with a worker token; trusted: auth on, no
        #: credentials, from the trusted loopback network (as Jobmon's worker)
        self.auth = auth
        if auth != "off":
            self.name += ", auth on" + (" (worker token)" if auth == "token" else
                                        " (no token, trusted network)")
        self.header = ""  # the extra request header line the load sends
        self.admin: dict[str, str] = {}
        self.server: Server | None = None
        self.stack = contextlib.ExitStack()
        self.arrays = 0

    def start(self, port: int | None = None) -> str:
        url = self.stack.enter_context(fresh_database(self.backend, self.keep))
        log = self.work / f"server-{self.backend}-{self.workers}-{self.auth}.log"
        env = {"auth": "true"} if self.auth != "off" else None
        self.server = Server(url, self.workers, log, env)
        if port:
            self.server.port, self.server.url = port, f"http://127.0.0.1:{port}"
        try:
            self.server.start()
            if self.auth != "off":
                self._tokens()
        except BaseException:
            self.stack.close()
            raise
        return self.server.url

    def _tokens(self) -> None:
        """The admin token the server wrote on its first start; a worker token for the load."""
        assert self.server is not None
        tokens = json.loads(self.server.credentials_file.read_text())
        self.admin = {"Authorization": f"Bearer {tokens[self.server.url]}"}
        if self.auth == "token":
            made = httpx.post(f"{self.server.url}/v3/tokens", headers=self.admin, timeout=30,
                              json={"name": "bench", "role": "worker"})
            made.raise_for_status()
            self.header = f"Authorization: Bearer {made.json()['token']}\r\n"

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
        self.stack.close()

    def pids(self) -> list[int]:
        return self.server.pids() if self.server else []

    @property
    def db_url(self) -> str:
        return self.server.db_url if self.server else ""

    def prepare(self, n: int) -> list[int]:
        assert self.server is not None
        self.arrays += 1

        async def go() -> list[int]:
            async with httpx.AsyncClient(base_url=self.server.url, timeout=600,
                                         headers=self.admin) as client:
                wf, _ = await submit_array(client, f"bench-speed-{self.arrays}", n)
                first = await lookup(client, int(wf["array_ids"][0]), 1, 0)
                ids, _ = await instantiate_and_launch(client, first, n)
                return ids

        return asyncio.run(go())

    def batch_heartbeat(self, ids: list[int]) -> None:
        """One batch heartbeat, sent as Jobmon's peer sends its own (urllib, a fresh
        connection): `httpx.post` builds a client each call, which alone took 26-60 ms here."""
        assert self.server is not None
        body = json.dumps({"task_instance_ids": ids, "next_report_increment": 86400.0})
        req = urllib.request.Request(
            f"{self.server.url}/v3/fsm/task_instance/log_report_by/batch", data=body.encode(),
            headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(req, timeout=120) as r:
            updated = json.loads(r.read())["updated"]
        if updated != len(ids):
            raise RuntimeError(f"batch heartbeat updated {updated} of {len(ids)}")


class BarePeer:
    """bench/peers/bare_app.py: FastAPI + uvicorn with farmstead's settings, no database."""

    backend = "none"
    prefix = "/v3/fsm"
    checks = False  # it answers one constant for every route
    db_url = ""

    def __init__(self, work: Path, workers: int = 1) -> None:
        self.work, self.workers = work, workers
        self.name = "bare FastAPI" + (f", {workers} processes" if workers > 1 else "")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, port: int | None = None) -> str:
        port = port or free_port()
        url = f"http://127.0.0.1:{port}"
        log = self.work / "bare_app.log"
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, str(PEERS / "bare_app.py"), "--port", str(port),
                 "--workers", str(self.workers)],
                stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bare app exited: {log.read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200 and (
                        self.workers == 1 or len(self.pids()) > self.workers):
                    time.sleep(0.5)
                    return url
            time.sleep(0.2)
        raise RuntimeError(f"bare app did not start: {log.read_text()[-2000:]}")

    def stop(self) -> None:
        stop_process(self.proc)

    def pids(self) -> list[int]:
        return process_tree(self.proc)

    def prepare(self, n: int) -> Sequence[int]:
        return range(1, 10**9)  # any id: the answer does not depend on it


def load_jobmon_peer(work: Path) -> tuple[Any | None, str]:
    """(the Jobmon peer, "") when bench/peers/jobmon_peer.py is there and ready, else
    (None, why not)."""
    path = PEERS / "jobmon_peer.py"
    if not path.exists():
        return None, "bench/peers/jobmon_peer.py is missing"
    try:
        spec = importlib.util.spec_from_file_location("jobmon_peer", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        why = module.available() if hasattr(module, "available") else None
        if why:
            return None, str(why)
        if hasattr(module, "make_peer"):
            peer = module.make_peer(work)
        elif hasattr(module, "JobmonPeer"):
            peer = module.JobmonPeer(work)
        else:
            return None, "jobmon_peer.py defines neither make_peer() nor JobmonPeer"
    except Exception as exc:  # a peer that cannot even load is reported, not fatal
        return None, f"jobmon_peer.py failed to load: {type(exc).__name__}: {exc}"
    missing = [a for a in ("start", "stop", "prepare", "pids") if not hasattr(peer, a)]
    if missing:
        return None, f"the Jobmon peer lacks {', '.join(missing)}"
    for attr, default in (("name", "Jobmon"), ("backend", "sqlite"), ("prefix", "/api/v3"),
                          ("checks", False), ("db_url", "")):
        if not hasattr(peer, attr):
            with contextlib.suppress(AttributeError):
                setattr(peer, attr, default)
    return peer, ""
