"""Every bad input is a clear 422 naming the field, in the one error body; what a worker reports
is stored whatever it holds (NULs, lone surrogates, over-long text). Both databases.

The `client` fixture fails a test on any 500, so each case below also proves "never a 500".
"""

import json
from typing import Any

import httpx
import pytest
from factories import (
    FSM,
    INC,
    app_client,
    done,
    each_case,
    live_ti,
    ok,
    running_task,
    submit,
    task_row,
    ti_row,
)

from farmstead.bounds import IDS_MAX, TAIL_MAX
from farmstead.client.api import Api, ClientError
from farmstead.db.engine import Database
from farmstead.schemas import ErrorOut, ValidationErrorOut
from farmstead.settings import Settings

BIG = 2**63  # one past the largest 64-bit id
BIG32 = 2**31  # one past the largest 32-bit value
TASKS = [{"name": "a", "command": "true"}]


def refused(resp: httpx.Response, field: str, *words: str) -> dict[str, Any]:
    """A 422 in the one shape, with an item for `field` whose message holds `words`."""
    assert resp.status_code == 422, f"{resp.request.url}: {resp.status_code} {resp.text[:500]}"
    body = ValidationErrorOut.model_validate(resp.json()).model_dump()
    fields = {e["field"]: e["message"] for e in body["errors"]}
    assert field in fields, (field, body)
    for word in words:
        assert word in fields[field], (word, body)
    assert body["detail"].startswith(body["errors"][0]["field"]), body
    return body


async def raw(client: httpx.AsyncClient, path: str, text: str) -> httpx.Response:
    """POST a body exactly as written (NaN, lone surrogate escapes: things json.dumps refuses)."""
    return await client.post(
        path, content=text.encode(), headers={"content-type": "application/json"}
    )


# ---- integers -------------------------------------------------------------------------------


async def test_ids_past_64_bits_are_422_in_path_query_and_body(
    client: httpx.AsyncClient,
) -> None:
    wf = await submit(client, 1)
    array_id = wf["array_ids"][0]
    cases: dict[str, tuple[str, str, Any, str]] = {
        "path ti": ("POST", f"{FSM}/task_instance/{BIG}/log_done", {}, "path.task_instance_id"),
        "path ti jobmon": ("POST", f"/api/v3/task_instance/{BIG}/log_report_by",
                           {"next_report_increment": INC}, "path.task_instance_id"),
        "path workflow": ("GET", f"/v3/workflows/{BIG}", None, "path.workflow_id"),
        "path task": ("GET", f"/v3/tasks/{BIG}", None, "path.task_id"),
        "path array": ("GET", f"{FSM}/get_array_task_instance_id/{BIG}/1/0", None,
                       "path.array_id"),
        "path cancel": ("POST", f"/v3/workflows/{BIG}/cancel", None, "path.workflow_id"),
        "query after_id": ("GET", f"/v3/workflows/{wf['id']}/tasks?after_id={BIG}", None,
                           "query.after_id"),
        "query offset": ("GET", f"/v3/workflows?offset={BIG}", None, "query.offset"),
        "body ids": ("POST", f"{FSM}/task_instance/instantiate_task_instances",
                     {"task_instance_ids": [1, BIG]}, "task_instance_ids[1]"),
        "body batch": ("POST", f"{FSM}/task_instance/log_report_by/batch",
                       {"task_instance_ids": [BIG], "next_report_increment": INC},
                       "task_instance_ids[0]"),
        "body claim": ("POST", "/v3/claims", {"limit": 1, "workflow_id": BIG}, "workflow_id"),
        "body dict key": ("POST", f"{FSM}/array/{array_id}/log_distributor_id",
                          {str(BIG): "job"}, f"{BIG}[key]"),
        "body maxrss": ("POST", f"{FSM}/task_instance/1/log_done", {"maxrss": BIG}, "maxrss"),
    }

    async def check(method: str, path: str, body: Any, field: str) -> None:
        refused(await client.request(method, path, json=body), field, "less than or equal")

    await each_case(cases, check)


