"""The worker-node runner: one task instance from log_running to its final report.

The same runner serves `farmstead worker run` (one instance per process, e.g. a Slurm array
element) and the local executor (many instances as coroutines of one process).
"""

import asyncio
import contextlib
import logging
import os
import re
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from farmstead.client.api import Api, ClientError, ServerUnavailable
from farmstead.client.process import Command, Exit, Limits

log = logging.getLogger("farmstead.worker")

#: exit codes of the runner itself (otherwise it mirrors the command's)
EXIT_NOT_RUN = 3  # the instance was not in a runnable state; nothing ran
EXIT_UNDELIVERED = 75  # the command ran but its report could not be delivered


@dataclass
class RunnerConfig:
    """How the runner behaves (all in seconds)."""

    heartbeat_interval: float = 30.0
    report_increment: float = 93.0
    #: how long a heartbeat is retried before giving up until the next one
    heartbeat_retry: float = 20.0
    #: how long a final report is retried while the server is unreachable
    report_retry: float = 3600.0
    #: how often resource limits are checked
    sample_interval: float = 0.5
    #: after SIGTERM, how long the command has before SIGKILL
    kill_grace: float = 10.0
    nodename: str = ""
    #: more environment for the commands (e.g. the local executor's marker)
    env: dict[str, str] = field(default_factory=dict)
    #: on SIGTERM, stop the command and report it for a retry (a worker process of its own;
    #: not inside a server, whose signals are the server's)
    stop_on_sigterm: bool = True
    #: a cluster executor triages this worker's job (the Slurm executor): the cluster's time
    #: limit rules (no runtime limit of the runner's own), and a SIGTERM (time limit, scancel,
    #: preemption) stops the command without a report, so the executor can say from the
    #: cluster's record why the job ended (e.g. TIMEOUT: a resource error)
    executor_triage: bool = False


@dataclass
class Outcome:
    """What happened to one instance."""

    task_instance_id: int
    exit_code: int
    reported: str | None  # the status the server answered to the final report
    ran: bool


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:200] or "task"


class Watcher(Protocol):
    """Told when a command starts (its process group) and when its instance was reported."""

    def add(self, ti_id: int, pid: int) -> None: ...

    def remove(self, ti_id: int) -> None: ...


