"""Slurm executor benchmark: N tasks of `true` through farmstead and Slurm, against plain sbatch.

One private single-node Slurm cluster (`tests/slurm_cluster.py`, `--cpus` CPUs advertised, 16 by
default whatever the machine has) serves the whole run. Each round runs, in alternating order:

- plain: `sbatch --parsable --array=0-(N-1) --output=/dev/null --wrap=true`, timed from just
  before the sbatch until `squeue --jobs=J --states=PENDING,RUNNING,COMPLETING,CONFIGURING`
  lists nothing (polled every 0.2 s): Slurm's own time for the array;
- farmstead: a fresh database, `farmstead serve` (one process, auth off) and
  `farmstead executor slurm --poll-interval 0.2 --status-interval 1 --output /dev/null`;
  the clock runs from just before
  `POST /v3/workflows` of an N-task array of `true` until `GET /v3/workflows/{id}` answers
  DONE (polled every 0.2 s); when the last element left squeue is recorded too. Each element
  runs `python -m farmstead.client.job` (`farmstead worker run` without the CLI's imports),
  which reports running and done to the server.

Target: farmstead adds under 10 % to Slurm's own time (medians). Each run also prints the CPU
it used: the whole machine's (/proc/stat), the server's, PostgreSQL's, the executor's (with the
sbatch/squeue it runs), Slurm's daemons' and this script's (with its squeue polls); the rest of
the machine's busy time is the jobs themselves (slurmstepd, the batch shell, `true` or the
worker) plus anything else running on the machine.

    .venv/bin/python bench/bench_slurm.py                           # 1,000 tasks, 3 rounds, SQLite
    .venv/bin/python bench/bench_slurm.py --tasks 100 --rounds 1    # smoke run (~1 min)
    .venv/bin/python bench/bench_slurm.py --db postgresql --rounds 2

Needs root and Slurm 22.05 + munge installed (`scripts/slurm-cluster install`).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from _harness import (
    ROOT,
    Server,
    _busy,
    _postgres_pids,
    cpu_of,
    cpu_used,
    fresh_database,
    stop_process,
    wait_quiet,
)

sys.path.insert(0, str(ROOT / "tests"))
from slurm_cluster import SlurmCluster

TARGET = 0.10  # farmstead may add under 10 % to Slurm's own time
POLL = 0.2
ACTIVE = "PENDING,RUNNING,COMPLETING,CONFIGURING"
SUBMITTED = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*submitted (\d+) instance\(s\) as Slurm job (\d+)"
)


# ---- Slurm --------------------------------------------------------------------------------------


def squeue(cluster: SlurmCluster, job: str | None = None) -> list[str]:
    """The (array) job ids of the elements squeue lists as not yet ended (one per element
    running, one per pending array chunk); only `job`'s if given."""
    args = ["squeue", "--noheader", f"--states={ACTIVE}", "--format=%F"]
    if job is not None:
        args.append(f"--jobs={job}")
    result = cluster.run(*args, timeout=60)
    if result.returncode != 0:
        if "Invalid job id" in result.stderr:  # purged: long gone
            return []
        raise RuntimeError(f"squeue failed: {result.stderr.strip()}")
    return result.stdout.split()


def ended_states(cluster: SlurmCluster, job: str) -> dict[str, int]:
    """How the elements of `job` ended, by state (squeue keeps them for MinJobAge, 300 s)."""
    out = cluster.run(
        "squeue",
        "--noheader",
        "--states=all",
        f"--jobs={job}",
        "--format=%T",
        "--array",
        timeout=60,
    ).stdout.split()
    counts: dict[str, int] = {}
    for state in out:
        counts[state] = counts.get(state, 0) + 1
    return counts


def daemon_pids(cluster: SlurmCluster) -> list[int]:
    """munged, slurmctld (with its slurmscriptd) and slurmd of the bench's own cluster."""
    pids = []
    for pid_file in ("munge/munged.pid", "run/slurmctld.pid", "run/slurmd.pid"):
        with contextlib.suppress(OSError, ValueError, IndexError, psutil.Error):
            pid = int((cluster.directory / pid_file).read_text().split()[0])
            pids += [pid] + [c.pid for c in psutil.Process(pid).children()]
    return pids


# ---- CPU ---------------------------------------------------------------------------------------


def with_children(pid: int | None) -> float:
    """CPU seconds of a process and of its children it has reaped (the executor's sbatch and
    squeue runs)."""
    if pid is None:
        return 0.0
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return t.user + t.system + t.children_user + t.children_system


