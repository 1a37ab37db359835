"""The server's own local executor (`--local-workers N`): how the app builds, runs and stops it.

The executor talks to this app in-process (an ASGI transport, no socket), so it can still report
while the server shuts down: uvicorn stops listening before the app's shutdown runs, and the
executor ends its commands and reports them in that shutdown, before the database is closed.
"""

import asyncio
import contextlib
import hashlib
import logging
import os
import signal
import tempfile
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import httpx
from fastapi import FastAPI

from farmstead.client.executor import LocalExecutor
from farmstead.client.runner import RunnerConfig
from farmstead.fsm.roles import Role
from farmstead.services import auth
from farmstead.services.lifecycle import Background
from farmstead.settings import Settings

log = logging.getLogger("farmstead.executor")
#: who makes the executor's worker tokens (in the server process, for its own workers)
MINTER = auth.Principal("local executor", Role.ADMIN)


def _identity(settings: Settings) -> str:
    """This server and database, so a restart finds what its predecessor left (and no other's)."""
    url = settings.database_url
    prefix = "sqlite+aiosqlite:///"
    if url.startswith(prefix) and ":memory:" not in url:
        path, _, query = url[len(prefix) :].partition("?")
        url = prefix + os.path.abspath(path) + (f"?{query}" if query else "")
    text = f"{url}|{settings.host}|{settings.port}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def build(app: FastAPI, settings: Settings) -> LocalExecutor:
    """The executor of `settings`, talking to `app` in-process."""
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    config = RunnerConfig(
        heartbeat_interval=settings.heartbeat_interval,
        report_increment=settings.report_increment,
        kill_grace=settings.shutdown_grace,
        stop_on_sigterm=False,  # the server's signals are uvicorn's
    )
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
        base_url="http://localhost",
        timeout=60,
        headers={"Authorization": f"Bearer {app.state.internal_token}"},
    )
    key = _identity(settings)
    state = Path(tempfile.gettempdir()) / f"farmstead-{os.getuid()}-executor-{key}.json"
    return LocalExecutor(
        f"http://{host}:{settings.port}",  # for subprocess-mode workers: they are other processes
        settings.local_workers,
        settings.local_mode,
        config,
        client=client,
        state_path=state,
        key=key,
        drain=settings.drain,
        token_for=_worker_tokens(app) if settings.auth else None,
    )


def _worker_tokens(app: FastAPI) -> Callable[[int], Awaitable[str]]:
    """Worker tokens, one per workflow, for the executor's worker processes (made once each,
    valid for a week; a worker never holds the operator's token)."""
    made: dict[int, asyncio.Future[str]] = {}

    async def mint(workflow_id: int) -> str:
        token, _ = await auth.create_token(
            app.state.db,
            MINTER,
            f"local executor, workflow {workflow_id}",
            Role.WORKER,
            workflows=[workflow_id],
            expires_in=7 * 86400,
        )
        return token

    async def token_for(workflow_id: int) -> str:
        # one token per workflow, also when its instances start at the same moment
        if workflow_id not in made or (made[workflow_id].done() and made[workflow_id].exception()):
            made[workflow_id] = asyncio.ensure_future(mint(workflow_id))
        return await asyncio.shield(made[workflow_id])

    return token_for


def start(
    background: Background, executor: LocalExecutor, settings: Settings
) -> asyncio.Task[None]:
    """Run the executor beside the other loops, in the one server process holding its lock."""
    lock = os.path.join(tempfile.gettempdir(), f"farmstead-executor-{settings.port}.lock")
    background.add("local executor", executor.run, lock_path=lock)
    return background.tasks[-1]


async def stop(background: Background, task: asyncio.Task[None], executor: LocalExecutor) -> None:
    """Stop claiming; drain or end the running commands and report them; wait for all that.

    During a drain, a second Ctrl-C (or SIGTERM) ends the drain: running commands are stopped."""
    background.stop_event.set()
    with _drain_abort_on_signal(executor):
        await asyncio.wait([task])


@contextlib.contextmanager
def _drain_abort_on_signal(executor: LocalExecutor) -> Iterator[None]:
    if not executor.drain or threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()

    def abort(signum: int, frame: object) -> None:
        log.warning("signal %s during the drain: stopping the running tasks", signum)
        loop.call_soon_threadsafe(executor.abort_drain.set)

    previous = {sig: signal.signal(sig, abort) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
