"""Who may do what, in front of every route (pure ASGI, before the fast path and FastAPI).

For each request, in this order:
1. the Host header must be one this server answers to (a DNS-rebinding page is refused);
2. a state-changing request from a browser page of another origin is refused (its Origin is
   neither this server nor a configured CORS origin), and so is a body a cross-site form can
   send without a preflight (form or plain-text content types);
3. the route's permission (`permission()`: one table for every route, default admin) is
   checked against the principal: a bearer token, HTTP Basic (user and password, or a token as
   the user with an empty password), or, for worker routes only, no credentials from a trusted
   network (Jobmon's worker sends none). No credentials: 401; a role that is not enough: 403;
4. a worker token scoped to workflows may touch only their instances and arrays (ids in the
   path here; ids in a body are checked by the route);
5. every answer gets the usual security headers.
The dashboard (`/ui`, api/web) signs a browser in with a session cookie holding a token: the
cookie counts for reads (GET) anywhere and for the dashboard's own forms, which must come from
this server's pages (their Origin) and carry a CSRF field the route checks; never for the API's
state-changing routes. A dashboard page asked for without credentials redirects to sign-in.
The principal is left in the request's state for the routes (audit: who submitted, cancelled).
"""

import base64
import binascii
import ipaddress
import re
import secrets
import uuid
from urllib.parse import quote

from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from farmstead import logs
from farmstead.api.errors import domain_answer, error_body
from farmstead.api.middleware import send_error
from farmstead.bounds import INT64_MAX
from farmstead.fsm.roles import Permission, Role
from farmstead.services.auth import NOBODY, Authenticator, Principal
from farmstead.services.errors import FarmsteadError, Forbidden, Unauthorized
from farmstead.settings import Settings

P = Permission
_SAFE = frozenset({"GET", "HEAD", "OPTIONS"})
_PUBLIC = frozenset(
    {
        "/health",
        "/ready",
        "/v3/fsm/transitions",
        "/openapi.json",
        "/docs",
        "/redoc",
        "/docs/oauth2-redirect",
    }
)
_DOCS = ("/docs", "/redoc", "/static-offline-docs/")
#: the dashboard: its pages, and what anyone may fetch (sign-in, styles and scripts)
UI = "/ui"
_UI_PUBLIC = ("/ui/login", "/ui/static/")
#: the dashboard's session cookie (a token; HttpOnly, SameSite=Strict)
SESSION_COOKIE = "farmstead_session"
_WORKER = ("/v3/fsm/", "/api/v3/")
_WORK_ROUTES = frozenset({"/v3/claims", "/v3/task_instances/status", "/v3/agents"})
_AGENT_BEAT = re.compile(r"/v3/agents/[^/]+/heartbeat")
_OPERATE = re.compile(r"/v3/workflows(?:/[^/]+/(?:cancel|resume))?")
#: operators run the farm: queues, and where workflows sit in them
_OPERATE_EDITS = re.compile(r"/v3/(?:queues(?:/.*)?|workflows/[^/]+)")
_RUN = r"/api/runs/[^/]+"
_UI_ACTION = re.compile(r"/ui/workflows/[0-9]+/(?:cancel|resume|retry)")
#: taskfarm's face (`/api/…` but Jobmon's `/api/v3/…`): (method, path, what it needs)
_TASKFARM = [
    (m, re.compile(p), needed)
    for m, p, needed in (
        ("POST", "/api/run", P.OPERATE),
        ("DELETE", _RUN, P.OPERATE),
        ("POST", _RUN + "/restart", P.OPERATE),
        ("GET", "/api/token", P.READ_OR_WORK),
        ("GET", "/api/runs", P.READ_OR_WORK),
        ("GET", _RUN, P.READ_OR_WORK),
        ("POST", "/api/worker", P.WORK),
        ("POST", _RUN + "/task", P.WORK),
        ("GET", _RUN + "/tasks/[^/]+", P.WORK),
        ("PUT", _RUN + "/tasks/[^/]+", P.WORK),
    )
]
_INSTANCE = re.compile(r"/(?:v3/fsm|api/v3)/task_instance/(\d{1,19})/")
_ARRAY = re.compile(r"/(?:v3/fsm|api/v3)/(?:get_array_task_instance_id|array)/(\d{1,19})(?:/|$)")
#: content types a page of another site can POST without a CORS preflight
_SIMPLE_TYPES = (b"application/x-www-form-urlencoded", b"multipart/form-data", b"text/plain")
_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
_CSP = (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'")
_UI_HEADERS = [
    *(h for h in _HEADERS if h[0] != b"referrer-policy"),
    (b"referrer-policy", b"same-origin"),
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    ),
]