def own_cpu() -> float:
    """This script's CPU seconds, with its reaped children (the squeue polls, sbatch)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class Meter:
    """CPU seconds used during a run: whole machine, server, PostgreSQL, executor, Slurm's
    daemons, this script; "jobs" is the rest of the machine's busy time."""

    def __init__(
        self,
        cluster: SlurmCluster,
        server: Server | None = None,
        executor: subprocess.Popen[bytes] | None = None,
    ) -> None:
        self.cluster, self.server, self.executor = cluster, server, executor
        self.cpu: dict[str, float] = {}

    def __enter__(self) -> Meter:
        self.slurm_pids = daemon_pids(self.cluster)
        self.server_pids = self.server.pids() if self.server else []
        database = self.server.db_url.rsplit("/", 1)[-1] if self.server else ""
        postgres = self.server is not None and self.server.db_url.startswith("postgresql")
        self.pg_pids = _postgres_pids(database) if postgres else []
        self.exe_pid = self.executor.pid if self.executor else None
        self.t0 = time.perf_counter()
        self.slurm0, self.server0 = cpu_of(self.slurm_pids), cpu_of(self.server_pids)
        self.pg0, self.exe0 = cpu_of(self.pg_pids), with_children(self.exe_pid)
        self.own0, self.machine0 = own_cpu(), _busy(psutil.cpu_times())
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.t0
        cpu = self.cpu
        cpu["machine"] = _busy(psutil.cpu_times()) - self.machine0
        cpu["server"] = cpu_used(self.server0, cpu_of(self.server_pids))
        cpu["postgres"] = cpu_used(self.pg0, cpu_of(self.pg_pids))
        cpu["executor"] = with_children(self.exe_pid) - self.exe0
        cpu["slurm daemons"] = cpu_used(self.slurm0, cpu_of(self.slurm_pids))
        cpu["bench"] = own_cpu() - self.own0
        cpu["jobs"] = max(0.0, cpu["machine"] - sum(v for k, v in cpu.items() if k != "machine"))

    def text(self, tasks: int) -> str:
        parts = [f"{k} {v:.1f}" for k, v in self.cpu.items() if k != "machine" and v >= 0.05]
        return (
            f"CPU s: machine {self.cpu['machine']:.1f} "
            f"({self.cpu['machine'] / self.wall:.2f} of {os.cpu_count()} cores busy, "
            f"{1000 * self.cpu['machine'] / tasks:.0f} ms/task): " + ", ".join(parts)
        )


# ---- the two runs ------------------------------------------------------------------------------


def plain_run(cluster: SlurmCluster, tasks: int, timeout: float) -> dict[str, Any]:
    """One `sbatch --array` of `true`, until squeue lists none of its elements."""
    try:
        with Meter(cluster) as meter:
            t0 = time.perf_counter()
            answer = cluster.run(
                "sbatch",
                "--parsable",
                f"--array=0-{tasks - 1}",
                "--output=/dev/null",
                "--wrap=true",
                check=True,
            )
            sbatch = time.perf_counter() - t0
            job = answer.stdout.strip().split(";")[0]
            while squeue(cluster, job):
                if time.perf_counter() - t0 > timeout:
                    raise RuntimeError(f"plain array {job} not done within {timeout:.0f} s")
                time.sleep(POLL)
            seconds = time.perf_counter() - t0
        return {
            "seconds": seconds,
            "sbatch": sbatch,
            "states": ended_states(cluster, job),
            "meter": meter,
        }
    finally:
        cluster.cancel_all()


def start_executor(
    cluster: SlurmCluster, url: str, work: Path, log: Path, report_increment: float
) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in cluster.client_env().items() if not k.startswith("FARMSTEAD_")}
    # auth is off on the bench server: no token, and none looked up in the user's own file
    env |= {
        "FARMSTEAD_CREDENTIALS_FILE": str(work / "no-credentials.json"),
        "PYTHONUNBUFFERED": "1",
    }
    cmd = [
        sys.executable,
        "-m",
        "farmstead.cli.main",
        "executor",
        "slurm",
        "--server-url",
        url,
        "--poll-interval",
        str(POLL),
        "--status-interval",
        "1",
        "--output",
        "/dev/null",
        "--report-increment",
        f"{report_increment:g}",
        "-v",
    ]
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=work)


def submissions(log: Path, since: float) -> list[tuple[float, int]]:
    """(seconds after `since`, elements) of each sbatch the executor logged."""
    out = []
    for line in log.read_text(errors="replace").splitlines():
        m = SUBMITTED.match(line)
        if m:
            at = datetime.datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            out.append((at - since, int(m[2])))
    return out