class Runner:
    """Runs task instances against one server."""

    def __init__(
        self,
        api: Api,
        config: RunnerConfig | None = None,
        watcher: Watcher | None = None,
        on_exit: Callable[[int], None] | None = None,
    ) -> None:
        self.api = api
        self.config = config or RunnerConfig()
        self.watcher = watcher
        #: told when an instance's command has ended, before its end is reported
        self.on_exit = on_exit
        self.nodename = self.config.nodename or socket.getfqdn()
        #: the commands running now, by instance id
        self.commands: dict[int, Command] = {}
        #: set by stop_all: (reason, why); no command starts any more
        self.stopping: tuple[str, str] | None = None
        self._signal_tasks: set[asyncio.Future[None]] = set()

    async def stop(self, ti_id: int, reason: str, detail: str) -> None:
        """Stop the command of `ti_id` (if it runs): SIGTERM, then SIGKILL after the grace."""
        cmd = self.commands.get(ti_id)
        if cmd is not None:
            await cmd.stop(reason, detail, self.config.kill_grace)

    async def stop_all(self, reason: str, detail: str) -> None:
        """Start no more commands; stop every running one (each is then reported)."""
        self.stopping = (reason, detail)
        await asyncio.gather(*(self.stop(ti, reason, detail) for ti in list(self.commands)))

    async def run(self, ti_id: int, distributor_id: str | None = None) -> Outcome:
        """Run instance `ti_id` to its end and report it. Raises ClientError on a 4xx."""
        if not self.config.stop_on_sigterm:
            return await self._run(ti_id, distributor_id)
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGTERM, self._on_sigterm)
        except (ValueError, RuntimeError, NotImplementedError):  # not the main thread
            return await self._run(ti_id, distributor_id)
        try:
            return await self._run(ti_id, distributor_id)
        finally:
            loop.remove_signal_handler(signal.SIGTERM)

    def _on_sigterm(self) -> None:
        log.warning("SIGTERM: stopping the command; its instance will be retried")
        task = asyncio.ensure_future(self.stop_all("shutdown", "the worker received SIGTERM"))
        self._signal_tasks.add(task)
        task.add_done_callback(self._signal_tasks.discard)

    async def _run(self, ti_id: int, distributor_id: str | None) -> Outcome:
        cfg = self.config
        body: dict[str, Any] = {
            "process_group_id": str(os.getpid()),
            "nodename": self.nodename,
            "next_report_increment": cfg.report_increment,
        }
        if distributor_id:
            body["distributor_id"] = distributor_id
        answer = await self.api.log_running(ti_id, **body)
        (
            _,
            status,
            _wfr,
            task_id,
            name,
            command,
            workflow_id,
            out_dir,
            err_dir,
        ) = answer["task_instance"]
        if status != "R":
            log.error("task instance %s is %s, not RUNNING: not running it", ti_id, status)
            return Outcome(ti_id, EXIT_NOT_RUN, None, ran=False)
        interval = float(answer.get("heartbeat_interval") or cfg.heartbeat_interval)
        increment = float(answer.get("report_increment") or cfg.report_increment)
        env = {
            **os.environ,
            "FARMSTEAD_TASK_ID": str(task_id),
            "FARMSTEAD_TASK_INSTANCE_ID": str(ti_id),
            "FARMSTEAD_WORKFLOW_ID": str(workflow_id),
            **cfg.env,
        }
        stem = f"{_safe(name)}"
        stdout = Path(out_dir) / f"{stem}.o{ti_id}" if out_dir else None
        stderr = Path(err_dir) / f"{stem}.e{ti_id}" if err_dir else None
        if self.stopping is not None:  # stopped between the claim and the start: nothing ran
            reported = await self._deliver(
                ti_id,
                "log_error_worker_node",
                {
                    "error_state": "U",
                    "error_description": f"stopped before it started: {self.stopping[1]}",
                    "nodename": self.nodename,
                },
            )
            return Outcome(ti_id, EXIT_NOT_RUN, reported, ran=False)
        try:
            cmd = await Command.start(command, env, stdout, stderr, cfg.kill_grace)
        except OSError as exc:
            # Nothing started: say why, so the instance does not wait for the reconciler.
            log.error("task instance %s: cannot start: %s", ti_id, exc)
            reported = await self._deliver(
                ti_id,
                "log_error_worker_node",
                {
                    "error_state": "E",
                    "error_description": f"cannot start the command: {exc}",
                    "nodename": self.nodename,
                },
            )
            return Outcome(ti_id, EXIT_NOT_RUN, reported, ran=False)
        limits = Limits.from_resources(answer.get("resources"))
        if cfg.executor_triage:
            limits.runtime = None
        watch = asyncio.create_task(self._watch(ti_id, cmd, limits, interval, increment))
        self.commands[ti_id] = cmd
        if self.watcher is not None:
            self.watcher.add(ti_id, cmd.pid)
        try:
            result = await cmd.wait()
        finally:
            self.commands.pop(ti_id, None)
            if self.on_exit is not None:
                self.on_exit(ti_id)
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
        reported = await self._report(ti_id, cmd, result)
        if self.watcher is not None and reported is not None:
            self.watcher.remove(ti_id)
        code = result.exit_code if reported is not None else EXIT_UNDELIVERED
        return Outcome(ti_id, code, reported, ran=True)

    async def _watch(
        self, ti_id: int, cmd: Command, limits: Limits, interval: float, increment: float
    ) -> None:
        """Heartbeat at the server's interval; stop the command on KILL_SELF or a limit."""
        loop = asyncio.get_running_loop()
        next_beat = loop.time() + interval
        while True:
            over = cmd.check_limits(limits)
            if over is not None:
                await cmd.stop(over[0], over[1], grace=0)
                return
            if loop.time() >= next_beat:
                next_beat = loop.time() + interval
                try:
                    status = await self.api.heartbeat(ti_id, increment, self.config.heartbeat_retry)
                except ServerUnavailable as exc:
                    log.warning(
                        "heartbeat of %s not delivered (%s); the command goes on", ti_id, exc
                    )
                    continue
                if status != "R":
                    log.warning("server says task instance %s is %s: stopping it", ti_id, status)
                    await cmd.stop("stop", f"the server answered {status}", self.config.kill_grace)
                    return
            await asyncio.sleep(min(self.config.sample_interval, max(0.0, next_beat - loop.time())))

    async def _report(self, ti_id: int, cmd: Command, result: Exit) -> str | None:
        """Deliver the final report (retried for a long while); the server's answer."""
        fields: dict[str, Any] = {
            "nodename": self.nodename,
            "stdout_log": cmd.stdout.text,
            "stderr_log": cmd.stderr.text,
            "wallclock": round(result.wallclock, 3),
        }
        if result.maxrss is not None and result.cpu is not None:
            fields |= {"maxrss": result.maxrss, "cpu": round(result.cpu, 3), "io": result.io}
        if cmd.stdout.path is not None:
            fields["stdout"] = str(cmd.stdout.path)
        if cmd.stderr.path is not None:
            fields["stderr"] = str(cmd.stderr.path)
        if result.killed_for == "shutdown" and self.config.executor_triage:
            log.warning("stopped by SIGTERM: the executor reports why from the cluster's record")
            return None
        state, why = _verdict(result, cmd.stderr.text)
        if state == "D":
            return await self._deliver(ti_id, "log_done", fields)
        body = fields | {"error_state": state, "error_description": why}
        return await self._deliver(ti_id, "log_error_worker_node", body)

    async def _deliver(self, ti_id: int, route: str, body: dict[str, Any]) -> str | None:
        """POST a final report, retried while the server is unreachable; its answer."""
        path = f"/v3/fsm/task_instance/{ti_id}/{route}"
        try:
            out = await self.api.call("POST", path, body, retry_limit=self.config.report_retry)
        except ServerUnavailable as exc:
            log.error("final report of task instance %s not delivered: %s", ti_id, exc)
            return None
        except ClientError as exc:
            log.error("final report of task instance %s refused: %s", ti_id, exc)
            return str(exc.status_code)
        return str(out["status"])


def _verdict(result: Exit, stderr_tail: str) -> tuple[str, str]:
    """The status to report and why."""
    if result.killed_for in ("memory", "runtime"):
        return "Z", f"killed for {result.killed_for}: {result.detail}"
    if result.killed_for == "stop":
        return "F", f"stopped: {result.detail}"
    if result.killed_for == "shutdown":  # not the command's fault: an error that is retried
        return "U", f"stopped: {result.detail}"
    if result.returncode == 0:
        return "D", ""
    if result.returncode == -signal.SIGKILL:
        return "Z", "killed by SIGKILL from outside (likely out of memory)"
    last = stderr_tail.strip().splitlines()[-1:] or [""]
    what = (
        f"killed by signal {-result.returncode}"
        if result.returncode < 0
        else f"exit code {result.returncode}"
    )
    return "E", f"command failed: {what}. {last[0][:500]}".strip()
