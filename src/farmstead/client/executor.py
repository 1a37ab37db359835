"""The local executor: claims QUEUED instances from a server and runs at most N at a time.

It is a client like any other (it talks HTTP to its server), so the same loop could run on
another host; inside the server it is handed an in-process HTTP client, which still works while
the server shuts down. `mode="coroutine"` runs each instance with the Runner inside this process
(only the task's command is spawned); `mode="subprocess"` starts `farmstead worker run` per
instance, as a cluster would.

It asks the server for the status of its running instances in one request every
`status_interval` seconds and stops a command whose instance was cancelled (KILL_SELF) or moved
on. When `run` is told to stop it claims nothing more, then either waits for the running
commands (`drain`) or ends them (SIGTERM, SIGKILL after the grace) and reports each as
UNKNOWN_ERROR, so it is retried at once. Running process groups are recorded in a state file; a
restarted executor first ends what a killed predecessor left and reports it (see reaper.py).
"""

import asyncio
import contextlib
import logging
import os
import socket
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, Literal

import httpx

from farmstead.client.api import Api, ClientError, ServerUnavailable
from farmstead.client.reaper import KEY_ENV, TI_ENV, StateFile, end_tree, reap
from farmstead.client.runner import Runner, RunnerConfig
from farmstead.metrics import SLOTS, SLOTS_BUSY

