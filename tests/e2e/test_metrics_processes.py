"""End to end: /metrics of a server with two processes adds up both processes' counts."""

from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.e2e


def transitions(url: str) -> dict[tuple[str, str, str], float]:
    resp = httpx.get(f"{url}/metrics", timeout=30)  # a new connection: either process answers
    assert resp.status_code == 200, resp.text
    out = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            if s.name == "farmstead_transitions_total":
                key = (s.labels["entity"], s.labels["from_status"], s.labels["to_status"])
                out[key] = s.value
    return out


def test_counts_add_up_over_two_server_processes(server_factory: Any) -> None:
    server = server_factory(workers=2)
    claimed = 0
    for i in range(6):  # a new connection per request: the two processes share the work
        with httpx.Client(base_url=server.url, timeout=30) as c:
            wf = c.post("/v3/workflows", json={"name": f"m{i}", "array": {
                "command": "true", "first": 0, "last": 9}})  # fmt: skip
            assert wf.status_code == 201, wf.text
        with httpx.Client(base_url=server.url, timeout=30) as c:
            got = c.post("/v3/claims", json={"limit": 5, "workflow_id": wf.json()["id"]})
            assert got.status_code == 200, got.text
            claimed += len(got.json()["data"])
    seen = [transitions(server.url) for _ in range(6)]
    for values in seen:  # whichever process answered, the same totals: both processes' counts
        assert values[("task_instance", "", "Q")] == 60
        assert values[("task_instance", "Q", "I")] == claimed == 30