def farmstead_run(
    cluster: SlurmCluster, backend: str, args: argparse.Namespace, work: Path, tag: str
) -> dict[str, Any]:
    """A fresh server and executor; one N-task array of `true`, until DONE and out of squeue."""
    timeout = max(600.0, args.tasks * 1.0)
    with fresh_database(backend, args.keep) as url:
        server = Server(url, workers=1, log_path=work / f"server-{tag}.log")
        executor = None
        try:
            server.start()
            log = work / f"executor-{tag}.log"
            executor = start_executor(cluster, server.url, work, log, args.report_increment)
            time.sleep(2.0)  # it imports, registers as an agent and starts claiming
            if executor.poll() is not None:
                raise RuntimeError(f"the executor exited: see {log}")
            load = wait_quiet(args.wait_quiet)
            return {
                **_timed_farmstead(cluster, server, executor, args.tasks, timeout),
                "load": load,
                "log": log,
            }
        finally:
            stop_process(executor)
            server.stop()
            cluster.cancel_all()


def _timed_farmstead(
    cluster: SlurmCluster,
    server: Server,
    executor: subprocess.Popen[bytes],
    tasks: int,
    timeout: float,
) -> dict[str, Any]:
    body = {"name": "bench", "array": {"command": "true", "first": 0, "last": tasks - 1}}
    done = first_in = out_of = None
    jobs: set[str] = set()
    counts: dict[str, int] = {}
    with (
        Meter(cluster, server, executor) as meter,
        httpx.Client(base_url=server.url, timeout=60) as http,
    ):
        wall0, t0 = time.time(), time.perf_counter()
        answer = http.post("/v3/workflows", json=body)
        answer.raise_for_status()
        posted = time.perf_counter() - t0
        wf = answer.json()["id"]
        while True:
            if done is None:
                state = http.get(f"/v3/workflows/{wf}").json()
                if state["status_name"] == "DONE":
                    done, counts = time.perf_counter() - t0, state["counts"]
                elif state["status"] != "R":
                    raise RuntimeError(
                        f"workflow {wf} ended {state['status_name']}: {state['counts']}"
                    )
            listed = squeue(cluster)
            now = time.perf_counter() - t0
            if listed:
                jobs |= set(listed)
                first_in = now if first_in is None else first_in
                out_of = None
            elif first_in is not None and out_of is None:
                out_of = now
            if done is not None and out_of is not None:
                break
            if now > timeout:
                raise RuntimeError(f"workflow {wf} not DONE within {timeout:.0f} s")
            if executor.poll() is not None:
                raise RuntimeError("the executor exited during the run")
            time.sleep(POLL)
    return {
        "seconds": done,
        "out_of_squeue": out_of,
        "first_in_squeue": first_in,
        "post": posted,
        "counts": counts,
        "jobs": len(jobs),
        "meter": meter,
        "wall0": wall0,
    }


# ---- output ------------------------------------------------------------------------------------


def verdict(plain: float, farm: float) -> str:
    added = farm / plain - 1
    met = "met" if added < TARGET else "missed"
    return (
        f"farmstead / plain = {farm / plain:.2f}, farmstead adds {100 * added:+.1f} % "
        f"(target < {100 * TARGET:.0f} %: {met})"
    )


def report_plain(backend: str, r: int, res: dict[str, Any], tasks: int) -> None:
    m = res["meter"]
    print(
        f"[{backend}] round {r}, plain Slurm: {res['seconds']:.2f} s "
        f"({tasks / res['seconds']:.1f} tasks/s), sbatch answered in {res['sbatch']:.2f} s, "
        f"elements ended {res['states']}\n    {m.text(tasks)}",
        flush=True,
    )


def report_farmstead(backend: str, r: int, res: dict[str, Any], tasks: int) -> None:
    m = res["meter"]
    subs = submissions(res["log"], res["wall0"])
    when = (
        (
            f"{len(subs)} sbatch of {sum(n for _, n in subs)} elements, first at "
            f"{subs[0][0]:.2f} s, last at {subs[-1][0]:.2f} s"
        )
        if subs
        else "no sbatch logged"
    )
    print(
        f"[{backend}] round {r}, farmstead: DONE at {res['seconds']:.2f} s "
        f"({tasks / res['seconds']:.1f} tasks/s), last element out of squeue at "
        f"{res['out_of_squeue']:.2f} s; POST answered in {res['post']:.2f} s; executor: "
        f"{when}; first element in squeue at {res['first_in_squeue']:.2f} s; "
        f"counts {res['counts']}\n    {m.text(tasks)}",
        flush=True,
    )
    if res["load"] >= 0.3:
        print(f"    (other programs kept {res['load']:.2f} cores busy before this run)")


