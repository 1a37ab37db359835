"""Slurm's command-line tools, as the Slurm executor uses them: options from a task's resources
(validated before anything is submitted), `sbatch` of job arrays, `scancel`, and the state of
array elements from `squeue` (and `sacct` when accounting is there).

Every call is a subprocess with a time limit; a failure says whether it is worth retrying
(`SlurmUnavailable`: the controller is down or busy) or not (`SlurmRefused`: sbatch will refuse
the same request again).
"""

import asyncio
import math
import os
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: sbatch options the executor sets itself: a task may not give them
RESERVED = frozenset(
    {"array", "wrap", "job-name", "J", "export", "export-file", "parsable", "test-only", "output",
     "o", "error", "e", "chdir", "D", "wait", "W", "hold", "H", "dependency", "d"}
)  # fmt: skip
#: a long option as Slurm spells them: `--name` or `--name=value`
_OPTION = re.compile(r"--([a-z][a-z0-9-]*)(=.*)?\Z", re.DOTALL)
#: a partition, account or QOS name
_NAME = re.compile(r"[A-Za-z0-9_.+-]{1,128}\Z")
#: what Slurm says when the controller cannot take the request now (worth retrying)
_TRANSIENT = (
    "unable to contact slurm controller",
    "socket timed out",
    "connection refused",
    "temporarily unavailable",
    "try again",
    "zero bytes were transmitted",
    "slurm_persist_conn",
    "connection reset",
    "communication connection failure",
    "timed out",
)
#: Slurm states of an element that has ended
ENDED = frozenset(
    {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED",
     "BOOT_FAIL", "DEADLINE", "REVOKED", "SPECIAL_EXIT"}
)  # fmt: skip
CUSTOM_KEYS = ("slurm_partition", "slurm_account", "slurm_qos", "slurm_options")
CALL_TIMEOUT = 60.0


class SlurmError(Exception):
    """A Slurm command failed."""


class SlurmUnavailable(SlurmError):
    """The controller could not be reached or was busy: try again later."""


class SlurmRefused(SlurmError):
    """Slurm refused the request (bad option, unknown partition…): it will refuse it again."""


class BadOption(ValueError):
    """A task's resources cannot be turned into valid Slurm options."""


@dataclass(frozen=True)
class Element:
    """What Slurm says of one array element."""

    state: str  # COMPLETED, RUNNING, TIMEOUT, … (a CANCELLED state loses Slurm's " by N")
    reason: str = ""
    exit_code: str = ""

    @property
    def ended(self) -> bool:
        return self.state in ENDED


def _mebibytes(gigabytes: float) -> int:
    return max(1, math.ceil(gigabytes * 1024))


def _minutes(seconds: float) -> int:
    """Slurm's time limits are whole minutes: the runtime rounded up."""
    return max(1, math.ceil(seconds / 60))


def options_for(resources: Mapping[str, Any] | None, defaults: Sequence[str] = ()) -> list[str]:
    """The sbatch options of a task's resources, after the executor's `defaults` (so a task's
    own options win): memory (GB) → --mem, runtime (s) → --time (whole minutes), cores →
    --cpus-per-task, queue → --partition, and in `custom`: slurm_partition, slurm_account,
    slurm_qos, slurm_options (more long options, as one string). Raises BadOption."""
    res = dict(resources or {})
    custom = res.get("custom") or {}
    out = [_checked(o, "an executor option") for o in defaults]
    if (mem := res.get("memory")) is not None:
        out.append(f"--mem={_mebibytes(float(mem))}M")
    if (runtime := res.get("runtime")) is not None:
        out.append(f"--time={_minutes(float(runtime))}")
    if (cores := res.get("cores")) is not None:
        out.append(f"--cpus-per-task={int(cores)}")
    partition = custom.get("slurm_partition", res.get("queue"))
    for option, value in (
        ("partition", partition),
        ("account", custom.get("slurm_account")),
        ("qos", custom.get("slurm_qos")),
    ):
        if value is None:
            continue
        if not isinstance(value, str) or not _NAME.match(value):
            raise BadOption(f"{option} {value!r} is not a Slurm {option} name")
        out.append(f"--{option}={value}")
    extra = custom.get("slurm_options")
    if extra is not None:
        if not isinstance(extra, str):
            raise BadOption("slurm_options must be a string of sbatch options")
        try:
            words = shlex.split(extra)
        except ValueError as exc:
            raise BadOption(f"slurm_options {extra!r}: {exc}") from None
        out += [_checked(w, "slurm_options") for w in words]
    return out


def _checked(option: str, where: str) -> str:
    """A long option of sbatch that the executor does not set itself; else BadOption."""
    found = _OPTION.match(option)
    if found is None:
        raise BadOption(
            f"{where}: {option!r} is not a long option (write --name=value, e.g. --constraint=a100)"
        )
    if found.group(1) in RESERVED:
        raise BadOption(f"{where}: --{found.group(1)} is set by the executor")
    if "\n" in option or "\0" in option:
        raise BadOption(f"{where}: {option!r} holds a newline")
    return option


