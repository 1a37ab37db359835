"""Principals: who a request is, resolved from a token or a password, cached briefly; users
and tokens managed; the first admin token made on a new database.

A token is 256 random bits shown once; only its SHA-256 is stored. A resolved token is
trusted for `cache_seconds` (a revocation reaches this process at once, other processes within
that time); its last use is written at most once per that time. Passwords are argon2 hashes,
verified off the event loop.
"""

import asyncio
import hashlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from farmstead.db.engine import Conn, Database
from farmstead.fsm.roles import ALLOWED, GRANTABLE, Permission, Role
from farmstead.services.errors import BadRequest, Conflict, Forbidden, NotFound
from farmstead.services.uow import in_transaction
from farmstead.store import auth as store
from farmstead.store.rows import EventRow
from farmstead.store.sql import insert_events

audit_log = logging.getLogger("farmstead.audit")
TOKEN_PREFIX = "fst_"
_CACHE_MAX = 10_000
_IDS_MAX = 200_000
_hasher = PasswordHasher()


@dataclass(frozen=True)
class Principal:
    """Who is asking: a name for the audit trail, a role, and a worker token's scope."""

    name: str
    role: Role
    token_id: int | None = None
    #: the workflows a worker token may act on; None: any
    workflows: frozenset[int] | None = None
    #: the user who owns the token (or signed in)
    user: str | None = None
    #: who is reporting, as a running instance remembers it (a token, a user, a host)
    identity: str | None = None

    def may(self, permission: Permission) -> bool:
        """Whether the role allows routes that need `permission`."""
        return self.role in ALLOWED[permission]

    @property
    def reporter(self) -> str | None:
        """A worker's identity, checked against a running instance's; None for operators and
        admins (and the server's own executor), who may report for any instance."""
        return self.identity if self.role == Role.WORKER else None

    def may_touch(self, workflow_id: int | None) -> bool:
        """Whether a worker's scope covers `workflow_id` (None: an unknown id: no)."""
        if self.workflows is None:
            return True
        return workflow_id is not None and workflow_id in self.workflows


#: every request's principal when auth is off (only on a loopback address)
NOBODY = Principal("anonymous (auth off)", Role.ADMIN)
#: the actor of what a service is asked to do from inside the server (tests, start-up)
SYSTEM = Principal("farmstead", Role.ADMIN)


def hash_token(token: str) -> str:
    """The stored form of a token."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A fresh random token."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def audit(action: str, actor: Principal, **fields: Any) -> None:
    """One structured log line naming who did what."""
    line = {"audit": action, "by": actor.name, "role": str(actor.role), **fields}
    audit_log.info("%s", orjson.dumps(line, default=str).decode())


def _principal(row: dict[str, Any]) -> Principal:
    scope = row["workflow_ids"]
    return Principal(
        name=f"{row['owner']} (token {row['name']!r})",
        role=Role(row["role"]),
        token_id=int(row["id"]),
        workflows=None if scope is None else frozenset(int(w) for w in scope),
        user=row["owner"],
        identity=f"token {row['id']}",
    )


@dataclass
class Authenticator:
    """Resolves credentials to principals for one server process, with a short cache."""

    db: Database
    cache_seconds: float = 5.0
    _tokens: dict[str, tuple[Principal | None, float]] = field(default_factory=dict)
    _passwords: dict[str, tuple[Principal | None, float]] = field(default_factory=dict)
    _instances: dict[int, int] = field(default_factory=dict)
    _arrays: dict[int, int] = field(default_factory=dict)

    async def token(self, token: str) -> Principal | None:
        """The principal of a bearer token; None if it is unknown, expired or revoked."""
        key = hash_token(token)
        hit = self._tokens.get(key)
        now = time.monotonic()
        if hit is not None and hit[1] > now:
            return hit[0]
        row = await in_transaction(self.db, lambda c: store.use_token(c, key))
        principal = None if row is None else _principal(row)
        _remember(self._tokens, key, principal, now + self.cache_seconds)
        return principal

    async def password(self, name: str, password: str) -> Principal | None:
        """The principal of a user signing in with a password; None if it does not match."""
        key = hash_token(f"{name}\0{password}")
        hit = self._passwords.get(key)
        now = time.monotonic()
        if hit is not None and hit[1] > now:
            return hit[0]
        row = await in_transaction(self.db, lambda c: store.user_by_name(c, name), write=False)
        ok = bool(row and row["password_hash"]) and await asyncio.to_thread(
            _verify, str(row and row["password_hash"]), password
        )
        principal = (
            Principal(name, Role(row["role"]), user=name, identity=f"user {name}")
            if ok and row
            else None
        )
        _remember(self._passwords, key, principal, now + self.cache_seconds)
        return principal

    def forget(self, token_hashes: list[str]) -> None:
        """Drop revoked tokens from this process's cache at once."""
        for key in token_hashes:
            self._tokens.pop(key, None)
        self._passwords.clear()

    async def workflow_of_instance(self, ti_id: int) -> int | None:
        """An instance's workflow (cached: it never changes)."""
        return await self._workflow_of(self._instances, store.workflow_of_instance, ti_id)

    async def workflow_of_array(self, array_id: int) -> int | None:
        """An array's workflow (cached: it never changes)."""
        return await self._workflow_of(self._arrays, store.workflow_of_array, array_id)

    async def _workflow_of(
        self,
        cache: dict[int, int],
        lookup: Callable[[Conn, int], Awaitable[int | None]],
        key: int,
    ) -> int | None:
        if (wf := cache.get(key)) is not None:
            return wf
        wf = await in_transaction(self.db, lambda c: lookup(c, key), write=False)
        if wf is not None:
            _bounded(cache)[key] = wf
        return wf

    async def require_instances(self, principal: Principal, ti_ids: list[int]) -> None:
        """Forbidden unless every one of `ti_ids` is in the principal's workflows."""
        if principal.workflows is None or not ti_ids:
            return
        found = await in_transaction(
            self.db, lambda c: store.workflows_of_instances(c, ti_ids), write=False
        )
        if not all(principal.may_touch(wf) for wf in found):
            raise Forbidden("this token may act only on instances of its own workflows")