def summary(
    rows: list[tuple[str, list[dict[str, Any]], list[dict[str, Any]]]], tasks: int, cpus: int
) -> None:
    print(
        f"\n{tasks} tasks of `true`, one node advertising {cpus} CPUs on a "
        f"{os.cpu_count()}-core machine; medians over the rounds:"
    )
    print(
        "| backend | plain Slurm | farmstead (DONE) | farmstead (out of squeue) | ratio "
        "| farmstead adds | target | tasks/s plain / farmstead |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for backend, plains, farms in rows:
        p = statistics.median(x["seconds"] for x in plains)
        f = statistics.median(x["seconds"] for x in farms)
        q = statistics.median(x["out_of_squeue"] for x in farms)
        added = f / p - 1
        print(
            f"| {backend} | {p:.2f} s | {f:.2f} s | {q:.2f} s | {f / p:.2f} "
            f"| {100 * added:+.1f} % | < {100 * TARGET:.0f} %: "
            f"{'met' if added < TARGET else 'missed'} | {tasks / p:.1f} / {tasks / f:.1f} |"
        )
    print(
        "\nCPU seconds per task (medians): whole machine; of which jobs (slurmstepd, shell, "
        "`true` or the worker), Slurm's daemons, server, PostgreSQL, executor, this script"
    )
    for backend, plains, farms in rows:
        for name, runs in (("plain Slurm", plains), ("farmstead", farms)):
            keys = ["machine", "jobs", "slurm daemons", "server", "postgres", "executor", "bench"]
            cells = [
                f"{k} {1000 * statistics.median(x['meter'].cpu[k] for x in runs) / tasks:.1f}"
                for k in keys
            ]
            print(f"  [{backend}] {name}: " + ", ".join(c + " ms" for c in cells))


# ---- main --------------------------------------------------------------------------------------


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM cleans up as Ctrl-C does


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="sqlite")
    ap.add_argument("--cpus", type=int, default=16, help="CPUs the Slurm node advertises")
    ap.add_argument("--keep", action="store_true", help="keep the databases and the logs")
    ap.add_argument(
        "--wait-quiet",
        type=float,
        default=120.0,
        metavar="S",
        help="wait at most S s before each run for other programs to calm down",
    )
    ap.add_argument(
        "--report-increment",
        type=float,
        default=93.0,
        metavar="S",
        help="the executor's --report-increment (its default, 93 s; the executor pushes on "
        "the deadline of elements Slurm still queues)",
    )
    args = ap.parse_args()
    why = SlurmCluster.available()
    if why is not None:
        sys.exit(f"no Slurm cluster: {why} (scripts/slurm-cluster install)")
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
    signal.signal(signal.SIGTERM, _interrupt)
    backends = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
    base = Path(tempfile.mkdtemp(prefix="farmstead_bench_slurm_"))
    base.chmod(0o755)  # munged wants every directory above its socket searchable by all
    work = base / "logs"
    work.mkdir()
    cluster = None
    try:
        cluster = SlurmCluster.start(base / "slurm", cpus=args.cpus, memory_mb=8000)
        print(
            f"Slurm cluster {cluster.cluster_name}: one node of {args.cpus} CPUs "
            f"({os.cpu_count()} on this machine); {args.tasks} tasks of `true`; executor "
            f"--report-increment {args.report_increment:g}",
            flush=True,
        )
        rows = []
        for backend in backends:
            plains: list[dict[str, Any]] = []
            farms: list[dict[str, Any]] = []
            for r in range(1, args.rounds + 1):
                order = ["plain", "farmstead"] if r % 2 else ["farmstead", "plain"]
                for kind in order:
                    if kind == "plain":
                        load = wait_quiet(args.wait_quiet)
                        res = plain_run(cluster, args.tasks, max(600.0, args.tasks * 1.0))
                        plains.append(res)
                        report_plain(backend, r, res, args.tasks)
                        if load >= 0.3:
                            print(f"    (other programs kept {load:.2f} cores busy before it)")
                    else:
                        res = farmstead_run(cluster, backend, args, work, f"{backend}-{r}")
                        farms.append(res)
                        report_farmstead(backend, r, res, args.tasks)
                print(
                    f"[{backend}] round {r}: "
                    + verdict(plains[-1]["seconds"], farms[-1]["seconds"]),
                    flush=True,
                )
            rows.append((backend, plains, farms))
        summary(rows, args.tasks, args.cpus)
    except KeyboardInterrupt:
        print("\ninterrupted: cleaning up", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not stop the cleanup
        if cluster is not None:
            cluster.stop()
        if args.keep:
            print(f"  kept the logs in {work}")
            shutil.rmtree(base / "slurm", ignore_errors=True)
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
