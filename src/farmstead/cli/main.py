"""`farmstead`: one sub-command group per noun."""

import typer

from farmstead.cli import (
    access,
    db,
    events,
    executor,
    queues,
    serve,
    status,
    submit,
    tasks,
    worker,
    workflows,
)

app = typer.Typer(
    name="farmstead",
    help="Task-farm state server.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command("serve")(serve.serve)
app.command("submit")(submit.submit)
app.command("status")(status.status)
app.command("events")(events.events)
app.add_typer(workflows.app, name="workflows")
app.add_typer(tasks.app, name="tasks")
app.add_typer(queues.app, name="queues")
app.add_typer(queues.agents, name="agents")
app.add_typer(db.app, name="db")
app.add_typer(worker.app, name="worker")
app.add_typer(executor.app, name="executor")
app.add_typer(access.users, name="users")
app.add_typer(access.tokens, name="tokens")

if __name__ == "__main__":
    app()
