"""The operators' dashboard: server-rendered pages under `/ui` (Jinja2), live by the event stream.

Every page is plain HTML that works without JavaScript (filters are GET forms, buttons are POST
forms answered with a redirect). One small script of our own (`static/farmstead.js`) makes the
marked parts live: it follows `GET /v3/events` for what the page shows and, at most once a
second, fetches the page's live fragment (`?fragment=1`) and swaps it in. Why no front-end
library: the live behaviour is that one swap; a library would be more to ship and audit than
the sixty lines it replaces, and nothing needs building on the user's side.

Sign-in trades a token, or a user and password, for a session cookie (api/auth.py reads it);
the forms carry a CSRF field derived from the session. What a role may not do is not shown.
"""

import hashlib
import hmac
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from farmstead.api.auth import SESSION_COOKIE, session_token
from farmstead.api.deps import DatabaseDep, PrincipalDep
from farmstead.api.web import render
from farmstead.fsm import TaskStatus
from farmstead.fsm.roles import Permission
from farmstead.services import actions, auth, dashboard
from farmstead.services.errors import FarmsteadError, NotFound

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
templates.env.filters.update(render.FILTERS)
templates.env.globals.update(render.GLOBALS)
static = StaticFiles(directory=HERE / "static")
router = APIRouter(include_in_schema=False)

#: rows of a workflow's task table per page
TASK_PAGE = 50
WORKFLOW_PAGE = 50
#: a dashboard sign-in with a password lasts this long (seconds)
SESSION_SECONDS = 12 * 3600
#: the task events that change what the workflows page shows
_LIST_TYPES = "task-sent,task-started,task-succeeded,task-failed,task-retried,task-revoked"


def csrf_of(request: Request) -> str:
    """The CSRF field for the forms of this session (empty session: auth is off)."""
    token = session_token({b"cookie": request.headers.get("cookie", "").encode("latin-1")})
    return hashlib.sha256(b"farmstead dashboard form\0" + (token or "").encode()).hexdigest()[:32]


def _check_csrf(request: Request, given: str) -> None:
    if not hmac.compare_digest(given, csrf_of(request)):
        raise FarmsteadError("this form is stale or not from this dashboard: reload the page")


def _page(request: Request, who: Any, page: str, code: int = 200, **context: Any) -> HTMLResponse:
    fragment = request.query_params.get("fragment") == "1"
    context |= {
        "who": who,
        "operate": who.may(Permission.OPERATE),
        "auth_on": request.app.state.settings.auth,
        "csrf": csrf_of(request),
        "now": datetime.now(UTC),
        "path": request.url.path,
    }
    template = f"_{page}.html" if fragment else f"{page}.html"
    return templates.TemplateResponse(request, template, context, status_code=code)


def _error(request: Request, who: Any, exc: FarmsteadError) -> HTMLResponse:
    code = 404 if isinstance(exc, NotFound) else 400
    return _page(request, who, "error", code=code, message=exc.message, status_code=code)


def _int_or_404(value: str, what: str) -> int:
    if not value.isdigit() or len(value) > 18:
        raise NotFound(f"no {what} {value!r}")
    return int(value)


def _statuses(values: list[str] | None) -> list[str]:
    """Status filter values (letters or names) as task status letters; unknown ones dropped."""
    out = []
    for v in values or []:
        for part in v.split(","):
            part = part.strip()
            if part in TaskStatus.__members__:
                out.append(TaskStatus[part].value)
            elif part in {s.value for s in TaskStatus}:
                out.append(part)
    return out


@router.get("/ui")
async def ui_root() -> RedirectResponse:
    return RedirectResponse("/ui/", status_code=303)


