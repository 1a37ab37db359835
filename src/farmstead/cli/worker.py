"""`farmstead worker run`: run one task instance (e.g. as a Slurm array element)."""

import logging
from typing import Annotated

import typer

from farmstead.cli.common import fail
from farmstead.client.job import UsageError, run_one
from farmstead.client.runner import RunnerConfig

app = typer.Typer(help="Run task instances on this machine.", no_args_is_help=True)


ServerUrl = Annotated[
    str | None,
    typer.Option(
        "--server-url",
        envvar="FARMSTEAD_SERVER_URL",
        help="the farmstead server, e.g. http://head-node:8000",
    ),
]


@app.command("run")
def run(
    server_url: ServerUrl = None,
    task_instance_id: Annotated[int | None, typer.Option(help="the instance to run")] = None,
    array_id: Annotated[int | None, typer.Option(help="run an array element instead")] = None,
    batch: Annotated[int | None, typer.Option(help="the array batch (with --array-id)")] = None,
    step: Annotated[
        int | None,
        typer.Option(help="the step (default: FARMSTEAD_ARRAY_STEP_ID or SLURM_ARRAY_TASK_ID)"),
    ] = None,
    distributor_id: Annotated[str | None, typer.Option(help="the cluster's job id")] = None,
    heartbeat_interval: Annotated[
        float, typer.Option(help="seconds between heartbeats, until the server says otherwise")
    ] = 30.0,
    report_increment: Annotated[float, typer.Option(help="first deadline, seconds")] = 93.0,
    executor_triage: Annotated[
        bool,
        typer.Option(
            help="started by a cluster executor (the Slurm executor passes it): on SIGTERM stop "
            "the command and leave the report to the executor, which reads from the cluster why "
            "the job was signalled (a time limit is a resource error); the cluster's time limit "
            "is the only one"
        ),
    ] = False,
) -> None:
    """Run one task instance: log running, run its command, heartbeat, report; exit as it did."""
    logging.basicConfig(level=logging.WARNING, format="farmstead worker: %(message)s")
    config = RunnerConfig(
        heartbeat_interval=heartbeat_interval,
        report_increment=report_increment,
        executor_triage=executor_triage,
    )
    try:
        code = run_one(server_url, config, task_instance_id, array_id, batch, step, distributor_id)
    except UsageError as exc:
        fail(str(exc), code=exc.code)
    raise typer.Exit(code)
