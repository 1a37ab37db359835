"""End to end: Celery's own `EventReceiver` (the `celery` package) reads farmstead's tasks from
RabbitMQ as if a Celery worker had sent them, and Celery's `State` (what Flower keeps) ends
with every task SUCCESS. Between farmstead and the broker runs a TCP proxy the test can cut:
while the broker is unreachable, transitions go on; once it is back, every event missed goes
out, in order per task. (The machine's RabbitMQ is only used: a queue and an exchange of this
test's own, removed at the end.)"""

import contextlib
import socket
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from helpers import wait_for

pytestmark = pytest.mark.e2e
BROKER = "amqp://guest:guest@127.0.0.1:5672//"
TASK_LIFE = ["task-sent", "task-received", "task-started", "task-succeeded"]


def rabbitmq_up() -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", 5672), timeout=2):
        return True
    return False


class Proxy:
    """A TCP proxy to 127.0.0.1:5672 that can be cut (every connection dropped, no new one
    accepted) and restored on the same port: the broker going away and coming back, as
    farmstead sees it."""

    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.listener: socket.socket | None = None
        self.lock = threading.Lock()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", 5672))
            with self.lock:
                self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        if self.listener is not None:
            with contextlib.suppress(OSError):  # wakes the accept() blocked on it
                self.listener.shutdown(socket.SHUT_RDWR)
            self.listener.close()
            self.listener = None
        with self.lock:
            for s in self.conns:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            self.conns.clear()


class Receiver:
    """Celery's EventReceiver on the test's exchange, in a thread; Celery's State beside."""

    def __init__(self, exchange: str) -> None:
        from celery import Celery
        from celery.events.state import State

        self.app = Celery(broker=BROKER)
        self.app.conf.event_exchange = exchange
        self.state = State()
        self.events: list[dict[str, Any]] = []
        self.ready = threading.Event()
        self.receiver: Any = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(30), "the receiver did not start"

    def _on(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        self.state.event(event)

    def _run(self) -> None:
        with self.app.connection_for_read() as conn:
            self.receiver = self.app.events.Receiver(conn, handlers={"*": self._on})
            self.ready.set()
            self.receiver.capture(limit=None, timeout=None, wakeup=False)

    def stop(self) -> None:
        if self.receiver is not None:
            self.receiver.should_stop = True
        self.thread.join(timeout=10)

    def by_task(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = defaultdict(list)
        for e in self.events:
            if e["type"].startswith("task-"):
                out[e["uuid"]].append(e["type"])
        return out


@pytest.fixture
def exchange() -> Iterator[str]:
    if not rabbitmq_up():
        pytest.fail("RabbitMQ is not running on 127.0.0.1:5672 (the machine's broker)")
    name = f"farmstead-test-{uuid.uuid4().hex[:12]}"
    yield name
    from kombu import Connection, Exchange

    with Connection(BROKER) as conn, contextlib.suppress(Exception):
        Exchange(name, type="topic")(conn.default_channel).delete()


def run_array(url: str, n: int) -> int:
    with httpx.Client(base_url=url, timeout=60) as c:
        wf = c.post("/v3/workflows", json={"name": "celery", "array": {
            "command": "true", "first": 0, "last": n - 1}})  # fmt: skip
        assert wf.status_code == 201, wf.text
        wf_id = int(wf.json()["id"])

        def done() -> bool:
            status = c.get(f"/v3/workflows/{wf_id}").json()["status"]
            assert status in ("R", "D"), status
            return status == "D"

        wait_for(done, 120, "the workflow to finish")
        return wf_id


def test_celery_consumers_read_farmstead_through_a_broker_outage(
    server_factory: Any, exchange: str
) -> None:
    proxy = Proxy()
    proxy.start()
    server = server_factory(
        local_workers=4,
        celery_broker_url=f"amqp://guest:guest@127.0.0.1:{proxy.port}//",
        celery_event_exchange=exchange,
        event_poll_interval=0.1,
    )
    receiver = Receiver(exchange)
    try:
        time.sleep(1.0)  # the relay's first round: it starts from the newest event
        run_array(server.url, 10)
        wait_for(lambda: len(receiver.by_task()) == 10 and all(
            t[-1] == "task-succeeded" for t in receiver.by_task().values()
        ), 60, "ten tasks' events through the broker")  # fmt: skip

        proxy.cut()  # the broker goes away, as farmstead sees it
        started = time.monotonic()
        run_array(server.url, 10)  # transitions do not wait for the broker
        assert time.monotonic() - started < 60
        assert len(receiver.by_task()) == 10  # nothing could get through meanwhile
        proxy.start()  # back: the backlog goes out
        wait_for(lambda: len(receiver.by_task()) == 20 and all(
            t[-1] == "task-succeeded" for t in receiver.by_task().values()
        ), 90, "the events held back during the outage")  # fmt: skip
    finally:
        receiver.stop()
        proxy.cut()
    for task_uuid, types in receiver.by_task().items():
        # in order per task; at least once: a batch cut mid-way may come again
        firsts = list(dict.fromkeys(types))
        assert firsts == TASK_LIFE, (task_uuid, types)
    tasks = receiver.state.tasks
    assert len(tasks) == 20
    assert {t.state for t in tasks.values()} == {"SUCCESS"}
    some = next(iter(tasks.values()))
    assert some.name.startswith("celery_") or some.name  # farmstead's task names
    assert some.hostname and some.runtime is not None and some.runtime >= 0
    assert receiver.state.workers  # the hosts that ran them, as Celery workers
