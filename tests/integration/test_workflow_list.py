"""`GET /v3/workflows`: filters by status and name, paging under a filter, no query per row."""

from typing import Any

import httpx
import pytest
from factories import done, error, live_ti, ok, running, submit
from sqlalchemy import event

from farmstead.db.engine import Database
from farmstead.services import workflows as service


async def _finish(client: httpx.AsyncClient, task_id: int, ok_: bool) -> None:
    ti = await live_ti(client, task_id)
    await running(client, ti)
    await (done(client, ti) if ok_ else error(client, ti, "E", "boom"))


async def _mixed(client: httpx.AsyncClient) -> dict[str, int]:
    """Three workflows, one per status: DONE, FAILED and RUNNING (by name)."""
    ids = {}
    for name, outcome in (("Done-one", True), ("failed_one", False), ("running%one", None)):
        wf = await submit(client, 1, name=name, max_attempts=1)
        if outcome is not None:
            await _finish(client, wf["task_ids"][0], outcome)
        ids[name] = wf["id"]
    return ids


async def _ids(client: httpx.AsyncClient, **params: Any) -> list[int]:
    return [w["id"] for w in (await ok(client.get("/v3/workflows", params=params)))["data"]]


async def test_status_filter(client: httpx.AsyncClient) -> None:
    ids = await _mixed(client)
    assert await _ids(client, status="F") == [ids["failed_one"]]
    assert await _ids(client, status="D") == [ids["Done-one"]]
    assert await _ids(client, status="R") == [ids["running%one"]]
    assert await _ids(client, status=["D", "F"]) == [ids["failed_one"], ids["Done-one"]]
    assert await _ids(client) == [ids["running%one"], ids["failed_one"], ids["Done-one"]]
    listed = await ok(client.get("/v3/workflows", params={"status": "F"}))
    assert listed["data"][0]["status"] == "F" and listed["count"] == 1


async def test_name_filter_is_a_substring_in_any_case(client: httpx.AsyncClient) -> None:
    ids = await _mixed(client)
    every = [ids["running%one"], ids["failed_one"], ids["Done-one"]]
    assert await _ids(client, name="ONE") == every
    assert await _ids(client, name="done") == [ids["Done-one"]]
    # LIKE's wildcards are literal characters here
    assert await _ids(client, name="%") == [ids["running%one"]]
    assert await _ids(client, name="_") == [ids["failed_one"]]
    assert await _ids(client, name="one", status="F") == [ids["failed_one"]]
    assert await _ids(client, name="nothing like it") == []


@pytest.mark.parametrize(
    "params",
    [
        {"status": "QQ"},
        {"status": "Q"},  # a task status, not a workflow's
        {"status": ""},
        {"name": ""},
        {"name": "x" * 256},
        {"name": "a\x00b"},
    ],
)
async def test_bad_filters_are_422(client: httpx.AsyncClient, params: dict[str, str]) -> None:
    resp = await client.get("/v3/workflows", params=params)
    assert resp.status_code == 422, resp.text


async def test_paging_under_a_status_filter_spans_chunks(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service, "LIST_CHUNK", 2)
    failed = []
    for n in range(7):
        wf = await submit(client, 1, name=f"w{n}", max_attempts=1)
        if n % 2 == 0:  # w0 w2 w4 w6 fail; the others stay RUNNING
            await _finish(client, wf["task_ids"][0], False)
            failed.append(wf["id"])
    newest_first = failed[::-1]
    assert await _ids(client, status="F") == newest_first
    assert await _ids(client, status="F", limit=2) == newest_first[:2]
    assert await _ids(client, status="F", limit=2, offset=1) == newest_first[1:3]
    assert await _ids(client, status="F", offset=3) == newest_first[3:]
    assert await _ids(client, status="F", offset=4) == []


async def test_counts_of_a_page_take_one_query(client: httpx.AsyncClient, db: Database) -> None:
    for n in range(12):
        await submit(client, 2, name=f"w{n}")
    statements: list[str] = []

    def count(*args: Any) -> None:
        statements.append(str(args[2]))

    engine = db.read_engine.sync_engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        page = await service.list_all(db, limit=100, offset=0)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert [w["counts"] for w in page] == [{"Q": 2}] * 12
    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    # a constant number, whatever the page size: the workflows, their arrays, their counts
    assert len(selects) <= 3, selects