log = logging.getLogger("farmstead.executor")
Mode = Literal["coroutine", "subprocess"]
#: statuses in which a started command must stop: cancelled, or already settled elsewhere
STOP_IN = frozenset("KDEUZWFX")
#: a settled status is also what the command's own final report leaves, just before its runner
#: or worker ends: only KILL_SELF stops a command at first sight; a settled one must be seen
#: on two status checks in a row (so a worker that has just reported is left to exit)
STOP_AT_ONCE = frozenset("K")
SHUTDOWN = "server shutting down"
TOKEN_ENV = "FARMSTEAD_TOKEN"


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
        *,
        client: httpx.AsyncClient | None = None,
        state_path: Path | None = None,
        key: str = "",
        drain: bool = False,
        status_interval: float = 0.5,
        token_for: Callable[[int], Awaitable[str]] | None = None,
    ) -> None:
        self.server_url = server_url
        self.slots = slots
        self.mode = mode
        self.config = config or RunnerConfig()
        self.poll_interval = poll_interval
        self.workflow_id = workflow_id
        self.host = socket.getfqdn()  # the name its tasks report as their nodename
        self.client = client
        self.state = StateFile(state_path) if state_path else None
        self.key = key
        self.drain = drain
        self.status_interval = status_interval
        #: a worker token scoped to a workflow, for the worker processes of subprocess mode
        self.token_for = token_for
        #: set (e.g. by a second Ctrl-C) to end a drain: running commands are stopped
        self.abort_drain = asyncio.Event()
        self.running: dict[int, asyncio.Task[None]] = {}
        #: instances of `running` whose command has ended (being reported): their slots are free
        self.ended: set[int] = set()
        self.slot_freed = asyncio.Event()
        self.agent_id: int | None = None
        self.workers: dict[int, asyncio.subprocess.Process] = {}
        self._background: set[asyncio.Future[None]] = set()
        self._told: set[int] = set()  # workers already sent SIGTERM
        self._settled: set[int] = set()  # seen settled at the last status check
        if key:
            self.config.env = {**self.config.env, KEY_ENV: key}

    async def run(self, stop: asyncio.Event) -> None:
        """Keep up to `slots` instances running until `stop` is set; then drain or end them."""
        api = Api(self.server_url, retry_limit=30, client=self.client)
        runner = Runner(api, self.config, watcher=self.state, on_exit=self._command_ended)
        SLOTS.set(self.slots)
        try:
            await self._until_serving(api, stop)
            await self._register(api)
            await self._reap_leftovers(api)
            await self._claim_loop(api, runner, stop)
        finally:
            await self._shutdown(api, runner)
            await api.aclose()

    async def _claim_loop(self, api: Api, runner: Runner, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        next_check = loop.time() + self.status_interval
        while not stop.is_set():
            try:
                self.slot_freed.clear()  # a command that ends from here on wakes the wait
                more = await self._claim(api, runner)
                if loop.time() >= next_check:
                    next_check = loop.time() + self.status_interval
                    await self._stop_moved_on(api, runner)
                if more:
                    continue  # there may be more: ask again at once
            except Exception:  # a bug in one round must not end the executor for good
                log.exception("local executor: unexpected error; carrying on")
            await self._wait(stop, self.poll_interval)

    async def _claim(self, api: Api, runner: Runner) -> bool:
        """Claim instances for the free slots and start them; True if it got some and slots
        are still free."""
        free = self.slots - self._busy()
        if free <= 0:
            return False
        try:
            claimed = await api.claim(free, self.workflow_id, self.agent_id)
        except (ServerUnavailable, ClientError) as exc:
            log.warning("claim failed: %s", exc)
            return False
        for item in claimed:
            ti_id = int(item["task_instance_id"])
            task = asyncio.create_task(self._one(api, runner, ti_id, int(item["workflow_id"])))
            self.running[ti_id] = task
            task.add_done_callback(self._forget(ti_id))
        SLOTS_BUSY.set(self._busy())
        return bool(claimed) and self._busy() < self.slots

    def _busy(self) -> int:
        """Slots taken: instances claimed whose command has not ended (a slot is free again
        while the end of its last command is being reported)."""
        return len(self.running) - len(self.ended)

    def _command_ended(self, ti_id: int) -> None:
        if ti_id in self.running:
            self.ended.add(ti_id)
            self.slot_freed.set()
            SLOTS_BUSY.set(self._busy())

    async def _register(self, api: Api) -> None:
        """Become an agent (the queue rules count agents); without one it still claims."""
        try:
            self.agent_id = await api.register_agent(
                f"local executor {self.host}", self.host, "local", self.slots
            )
        except (ServerUnavailable, ClientError) as exc:
            log.warning("could not register as an agent (claiming without one): %s", exc)

    def _forget(self, ti_id: int) -> Callable[[asyncio.Task[None]], None]:
        def forget(_: asyncio.Task[None]) -> None:
            self.running.pop(ti_id, None)
            self.ended.discard(ti_id)

        return forget

    async def _wait(self, event: asyncio.Event, timeout: float) -> None:
        """Until `event`, an instance or its command ends, or `timeout` seconds."""
        waiters: set[asyncio.Future[object]] = {
            asyncio.ensure_future(event.wait()),
            asyncio.ensure_future(self.slot_freed.wait()),
        }
        running: set[asyncio.Future[object]] = set(self.running.values())  # type: ignore[arg-type]
        await asyncio.wait(waiters | running, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        for w in waiters:
            w.cancel()

    async def _until_serving(self, api: Api, stop: asyncio.Event) -> None:
        """The executor starts with its server: wait (quietly) until the server answers."""
        while not stop.is_set():
            try:
                if (await api.client.get("/health")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)

    async def _stop_moved_on(self, api: Api, runner: Runner) -> None:
        """Stop each running command whose instance was cancelled or settled elsewhere."""
        started = set(runner.commands) | set(self.workers)
        if not started:
            return
        try:
            statuses = await api.statuses(sorted(started), retry_limit=self.status_interval)
        except (ServerUnavailable, ClientError) as exc:
            log.debug("status check failed: %s", exc)
            return
        settled_before, self._settled = self._settled, set()
        for ti_id, status in statuses.items():
            if status not in STOP_IN:
                continue
            if status not in STOP_AT_ONCE and ti_id not in settled_before:
                self._settled.add(ti_id)
                continue
            log.warning("task instance %s is %s: stopping its command", ti_id, status)
            if ti_id in runner.commands:
                self._spawn(runner.stop(ti_id, "stop", f"the server answered {status}"))
            elif (worker := self.workers.get(ti_id)) is not None and ti_id not in self._told:
                self._told.add(ti_id)
                # the worker stops its command and reports; it may have exited a moment ago
                # (reaped, its wait() not yet resumed): then there is nothing to stop
                with contextlib.suppress(ProcessLookupError):
                    worker.terminate()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _reap_leftovers(self, api: Api) -> None:
        """End what a killed predecessor left running, and report its instances for a retry."""
        if self.state is None:
            return
        records = self.state.load()
        if not records:
            return
        found = await asyncio.to_thread(reap, records, self.key, self.config.kill_grace)
        why = "stopped: the server ended while it ran; " + (
            f"{found} leftover process(es) were ended at restart" if found else "nothing left"
        )
        for r in records:
            try:
                await api.log_error(r.task_instance_id, "U", why, nodename=socket.getfqdn())
            except (ServerUnavailable, ClientError) as exc:
                log.warning("could not report task instance %s: %s", r.task_instance_id, exc)
        self.state.clear()

    async def _shutdown(self, api: Api, runner: Runner) -> None:
        """Drain (wait for the running commands) or end them and report them for a retry."""
        if self.running and self.drain and self.mode == "subprocess":
            log.warning("no drain in subprocess mode (its workers report over HTTP): stopping")
        elif self.running and self.drain:
            log.warning("draining: waiting for %s running task(s) to finish", len(self.running))
            while self.running and not self.abort_drain.is_set():
                await self._wait(self.abort_drain, self.status_interval)
                await self._stop_moved_on(api, runner)
        if not self.running:
            return
        log.warning("stopping %s running task(s): %s", len(self.running), SHUTDOWN)
        if self.mode == "coroutine":
            await runner.stop_all("shutdown", SHUTDOWN)
        else:
            workers = dict(self.workers)
            await asyncio.gather(
                *(end_tree(w.pid, self.config.kill_grace) for w in workers.values())
            )
            for ti_id in workers:
                await self._report_stopped(api, ti_id)
        tasks = list(self.running.values())
        _, late = await asyncio.wait(tasks, timeout=self.config.kill_grace + 30)
        for task in late:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _report_stopped(self, api: Api, ti_id: int) -> None:
        try:
            await api.log_error(ti_id, "U", f"stopped: {SHUTDOWN}", nodename=socket.getfqdn())
            if self.state is not None:
                self.state.remove(ti_id)
        except (ServerUnavailable, ClientError) as exc:
            log.error("could not report task instance %s: %s", ti_id, exc)

    async def _one(self, api: Api, runner: Runner, ti_id: int, workflow_id: int) -> None:
        distributor_id = f"local:{self.host}:{os.getpid()}:{ti_id}"
        try:
            if self.mode == "coroutine":  # the runner's log_running (I → R) carries the id
                await runner.run(ti_id, distributor_id)
            else:  # a worker process takes a moment to start: LAUNCHED says it is on its way
                await api.log_distributor_id(ti_id, distributor_id, self.config.report_increment)
                await self._subprocess(api, ti_id, workflow_id, distributor_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("launching task instance %s failed", ti_id)
            try:
                await api.log_known_error(ti_id, "E", f"local executor could not run it: {exc}")
            except (ServerUnavailable, ClientError) as report_exc:
                log.error("could not report the failure of %s: %s", ti_id, report_exc)

    async def _subprocess(
        self, api: Api, ti_id: int, workflow_id: int, distributor_id: str
    ) -> None:
        cfg = self.config
        # a worker holds a token for its own workflow only, never the operator's
        env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
        env |= {**cfg.env, TI_ENV: str(ti_id)}
        if self.token_for is not None:
            env[TOKEN_ENV] = await self.token_for(workflow_id)
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
            env=env,
            start_new_session=True,  # a Ctrl-C at the terminal is the server's to handle
        )
        self.workers[ti_id] = proc
        if self.state is not None:
            self.state.add(ti_id, proc.pid)
        try:
            code = await proc.wait()
        finally:
            self.workers.pop(ti_id, None)
            self._told.discard(ti_id)
            if self.state is not None:
                self.state.remove(ti_id)
        if code == 2:  # the worker could not start: bad configuration, nothing ran
            await api.log_known_error(ti_id, "E", "worker exited with code 2 before running")
        elif code < 0:
            log.warning(
                "worker of %s killed by signal %s; the reconciler will expire it", ti_id, -code
            )
