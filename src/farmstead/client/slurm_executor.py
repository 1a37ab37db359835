"""The Slurm executor: claims QUEUED instances from a server and submits them as Slurm job arrays.

It runs where Slurm's commands work (a login node) and talks to the server over HTTP like any
other client. Each round it claims what its limit allows, groups the instances by (workflow,
array, batch, Slurm options), and submits each group as one `sbatch --array=<steps>` whose
elements run `farmstead worker run --array-id A --batch B` (the worker finds its instance from
`SLURM_ARRAY_TASK_ID`) with a worker token scoped to the workflow. It records `JOB_STEP` as each
instance's distributor id and moves the batch to LAUNCHED.

Every `status_interval` seconds it reads its instances' statuses from the server (one request)
and their elements' states from Slurm (one `squeue`, and `sacct` for jobs squeue forgot):
- a LAUNCHED instance whose element is still queued in Slurm has its deadline pushed on (one
  batch heartbeat), so a long wait in Slurm's queue is not taken for a lost job;
- a KILL_SELF instance (cancelled) has its element `scancel`led and is moved on (→ ERROR_FATAL);
- an instance whose element ended in Slurm but that never reported its end is resolved at once
  from Slurm's record: TIMEOUT and OUT_OF_MEMORY → RESOURCE_ERROR (retried with scaled
  resources), NODE_FAIL, PREEMPTED, BOOT_FAIL → UNKNOWN_ERROR, CANCELLED by someone else →
  ERROR, any other end or a job Slurm no longer knows → UNKNOWN_ERROR.

A submission Slurm cannot take now (controller down or busy) is retried with backoff; before a
retry it looks for the job under its unique name, so an sbatch whose answer was lost is never
submitted twice. Options Slurm refuses (checked once per set with `sbatch --test-only`) fail the
instances (NO_DISTRIBUTOR_ID, with Slurm's words), they do not wait.
"""

import asyncio
import contextlib
import logging
import secrets
import shlex
import socket
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field

from farmstead.client import slurm
from farmstead.client.api import Api, ClientError, ServerUnavailable
from farmstead.client.slurm import BadOption, Element, SlurmRefused, SlurmUnavailable

log = logging.getLogger("farmstead.slurm")
#: the server's statuses in which an instance still waits on its Slurm element
LIVE = frozenset("IORT")
#: what Slurm's end of an element means for an instance that never reported its own end
RESOURCE = frozenset({"TIMEOUT", "OUT_OF_MEMORY"})
LOST = frozenset({"NODE_FAIL", "PREEMPTED", "BOOT_FAIL"})
TOKEN_ENV = "FARMSTEAD_TOKEN"
TOKEN_LIFE, TOKEN_RENEW = 7 * 86400.0, 86400.0
STATUS_CHUNK = 10_000
BACKOFF_MAX = 60.0
#: a refusal while some node is not answering is taken for the moment's, this many times
SETTLING_TRIES = 5


@dataclass
class Group:
    """Claimed instances that go into one sbatch: same workflow, array, batch and options."""

    workflow_id: int
    array_id: int
    batch: int
    options: tuple[str, ...]
    steps: dict[int, int] = field(default_factory=dict)  # task instance id → array step
    name: str = ""
    failures: int = 0
    next_try: float = 0.0


@dataclass
class Submitted:
    """An instance whose element is in Slurm, until it settles."""

    array_id: int
    batch: int
    element: str  # JOB_STEP
    ended_seen: float | None = None
    renewed: float = 0.0  # when its LAUNCHED deadline was last pushed on (while Slurm queues it)
    cancelled: bool = False


@dataclass
class SlurmConfig:
    """How the executor submits (seconds where a time)."""

    max_jobs: int = 10_000  # elements submitted and not yet settled, at most
    at_once: int | None = None  # `%N` of each array: elements running at once
    options: tuple[str, ...] = ()  # sbatch options for every job (a task's own come after)
    output: str = "/dev/null"  # the elements' own output (the worker's messages)
    heartbeat_interval: float = 30.0
    report_increment: float = 93.0
    #: an element that ended must stay ended this long before its instance is resolved (its
    #: worker's last report may be on its way)
    report_grace: float = 5.0
    #: the job's command: `farmstead worker run` through its lean entry point (no CLI imports)
    worker_command: str = f"{shlex.quote(sys.executable)} -m farmstead.client.job"