def _transient(text: str) -> bool:
    low = text.lower()
    return any(marker in low for marker in _TRANSIENT)


async def run(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = CALL_TIMEOUT
) -> str:
    """Run a Slurm command; its stdout. Raises SlurmUnavailable (retry) or SlurmRefused."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=dict(env) if env is not None else None,
        )
    except FileNotFoundError:
        raise SlurmRefused(f"{args[0]} not found: is Slurm's client installed here?") from None
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise SlurmUnavailable(f"{args[0]} gave no answer within {timeout:g} s") from None
    text = err.decode(errors="replace").strip()
    if proc.returncode != 0:
        message = f"{args[0]}: {text or f'exit code {proc.returncode}'}"
        raise (SlurmUnavailable if _transient(text) else SlurmRefused)(message)
    return out.decode(errors="replace")


def steps_spec(steps: Sequence[int], at_once: int | None) -> str:
    """`--array` of these steps, ranges joined (`0-9,12,15-20`), with `%at_once`."""
    parts: list[str] = []
    ordered = sorted(set(steps))
    start = prev = ordered[0]
    for s in [*ordered[1:], None]:
        if s is not None and s == prev + 1:
            prev = s
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if s is not None:
            start = prev = s
    spec = ",".join(parts)
    return f"{spec}%{at_once}" if at_once else spec


async def submit(
    name: str,
    steps: Sequence[int],
    at_once: int | None,
    options: Sequence[str],
    command: str,
    output: str,
    env: Mapping[str, str],
) -> str:
    """`sbatch` one job array running `command` for each of `steps`; the array's job id."""
    out = await run(
        "sbatch",
        "--parsable",
        f"--job-name={name}",
        f"--array={steps_spec(steps, at_once)}",
        f"--output={output}",
        *options,
        f"--wrap={command}",
        env=env,
    )
    job_id = out.strip().split(";")[0]
    if not job_id.isdigit():
        raise SlurmUnavailable(f"sbatch answered {out.strip()!r}, not a job id")
    return job_id


async def check(options: Sequence[str], env: Mapping[str, str]) -> None:
    """`sbatch --test-only`: would the controller take a job with these options? Raises."""
    await run("sbatch", "--test-only", *options, "--wrap=true", env=env)


async def settling(env: Mapping[str, str]) -> bool:
    """Whether some node is not answering (`*`) or unknown to the controller (`unk`), as
    after a controller restart before the nodes register again: a refusal such as "Requested
    node configuration is not available" may then pass in a moment."""
    try:
        out = await run("sinfo", "--noheader", "--format=%t", env=env)
    except SlurmError:
        return True
    states = out.split()
    return not states or any(s.endswith("*") or s.startswith("unk") for s in states)


async def find(name: str, env: Mapping[str, str]) -> str | None:
    """The job id of an array submitted under `name` (after an sbatch whose answer was lost)."""
    out = await run("squeue", "--noheader", f"--name={name}", "--format=%F", env=env)
    ids = {line.strip() for line in out.splitlines() if line.strip().isdigit()}
    return min(ids) if ids else None


async def cancel(ids: Sequence[str], env: Mapping[str, str]) -> None:
    """`scancel` of these jobs or elements (`123_4`)."""
    if ids:
        await run("scancel", *ids, env=env)


async def elements(job_ids: Sequence[str], env: Mapping[str, str]) -> dict[str, Element]:
    """The state of every element Slurm still knows of these array jobs, by `JOB_STEP`.

    `squeue --states=all` keeps a finished job for MinJobAge seconds; `sacct` (when accounting
    is on) keeps it longer and is read for the elements squeue no longer lists."""
    if not job_ids:
        return {}
    found: dict[str, Element] = {}
    try:
        out = await run(
            "squeue",
            "--noheader",
            "--array",
            "--states=all",
            f"--jobs={','.join(job_ids)}",
            "--format=%i|%T|%r",
            env=env,
        )
    except SlurmRefused as exc:  # every one of them is gone: "Invalid job id specified"
        if "invalid job id" not in str(exc).lower():
            raise
        out = ""
    for line in out.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3:
            found[parts[0]] = Element(parts[1], parts[2])
    gone = [j for j in job_ids if not any(k.split("_")[0] == j for k in found)]
    if gone:
        found |= await _accounted(gone, env)
    return found


async def _accounted(job_ids: Sequence[str], env: Mapping[str, str]) -> dict[str, Element]:
    """Elements of these jobs in Slurm's accounting (none when accounting is off)."""
    try:
        out = await run(
            "sacct",
            "--noheader",
            "--parsable2",
            "--allocations",
            f"--jobs={','.join(job_ids)}",
            "--format=JobID,State,ExitCode",
            env=env,
        )
    except SlurmRefused:  # "Slurm accounting storage is disabled"
        return {}
    found = {}
    for line in out.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3 and "_" in parts[0] and "[" not in parts[0]:
            found[parts[0]] = Element(parts[1].split()[0], "", parts[2])
    return found


def environment(extra: Mapping[str, str]) -> dict[str, str]:
    """This process's environment (sbatch passes it on to the job) with `extra`."""
    return {**os.environ, **extra}
