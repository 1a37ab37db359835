"""Local executor benchmark: wall time from submit to DONE of a 1,000-task array of `true`.

Starts a real `farmstead serve --local-workers 8` (coroutine mode, the default) on a fresh
SQLite or PostgreSQL database, submits the array over HTTP, polls the workflow until it ends.
Target: under 20 s, i.e. 20 ms of farmstead per task.

Usage: python bench/bench_executor.py [--db sqlite|postgresql|both] [--tasks N] [--slots N]
"""

import argparse
import tempfile
import time
from pathlib import Path

import httpx

from _harness import Server, fresh_database

TARGET_S = 20.0


def run(
    backend: str, tasks: int, slots: int, mode: str, work: Path
) -> tuple[float, dict[str, int]]:
    """Seconds from submit to the workflow's end, and its final counts."""
    with fresh_database(backend, keep=False) as url:
        server = Server(url, workers=1, log_path=work / f"executor-{backend}.log",
                        env={"local_workers": slots, "local_mode": mode}).start()
        try:
            with httpx.Client(base_url=server.url, timeout=60) as http:
                start = time.perf_counter()
                wf = http.post(
                    "/v3/workflows",
                    json={
                        "name": "bench",
                        "array": {"command": "true {i}", "first": 0, "last": tasks - 1},
                    },
                ).json()
                while True:
                    state = http.get(f"/v3/workflows/{wf['id']}").json()
                    if state["status"] != "R":
                        return time.perf_counter() - start, state["counts"]
                    time.sleep(0.05)
        finally:
            server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--slots", type=int, default=8, help="--local-workers")
    ap.add_argument("--mode", choices=["coroutine", "subprocess"], default="coroutine")
    args = ap.parse_args()
    backends = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for backend in backends:
            print(
                f"[{backend}] {args.tasks} x `true`, --local-workers {args.slots}, "
                f"{args.mode} mode ...",
                flush=True,
            )
            seconds, counts = run(backend, args.tasks, args.slots, args.mode, Path(tmp))
            print(f"[{backend}]   {seconds:.2f} s, counts {counts}", flush=True)
            rows.append((backend, seconds, counts))
    print(
        f"\n| backend | {args.tasks} tasks of `true`, {args.slots} local workers ({args.mode}) "
        "| per task | target | ratio (>= 1 met) |"
    )
    print("|---|---|---|---|---|")
    for backend, seconds, _counts in rows:
        print(
            f"| {backend} | {seconds:.2f} s | {1000 * seconds / args.tasks:.1f} ms "
            f"| < {TARGET_S:g} s | {TARGET_S / seconds:.2f}x |"
        )


if __name__ == "__main__":
    main()
