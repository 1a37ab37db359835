"""SQL of users and tokens."""

from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, and_, delete, func, or_, select, update

from farmstead.db.engine import Conn
from farmstead.db.models import ApiToken, User
from farmstead.db.types import db_now
from farmstead.store.sql import ARRAY, TI, dialect, id_in

USER = cast(Table, User.__table__)
TOKEN = cast(Table, ApiToken.__table__)

_TOKEN_VIEW = (
    TOKEN.c.id,
    TOKEN.c.name,
    TOKEN.c.role,
    TOKEN.c.workflow_ids,
    TOKEN.c.created_date,
    TOKEN.c.created_by,
    TOKEN.c.expires_date,
    TOKEN.c.last_used_date,
    TOKEN.c.revoked_date,
    USER.c.name.label("owner"),
)


def _usable() -> Any:
    return and_(
        TOKEN.c.revoked_date.is_(None),
        or_(TOKEN.c.expires_date.is_(None), TOKEN.c.expires_date > db_now()),
    )


async def use_token(conn: Conn, token_hash: str) -> dict[str, Any] | None:
    """The usable token with this hash and its owner, its last use set to now; None if none."""
    stamped = (
        update(TOKEN)
        .where(TOKEN.c.token_hash == token_hash, _usable())
        .values(last_used_date=db_now())
        .returning(TOKEN.c.id, TOKEN.c.user_id)
    )
    row = (await conn.execute(stamped)).first()
    if row is None:
        return None
    return await token_view(conn, int(row.id))


async def usable_admin_hashes(conn: Conn, hashes: list[str]) -> set[str]:
    """Which of `hashes` are usable admin tokens: one statement, whatever their number."""
    if not hashes:
        return set()
    stmt = select(TOKEN.c.token_hash).where(
        TOKEN.c.token_hash.in_(hashes), TOKEN.c.role == "admin", _usable()
    )
    return {str(h) for h in (await conn.execute(stmt)).scalars()}


async def token_view(conn: Conn, token_id: int) -> dict[str, Any] | None:
    """A token's columns (never its hash) with its owner's name."""
    stmt = (
        select(*_TOKEN_VIEW).join(USER, USER.c.id == TOKEN.c.user_id).where(TOKEN.c.id == token_id)
    )
    row = (await conn.execute(stmt)).mappings().first()
    return dict(row) if row else None


async def tokens(conn: Conn, owner: str | None, include_revoked: bool) -> list[dict[str, Any]]:
    """Tokens, newest first (optionally one owner's; revoked ones only when asked)."""
    stmt = select(*_TOKEN_VIEW).join(USER, USER.c.id == TOKEN.c.user_id)
    if owner is not None:
        stmt = stmt.where(USER.c.name == owner)
    if not include_revoked:
        stmt = stmt.where(TOKEN.c.revoked_date.is_(None))
    rows = (await conn.execute(stmt.order_by(TOKEN.c.id.desc()))).mappings().all()
    return [dict(r) for r in rows]


async def insert_token(
    conn: Conn,
    *,
    name: str,
    token_hash: str,
    user_id: int,
    role: str,
    workflow_ids: list[int] | None,
    created_by: str,
    expires_date: datetime | None,
) -> int:
    """A new token; returns its id."""
    stmt = (
        TOKEN.insert()
        .values(
            name=name,
            token_hash=token_hash,
            user_id=user_id,
            role=role,
            workflow_ids=workflow_ids,
            created_by=created_by,
            created_date=db_now(),
            expires_date=expires_date,
        )
        .returning(TOKEN.c.id)
    )
    return int((await conn.execute(stmt)).scalar_one())


async def revoke_token(conn: Conn, token_id: int) -> str | None:
    """Revoke a token (idempotent); its hash, or None if there is no such token."""
    stmt = (
        update(TOKEN)
        .where(TOKEN.c.id == token_id)
        .values(revoked_date=func.coalesce(TOKEN.c.revoked_date, db_now()))
        .returning(TOKEN.c.token_hash)
    )
    return cast(str | None, (await conn.execute(stmt)).scalar())


async def revoke_tokens_of(conn: Conn, user_id: int) -> list[str]:
    """Revoke every token of a user; their hashes."""
    stmt = (
        update(TOKEN)
        .where(TOKEN.c.user_id == user_id, TOKEN.c.revoked_date.is_(None))
        .values(revoked_date=db_now())
        .returning(TOKEN.c.token_hash)
    )
    return [str(h) for h in (await conn.execute(stmt)).scalars()]


async def user_by_name(conn: Conn, name: str) -> dict[str, Any] | None:
    """A user's row, password hash included."""
    row = (await conn.execute(select(USER).where(USER.c.name == name))).mappings().first()
    return dict(row) if row else None


async def users(conn: Conn) -> list[dict[str, Any]]:
    """Every user with their number of usable tokens, by name."""
    live = (
        select(TOKEN.c.user_id, func.count().label("tokens"))
        .where(_usable())
        .group_by(TOKEN.c.user_id)
        .subquery()
    )
    stmt = (
        select(
            USER.c.id,
            USER.c.name,
            USER.c.role,
            USER.c.created_date,
            USER.c.password_hash.is_not(None).label("has_password"),
            func.coalesce(live.c.tokens, 0).label("tokens"),
        )
        .outerjoin(live, live.c.user_id == USER.c.id)
        .order_by(USER.c.name)
    )
    return [dict(r) for r in (await conn.execute(stmt)).mappings().all()]


async def insert_user(conn: Conn, name: str, role: str, password_hash: str | None) -> int:
    """A new user; returns its id."""
    stmt = (
        USER.insert()
        .values(name=name, role=role, password_hash=password_hash, created_date=db_now())
        .returning(USER.c.id)
    )
    return int((await conn.execute(stmt)).scalar_one())


async def delete_user(conn: Conn, user_id: int) -> None:
    """Remove a user and their (already revoked) tokens."""
    await conn.execute(delete(TOKEN).where(TOKEN.c.user_id == user_id))
    await conn.execute(delete(USER).where(USER.c.id == user_id))


async def has_admin(conn: Conn) -> bool:
    """Whether anyone can administer: a usable admin token or an admin with a password."""
    token = select(TOKEN.c.id).where(TOKEN.c.role == "admin", _usable()).limit(1)
    if (await conn.execute(token)).first() is not None:
        return True
    user = select(USER.c.id).where(USER.c.role == "admin", USER.c.password_hash.is_not(None))
    return (await conn.execute(user.limit(1))).first() is not None


async def workflow_of_instance(conn: Conn, ti_id: int) -> int | None:
    """The workflow of an instance (never changes), or None."""
    stmt = select(TI.c.workflow_id).where(TI.c.id == ti_id)
    return cast(int | None, (await conn.execute(stmt)).scalar())


async def workflow_of_array(conn: Conn, array_id: int) -> int | None:
    """The workflow of an array (never changes), or None."""
    stmt = select(ARRAY.c.workflow_id).where(ARRAY.c.id == array_id)
    return cast(int | None, (await conn.execute(stmt)).scalar())


async def workflows_of_instances(conn: Conn, ti_ids: list[int]) -> set[int | None]:
    """The workflows `ti_ids` belong to (None among them if some id is unknown)."""
    stmt = select(TI.c.id, TI.c.workflow_id).where(id_in(TI.c.id, ti_ids, dialect(conn)))
    found = {int(r.id): int(r.workflow_id) for r in await conn.execute(stmt)}
    out: set[int | None] = set(found.values())
    if len(found) < len(set(ti_ids)):
        out.add(None)
    return out