def permission(method: str, path: str) -> Permission:
    """What a route needs: the one table, by path and method; anything unlisted is admin's."""
    if path in _PUBLIC or path.startswith(_DOCS) or path.startswith(_UI_PUBLIC):
        return P.PUBLIC
    if path == UI or path.startswith(UI + "/"):
        return _dashboard(method, path)
    if path.startswith(_WORKER) or (method == "POST" and path in _WORK_ROUTES):
        return P.WORK
    if method == "POST" and _AGENT_BEAT.fullmatch(path):
        return P.WORK
    if path == "/metrics" and method in _SAFE:
        return P.READ  # a scraper with a viewer token
    if path.startswith("/api/"):
        return _taskfarm(method, path)
    if path.startswith(("/v3/users", "/v3/tokens")):
        # an operator may make worker tokens for workflows and revoke their own tokens
        return (
            P.OPERATE if method in ("POST", "DELETE") and path.startswith("/v3/tokens") else P.ADMIN
        )
    if path.startswith("/v3/"):
        if method in _SAFE:
            return P.READ
        if method == "POST" and _OPERATE.fullmatch(path):
            return P.OPERATE
        if method in ("POST", "PATCH", "DELETE") and _OPERATE_EDITS.fullmatch(path):
            return P.OPERATE
    return P.ADMIN


def _dashboard(method: str, path: str) -> Permission:
    """Pages are read by viewers; the buttons (cancel, resume, retry) are operators'."""
    if method in _SAFE or path == "/ui/logout":
        return P.READ
    return P.OPERATE if _UI_ACTION.fullmatch(path) else P.ADMIN


def _taskfarm(method: str, path: str) -> Permission:
    """taskfarm's face: operators make, restart and delete runs; workers register, claim and
    update tasks; both (and viewers) read runs (a worker loads its run's info first)."""
    for verb, pattern, needed in _TASKFARM:
        if method == verb and pattern.fullmatch(path):
            return needed
    return P.ADMIN


def _hosts(settings: Settings) -> frozenset[str] | None:
    """The Host names accepted; None: any."""
    given = set(settings.allowed_hosts)
    if "*" in given or (not given and settings.host in ("0.0.0.0", "::", "")):
        return None
    if not given:
        given = {settings.host, "localhost", "127.0.0.1", "::1"}
    return frozenset(h.lower().strip("[]") for h in given)


def _host_name(value: bytes) -> str:
    text = value.decode("latin-1").strip().lower()
    if text.startswith("["):  # [::1]:8000
        return text[1 : text.find("]")] if "]" in text else text
    return text.rsplit(":", 1)[0] if text.count(":") == 1 else text


