"""schemathesis over the whole OpenAPI schema, on SQLite and PostgreSQL, with a seeded database.

Every operation the server documents is fuzzed with valid (positive) and invalid (negative)
requests, half of them steered to ids that exist (the seed), half over the whole documented
range. Checks: no 5xx, and every response as documented (status code, content type, body).

It drives a real server process over HTTP rather than the ASGI app in-process: the fuzzer then
meets exactly what a client meets (uvicorn's parsing, the middleware, the lifespan, the real
connection pool), and the app's event loop is not shared with the test's.

Deterministic (derandomized) and bounded: FARMSTEAD_FUZZ_EXAMPLES examples per operation and
mode (default 50). Run it alone with `pytest tests/integration/test_fuzz.py`.
"""

import asyncio
import copy
import os
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from factories import instantiate, launch, live_ti, ok, running, submit, submit_array
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

pytestmark = pytest.mark.e2e

EXAMPLES = int(os.environ.get("FARMSTEAD_FUZZ_EXAMPLES", "50"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],  # report the first failure as found: no shrinking
    suppress_health_check=list(HealthCheck),
)


async def _seed(url: str) -> None:
    """Workflows whose tasks and instances sit in several statuses (ids from 1 up)."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        wf = await submit(c, 6, name="seeded")
        tis = [await live_ti(c, t) for t in wf["task_ids"]]
        await instantiate(c, tis[:5])
        for ti in tis[:4]:
            await launch(c, ti)
        for ti in tis[:3]:
            await running(c, ti)
        await ok(c.post(f"/v3/fsm/task_instance/{tis[0]}/log_done", json={}))
        body = {"error_state": "E", "error_description": "seeded failure"}
        await ok(c.post(f"/v3/fsm/task_instance/{tis[1]}/log_error_worker_node", json=body))
        arr = await submit_array(c, 0, 9, max_attempts=1)
        await ok(c.post(f"/v3/workflows/{arr['id']}/cancel"))
        await submit(c, 2, name="idle")


def _hinted(schema: dict[str, Any], low: int, high: int) -> dict[str, Any]:
    """The schema with every integer path parameter narrowed to the seeded ids."""
    narrowed = copy.deepcopy(schema)
    for item in narrowed["paths"].values():
        for operation in item.values():
            for param in operation.get("parameters", []):
                sub = param.get("schema", {})
                if param.get("in") == "path" and sub.get("type") == "integer":
                    sub["minimum"], sub["maximum"] = low, high
    return narrowed


def _without_security(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema without its security schemes: this server runs with auth off (the fuzzer
    probes input handling; tests/integration/test_auth.py walks every route with every role),
    and schemathesis would otherwise vary the credentials too."""
    plain = copy.deepcopy(schema)
    plain.get("components", {}).pop("securitySchemes", None)
    for item in plain["paths"].values():
        for operation in item.values():
            operation.pop("security", None)
    return plain


def _fuzz(url: str) -> list[str]:
    raw = _without_security(httpx.get(f"{url}/openapi.json", timeout=30).json())
    full = schemathesis.openapi.from_dict(raw)
    hinted = schemathesis.openapi.from_dict(_hinted(raw, 1, 40))
    session = requests.Session()
    failures: list[str] = []
    sent: dict[str, int] = {}
    for result in full.get_all_operations():
        operation = result.ok()
        near = hinted[operation.path][operation.method.upper()]
        documented = raw["paths"][operation.path][operation.method.lower()]
        inputs = documented.get("parameters") or documented.get("requestBody")
        modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if inputs else [])
        for mode in modes:
            strategy = st.one_of(operation.as_strategy(mode), near.as_strategy(mode))

            @FUZZ_SETTINGS
            @given(case=strategy)
            def check(case: Any) -> None:
                sent[case.operation.label] = sent.get(case.operation.label, 0) + 1
                case.call_and_validate(base_url=url, session=session, checks=CHECKS, timeout=30)

            try:
                check()
            except (Exception, BaseExceptionGroup) as exc:  # one finding per operation and mode
                failures.append(f"{operation.label} [{mode.value}]: {exc}")
    assert len(sent) == len(raw_operations(raw)), "some operations were never called"
    return failures


def raw_operations(schema: dict[str, Any]) -> list[tuple[str, str]]:
    """Every (path, method) the schema documents."""
    return [(path, method) for path, item in schema["paths"].items() for method in item]


def test_fuzz_whole_schema(server_factory: Any) -> None:
    # a documented 422 for arrays over 2,000 tasks: a million-task workflow per example would
    # spend the time budget inserting rows (and make the next requests wait for the database)
    server = server_factory(max_tasks_per_request=2000)
    asyncio.run(_seed(server.url))
    failures = _fuzz(server.url)
    assert not failures, f"{len(failures)} findings:\n\n" + "\n\n".join(failures)
    assert "Traceback" not in server.log_path.read_text()  # no error the answers hid