async def test_32_bit_fields_refuse_2_to_the_31(client: httpx.AsyncClient) -> None:
    wf = await submit(client, 1)
    array_id = wf["array_ids"][0]
    one = {"name": "a", "command": "true"}
    cases: dict[str, tuple[str, Any, str]] = {
        "priority": ("/v3/workflows", {"name": "w", "tasks": [one], "priority": BIG32},
                     "priority"),
        "task priority": ("/v3/workflows", {"name": "w", "tasks": [one | {"priority": -BIG32 - 1}]},
                          "tasks[0].priority"),
        "max running": ("/v3/workflows", {"name": "w", "tasks": [one],
                                          "max_concurrently_running": BIG32},
                        "max_concurrently_running"),
        "array first": ("/v3/workflows", {"name": "w", "array": {"command": "x {i}",
                                                                 "first": BIG32, "last": BIG32}},
                        "array.first"),
        "array last": ("/v3/workflows", {"name": "w", "array": {"command": "x {i}",
                                                                "last": BIG32}}, "array.last"),
        "batch": (f"{FSM}/array/{array_id}/transition_to_launched",
                  {"batch_number": BIG32, "next_report_increment": INC}, "batch_number"),
        "killed batch": (f"{FSM}/array/{array_id}/transition_to_killed",
                         {"batch_number": -BIG32 - 1}, "batch_number"),
    }

    async def check(path: str, body: Any, field: str) -> None:
        refused(await client.post(path, json=body), field, "than or equal")

    await each_case(cases, check)
    for path, field in ((f"{array_id}/{BIG32}/0", "path.batch_num"),
                        (f"{array_id}/1/{BIG32}", "path.step_id")):
        refused(await client.get(f"{FSM}/get_array_task_instance_id/{path}"), field)
    assert (await ok(client.get("/v3/workflows")))["count"] == 1


async def test_bools_and_strings_are_not_ids(client: httpx.AsyncClient) -> None:
    for path, body in (
        ("task_instance/instantiate_task_instances", {"task_instance_ids": [False]}),
        ("task_instance/instantiate_task_instances", {"task_instance_ids": ["1"]}),
        ("task_instance/log_report_by/batch",
         {"task_instance_ids": [True], "next_report_increment": INC}),
    ):
        refused(await client.post(f"{FSM}/{path}", json=body), "task_instance_ids[0]",
                "valid integer")
    refused(await client.post("/v3/workflows", json={"name": "w", "tasks": TASKS,
                                                     "priority": True}), "priority")


# ---- floats ---------------------------------------------------------------------------------


async def test_nan_and_infinity_literals_are_422(
    client: httpx.AsyncClient, db: Database
) -> None:
    _, _, ti_id = await running_task(client)
    task = '[{"name": "a", "command": "true"}]'
    cases = {
        "increment NaN": (f"{FSM}/task_instance/{ti_id}/log_report_by",
                          '{"next_report_increment": NaN}', "next_report_increment"),
        "wallclock Infinity": (f"{FSM}/task_instance/{ti_id}/log_done",
                               '{"wallclock": Infinity}', "wallclock"),
        "retry_delay -Infinity": ("/v3/workflows",
                                  f'{{"name": "w", "tasks": {task}, "retry_delay": -Infinity}}',
                                  "retry_delay"),
        "memory NaN": ("/v3/workflows",
                       f'{{"name": "w", "tasks": {task}, "resources": {{"memory": NaN}}}}',
                       "resources.memory"),
        "scale Infinity": ("/v3/workflows", f'{{"name": "w", "tasks": {task}, '
                           '"resource_scales": {"memory": Infinity}}', "resource_scales.memory"),
    }

    async def check(path: str, text: str, field: str) -> None:
        refused(await raw(client, path, text), field)

    await each_case(cases, check)
    row = await ti_row(db, ti_id)
    assert (row["status"], row["wallclock"]) == ("R", None)


