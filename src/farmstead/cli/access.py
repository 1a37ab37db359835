"""`farmstead users …` and `farmstead tokens …`: who may use the server (through its API, with
FARMSTEAD_TOKEN or the admin token `farmstead serve` left on this machine)."""

import os
import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from farmstead.cli.http import DEFAULT_URL, MAX_ID, AsJson, Server, ServerUrl, usage
from farmstead.cli.views import print_json

users = typer.Typer(help="Add, list and remove users.", no_args_is_help=True)
tokens = typer.Typer(help="Create, list and revoke API tokens.", no_args_is_help=True)
ROLES = ("admin", "operator", "worker", "viewer")
Role = Annotated[str, typer.Option(help="admin, operator, worker or viewer")]


def _role(value: str) -> str:
    if value not in ROLES:
        usage(f"--role {value!r}: one of {', '.join(ROLES)}")
    return value


def _table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    table = Table(*columns, box=None, header_style="bold")
    for row in rows:
        table.add_row(*["" if row.get(c) is None else str(row.get(c)) for c in columns])
    Console().print(table)


@users.command("add")
def users_add(
    name: Annotated[str, typer.Argument(help="user name")],
    role: Role = "viewer",
    password: Annotated[
        bool,
        typer.Option(
            "--password",
            help="ask for a password (read from FARMSTEAD_PASSWORD, else the terminal): "
            "for HTTP Basic sign-in",
        ),
    ] = False,
    as_json: AsJson = False,
    server_url: ServerUrl = DEFAULT_URL,
) -> None:
    """Add a user (admins only)."""
    body: dict[str, Any] = {"name": name, "role": _role(role)}
    if password:
        secret = os.environ.get("FARMSTEAD_PASSWORD")
        if secret is None:
            if not sys.stdin.isatty():
                usage("--password: set FARMSTEAD_PASSWORD (no terminal to ask on)")
            secret = typer.prompt("password", hide_input=True, confirmation_prompt=True)
        body["password"] = secret
    out = Server(server_url).post("/v3/users", body)
    if as_json:
        print_json(out)
    else:
        print(f"user {out['name']} added ({out['role']})")


@users.command("list")
def users_list(as_json: AsJson = False, server_url: ServerUrl = DEFAULT_URL) -> None:
    """Users, with how many usable tokens each holds."""
    rows = Server(server_url).get("/v3/users")["data"]
    if as_json:
        print_json(rows)
    else:
        _table(rows, ["name", "role", "has_password", "tokens"])


@users.command("remove")
def users_remove(
    name: Annotated[str, typer.Argument(help="user name")],
    server_url: ServerUrl = DEFAULT_URL,
) -> None:
    """Remove a user; their tokens are revoked."""
    Server(server_url).delete(f"/v3/users/{name}")
    print(f"user {name} removed; their tokens are revoked")


@tokens.command("create")
def tokens_create(
    name: Annotated[str, typer.Argument(help="what the token is for, e.g. ci or node-17")],
    role: Role = "worker",
    owner: Annotated[str | None, typer.Option(help="its owner (admins only; default: you)")] = None,
    workflow: Annotated[
        list[int] | None,
        typer.Option(min=1, max=MAX_ID, help="a worker token acts only on these (repeatable)"),
    ] = None,
    expires_in_days: Annotated[
        float | None, typer.Option(min=0.0001, max=3650, help="days until it expires")
    ] = None,
    as_json: AsJson = False,
    server_url: ServerUrl = DEFAULT_URL,
) -> None:
    """Create a token; it is printed once (only its hash is kept)."""
    body: dict[str, Any] = {"name": name, "role": _role(role)}
    if owner:
        body["owner"] = owner
    if workflow:
        body["workflow_ids"] = workflow
    if expires_in_days:
        body["expires_in"] = expires_in_days * 86400
    out = Server(server_url).post("/v3/tokens", body)
    if as_json:
        print_json(out)
        return
    scope = f", workflows {out['workflow_ids']}" if out["workflow_ids"] else ""
    print(out["token"])
    print(
        f"token {out['id']} ({out['role']}{scope}) for {out['owner']}: shown this once; "
        "give it as FARMSTEAD_TOKEN or Authorization: Bearer <token>",
        file=sys.stderr,
    )


@tokens.command("list")
def tokens_list(
    owner: Annotated[str | None, typer.Option(help="only this user's")] = None,
    revoked: Annotated[bool, typer.Option("--revoked", help="also revoked ones")] = False,
    as_json: AsJson = False,
    server_url: ServerUrl = DEFAULT_URL,
) -> None:
    """Tokens, newest first (never their secrets)."""
    rows = Server(server_url).get("/v3/tokens", owner=owner, revoked=revoked or None)["data"]
    if as_json:
        print_json(rows)
    else:
        cols = ["id", "name", "owner", "role", "workflow_ids", "expires_date", "last_used_date"]
        _table(rows, cols + (["revoked_date"] if revoked else []))


@tokens.command("revoke")
def tokens_revoke(
    token_id: Annotated[int, typer.Argument(min=1, max=MAX_ID, help="token id")],
    server_url: ServerUrl = DEFAULT_URL,
) -> None:
    """Revoke a token."""
    Server(server_url).delete(f"/v3/tokens/{token_id}")
    print(f"token {token_id} revoked")