def _remember(cache: dict[str, Any], key: str, value: Any, until: float) -> None:
    if len(cache) >= _CACHE_MAX:
        cache.clear()
    cache[key] = (value, until)


def _bounded(cache: dict[int, int]) -> dict[int, int]:
    if len(cache) >= _IDS_MAX:
        cache.clear()
    return cache


def _verify(password_hash: str, password: str) -> bool:
    try:
        return bool(_hasher.verify(password_hash, password))
    except (VerificationError, InvalidHashError):
        return False


# --- users and tokens ---------------------------------------------------------------------


async def _record(
    conn: Conn, entity: str, entity_id: int, to: str, details: dict[str, Any]
) -> None:
    """An audit event for a user or token change (workflow 0: not any workflow's)."""
    await insert_events(conn, [EventRow(0, entity, entity_id, None, to, details)])


async def _owner(conn: Conn, actor: Principal, owner: str | None) -> dict[str, Any]:
    """The user who will own a new token: `owner`, else the actor's own user (else `admin`,
    made on first use when nobody is signed in: auth off, or the first start)."""
    name = owner or actor.user or "admin"
    row = await store.user_by_name(conn, name)
    if row is None and owner is None:
        uid = await store.insert_user(conn, name, Role.ADMIN, None)
        await _record(
            conn,
            "user",
            uid,
            "C",
            {"action": "user added", "by": actor.name, "name": name, "role": "admin"},
        )
        row = await store.user_by_name(conn, name)
    if row is None:
        raise NotFound(f"no user named {name!r}", user=name)
    return row


async def create_token(
    db: Database,
    actor: Principal,
    name: str,
    role: Role,
    *,
    owner: str | None = None,
    workflows: list[int] | None = None,
    expires_in: float | None = None,
    own_rights: bool = False,
) -> tuple[str, dict[str, Any]]:
    """A new token (returned once, in clear) and its description.

    An admin may make any token for anyone; anyone else only tokens they own, with a role
    their own role may grant, and an operator a worker token only for named workflows.
    `own_rights`: a token with exactly the rights the actor has already (see `sign_in_token`).
    """
    if not own_rights and actor.role != Role.ADMIN:
        if owner not in (None, actor.user):
            raise Forbidden("only an admin may make a token for another user")
        if role not in GRANTABLE[actor.role]:
            raise Forbidden(f"a {actor.role} may not make a {role} token")
        if role == Role.WORKER and workflows is None:
            raise Forbidden("only an admin may make a worker token for every workflow")
    if workflows is not None and role != Role.WORKER:
        raise BadRequest("only a worker token is scoped to workflows", field="workflow_ids")
    token = new_token()
    expires = None
    if expires_in is not None:
        expires = datetime.now(UTC) + timedelta(seconds=expires_in)

    async def work(conn: Conn) -> dict[str, Any]:
        row = await _owner(conn, actor, owner)
        nonlocal expires
        if own_rights and actor.token_id is not None:  # never outlives the token it came from
            parent = await store.token_view(conn, actor.token_id)
            until = None if parent is None else parent["expires_date"]
            if until is not None and (expires is None or until < expires):
                expires = until
        if role not in GRANTABLE[Role(row["role"])]:
            raise Conflict(f"user {row['name']!r} is a {row['role']}: no {role} token for them")
        token_id = await store.insert_token(
            conn,
            name=name,
            token_hash=hash_token(token),
            user_id=int(row["id"]),
            role=role,
            workflow_ids=sorted(set(workflows)) if workflows is not None else None,
            created_by=actor.name,
            expires_date=expires,
        )
        details = {
            "action": "token created",
            "by": actor.name,
            "name": name,
            "role": role,
            "owner": row["name"],
            "workflow_ids": workflows,
        }
        await _record(conn, "token", token_id, "C", details)
        view = await store.token_view(conn, token_id)
        assert view is not None
        return view

    view = await in_transaction(db, work)
    audit("token created", actor, token_id=view["id"], name=name, role=role, owner=view["owner"])
    return token, view