class AuthGuard:
    """ASGI middleware: Host and Origin checks, the route's permission, security headers."""

    def __init__(self, app: ASGIApp, settings: Settings, internal_token: str) -> None:
        self.app = app
        self.enabled = settings.auth
        self.hosts = _hosts(settings)
        self.origins = frozenset(o.rstrip("/").lower() for o in settings.cors_origins)
        self.trusted = [ipaddress.ip_network(n, strict=False) for n in settings.trusted_networks]
        #: a token only this process knows: its own local executor's
        self.internal_token = internal_token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        headers = _wanted(scope["headers"])
        given = headers.get(b"x-request-id")
        if given is not None and _REQUEST_ID.fullmatch(given):
            request_id = given.decode()
        else:
            request_id = uuid.uuid4().hex[:16]
        logs.REQUEST_ID.set(request_id)  # every line logged for this request carries it
        secured = _secure(send, _headers_for(path), request_id=request_id)
        try:
            self._transport_checks(scope, path, headers)
            principal = await self._principal(scope, path, headers)
        except _Unsupported as exc:
            await send_error(secured, 415, error_body("UnsupportedMediaType", str(exc)))
            return
        except FarmsteadError as exc:
            if isinstance(exc, Unauthorized) and _is_page(scope["method"], path):
                await send_redirect(secured, "/ui/login?next=" + quote(path, safe="/"))
                return
            status, body, extra = domain_answer(exc, scope["method"], path)
            await send_error(secured, status, body, headers=extra)
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, secured)

    def _transport_checks(self, scope: Scope, path: str, headers: dict[bytes, bytes]) -> None:
        host = headers.get(b"host")
        if self.hosts is not None and host is not None and _host_name(host) not in self.hosts:
            raise Forbidden(
                "this server does not answer to that Host name (see FARMSTEAD_ALLOWED_HOSTS)"
            )
        if scope["method"] in _SAFE:
            return
        origin = headers.get(b"origin")
        if origin is not None and not self._same_or_allowed(origin, host):
            raise Forbidden("a cross-site request from a browser page is refused")
        if path.startswith(UI + "/"):  # the dashboard's forms: only from its own pages
            if origin is None:
                raise Forbidden("the dashboard's forms are sent by a browser (no Origin here)")
            return
        ctype = headers.get(b"content-type", b"").split(b";", 1)[0].strip().lower()
        if ctype in _SIMPLE_TYPES:
            raise _Unsupported("send the body as JSON (Content-Type: application/json)")

    def _same_or_allowed(self, origin: bytes, host: bytes | None) -> bool:
        text = origin.decode("latin-1").rstrip("/").lower()
        if text in self.origins:
            return True
        bare = text.split("://", 1)[-1]
        return host is not None and bare == host.decode("latin-1").lower()

    async def _principal(self, scope: Scope, path: str, headers: dict[bytes, bytes]) -> Principal:
        needed = permission(scope["method"], path)
        if not self.enabled:
            return NOBODY
        if needed is P.PUBLIC:  # credentials are not even looked at (a probe's stale token)
            return NOBODY_PUBLIC
        auth: Authenticator = scope["app"].state.auth
        given = headers.get(b"authorization")
        if given is None and (scope["method"] in _SAFE or path.startswith(UI + "/")):
            session = session_token(headers)
            if session:
                given = b"Bearer " + session.encode("latin-1")
        principal = await self._credentials(auth, given)
        if principal is None:
            if needed is P.WORK and self._trusted(scope):
                host = scope["client"][0]
                return Principal(f"trusted network {host}", Role.WORKER, identity=f"host {host}")
            raise Unauthorized(
                "credentials required: Authorization: Bearer <token> (the farmstead CLI reads "
                "FARMSTEAD_TOKEN)"
            )
        if not principal.may(needed):
            raise Forbidden(f"{principal.name} is a {principal.role}: this needs {needed} rights")
        if principal.workflows is not None:
            await self._scope_check(auth, principal, path)
        return principal

    async def _credentials(self, auth: Authenticator, value: bytes | None) -> Principal | None:
        if value is None:
            return None
        kind, _, rest = value.decode("latin-1").strip().partition(" ")
        rest = rest.strip()
        if kind.lower() == "bearer" and rest:
            if secrets.compare_digest(rest, self.internal_token):
                return EXECUTOR
            principal = await auth.token(rest)
        elif kind.lower() == "basic" and rest:
            try:
                user, _, password = base64.b64decode(rest, validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                raise Unauthorized("malformed Basic credentials") from None
            principal = await (auth.password(user, password) if password else auth.token(user))
        else:
            raise Unauthorized("unsupported Authorization scheme: use Bearer or Basic")
        if principal is None:
            raise Unauthorized("unknown, expired or revoked credentials")
        return principal

    def _trusted(self, scope: Scope) -> bool:
        client = scope.get("client")
        if not client or not self.trusted:
            return False
        try:
            address = ipaddress.ip_address(client[0])
        except ValueError:
            return False
        return any(address in net for net in self.trusted)

    async def _scope_check(self, auth: Authenticator, principal: Principal, path: str) -> None:
        if (m := _INSTANCE.match(path)) and int(m[1]) <= INT64_MAX:
            workflow = await auth.workflow_of_instance(int(m[1]))
        elif (m := _ARRAY.match(path)) and int(m[1]) <= INT64_MAX:
            workflow = await auth.workflow_of_array(int(m[1]))
        else:
            return
        if not principal.may_touch(workflow):
            raise Forbidden("this token may act only on its own workflows' instances")


EXECUTOR = Principal("local executor", Role.WORKER)
NOBODY_PUBLIC = Principal("anonymous", Role.VIEWER)


class _Unsupported(Exception):
    """A body type a cross-site form could send: 415."""


_NAMES = (b"host", b"origin", b"authorization", b"content-type", b"x-request-id", b"cookie")
#: a client's own request id is taken if it is this plain (else a new one is made)
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,64}")


def _wanted(raw: list[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    return {k: v for k, v in raw if k in _NAMES}


def _headers_for(path: str) -> list[tuple[bytes, bytes]]:
    """The security headers for `path`: no Content-Security-Policy for the docs (their own
    scripts); for the dashboard its own scripts, styles and stream, and a same-origin referrer
    policy (with no-referrer a browser sends its forms with `Origin: null`); none at all
    elsewhere."""
    if path.startswith(_DOCS):
        return _HEADERS
    if path == UI or path.startswith(UI + "/"):
        return _UI_HEADERS
    return [*_HEADERS, _CSP]


def session_token(headers: dict[bytes, bytes]) -> str | None:
    """The dashboard's session token from the Cookie header, if any."""
    raw = headers.get(b"cookie")
    if not raw:
        return None
    return cookie_parser(raw.decode("latin-1")).get(SESSION_COOKIE) or None


def _is_page(method: str, path: str) -> bool:
    return method in ("GET", "HEAD") and (path == UI or path.startswith(UI + "/"))


async def send_redirect(send: Send, location: str) -> None:
    """A 303 to `location` (a browser follows it with a GET)."""
    await send(
        {
            "type": "http.response.start",
            "status": 303,
            "headers": [(b"location", location.encode()), (b"content-length", b"0")],
        }
    )
    await send({"type": "http.response.body", "body": b""})


def _secure(send: Send, headers: list[tuple[bytes, bytes]], request_id: str) -> Send:
    extra = [*headers, (b"x-request-id", request_id.encode())]

    async def secured(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", []), *extra]
        await send(message)

    return secured
