"""One task instance in this process: what `farmstead worker run` does, and a cluster job's cheap
entry point. The Slurm executor's elements start as `python -m farmstead.client.job …`, which
skips the CLI's own imports (typer, rich): a job's start is paid for by a compute node's CPU
once per element."""

import argparse
import asyncio
import logging
import os
import sys

from farmstead.client.api import Api, ClientError, ServerUnavailable
from farmstead.client.runner import Runner, RunnerConfig

STEP_VARIABLES = ("FARMSTEAD_ARRAY_STEP_ID", "SLURM_ARRAY_TASK_ID")


class UsageError(Exception):
    """Bad configuration or a refused request: nothing ran (exit `code`)."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def step_from_env() -> int | None:
    """The array step from the environment (FARMSTEAD_ARRAY_STEP_ID, SLURM_ARRAY_TASK_ID)."""
    for name in STEP_VARIABLES:
        if (value := os.environ.get(name)) is not None:
            if not value.isdigit():
                raise UsageError(f"{name}={value!r} is not a step number", code=1)
            return int(value)
    return None


def distributor_id_from_env() -> str | None:
    """Slurm's id of this job: `ARRAYJOB_STEP` for an array element, else the job id."""
    if "SLURM_JOB_ID" not in os.environ:
        return None
    job = os.environ.get("SLURM_ARRAY_JOB_ID", os.environ["SLURM_JOB_ID"])
    step = os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{job}_{step}" if step is not None else job


def run_one(
    server_url: str | None,
    config: RunnerConfig,
    task_instance_id: int | None = None,
    array_id: int | None = None,
    batch: int | None = None,
    step: int | None = None,
    distributor_id: str | None = None,
) -> int:
    """Run one instance (by id, or as step `step` of an array batch) to its end; the exit code
    (the command's). Raises UsageError when nothing could run."""
    if not server_url:
        raise UsageError("no server URL: pass --server-url or set FARMSTEAD_SERVER_URL")
    if task_instance_id is None and (array_id is None or batch is None):
        raise UsageError("give --task-instance-id, or --array-id with --batch")
    if step is None and task_instance_id is None:
        step = step_from_env()
        if step is None:
            raise UsageError(
                "no array step: set SLURM_ARRAY_TASK_ID or FARMSTEAD_ARRAY_STEP_ID, or pass --step"
            )
    if distributor_id is None:
        distributor_id = distributor_id_from_env()

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
        return asyncio.run(go())
    except ClientError as exc:
        raise UsageError(f"the server refused: {exc}") from None
    except ServerUnavailable as exc:
        raise UsageError(str(exc)) from None


def main(argv: list[str] | None = None) -> int:
    """`python -m farmstead.client.job`: the options of `farmstead worker run` that a cluster
    executor passes (see `farmstead worker run --help` for each)."""
    parser = argparse.ArgumentParser(prog="python -m farmstead.client.job")
    parser.add_argument("--server-url", default=os.environ.get("FARMSTEAD_SERVER_URL"))
    parser.add_argument("--task-instance-id", type=int)
    parser.add_argument("--array-id", type=int)
    parser.add_argument("--batch", type=int)
    parser.add_argument("--step", type=int)
    parser.add_argument("--distributor-id")
    parser.add_argument("--heartbeat-interval", type=float, default=30.0)
    parser.add_argument("--report-increment", type=float, default=93.0)
    parser.add_argument("--executor-triage", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="farmstead worker: %(message)s")
    config = RunnerConfig(
        heartbeat_interval=args.heartbeat_interval,
        report_increment=args.report_increment,
        executor_triage=args.executor_triage,
    )
    try:
        return run_one(
            args.server_url,
            config,
            args.task_instance_id,
            args.array_id,
            args.batch,
            args.step,
            args.distributor_id,
        )
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code


if __name__ == "__main__":
    sys.exit(main())