class SlurmExecutor:
    """Claim, submit, watch; `run(stop)` until stopped."""

    def __init__(
        self,
        server_url: str,
        config: SlurmConfig | None = None,
        *,
        token: str | None = None,
        workflow_id: int | None = None,
        poll_interval: float = 1.0,
        status_interval: float = 2.0,
    ) -> None:
        self.server_url = server_url
        self.config = config or SlurmConfig()
        self.token = token
        self.workflow_id = workflow_id
        self.poll_interval = poll_interval
        self.status_interval = status_interval
        self.host = socket.getfqdn()
        self.agent_id: int | None = None
        self.pending: list[Group] = []
        self.active: dict[int, Submitted] = {}
        self._tokens: dict[int, tuple[str, float]] = {}  # workflow → (token, when made)
        self._checked: set[tuple[str, ...]] = set()  # option sets Slurm took

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop`: claim and submit, watch what was submitted. Then leave the submitted
        elements running (they report to the server themselves) and hand back what was
        claimed and not submitted."""
        api = Api(self.server_url, retry_limit=120, token=self.token)
        try:
            await self._register(api)
            loop = asyncio.get_running_loop()
            next_check = 0.0
            while not stop.is_set():
                busy = False
                try:
                    await self._submit_pending(api)
                    busy = await self._claim(api)
                    if loop.time() >= next_check:
                        next_check = loop.time() + self.status_interval
                        await self._watch(api)
                except ServerUnavailable as exc:
                    log.warning("server unavailable: %s", exc)
                except Exception:  # one bad round must not end the executor
                    log.exception("slurm executor: unexpected error; carrying on")
                if not busy:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), self.poll_interval)
        finally:
            await self._hand_back(api)
            await api.aclose()

    # ---- claiming and submitting -------------------------------------------------------

    async def _register(self, api: Api) -> None:
        try:
            self.agent_id = await api.register_agent(
                f"slurm executor {self.host}", self.host, "slurm", self.config.max_jobs
            )
        except ClientError as exc:
            log.warning("could not register as an agent (claiming without one): %s", exc)

    async def _claim(self, api: Api) -> bool:
        """Claim for the free capacity and submit; True if it may get more at once."""
        room = self.config.max_jobs - len(self.active) - sum(len(g.steps) for g in self.pending)
        if room <= 0:
            return False
        limit = min(room, 1000)
        claimed = await api.claim(limit, self.workflow_id, self.agent_id)
        if not claimed:
            return False
        resources = await api.resources([int(c["task_instance_id"]) for c in claimed])
        groups: dict[tuple[int, int, int, tuple[str, ...]], Group] = {}
        bad: dict[int, str] = {}
        for c in claimed:
            ti = int(c["task_instance_id"])
            try:
                options = tuple(slurm.options_for(resources.get(ti), self.config.options))
            except BadOption as exc:
                bad[ti] = f"bad Slurm option: {exc}"
                continue
            key = (int(c["workflow_id"]), int(c["array_id"]), int(c["array_batch_num"]), options)
            if key not in groups:
                groups[key] = Group(*key)
            groups[key].steps[ti] = int(c["array_step_id"])
        await self._refuse(api, bad)
        for group in groups.values():
            group.name = f"farmstead-{group.workflow_id}-{group.array_id}-{group.batch}-" + (
                secrets.token_hex(4)
            )
            await self._submit(api, group)
        return len(claimed) == limit

    async def _submit_pending(self, api: Api) -> None:
        now = time.monotonic()
        due = [g for g in self.pending if g.next_try <= now]
        if not due:
            return
        self.pending = [g for g in self.pending if g.next_try > now]
        # what the server moved meanwhile (cancelled; expired unlaunched) is not submitted
        statuses = await _statuses(api, sorted(t for g in due for t in g.steps), 30)
        for group in due:
            group.steps = {t: s for t, s in group.steps.items() if statuses.get(t) == "I"}
            if group.steps:
                await self._submit(api, group)

    async def _submit(self, api: Api, group: Group) -> None:
        """sbatch the group (or find it submitted already), then record it on the server."""
        env = slurm.environment({"FARMSTEAD_SERVER_URL": self.server_url})
        env.pop(TOKEN_ENV, None)  # a worker holds a token for its own workflow only
        try:
            await self._check_options(group, env)
            if self.token is not None:
                env[TOKEN_ENV] = await self._worker_token(api, group.workflow_id)
            job = await slurm.find(group.name, env) if group.failures else None
            if job is None:
                job = await slurm.submit(
                    group.name,
                    list(group.steps.values()),
                    self.config.at_once,
                    ["--export=ALL", *group.options],
                    f"{self.config.worker_command} --array-id {group.array_id} "
                    f"--batch {group.batch} {self._worker_flags()}",
                    self.config.output,
                    env,
                )
        except SlurmRefused as exc:
            if group.failures >= SETTLING_TRIES or not await slurm.settling(env):
                await self._refuse(api, dict.fromkeys(group.steps, str(exc)))
                return
            self._again(group, exc)  # nodes not registered yet (the controller restarted)
            return
        except SlurmUnavailable as exc:
            self._again(group, exc)
            return
        ids = {ti: f"{job}_{step}" for ti, step in group.steps.items()}
        now = time.monotonic()
        for ti, element in ids.items():
            self.active[ti] = Submitted(group.array_id, group.batch, element, renewed=now)
        await api.set_distributor_ids(group.array_id, ids)
        await api.launch_batch(group.array_id, group.batch, self.config.report_increment)
        log.info("submitted %s instance(s) as Slurm job %s", len(ids), job)

    def _again(self, group: Group, exc: Exception) -> None:
        """Submit the group later: exponential backoff with jitter, at most a minute."""
        group.failures += 1
        delay = min(BACKOFF_MAX, 2.0**group.failures) * (0.5 + secrets.randbelow(100) / 100)
        group.next_try = time.monotonic() + delay
        self.pending.append(group)
        log.warning("submission of %s failed (%s); again in %.0f s", group.name, exc, delay)

    def _worker_flags(self) -> str:
        cfg = self.config
        return (
            f"--heartbeat-interval {cfg.heartbeat_interval:g} "
            f"--report-increment {cfg.report_increment:g} --executor-triage"
        )

    async def _check_options(self, group: Group, env: dict[str, str]) -> None:
        """Would Slurm take these options? Asked once per set that it took (`sbatch
        --test-only`); a refusal is asked again next time (it may have been the moment's)."""
        if group.options in self._checked:
            return
        try:
            await slurm.check(group.options, env)
        except SlurmRefused as exc:
            shown = " ".join(group.options) or "(none)"
            raise SlurmRefused(f"Slurm refuses the options {shown}: {exc}") from None
        self._checked.add(group.options)

    async def _worker_token(self, api: Api, workflow_id: int) -> str:
        """A worker token of the workflow, valid for a week; a new one after a day (a job may
        wait in Slurm's queue for days before it starts)."""
        made = self._tokens.get(workflow_id)
        if made is None or time.monotonic() - made[1] > TOKEN_RENEW:
            name = f"slurm executor {self.host}, workflow {workflow_id}"
            token = await api.worker_token(name, workflow_id, TOKEN_LIFE)
            made = self._tokens[workflow_id] = (token, time.monotonic())
        return made[0]

    async def _refuse(self, api: Api, why: dict[int, str]) -> None:
        """These instances cannot be submitted: NO_DISTRIBUTOR_ID with the reason."""
        for ti, message in why.items():
            log.error("task instance %s: %s", ti, message)
            try:
                await api.log_no_distributor_id(ti, message)
            except ClientError as exc:
                log.warning("could not report task instance %s: %s", ti, exc)

    async def _hand_back(self, api: Api) -> None:
        """Claimed and not submitted: back for a retry at once (NO_DISTRIBUTOR_ID)."""
        left = {t: "the Slurm executor stopped before submitting it" for g in self.pending
                for t in g.steps}  # fmt: skip
        self.pending = []
        with contextlib.suppress(ServerUnavailable):
            await self._refuse(api, left)

    # ---- watching ----------------------------------------------------------------------

    async def _watch(self, api: Api) -> None:
        """Settle what Slurm knows ended; scancel what the server cancelled."""
        if not self.active:
            return
        statuses = await _statuses(api, sorted(self.active), self.status_interval)
        kill: dict[tuple[int, int], list[int]] = defaultdict(list)
        for ti, sub in list(self.active.items()):
            status = statuses.get(ti)
            if status == "K" and not sub.cancelled:
                kill[(sub.array_id, sub.batch)].append(ti)
            elif status not in LIVE:
                del self.active[ti]  # settled (or cancelled and handled)
        if kill:
            await self._cancel(api, kill)
        live = {ti: s for ti, s in self.active.items() if statuses.get(ti) in LIVE}
        if not live:
            return
        jobs = sorted({s.element.split("_")[0] for s in live.values()})
        try:
            states = await slurm.elements(jobs, slurm.environment({}))
        except (SlurmUnavailable, SlurmRefused) as exc:
            log.warning("could not read Slurm's job states: %s", exc)
            return
        now = time.monotonic()
        waiting: list[int] = []  # LAUNCHED, the element queued or starting in Slurm
        for ti, sub in live.items():
            element = states.get(sub.element)
            if element is not None and not element.ended:
                sub.ended_seen = None
                if statuses[ti] == "O" and now - sub.renewed > self.config.report_increment / 3:
                    waiting.append(ti)
                    sub.renewed = now
                continue
            if sub.ended_seen is None:
                sub.ended_seen = now
            if now - sub.ended_seen < self.config.report_grace:
                continue
            await self._resolve(api, ti, statuses[ti], sub, element)
        if waiting:  # an element may wait in Slurm's queue for hours: keep its instance alive
            await api.heartbeat_batch(waiting, self.config.report_increment)

    async def _cancel(self, api: Api, kill: dict[tuple[int, int], list[int]]) -> None:
        """scancel the elements of cancelled instances, then move them on (→ ERROR_FATAL)."""
        elements = [self.active[t].element for tis in kill.values() for t in tis]
        try:
            await slurm.cancel(elements, slurm.environment({}))
        except (SlurmUnavailable, SlurmRefused) as exc:
            log.warning("scancel failed (%s); again at the next check", exc)
            return
        log.info("cancelled %s Slurm element(s)", len(elements))
        for (array_id, batch), tis in kill.items():
            for t in tis:
                self.active[t].cancelled = True
            await api.kill_batch(array_id, batch)

    async def _resolve(
        self, api: Api, ti: int, status: str, sub: Submitted, element: Element | None
    ) -> None:
        """The element ended and its instance never reported: say why, from Slurm's record."""
        del self.active[ti]
        state, why = verdict(sub.element, element)
        log.warning("task instance %s (%s): %s", ti, sub.element, why)
        try:
            if status == "I":  # never launched on the server's books: its submission failed
                await api.log_no_distributor_id(ti, why)
            else:
                await api.log_known_error(ti, state, why, distributor_id=sub.element)
        except ClientError as exc:  # it settled meanwhile (e.g. its worker's report came in)
            log.info("task instance %s not moved: %s", ti, exc)


async def _statuses(api: Api, ids: list[int], retry_limit: float) -> dict[int, str]:
    """The server's status of each of `ids`, 10,000 a request (the route's limit)."""
    out: dict[int, str] = {}
    for start in range(0, len(ids), STATUS_CHUNK):
        out |= await api.statuses(ids[start : start + STATUS_CHUNK], retry_limit=retry_limit)
    return out


def verdict(name: str, element: Element | None) -> tuple[str, str]:
    """The error state and message for an instance whose element `name` ended (or that Slurm
    no longer knows: `element` None) without its worker's final report."""
    if element is None:
        return "U", f"Slurm no longer knows job {name} and it never reported"
    said = f"Slurm: {element.state}" + (f" ({element.reason})" if element.reason else "")
    if element.state in RESOURCE:
        return "Z", f"{said}: over its requested resources"
    if element.state in LOST:
        return "U", f"{said}: not the task's fault"
    if element.state == "CANCELLED":
        return "E", f"{said}: cancelled in Slurm, not by farmstead"
    return "U", f"{said}: the job ended and its worker never reported"