async def sign_in_token(db: Database, who: Principal, name: str, expires_in: float) -> str:
    """A token with the rights the caller has already: their user's role (signed in with a
    password), or their token's role and scope; for clients that trade a sign-in for a token
    (taskfarm's `GET /api/token`). It expires in `expires_in` seconds (or with its parent)."""
    if who.user is None:
        raise Forbidden("only a user (with a password or a token) can be given a token")
    scope = None if who.workflows is None else sorted(who.workflows)
    token, _ = await create_token(
        db,
        who,
        name,
        who.role,
        owner=who.user,
        workflows=scope,
        expires_in=expires_in,
        own_rights=True,
    )
    return token


async def list_tokens(db: Database, owner: str | None, revoked: bool) -> list[dict[str, Any]]:
    """Tokens (never their secrets), newest first."""
    return await in_transaction(db, lambda c: store.tokens(c, owner, revoked), write=False)


async def revoke_token(db: Database, actor: Principal, token_id: int) -> list[str]:
    """Revoke a token (an admin any, anyone else their own); the hashes to forget."""

    async def work(conn: Conn) -> list[str]:
        view = await store.token_view(conn, token_id)
        if view is None:
            raise NotFound(f"token {token_id} not found", token_id=token_id)
        if actor.role != Role.ADMIN and view["owner"] != actor.user:
            raise Forbidden("only an admin may revoke another user's token")
        token_hash = await store.revoke_token(conn, token_id)
        await _record(conn, "token", token_id, "R", {"action": "token revoked", "by": actor.name})
        return [token_hash] if token_hash else []

    hashes = await in_transaction(db, work)
    audit("token revoked", actor, token_id=token_id)
    return hashes


def hash_password(password: str) -> str:
    """An argon2 hash of a password."""
    return _hasher.hash(password)


async def add_user(
    db: Database, actor: Principal, name: str, role: Role, password: str | None
) -> dict[str, Any]:
    """A new user (409 if the name is taken)."""
    password_hash = None if password is None else await asyncio.to_thread(hash_password, password)

    async def work(conn: Conn) -> int:
        if await store.user_by_name(conn, name) is not None:
            raise Conflict(f"a user named {name!r} exists", user=name)
        uid = await store.insert_user(conn, name, role, password_hash)
        details = {"action": "user added", "by": actor.name, "name": name, "role": role}
        await _record(conn, "user", uid, "C", details)
        return uid

    uid = await in_transaction(db, work)
    audit("user added", actor, user=name, role=role)
    return {"id": uid, "name": name, "role": role, "has_password": password is not None}


async def list_users(db: Database) -> list[dict[str, Any]]:
    """Users with their number of usable tokens."""
    return await in_transaction(db, store.users, write=False)


async def remove_user(db: Database, actor: Principal, name: str) -> list[str]:
    """Remove a user and revoke their tokens; the hashes to forget."""
    if name == actor.user:
        raise Conflict("you cannot remove yourself", user=name)

    async def work(conn: Conn) -> list[str]:
        row = await store.user_by_name(conn, name)
        if row is None:
            raise NotFound(f"no user named {name!r}", user=name)
        hashes = await store.revoke_tokens_of(conn, int(row["id"]))
        await store.delete_user(conn, int(row["id"]))
        await _record(
            conn,
            "user",
            int(row["id"]),
            "D",
            {"action": "user removed", "by": actor.name, "name": name},
        )
        return hashes

    hashes = await in_transaction(db, work)
    audit("user removed", actor, user=name)
    return hashes


FIRST_START = Principal("farmstead serve (first start)", Role.ADMIN)


async def bootstrap_admin(db: Database, known: list[str]) -> tuple[str | None, bool]:
    """On a server's start: (a usable admin token, whether it is new).

    `known` are tokens this machine already holds (its credentials file): the first that is
    a usable admin token of this database is kept. Else, on a database where nobody can
    administer, a new admin token is made. Else (admins exist, and this machine holds none of
    their tokens): (None, False)."""
    by_hash = {hash_token(t): t for t in known}
    usable = await in_transaction(
        db, lambda c: store.usable_admin_hashes(c, list(by_hash)), write=False
    )
    for key, token in by_hash.items():
        if key in usable:
            return token, False
    if await in_transaction(db, store.has_admin, write=False):
        return None, False
    token, _ = await create_token(db, FIRST_START, "first admin token", Role.ADMIN)
    return token, True