# ---- user text: refused ---------------------------------------------------------------------


async def test_nul_and_lone_surrogates_in_user_text_are_422(client: httpx.AsyncClient) -> None:
    cases = {
        "NUL in name": ('{"name": "a\\u0000b", "tasks": [{"name": "a", "command": "true"}]}',
                        "name", "NUL"),
        "NUL in task name": ('{"name": "w", "tasks": [{"name": "\\u0000", "command": "true"}]}',
                             "tasks[0].name", "NUL"),
        "NUL in command": ('{"name": "w", "tasks": [{"name": "a", "command": "echo \\u0000"}]}',
                           "tasks[0].command", "NUL"),
        "surrogate in name": ('{"name": "\\ud800", "tasks": [{"name": "a", "command": "true"}]}',
                              "name", "unicode"),
        "surrogate in command": ('{"name": "w", "array": {"command": "x\\udfff {i}", "last": 1}}',
                                 "array.command", "unicode"),
        "NUL in a resource path": ('{"name": "w", "tasks": [{"name": "a", "command": "true"}], '
                                   '"resources": {"stdout": "/tmp/\\u0000"}}',
                                   "resources.stdout", "NUL"),
    }

    async def check(text: str, field: str, word: str) -> None:
        refused(await raw(client, "/v3/workflows", text), field, word)

    await each_case(cases, check)
    refused(await client.get(f"{FSM}/cluster/a%00b"), "path.cluster_name", "NUL")
    assert (await ok(client.get("/v3/workflows")))["count"] == 0


async def test_a_blank_command_is_422(client: httpx.AsyncClient) -> None:
    for body, field in (
        ({"name": "w", "tasks": [{"name": "a", "command": "   "}]}, "tasks[0].command"),
        ({"name": "w", "tasks": [{"name": "a", "command": "\t\n"}]}, "tasks[0].command"),
        ({"name": "w", "array": {"command": " ", "last": 3}}, "array.command"),
    ):
        resp = await client.post("/v3/workflows", json=body)
        assert refused(resp, field, "must not be empty")["detail"] == (
            f"{field}: must not be empty")
    assert (await ok(client.get("/v3/workflows")))["count"] == 0


async def test_an_array_name_template_is_checked_at_both_ends(
    client: httpx.AsyncClient,
) -> None:
    long = "x" * 250 + "{i}"  # 253 characters: fits while i has at most 5 characters
    wf = await ok(client.post("/v3/workflows", json={
        "name": "w", "array": {"command": "run {i}", "name": long, "first": 0, "last": 2}}), 201)
    assert wf["total"] == 3
    for first, last in ((0, 123_456), (-10_000, 5)):
        resp = await client.post("/v3/workflows", json={
            "name": "w", "array": {"command": "run {i}", "name": long, "first": first,
                                   "last": last}})
        refused(resp, "array", "name expands to 256 characters", "at most 255")
    # an i too large for a 32-bit column is refused before any name is made
    resp = await client.post("/v3/workflows", json={
        "name": "w", "array": {"command": "run {i}", "name": "x" * 190 + "{i}",
                               "first": 10**60, "last": 10**60}})
    refused(resp, "array.first")
    resp = await client.post("/v3/workflows", json={
        "name": "w", "array": {"command": "x" * 32_765 + "{i}", "last": 999_999}})
    refused(resp, "array", "command expands to 32771 characters")
    assert (await ok(client.get("/v3/workflows")))["count"] == 1


