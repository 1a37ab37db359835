"""`farmstead`: one sub-command group per noun."""

import typer

from farmstead.cli import db, serve

app = typer.Typer(
    name="farmstead",
    help="Task-farm state server.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command("serve")(serve.serve)
app.add_typer(db.app, name="db")

if __name__ == "__main__":
    app()
