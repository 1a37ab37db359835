"""farmstead dashboard benchmark (issue 14): the pages with 1,000,000 tasks in one workflow.

Per database: a fresh database and one `farmstead serve` process (auth off, reconciler off);
one workflow of `--tasks` (1,000,000) tasks submitted as an array; `--finish` (2,000) of them
claimed and finished by simulated workers, one in ten failing (so the chart, the failure groups
and a failed-task filter have something to show); then each page fetched `--repeat` (20) times
in turn, reporting the median and the worst time of each, with `/health` as the floor (the
same server, no database, no template).

    .venv/bin/python bench/bench_dashboard.py                    # both databases (~3 min)
    .venv/bin/python bench/bench_dashboard.py --db sqlite --tasks 100000
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from _harness import Server, fresh_database
from bench_events import Connection


async def _finish(server: Server, count: int, workers: int = 16) -> None:
    """Claim and end `count` tasks (every tenth with an error that ends it)."""
    left = [count]

    async def worker() -> None:
        async with Connection(server.host, server.port) as conn:
            while left[0] > 0:
                left[0] -= 1
                status, answer = await conn.post("/v3/claims", {"limit": 1})
                got = answer.get("data") if status == 200 else None
                if not got:
                    return
                ti = got[0]["task_instance_id"]
                running = {"nodename": f"node{ti % 7}", "next_report_increment": 600}
                await conn.post(f"/v3/fsm/task_instance/{ti}/log_running", running)
                if ti % 10 == 0:
                    error = {"error_state": "F", "error_message": f"killed for memory ({ti % 3})"}
                    await conn.post(f"/v3/fsm/task_instance/{ti}/log_error_worker_node", error)
                else:
                    await conn.post(f"/v3/fsm/task_instance/{ti}/log_done", {"wallclock": 0.5})

    await asyncio.gather(*(worker() for _ in range(workers)))


def run(backend: str, args: argparse.Namespace, work: Path) -> list[tuple[str, float, float]]:
    with fresh_database(backend, keep=False) as url:
        env = {"reconciler_enabled": "false"}
        server = Server(url, workers=1, log_path=work / f"dash-{backend}.log", env=env).start()
        try:
            with httpx.Client(base_url=server.url, timeout=600) as c:
                t0 = time.perf_counter()
                array = {"command": "true", "first": 0, "last": args.tasks - 1}
                r = c.post("/v3/workflows", json={"name": "million", "array": array})
                r.raise_for_status()
                wf = r.json()["id"]
                print(f"[{backend}] submitted {args.tasks:,} tasks in "
                      f"{time.perf_counter() - t0:.1f} s")  # fmt: skip
                asyncio.run(_finish(server, args.finish))
                task = c.get(f"/v3/workflows/{wf}/tasks", params={"limit": 1}).json()["data"][0]
                pages = [
                    ("/health (floor)", "/health"),
                    ("workflows", "/ui/"),
                    ("a workflow", f"/ui/workflows/{wf}"),
                    ("a workflow, live fragment", f"/ui/workflows/{wf}?fragment=1"),
                    ("a workflow, failed tasks", f"/ui/workflows/{wf}?status=ERROR_FATAL"),
                    ("a workflow, page 200", f"/ui/workflows/{wf}?after={task['id'] + 10_000}"),
                    ("a task", f"/ui/tasks/{task['id']}"),
                    ("the farm", "/ui/farm"),
                ]
                times: dict[str, list[float]] = {name: [] for name, _ in pages}
                for _ in range(args.repeat):  # in turn, so drift touches every page alike
                    for name, path in pages:
                        t = time.perf_counter()
                        answer = c.get(path)
                        times[name].append(time.perf_counter() - t)
                        if answer.status_code != 200:
                            raise RuntimeError(f"{path}: {answer.status_code} {answer.text[:200]}")
                return [(n, statistics.median(v), max(v)) for n, v in times.items()]
        finally:
            server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    ap.add_argument("--tasks", type=int, default=1_000_000)
    ap.add_argument("--finish", type=int, default=2_000)
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    backends = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for backend in backends:
            results[backend] = run(backend, args, Path(tmp))
    print()
    print(f"| page ({args.tasks:,} tasks in the workflow), median / worst of {args.repeat} | "
          + " | ".join(backends) + " |")  # fmt: skip
    print("|---|" + "---|" * len(backends))
    for i, (name, _, _) in enumerate(results[backends[0]]):
        cells = [f"{results[b][i][1] * 1e3:.1f} / {results[b][i][2] * 1e3:.1f} ms"
                 for b in backends]  # fmt: skip
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