async def test_a_5_mb_invalid_name_is_not_echoed(db_url: str) -> None:
    settings = Settings(database_url=db_url, reconciler_enabled=False)
    async with app_client(settings) as client:
        name = "N" * (5 * 1024 * 1024)
        resp = await client.post("/v3/workflows", json={"name": name, "tasks": TASKS})
        refused(resp, "name", "at most 255 characters")
        assert len(resp.content) < 1000, len(resp.content)
        key = "K" * (1024 * 1024)  # an unknown field's name is input too
        resp = await client.post("/v3/workflows", json={"name": "w", "tasks": TASKS, key: 1})
        assert resp.status_code == 422 and len(resp.content) < 1000, resp.content[:300]


# ---- resources ------------------------------------------------------------------------------


async def test_resources_are_typed_with_ranges(client: httpx.AsyncClient, db: Database) -> None:
    cases: dict[str, tuple[Any, str, str]] = {
        "unknown key": ({"mem": 4}, "resources", "memory, runtime, cores"),
        "negative memory": ({"memory": -1}, "resources.memory", "above 0"),
        "zero runtime": ({"runtime": 0}, "resources.runtime", "above 0"),
        "huge memory": ({"memory": 10**7}, "resources.memory", "at most"),
        "memory as text": ({"memory": "4"}, "resources.memory", "number"),
        "memory as bool": ({"memory": True}, "resources.memory", "number"),
        "cores float": ({"cores": 1.5}, "resources.cores", "integer"),
        "cores zero": ({"cores": 0}, "resources.cores", "greater than or equal to 1"),
        "nested custom": ({"custom": {"a": {"b": 1}}}, "resources.custom.a", "string"),
        "list custom": ({"custom": {"a": [1]}}, "resources.custom.a", "string"),
        "too many custom": ({"custom": {f"k{i}": i for i in range(65)}}, "resources.custom",
                            "at most 64"),
        "not an object": ([1, 2], "resources", "dictionary"),
    }

    async def check(resources: Any, field: str, word: str) -> None:
        body = {"name": "w", "tasks": TASKS, "resources": resources}
        refused(await client.post("/v3/workflows", json=body), field, word)
        per_task = {"name": "w", "tasks": [TASKS[0] | {"resources": resources}]}
        refused(await client.post("/v3/workflows", json=per_task), f"tasks[0].{field}", word)

    await each_case(cases, check)
    for scales, field in (({"mem": 2.0}, "resource_scales.mem[key]"),
                          ({"memory": 0.5}, "resource_scales.memory"),
                          ({"memory": 1000}, "resource_scales.memory")):
        body = {"name": "w", "tasks": TASKS, "resource_scales": scales}
        refused(await client.post("/v3/workflows", json=body), field)
    assert (await ok(client.get("/v3/workflows")))["count"] == 0
    # the known keys and custom ones are stored as given and read back the same
    resources = {"memory": 2, "runtime": 60.5, "cores": 4, "queue": "all.q", "stdout": "/o",
                 "custom": {"project": "p1", "gpus": 2, "ratio": 0.5, "exclusive": True}}
    _, task_id, ti_id = await running_task(client, resources=resources)
    assert (await task_row(db, task_id))["resources"] == resources
    answer = await ok(client.post(f"{FSM}/task_instance/{ti_id}/log_running",
                                  json={"next_report_increment": INC}))
    assert answer["resources"] == resources and answer["task_instance"][7] == "/o"
    assert (await ok(client.get(f"/v3/tasks/{task_id}")))["resources"] == resources


async def test_resources_nested_300_deep_are_refused(client: httpx.AsyncClient) -> None:
    deep: Any = 1
    for _ in range(300):
        deep = {"a": deep}
    resp = await client.post("/v3/workflows", json={"name": "w", "tasks": TASKS,
                                                    "resources": {"custom": deep}})
    assert resp.status_code == 422, resp.text[:300]
    ErrorOut.model_validate(resp.json())
    assert (await ok(client.get("/v3/workflows")))["count"] == 0


# ---- text a worker reports: stored, never refused ---------------------------------------------


