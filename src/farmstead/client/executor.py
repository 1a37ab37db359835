"""The local executor: claims QUEUED instances from a server and runs at most N at a time.

It is a client like any other (it talks HTTP to its server), so the same loop could run on
another host. `mode="coroutine"` runs each instance with the Runner inside this process (only
the task's command is spawned); `mode="subprocess"` starts `farmstead worker run` per instance,
as a cluster would. A worker that dies is left to the server's reconciler, as on a cluster.
"""

import asyncio
import logging
import os
import socket
import sys
from typing import Literal

import httpx

from farmstead.client.api import Api, ClientError, ServerUnavailable
from farmstead.client.runner import Runner, RunnerConfig

log = logging.getLogger("farmstead.executor")
Mode = Literal["coroutine", "subprocess"]


class LocalExecutor:
    """Claim, launch and run instances; `run(stop)` until stopped."""

    def __init__(
        self,
        server_url: str,
        slots: int,
        mode: Mode = "coroutine",
        config: RunnerConfig | None = None,
        poll_interval: float = 0.5,
        workflow_id: int | None = None,
    ) -> None:
        self.server_url = server_url
        self.slots = slots
        self.mode = mode
        self.config = config or RunnerConfig()
        self.poll_interval = poll_interval
        self.workflow_id = workflow_id
        self.host = socket.gethostname()

    async def run(self, stop: asyncio.Event) -> None:
        """Keep up to `slots` instances running until `stop` is set."""
        api = Api(self.server_url, retry_limit=30)
        runner = Runner(api, self.config)
        running: set[asyncio.Task[None]] = set()
        try:
            await self._until_serving(api, stop)
            while not stop.is_set():
                free = self.slots - len(running)
                claimed = []
                if free > 0:
                    try:
                        claimed = await api.claim(free, self.workflow_id)
                    except (ServerUnavailable, ClientError) as exc:
                        log.warning("claim failed: %s", exc)
                for item in claimed:
                    task = asyncio.create_task(self._one(api, runner, item["task_instance_id"]))
                    running.add(task)
                    task.add_done_callback(running.discard)
                if claimed and len(running) < self.slots:
                    continue  # there may be more: ask again at once
                waiters: set[asyncio.Future[object]] = {asyncio.ensure_future(stop.wait())}
                waiters |= running  # type: ignore[arg-type]
                await asyncio.wait(
                    waiters, timeout=self.poll_interval, return_when=asyncio.FIRST_COMPLETED
                )
                for w in waiters - running:
                    w.cancel()
        finally:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            await api.aclose()

    async def _until_serving(self, api: Api, stop: asyncio.Event) -> None:
        """The executor starts with its server: wait (quietly) until the server answers."""
        while not stop.is_set():
            try:
                if (await api.client.get("/health")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)

    async def _one(self, api: Api, runner: Runner, ti_id: int) -> None:
        distributor_id = f"local:{self.host}:{os.getpid()}:{ti_id}"
        try:
            await api.log_distributor_id(ti_id, distributor_id, self.config.report_increment)
            if self.mode == "coroutine":
                await runner.run(ti_id, distributor_id)
            else:
                await self._subprocess(api, ti_id, distributor_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("launching task instance %s failed", ti_id)
            try:
                await api.log_known_error(ti_id, "E", f"local executor could not run it: {exc}")
            except (ServerUnavailable, ClientError) as report_exc:
                log.error("could not report the failure of %s: %s", ti_id, report_exc)

    async def _subprocess(self, api: Api, ti_id: int, distributor_id: str) -> None:
        cfg = self.config
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "farmstead.cli.main",
            "worker",
            "run",
            "--task-instance-id",
            str(ti_id),
            "--server-url",
            self.server_url,
            "--distributor-id",
            distributor_id,
            "--heartbeat-interval",
            str(cfg.heartbeat_interval),
            "--report-increment",
            str(cfg.report_increment),
            stdin=asyncio.subprocess.DEVNULL,
        )
        code = await proc.wait()
        if code == 2:  # the worker could not start: bad configuration, nothing ran
            await api.log_known_error(ti_id, "E", "worker exited with code 2 before running")
        elif code < 0:
            log.warning(
                "worker of %s killed by signal %s; the reconciler will expire it", ti_id, -code
            )
