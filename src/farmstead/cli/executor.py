"""`farmstead executor slurm`: submit a server's queued work to Slurm, from a login node."""

import asyncio
import logging
import os
import shutil
import signal
from typing import Annotated

import typer

from farmstead import credentials
from farmstead.cli.common import fail
from farmstead.client.slurm import BadOption, options_for
from farmstead.client.slurm_executor import SlurmConfig, SlurmExecutor

app = typer.Typer(help="Run a server's queued work on a cluster.", no_args_is_help=True)


@app.command("slurm")
def slurm(
    server_url: Annotated[
        str,
        typer.Option(envvar="FARMSTEAD_SERVER_URL", help="the farmstead server"),
    ] = "http://127.0.0.1:8000",
    workflow_id: Annotated[int | None, typer.Option(help="only this workflow's work")] = None,
    max_jobs: Annotated[
        int, typer.Option(min=1, max=100_000, help="array elements in Slurm, not yet settled")
    ] = 10_000,
    at_once: Annotated[
        int | None, typer.Option(min=1, help="each array's elements running at once (%N)")
    ] = None,
    sbatch_option: Annotated[
        list[str] | None,
        typer.Option(
            help="an sbatch option for every job, e.g. --sbatch-option=--account=lab "
            "(repeat it; a task's own options come after)"
        ),
    ] = None,
    output: Annotated[
        str,
        typer.Option(help="where the elements' worker messages go (sbatch --output pattern)"),
    ] = "/dev/null",
    heartbeat_interval: Annotated[float, typer.Option(min=0.1)] = 30.0,
    report_increment: Annotated[float, typer.Option(min=1.0)] = 93.0,
    poll_interval: Annotated[float, typer.Option(min=0.05, help="seconds between claims")] = 1.0,
    status_interval: Annotated[
        float, typer.Option(min=0.2, help="seconds between checks of Slurm and the server")
    ] = 2.0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="log each submission")] = False,
) -> None:
    """Claim QUEUED task instances and submit them as Slurm job arrays; scancel what is
    cancelled; say from Slurm's records why a job ended when its worker could not.

    Runs on a machine where sbatch works (a login node); the server may be elsewhere. Needs an
    operator (or admin) token in FARMSTEAD_TOKEN: it makes worker tokens scoped to each
    workflow for the jobs. Ctrl-C stops it; submitted jobs go on and report to the server."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s farmstead slurm executor: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not one line per request
    if shutil.which("sbatch") is None:
        fail("sbatch not found: run this where Slurm's commands work (e.g. a login node)", 2)
    defaults = tuple(sbatch_option or ())
    try:
        options_for(None, defaults)
    except BadOption as exc:
        fail(str(exc), 2)
    token = os.environ.get("FARMSTEAD_TOKEN") or credentials.token_for(server_url)
    config = SlurmConfig(
        max_jobs=max_jobs,
        at_once=at_once,
        options=defaults,
        output=output,
        heartbeat_interval=heartbeat_interval,
        report_increment=report_increment,
    )
    executor = SlurmExecutor(
        server_url,
        config,
        token=token,
        workflow_id=workflow_id,
        poll_interval=poll_interval,
        status_interval=status_interval,
    )

    async def go() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await executor.run(stop)

    asyncio.run(go())
