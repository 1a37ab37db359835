"""`farmstead worker run`: run one task instance (e.g. as a Slurm array element)."""

import asyncio
import logging
import os
from typing import Annotated

import typer

from farmstead.cli.common import fail
from farmstead.client.api import Api, ClientError, ServerUnavailable
from farmstead.client.runner import Runner, RunnerConfig

app = typer.Typer(help="Run task instances on this machine.", no_args_is_help=True)


@app.callback()
def group() -> None:
    """Run task instances on this machine."""


ServerUrl = Annotated[
    str | None,
    typer.Option(
        "--server-url",
        envvar="FARMSTEAD_SERVER_URL",
        help="the farmstead server, e.g. http://head-node:8000",
    ),
]


def _step() -> int | None:
    for name in ("FARMSTEAD_ARRAY_STEP_ID", "SLURM_ARRAY_TASK_ID"):
        if (value := os.environ.get(name)) is not None:
            if not value.isdigit():
                fail(f"{name}={value!r} is not a step number")
            return int(value)
    return None


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
    if not server_url:
        fail("no server URL: pass --server-url or set FARMSTEAD_SERVER_URL", code=2)
    if task_instance_id is None and (array_id is None or batch is None):
        fail("give --task-instance-id, or --array-id with --batch", code=2)
    if step is None and task_instance_id is None:
        step = _step()
        if step is None:
            fail(
                "no array step: set SLURM_ARRAY_TASK_ID or FARMSTEAD_ARRAY_STEP_ID, or pass --step",
                code=2,
            )
    if distributor_id is None and "SLURM_JOB_ID" in os.environ:
        distributor_id = os.environ.get("SLURM_ARRAY_JOB_ID", os.environ["SLURM_JOB_ID"])
        if "SLURM_ARRAY_TASK_ID" in os.environ:
            distributor_id += f"_{os.environ['SLURM_ARRAY_TASK_ID']}"
    config = RunnerConfig(
        heartbeat_interval=heartbeat_interval,
        report_increment=report_increment,
        executor_triage=executor_triage,
    )

    async def go() -> int:
        # a worker token scoped to its workflow, given by whoever launched this worker
        api = Api(server_url, retry_limit=300, token=os.environ.get("FARMSTEAD_TOKEN"))
        try:
            ti = task_instance_id
            if ti is None:
                assert array_id is not None and batch is not None and step is not None
                ti = await api.array_instance(array_id, batch, step)
            outcome = await Runner(api, config).run(ti, distributor_id)
            return outcome.exit_code
        finally:
            await api.aclose()

    try:
        code = asyncio.run(go())
    except ClientError as exc:
        fail(f"the server refused: {exc}", code=2)
    except ServerUnavailable as exc:
        fail(str(exc), code=2)
    raise typer.Exit(code)


if __name__ == "__main__":  # `python -m farmstead.cli.worker run`: a cluster job's cheap start
    app()
