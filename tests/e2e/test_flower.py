"""End to end: Flower (Celery's monitor, unchanged) shows farmstead's tasks, read from RabbitMQ
through the Celery relay: names, final states matching farmstead's counts, runtimes, errors,
retries, and the executor as one worker. Flower runs as a process of this test on a free port,
with an event exchange and a control exchange of this test's own (removed at the end), and
without broadcasting to other Celery workers on the broker."""

import contextlib
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_celery import BROKER, exchange  # noqa: F401 (the fixture)

from helpers import wait_for

pytestmark = pytest.mark.e2e


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def flower(exchange: str, tmp_path: Path) -> Iterator[str]:  # noqa: F811
    pytest.importorskip("flower")
    control = f"{exchange}-ctl"
    (tmp_path / "flowerconf.py").write_text(
        f"event_exchange = {exchange!r}\ncontrol_exchange = {control!r}\n"
    )
    port = _free_port()
    log = (tmp_path / "flower.log").open("wb")
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "FLOWER_UNAUTHENTICATED_API": "true"}
    args = ["--broker", BROKER, "--config", "flowerconf", "flower", "--address=127.0.0.1"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", *args, f"--port={port}", "--enable_events=False"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/healthcheck", timeout=2).status_code == 200:
                    return "Connected to amqp" in (tmp_path / "flower.log").read_text()
            assert proc.poll() is None, (tmp_path / "flower.log").read_text()
            return False

        wait_for(up, 60, "Flower to start and connect")
        yield url
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(20)
        if proc.poll() is None:
            proc.kill()
        log.close()
        from kombu import Connection, Exchange

        with Connection(BROKER) as conn:
            for name in (f"{control}.pidbox", f"reply.{control}.pidbox"):
                with contextlib.suppress(Exception):
                    Exchange(name)(conn.default_channel).delete()
        assert "Traceback" not in (tmp_path / "flower.log").read_text()


def test_flower_shows_farmstead_tasks(server_factory: Any, exchange: str, flower: str) -> None:  # noqa: F811
    server = server_factory(
        local_workers=4,
        celery_broker_url=BROKER,
        celery_event_exchange=exchange,
        event_poll_interval=0.1,
    )
    tasks = [{"name": f"ok_{i}", "command": "true"} for i in range(12)]
    tasks += [
        {"name": f"bad_{i}", "command": "echo nope >&2; exit 1", "max_attempts": 2}
        for i in range(3)
    ]
    with httpx.Client(base_url=server.url, timeout=60) as c:
        made = c.post("/v3/workflows", json={"name": "flower", "tasks": tasks, "retry_delay": 0})
        assert made.status_code == 201, made.text
        wf = made.json()["id"]
        wait_for(lambda: c.get(f"/v3/workflows/{wf}").json()["counts"] == {"D": 12, "F": 3},
                 120, "the workflow to end")  # fmt: skip

    def seen() -> dict[str, Any]:
        found: dict[str, Any] = httpx.get(f"{flower}/api/tasks", timeout=10).json()
        states = Counter(t["state"] for t in found.values())
        return found if states == {"SUCCESS": 12, "FAILURE": 3} else {}

    shown = wait_for(seen, 60, "Flower to show every task in its final state")
    by_name = {t["name"]: t for t in shown.values()}
    assert set(by_name) == {t["name"] for t in tasks}
    for i in range(12):
        assert by_name[f"ok_{i}"]["runtime"] is not None and by_name[f"ok_{i}"]["runtime"] >= 0
    for i in range(3):
        bad = by_name[f"bad_{i}"]
        assert bad["retries"] == 1 and "exit code 1" in (bad["exception"] or "")
    hosts = {t["worker"] for t in shown.values()}
    assert len(hosts) == 1 and None not in hosts  # the one local executor
    workers = httpx.get(f"{flower}/workers?json=1", timeout=10).json()["data"]
    assert any(w.get("hostname") in hosts and w.get("sw_ident") == "farmstead" for w in workers), (
        workers,
        hosts,
    )
    # Flower's own page lists them too
    page = httpx.get(f"{flower}/tasks", timeout=10)
    assert page.status_code == 200
