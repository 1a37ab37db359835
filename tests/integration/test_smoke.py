"""The app answers on both databases."""

import httpx


async def test_ready_and_submit(client: httpx.AsyncClient) -> None:
    ready = await client.get("/ready")
    assert ready.status_code == 200, ready.text
    resp = await client.post(
        "/v3/workflows", json={"name": "w", "array": {"command": "echo {i}", "last": 9}}
    )
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert body["total"] == 10 and body["counts"] == {"Q": 10}


def test_real_server_process(server: object) -> None:
    url = server.url  # type: ignore[attr-defined]
    assert httpx.get(f"{url}/ready").json()["status"] == "ready"
    resp = httpx.post(f"{url}/v3/workflows", json={"name": "w", "tasks": [
        {"name": "a", "command": "true"}]})
    assert resp.status_code == 201, resp.text
