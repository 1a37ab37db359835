"""Users and tokens (admins; an operator may make worker tokens and revoke their own)."""

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request

from farmstead.api.deps import DatabaseDep, PrincipalDep
from farmstead.bounds import DbId
from farmstead.fsm.roles import Role
from farmstead.schemas import (
    TokenCreate,
    TokenCreatedOut,
    TokensOut,
    UserCreate,
    UserName,
    UserOut,
    UsersOut,
)
from farmstead.services import auth

router = APIRouter(tags=["users and tokens"])


def _forget(request: Request, hashes: list[str]) -> None:
    request.app.state.auth.forget(hashes)


@router.post("/tokens", response_model=TokenCreatedOut, status_code=201)
async def create_token(db: DatabaseDep, who: PrincipalDep, body: TokenCreate) -> Any:
    """A new token, shown once in the answer (only its hash is kept)."""
    token, view = await auth.create_token(
        db,
        who,
        body.name,
        Role(body.role),
        owner=body.owner,
        workflows=body.workflow_ids,
        expires_in=body.expires_in,
    )
    return {**view, "token": token}


@router.get("/tokens", response_model=TokensOut)
async def list_tokens(
    db: DatabaseDep,
    owner: Annotated[UserName | None, Query(description="only this user's tokens")] = None,
    revoked: Annotated[bool, Query(description="also revoked tokens")] = False,
) -> Any:
    """Tokens, newest first (never their secrets)."""
    return {"data": await auth.list_tokens(db, owner, revoked)}


@router.delete("/tokens/{token_id}")
async def revoke_token(
    request: Request,
    db: DatabaseDep,
    who: PrincipalDep,
    token_id: Annotated[DbId, Path(description="token id")],
) -> dict[str, Any]:
    """Revoke a token: refused from now on (other server processes: within the token cache
    time, FARMSTEAD_TOKEN_CACHE_SECONDS)."""
    _forget(request, await auth.revoke_token(db, who, token_id))
    return {"id": token_id, "revoked": True}


@router.post("/users", response_model=UserOut, status_code=201)
async def add_user(db: DatabaseDep, who: PrincipalDep, body: UserCreate) -> Any:
    """A new user (with a password only if they sign in with one)."""
    return await auth.add_user(db, who, body.name, Role(body.role), body.password)


@router.get("/users", response_model=UsersOut)
async def list_users(db: DatabaseDep) -> Any:
    """Users, by name, with how many usable tokens each holds."""
    return {"data": await auth.list_users(db)}


@router.delete("/users/{name}")
async def remove_user(
    request: Request,
    db: DatabaseDep,
    who: PrincipalDep,
    name: Annotated[UserName, Path(description="user name")],
) -> dict[str, Any]:
    """Remove a user; their tokens are revoked."""
    _forget(request, await auth.remove_user(db, who, name))
    return {"name": name, "removed": True}
