"""The dashboard in a real browser (issue 14): headless Chromium (Debian's `chromium`) driven by
Playwright against a real `farmstead serve` process with auth on and its local executor running
the work, on SQLite and PostgreSQL.

Screenshots of every page are saved under `test-artifacts/dashboard/` (FARMSTEAD_ARTIFACTS
moves it) for a person to look at."""

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from farmstead import credentials
from helpers import wait_for

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(os.environ.get("FARMSTEAD_ARTIFACTS", "test-artifacts")) / "dashboard"
PASSWORD = "a dashboard password"


@pytest.fixture
def browser(server_factory: Any) -> Iterator[Any]:
    """Chromium, started after the database fixtures (Playwright's sync API runs an event loop
    on this thread while it is open, and the fixtures use asyncio.run)."""
    if CHROMIUM is None:
        if os.environ.get("CI") == "true":
            pytest.fail("no chromium on PATH: CI must install it (apt-get install chromium)")
        pytest.skip("no chromium on PATH (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        found = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield found
        found.close()


def shot(page: Any, backend: str, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{backend}-{name}.png"), full_page=True)


def sign_in(browser: Any, url: str, width: int = 1280, **fields: str) -> Any:
    """A new browser context signed in through the form (user and password, or a token)."""
    context = browser.new_context(viewport={"width": width, "height": 900}, base_url=url)
    page = context.new_page()
    page.on("dialog", lambda dialog: dialog.accept())
    page.goto("/ui/")
    assert "/ui/login" in page.url  # nothing is visible before signing in
    for name, value in fields.items():
        page.fill(f"#{name}", value)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r".*/ui/$"))
    return page


def counts(url: str, headers: dict[str, str], wf: int) -> dict[str, int]:
    got: dict[str, int] = httpx.get(f"{url}/v3/workflows/{wf}", headers=headers).json()["counts"]
    return got


def unlabelled_inputs(page: Any) -> list[str]:
    """Form controls a screen reader could not name."""
    found: list[str] = page.eval_on_selector_all(
        "input:not([type=hidden]), select",
        "els => els.filter(e => !e.labels || e.labels.length === 0).map(e => e.outerHTML)",
    )
    return found