async def test_a_nul_in_a_tail_is_stored_and_the_task_finishes(
    client: httpx.AsyncClient, db: Database
) -> None:
    _, task_id, ti_id = await running_task(client)
    text = ('{"stdout_log": "out\\u0000put", "stderr_log": "bad \\ud800 byte", '
            '"nodename": "n\\u0000"}')
    resp = await raw(client, f"{FSM}/task_instance/{ti_id}/log_done", text)
    assert (await ok(resp))["status"] == "D"
    row = await ti_row(db, ti_id)
    assert row["stdout_log"] == "out\ufffdput"
    assert row["stderr_log"] == "bad \ufffd byte"
    assert row["nodename"] == "n\ufffd"
    assert (await task_row(db, task_id))["status"] == "D"


async def test_a_nul_in_an_error_message_is_stored(
    client: httpx.AsyncClient, db: Database
) -> None:
    _, task_id, ti_id = await running_task(client, max_attempts=1)
    text = ('{"error_state": "E", "error_description": "Traceback\\u0000 \\udc80 end", '
            '"stderr_log": "\\u0000"}')
    resp = await raw(client, f"{FSM}/task_instance/{ti_id}/log_error_worker_node", text)
    assert (await ok(resp))["status"] == "E"
    log = await ok(client.get(f"{FSM}/task_instance/{ti_id}/task_instance_error_log"))
    assert [e[2] for e in log["task_instance_error_log"]] == ["Traceback\ufffd \ufffd end"]
    assert (await task_row(db, task_id))["last_error"] == "Traceback\ufffd \ufffd end"
    assert (await ti_row(db, ti_id))["stderr_log"] == "\ufffd"


async def test_over_long_reported_text_is_cut_to_its_limit(
    client: httpx.AsyncClient, db: Database
) -> None:
    _, _, ti_id = await running_task(client)
    tail = "a" * TAIL_MAX + "z" * TAIL_MAX
    assert await done(client, ti_id, stdout_log=tail, stdout="/p" * 5000,
                      distributor_id="j" * 1000) == "D"
    row = await ti_row(db, ti_id)
    assert len(row["stdout_log"]) == TAIL_MAX and row["stdout_log"] == "…" + "z" * (TAIL_MAX - 1)
    assert len(row["stdout"]) == 4096 and row["stdout"].endswith("…")
    assert len(row["distributor_id"]) == 255


async def test_a_long_nodename_on_log_known_error_is_cut_not_refused(
    client: httpx.AsyncClient, db: Database
) -> None:
    _, _, ti_id = await running_task(client, max_attempts=1)
    body = {"error_state": "E", "error_message": "m" * 100_000, "nodename": "n" * 1000,
            "distributor_id": 12345}
    await ok(client.post(f"{FSM}/task_instance/{ti_id}/log_known_error", json=body))
    row = await ti_row(db, ti_id)
    assert row["status"] == "E" and row["nodename"] == "n" * 254 + "…"
    assert row["distributor_id"] == "12345"
    log = await ok(client.get(f"{FSM}/task_instance/{ti_id}/task_instance_error_log"))
    [(_, _, message)] = log["task_instance_error_log"]
    assert len(message) == 32_768 and message.startswith("…m")


async def test_log_running_keeps_a_long_nodename_and_pgid(
    client: httpx.AsyncClient, db: Database
) -> None:
    wf = await submit(client, 1)
    ti_id = await live_ti(client, wf["task_ids"][0])
    await ok(client.post(f"{FSM}/task_instance/instantiate_task_instances",
                         json={"task_instance_ids": [ti_id]}))
    await ok(client.post(f"{FSM}/task_instance/{ti_id}/log_distributor_id",
                         json={"distributor_id": 7, "next_report_increment": INC}))
    body = {"next_report_increment": INC, "nodename": "h" * 300, "process_group_id": "9" * 100}
    answer = await ok(client.post(f"{FSM}/task_instance/{ti_id}/log_running", json=body))
    assert answer["task_instance"][1] == "R"
    row = await ti_row(db, ti_id)
    assert len(row["nodename"]) == 255 and len(row["process_group_id"]) == 64
    assert row["distributor_id"] == "7"