@router.get("/ui/", response_class=HTMLResponse)
async def workflows_page(
    request: Request,
    db: DatabaseDep,
    who: PrincipalDep,
    status: Annotated[str, Query(max_length=40)] = "",
    name: Annotated[str, Query(max_length=255)] = "",
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> HTMLResponse:
    wanted = [status.upper()] if status.upper() in ("R", "D", "F", "C") else None
    rows = await dashboard.workflows_page(
        db, wanted, name.strip() or None, WORKFLOW_PAGE + 1, offset
    )
    query = {"status": status, "name": name}
    return _page(
        request,
        who,
        "workflows",
        workflows=rows[:WORKFLOW_PAGE],
        more=len(rows) > WORKFLOW_PAGE,
        offset=offset,
        page_size=WORKFLOW_PAGE,
        status=status,
        name=name,
        query=query,
        stream="/v3/events?" + urlencode({"type": _LIST_TYPES}),
        fragment_url="/ui/?" + urlencode({**query, "offset": offset, "fragment": 1}),
    )


@router.get("/ui/workflows/{workflow_id}", response_class=HTMLResponse)
async def workflow_page(
    request: Request,
    db: DatabaseDep,
    who: PrincipalDep,
    workflow_id: str,
    status: Annotated[list[str] | None, Query(max_length=20)] = None,
    after: Annotated[int, Query(ge=0, le=2**62)] = 0,
) -> HTMLResponse:
    try:
        wf_id = _int_or_404(workflow_id, "workflow")
        chosen = _statuses(status)
        data = await dashboard.workflow_page(db, wf_id, chosen or None, after, TASK_PAGE)
    except FarmsteadError as exc:
        return _error(request, who, exc)
    query: list[tuple[str, Any]] = [("status", s) for s in chosen]
    return _page(
        request,
        who,
        "workflow",
        **data,
        chosen=chosen,
        after=after,
        statuses=list(TaskStatus),
        query=query,
        graph_svg=render.graph_svg(data["graph"]) if data["graph"] else None,
        stream=f"/v3/events?workflow={wf_id}",
        fragment_url=f"/ui/workflows/{wf_id}?"
        + urlencode([*query, ("after", after), ("fragment", 1)]),
    )


@router.get("/ui/tasks/{task_id}", response_class=HTMLResponse)
async def task_page(
    request: Request, db: DatabaseDep, who: PrincipalDep, task_id: str
) -> HTMLResponse:
    try:
        t_id = _int_or_404(task_id, "task")
        task = await dashboard.task_page(db, t_id)
    except FarmsteadError as exc:
        return _error(request, who, exc)
    return _page(
        request,
        who,
        "task",
        task=task,
        stream=f"/v3/events?task={t_id}&workflow={task['workflow_id']}",
        fragment_url=f"/ui/tasks/{t_id}?fragment=1",
    )


@router.get("/ui/farm", response_class=HTMLResponse)
async def farm_page(request: Request, db: DatabaseDep, who: PrincipalDep) -> HTMLResponse:
    data = await dashboard.farm_page(db)
    return _page(
        request,
        who,
        "farm",
        **data,
        stream="/v3/events?type=worker-online,worker-heartbeat,worker-offline",
        fragment_url="/ui/farm?fragment=1",
        every=10,
    )


@router.post("/ui/workflows/{workflow_id}/{action}")
async def workflow_action(
    request: Request,
    db: DatabaseDep,
    who: PrincipalDep,
    workflow_id: str,
    action: str,
    csrf: Annotated[str, Form(max_length=64)] = "",
) -> Response:
    """The workflow page's buttons: cancel, resume (everything unfinished gets fresh tries),
    retry (failed tasks only)."""
    try:
        _check_csrf(request, csrf)
        wf_id = _int_or_404(workflow_id, "workflow")
        if action == "cancel":
            await actions.cancel(db, wf_id, actor=who)
        elif action in ("resume", "retry"):
            await actions.resume(db, wf_id, everything=action == "resume", actor=who)
        else:
            raise NotFound(f"no action {action!r}")
    except FarmsteadError as exc:
        return _error(request, who, exc)
    return RedirectResponse(f"/ui/workflows/{wf_id}?done={action}", status_code=303)


@router.get("/ui/login", response_class=HTMLResponse)
async def login_page(
    request: Request, next: Annotated[str, Query(max_length=500)] = "/ui/"
) -> HTMLResponse:
    return templates.TemplateResponse(
        request,
        "login.html",
        {"next": _safe_next(next), "error": None, "auth_on": request.app.state.settings.auth},
    )


def _safe_next(value: str) -> str:
    """Only a dashboard path of this server (never another site)."""
    return value if value.startswith("/ui") and not value.startswith("//") else "/ui/"


@router.post("/ui/login", response_class=HTMLResponse)
async def login(
    request: Request,
    db: DatabaseDep,
    token: Annotated[str, Form(max_length=500)] = "",
    user: Annotated[str, Form(max_length=200)] = "",
    password: Annotated[str, Form(max_length=500)] = "",
    next: Annotated[str, Form(max_length=500)] = "/ui/",
) -> Response:
    """Sign in: a token is kept as the session; a user and password get a session token of
    their own (with the user's role, for SESSION_SECONDS)."""
    goto = _safe_next(next)
    authenticator: auth.Authenticator = request.app.state.auth
    who = None
    session = token.strip()
    if session:
        who = await authenticator.token(session)
    elif user.strip() and password:
        who = await authenticator.password(user.strip(), password)
    problem = None
    if who is None:
        problem = "Those credentials are unknown, expired or revoked."
    elif not who.may(Permission.READ):
        problem = f"A {who.role} cannot use the dashboard: sign in as a viewer or above."
    if problem is not None or who is None:
        context = {"next": goto, "error": problem, "auth_on": True, "user": user}
        return templates.TemplateResponse(request, "login.html", context, status_code=401)
    if not session:
        session = await auth.sign_in_token(db, who, "dashboard sign-in", SESSION_SECONDS)
    answer = RedirectResponse(goto, status_code=303)
    answer.set_cookie(
        SESSION_COOKIE,
        session,
        max_age=SESSION_SECONDS,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    return answer


@router.post("/ui/logout")
async def logout(
    request: Request, who: PrincipalDep, csrf: Annotated[str, Form(max_length=64)] = ""
) -> Response:
    try:
        _check_csrf(request, csrf)
    except FarmsteadError as exc:
        return _error(request, who, exc)
    answer = RedirectResponse("/ui/login", status_code=303)
    answer.delete_cookie(SESSION_COOKIE, path="/")
    return answer