def test_an_operator_watches_filters_reads_and_cancels_and_a_viewer_cannot(
    server_factory: Any, backend: str, browser: Any
) -> None:
    server = server_factory(auth="true", local_workers=2, event_poll_interval=0.1)
    url = server.url
    admin = {"Authorization": f"Bearer {credentials.token_for(url)}"}
    user = {"name": "olga", "role": "operator", "password": PASSWORD}
    assert httpx.post(f"{url}/v3/users", json=user, headers=admin).status_code == 201
    made = httpx.post(f"{url}/v3/tokens", json={"name": "wall", "role": "viewer"}, headers=admin)
    viewer_token = made.json()["token"]

    tasks = [{"name": f"ok-{i}", "command": "sleep 0.15"} for i in range(40)]
    tasks += [
        {"name": f"oom-{i}", "command": "echo killed for memory >&2; exit 9", "max_attempts": 1}
        for i in range(3)
    ]
    wf = httpx.post(
        f"{url}/v3/workflows", json={"name": "render", "tasks": tasks}, headers=admin
    ).json()["id"]

    # sign in with a user and password; the workflows page lists it
    page = sign_in(browser, url, user="olga", password=PASSWORD)
    assert page.locator(f"tr[data-workflow='{wf}']").count() == 1
    assert unlabelled_inputs(page) == []
    shot(page, backend, "workflows")

    # its page follows the executor live, without a reload
    page.click(f"tr[data-workflow='{wf}'] a")
    page.wait_for_url(re.compile(rf".*/ui/workflows/{wf}$"))
    page.evaluate("window.__notReloaded = true")
    first = int(page.inner_text("[data-count=total]").replace(",", ""))
    assert first == 43
    wait_for(lambda: counts(url, admin, wf).get("D", 0) >= 1, 60, "a first task done")
    page.wait_for_function(
        "() => { const d = document.querySelector('[data-count=D]');"
        " return d && parseInt(d.textContent.replace(/,/g, '')) >= 5; }",
        timeout=60_000,
    )
    wait_for(lambda: counts(url, admin, wf) == {"D": 40, "F": 3}, 120, "the workflow to end")
    page.wait_for_function(
        "() => document.querySelector('[data-count=D]')?.textContent.trim() === '40'",
        timeout=30_000,
    )
    assert page.evaluate("window.__notReloaded") is True  # updated in place
    assert "3 tasks:" in page.inner_text(".failures")
    assert "killed for memory" in page.inner_text(".failures")
    assert unlabelled_inputs(page) == []
    shot(page, backend, "workflow")

    # filter the failed tasks
    page.check("input[name=status][value=ERROR_FATAL]")
    page.click("form.filters button[type=submit]")
    page.wait_for_url(re.compile(r".*status=ERROR_FATAL"))
    rows = page.locator("#tasks tbody tr")
    assert rows.count() == 3
    assert set(rows.evaluate_all("rs => rs.map(r => r.dataset.status)")) == {"ERROR_FATAL"}
    shot(page, backend, "workflow-failed")

    # a failed task: its log tail, its error, its events
    page.locator("#tasks tbody tr a").first.click()
    page.wait_for_url(re.compile(r".*/ui/tasks/\d+$"))
    assert "killed for memory" in page.inner_text("#stderr-tail")
    assert "task-failed" in page.inner_text("table.events")
    shot(page, backend, "task")

    # the farm: the executor's agent and its heartbeat
    page.click("nav >> text=Farm")
    page.wait_for_url(re.compile(r".*/ui/farm$"))
    assert page.locator("text=Agents").count() >= 1
    assert "local" in page.inner_text("#farm-live").lower()
    shot(page, backend, "farm")

    # cancel a running workflow as the operator
    slow = httpx.post(
        f"{url}/v3/workflows",
        json={"name": "slow", "array": {"command": "sleep 60", "first": 0, "last": 5}},
        headers=admin,
    ).json()["id"]
    wait_for(lambda: counts(url, admin, slow).get("R", 0) >= 1, 60, "slow work running")
    page.goto(f"/ui/workflows/{slow}")
    page.click("button:has-text('Cancel')")  # the confirmation is accepted
    page.wait_for_url(re.compile(rf".*/ui/workflows/{slow}\?done=cancel$"))
    wait_for(lambda: counts(url, admin, slow) == {"F": 6}, 60, "the cancel to end everything")
    page.reload()
    assert page.inner_text("h1 .badge").strip() in ("cancelled", "failed")

    # a phone-width screen: nothing wider than the screen but the tables' own scrollers
    phone = sign_in(browser, url, width=390, user="olga", password=PASSWORD)
    phone.goto(f"/ui/workflows/{wf}")
    assert phone.evaluate("document.documentElement.scrollWidth") <= 392
    shot(phone, backend, "workflow-phone")

    # a viewer sees the same pages without the buttons, and is refused if it tries
    viewer = sign_in(browser, url, token=viewer_token)
    viewer.goto(f"/ui/workflows/{wf}")
    assert viewer.locator("[data-count=total]").count() == 1
    assert viewer.locator("button:has-text('Cancel')").count() == 0
    assert viewer.locator("button:has-text('Retry')").count() == 0
    csrf = viewer.evaluate(
        "() => document.querySelector('input[name=csrf]')?.value || null"
    ) or "x"
    refused = viewer.request.post(
        f"{url}/ui/workflows/{wf}/retry", form={"csrf": csrf}, headers={"Origin": url}
    )
    assert refused.status == 403
    shot(viewer, backend, "workflow-viewer")

    # without a session: the sign-in page, and the API still wants its token
    anonymous = browser.new_context(base_url=url).new_page()
    anonymous.goto(f"/ui/workflows/{wf}")
    assert "/ui/login?next=" in anonymous.url
    assert anonymous.request.get(f"{url}/v3/workflows").status == 401
    # a wrong password is told so, on the page
    anonymous.fill("#user", "olga")
    anonymous.fill("#password", "not the password")
    anonymous.click("button[type=submit]")
    assert "unknown, expired or revoked" in anonymous.inner_text(".error")


def test_pages_for_what_does_not_exist_and_stale_forms(
    server_factory: Any, backend: str, browser: Any
) -> None:
    server = server_factory(auth="true")
    url = server.url
    admin = {"Authorization": f"Bearer {credentials.token_for(url)}"}
    token = httpx.post(
        f"{url}/v3/tokens", json={"name": "ops", "role": "operator"}, headers=admin
    ).json()["token"]
    page = sign_in(browser, url, token=token)
    for path in ("/ui/workflows/424242", "/ui/tasks/99", "/ui/workflows/abc"):
        answer = page.goto(path)
        assert answer is not None and answer.status == 404, path
        assert "not found" in page.inner_text("main").lower() or "no " in page.inner_text("main")
    # a form without this session's CSRF field is refused with a page, not a traceback
    body = {"name": "w", "tasks": [{"name": "t", "command": "true"}]}
    wf = httpx.post(f"{url}/v3/workflows", json=body, headers=admin).json()["id"]
    stale = page.request.post(
        f"{url}/ui/workflows/{wf}/cancel", form={"csrf": "0" * 32}, headers={"Origin": url}
    )
    assert stale.status == 400 and "stale" in stale.text()
    # the API refuses the session cookie on its own state-changing routes
    api = page.request.post(f"{url}/v3/workflows/{wf}/cancel", headers={"Origin": url})
    assert api.status == 401
    assert counts(url, admin, wf).get("F", 0) == 0