# ---- lists and query parameters --------------------------------------------------------------


async def test_id_lists_are_bounded(client: httpx.AsyncClient) -> None:
    wf = await submit(client, 1)
    array_id = wf["array_ids"][0]
    at_limit = list(range(10**9, 10**9 + IDS_MAX))  # no such instances: nothing moves
    over = [*at_limit, 1]
    assert await ok(client.post(f"{FSM}/task_instance/instantiate_task_instances",
                                json={"task_instance_ids": at_limit})) == {
        "task_instance_batches": []}
    assert await ok(client.post(f"{FSM}/task_instance/log_report_by/batch",
                                json={"task_instance_ids": at_limit,
                                      "next_report_increment": INC})) == {"updated": 0}
    assert await ok(client.post(f"{FSM}/array/{array_id}/log_distributor_id",
                                json={str(i): "j" for i in at_limit})) == {"success": True}
    refused(await client.post(f"{FSM}/task_instance/instantiate_task_instances",
                              json={"task_instance_ids": over}), "task_instance_ids",
            "at most 100000")
    refused(await client.post(f"{FSM}/task_instance/log_report_by/batch",
                              json={"task_instance_ids": over, "next_report_increment": INC}),
            "task_instance_ids", "at most 100000")
    refused(await client.post(f"{FSM}/array/{array_id}/log_distributor_id",
                              json={str(i): "j" for i in over}), "body", "at most 100000")


async def test_an_unknown_status_letter_is_422_listing_the_letters(
    client: httpx.AsyncClient,
) -> None:
    wf = await submit(client, 2)
    resp = await client.get(f"/v3/workflows/{wf['id']}/tasks", params={"status": "QQ"})
    refused(resp, "query.status[0]", "'G', 'Q', 'I', 'O', 'R', 'D', 'E', 'A', 'F', 'H' or 'B'")
    page = await ok(client.get(f"/v3/workflows/{wf['id']}/tasks",
                               params=[("status", "Q"), ("status", "D")]))
    assert page["count"] == 2


# ---- the one error body ---------------------------------------------------------------------


async def test_every_error_answer_has_the_one_shape(
    client: httpx.AsyncClient, db_url: str
) -> None:
    _, _, ti_id = await running_task(client)
    queued = await live_ti(client, (await submit(client, 1))["task_ids"][0])
    small = Settings(database_url=db_url, max_tasks_per_request=1, reconciler_enabled=False)
    answers: dict[str, tuple[httpx.Response, int]] = {
        "unknown route": (await client.get("/v3/nothing/here"), 404),
        "wrong method": (await client.delete("/v3/workflows"), 405),
        "unknown id": (await client.get("/v3/workflows/987654"), 404),
        "invalid move": (await client.post(f"{FSM}/task_instance/{queued}/log_done", json={}),
                         409),
        "bad body": (await client.post("/v3/workflows", json={"name": ""}), 422),
        "bad query": (await client.get("/v3/workflows", params={"limit": 0}), 422),
        "not JSON": (await raw(client, f"{FSM}/task_instance/{ti_id}/log_done", "{nope"), 422),
        "not UTF-8": (await client.post(f"{FSM}/task_instance/{ti_id}/log_done",
                                        content=b'{"nodename": "\xff"}',
                                        headers={"content-type": "application/json"}), 422),
    }
    async with app_client(small) as limited:
        answers["domain 422"] = (await limited.post("/v3/workflows", json={
            "name": "w", "tasks": TASKS * 2}), 422)
    for what, (resp, code) in answers.items():
        assert resp.status_code == code, (what, resp.status_code, resp.text)
        body = resp.json()
        assert isinstance(body, dict) and set(body) >= {"error", "detail"}, (what, body)
        assert isinstance(body["detail"], str) and body["detail"], (what, body)
        model = ValidationErrorOut if code == 422 else ErrorOut
        model.model_validate(body)
    assert answers["wrong method"][0].json()["error"] == "MethodNotAllowed"
    assert answers["domain 422"][0].json()["errors"][0]["field"] == "tasks"
    assert answers["not JSON"][0].json()["errors"][0]["field"] == "body"


