"""An async HTTP client of farmstead's worker and distributor routes, retrying what is transient."""

import logging
import os
from typing import Any

import httpx
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_delay,
    wait_exponential_jitter,
)

log = logging.getLogger("farmstead.client")


class ClientError(Exception):
    """The server refused the request (a 4xx): retrying will not help."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code


class ServerUnavailable(Exception):
    """The server could not be reached (or kept answering 5xx) within the retry limit."""


def transient_status(code: int) -> bool:
    """An HTTP status worth retrying: 5xx (503 with Retry-After above all), 423, 429."""
    return code >= 500 or code in (423, 429)


def is_transient(exc: BaseException) -> bool:
    """A failure worth retrying: no connection, a timeout, or a transient status."""
    if isinstance(exc, httpx.TransportError):
        return True
    return isinstance(exc, httpx.HTTPStatusError) and transient_status(exc.response.status_code)


class Api:
    """Calls to one farmstead server; each retries with backoff until `retry_limit` seconds."""

    def __init__(
        self,
        base_url: str,
        retry_limit: float = 300.0,
        timeout: float = 30.0,
        client: httpx.AsyncClient | None = None,
        token: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.retry_limit = retry_limit
        headers = {"Authorization": f"Bearer {token}"} if token else None
        self.client = client or httpx.AsyncClient(
            base_url=self.base_url,
            timeout=timeout,
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
            headers=headers,
            # plain HTTP needs no certificates (loading them costs a worker 20 ms of CPU)
            verify=not self.base_url.startswith("http://"),
        )

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self.client.aclose()

    async def call(
        self, method: str, path: str, json: Any = None, retry_limit: float | None = None
    ) -> Any:
        """One request; transient failures retried with exponential backoff and jitter."""
        limit = self.retry_limit if retry_limit is None else retry_limit
        retrying = AsyncRetrying(
            retry=retry_if_exception(is_transient),
            wait=wait_exponential_jitter(multiplier=0.2, max=15, jitter=0.5),
            stop=stop_after_delay(limit),
            reraise=True,
            before_sleep=lambda rs: log.warning(
                "%s %s failed (%s); retrying", method, path, rs.outcome and rs.outcome.exception()
            ),
        )
        try:
            async for attempt in retrying:
                with attempt:
                    resp = await self.client.request(method, path, json=json)
                    if transient_status(resp.status_code):
                        resp.raise_for_status()
        except (httpx.TransportError, httpx.HTTPStatusError) as exc:
            raise ServerUnavailable(f"{self.base_url} unreachable: {exc}") from exc
        if resp.status_code >= 400:
            raise ClientError(resp.status_code, _detail(resp))
        return resp.json()

    # --- worker-node routes -------------------------------------------------------------

    async def log_running(self, ti_id: int, **body: Any) -> dict[str, Any]:
        return dict(await self.call("POST", f"/v3/fsm/task_instance/{ti_id}/log_running", body))

    async def heartbeat(self, ti_id: int, increment: float, retry_limit: float) -> str:
        body = {"next_report_increment": increment}
        out = await self.call(
            "POST", f"/v3/fsm/task_instance/{ti_id}/log_report_by", body, retry_limit=retry_limit
        )
        return str(out["status"])

    async def log_done(self, ti_id: int, **body: Any) -> str:
        out = await self.call("POST", f"/v3/fsm/task_instance/{ti_id}/log_done", body)
        return str(out["status"])

    async def log_error(self, ti_id: int, state: str, description: str, **body: Any) -> str:
        body |= {"error_state": state, "error_description": description}
        out = await self.call("POST", f"/v3/fsm/task_instance/{ti_id}/log_error_worker_node", body)
        return str(out["status"])

    async def array_instance(self, array_id: int, batch: int, step: int) -> int:
        out = await self.call(
            "GET", f"/v3/fsm/get_array_task_instance_id/{array_id}/{batch}/{step}"
        )
        return int(out["task_instance_id"])

    async def statuses(self, ti_ids: list[int], retry_limit: float) -> dict[int, str]:
        """The current status of each of `ti_ids` (unknown ids left out): one request."""
        out = await self.call(
            "POST",
            "/v3/task_instances/status",
            {"task_instance_ids": ti_ids},
            retry_limit=retry_limit,
        )
        return {int(i["task_instance_id"]): str(i["status"]) for i in out["data"]}

    # --- distributor routes -------------------------------------------------------------

    async def claim(
        self, limit: int, workflow_id: int | None = None, agent_id: int | None = None
    ) -> list[dict[str, Any]]:
        body = {"limit": limit, "workflow_id": workflow_id, "agent_id": agent_id}
        out = await self.call("POST", "/v3/claims", body)
        return list(out["data"])

    async def register_agent(self, name: str, hostname: str, kind: str, slots: int) -> int:
        """Register this claimer as an agent; its id goes with its claims."""
        body = {"name": name, "hostname": hostname, "kind": kind, "pid": os.getpid(),
                "slots": slots}  # fmt: skip
        return int((await self.call("POST", "/v3/agents", body))["id"])

    async def log_distributor_id(self, ti_id: int, distributor_id: str, increment: float) -> None:
        await self.call(
            "POST",
            f"/v3/fsm/task_instance/{ti_id}/log_distributor_id",
            {"distributor_id": distributor_id, "next_report_increment": increment},
        )

    async def log_known_error(self, ti_id: int, state: str, message: str, **body: Any) -> None:
        await self.call(
            "POST",
            f"/v3/fsm/task_instance/{ti_id}/log_known_error",
            {"error_state": state, "error_message": message, **body},
        )

    async def log_no_distributor_id(self, ti_id: int, message: str) -> None:
        await self.call(
            "POST",
            f"/v3/fsm/task_instance/{ti_id}/log_no_distributor_id",
            {"no_id_err_msg": message},
        )

    async def set_distributor_ids(self, array_id: int, ids: dict[int, str]) -> None:
        """Record the job ids of many instances of an array (no status change)."""
        body = {str(ti): job for ti, job in ids.items()}
        await self.call("POST", f"/v3/fsm/array/{array_id}/log_distributor_id", body)

    async def launch_batch(self, array_id: int, batch: int, increment: float) -> int:
        """An array batch's INSTANTIATED instances → LAUNCHED; how many moved."""
        body = {"batch_number": batch, "next_report_increment": increment}
        out = await self.call("POST", f"/v3/fsm/array/{array_id}/transition_to_launched", body)
        return int(out["launched"])

    async def kill_batch(self, array_id: int, batch: int) -> int:
        """An array batch's KILL_SELF instances → ERROR_FATAL (their jobs were ended)."""
        body = {"batch_number": batch}
        out = await self.call("POST", f"/v3/fsm/array/{array_id}/transition_to_killed", body)
        return int(out["killed"])

    async def heartbeat_batch(self, ti_ids: list[int], increment: float) -> int:
        """A distributor's heartbeat for many LAUNCHED or RUNNING instances; how many moved on."""
        body = {"task_instance_ids": ti_ids, "next_report_increment": increment}
        out = await self.call("POST", "/v3/fsm/task_instance/log_report_by/batch", body)
        return int(out["updated"])

    async def resources(self, ti_ids: list[int]) -> dict[int, dict[str, Any] | None]:
        """Each instance's resources (what a distributor turns into its job's options)."""
        body = {"task_instance_ids": ti_ids, "resources": True}
        out = await self.call("POST", "/v3/task_instances/status", body)
        return {int(i["task_instance_id"]): i.get("resources") for i in out["data"]}

    async def worker_token(self, name: str, workflow_id: int, expires_in: float) -> str:
        """A new worker token scoped to one workflow (for the workers an executor starts)."""
        body = {"name": name, "role": "worker", "workflow_ids": [workflow_id],
                "expires_in": expires_in}  # fmt: skip
        return str((await self.call("POST", "/v3/tokens", body))["token"])


def _detail(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return f"HTTP {resp.status_code}: {resp.text[:200]}"
    # farmstead's error body: {"error": ..., "detail": "one line", "errors": [...]}
    detail = body.get("detail") if isinstance(body, dict) else None
    return f"HTTP {resp.status_code}: {detail if isinstance(detail, str) else str(body)[:200]}"
