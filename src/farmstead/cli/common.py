"""Helpers shared by the commands: settings from flags, messages to stderr."""

import sys
from typing import TYPE_CHECKING, Any, NoReturn

from rich.console import Console

if TYPE_CHECKING:
    from farmstead.settings import Settings

# soft_wrap: one message stays one line, also when stderr is a file (a Slurm log).
err = Console(stderr=True, highlight=False, soft_wrap=True)


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one clear line to stderr and exit non-zero."""
    err.print("[bold red]error:[/] ", end="")
    err.print(message, markup=False)
    sys.exit(code)


def load_settings(**overrides: Any) -> "Settings":
    """Settings from the environment, with command-line flags (when given) on top."""
    # imported here: `farmstead worker run`, started once per cluster job, needs neither
    from pydantic import ValidationError

    from farmstead.settings import Settings

    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        fail(f"bad setting {where}: {message}" if where else message)