async def test_the_openapi_documents_the_error_body_as_sent(client: httpx.AsyncClient) -> None:
    spec = await ok(client.get("/openapi.json"))
    schemas = spec["components"]["schemas"]
    assert "HTTPValidationError" not in schemas
    assert set(schemas["ValidationErrorOut"]["required"]) == {"error", "detail", "errors"}
    missing = []
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            if op.get("parameters") or op.get("requestBody"):
                ref = op["responses"].get("422", {}).get("content", {}).get(
                    "application/json", {}).get("schema", {}).get("$ref", "")
                if not ref.endswith("/ValidationErrorOut"):
                    missing.append(f"{method} {path}")
    assert not missing, missing


def _scalar_unbounded(schema: dict[str, Any]) -> str | None:
    """Why a number or string schema has no bound, or None."""
    kind = schema.get("type")
    if kind in ("integer", "number"):
        low = "minimum" in schema or "exclusiveMinimum" in schema
        high = "maximum" in schema or "exclusiveMaximum" in schema
        return None if low and high else f"{kind} without a range"
    if kind == "string":
        bounds = {"maxLength", "enum", "const", "x-truncated-to", "format"}
        return None if bounds & set(schema) else "string without a length"
    return None


def _unbounded(schema: Any, defs: dict[str, Any], where: str, seen: set[str]) -> list[str]:
    """Places in a request schema where a value has no bound (walks refs and combinators)."""
    if not isinstance(schema, dict):
        return []
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return [] if name in seen else _unbounded(defs[name], defs, where, seen | {name})
    found = [f"{where}: {why}"] if (why := _scalar_unbounded(schema)) else []
    for sub in schema.get("anyOf", []) + schema.get("oneOf", []) + schema.get("allOf", []):
        found += _unbounded(sub, defs, where, seen)
    if schema.get("type") == "array":
        if "maxItems" not in schema:
            found.append(f"{where}: array without maxItems")
        found += _unbounded(schema.get("items"), defs, f"{where}[]", seen)
    if schema.get("type") == "object":
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict) and "maxProperties" not in schema:
            found.append(f"{where}: object without maxProperties")
        if extra is not False and not isinstance(extra, dict) and "properties" not in schema:
            found.append(f"{where}: free-form object")
        for name, sub in schema.get("properties", {}).items():
            found += _unbounded(sub, defs, f"{where}.{name}", seen)
        found += _unbounded(extra, defs, f"{where}.*", seen)
    return found


async def test_every_request_value_is_bounded_in_the_openapi(client: httpx.AsyncClient) -> None:
    spec = await ok(client.get("/openapi.json"))
    defs = spec["components"]["schemas"]
    found = []
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            for param in op.get("parameters", []):
                found += _unbounded(param["schema"], defs, f"{method} {path} {param['name']}",
                                    set())
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {})
            if body:
                found += _unbounded(body["schema"], defs, f"{method} {path} body", set())
    assert not found, json.dumps(found, indent=1)


async def test_the_client_reads_the_error_body(client: httpx.AsyncClient) -> None:
    api = Api("http://localhost", client=client)
    with pytest.raises(ClientError) as caught:
        await api.call("POST", "/v3/workflows",
                       {"name": "w", "tasks": [{"name": "a", "command": " "}]})
    assert caught.value.status_code == 422
    assert str(caught.value) == "HTTP 422: tasks[0].command: must not be empty"
