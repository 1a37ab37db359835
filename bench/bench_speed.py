"""farmstead speed benchmark (issue 9): worker lifecycle vs a bare FastAPI ceiling and Jobmon.

Interleaved runs; also the array lookup, batch heartbeat, claims among 1M+1M, 1M-task submit.

Lifecycle: 64 simulated workers in one client process; per instance `log_running`, 5 x
`log_report_by`, `log_done`, with a new TCP connection per request (as Jobmon's worker does) and
with keep-alive. Each repetition runs every server configuration once, in the same order
(A B C ... A B C ...), each started fresh on a fresh database; the table gives medians with
min-max over the repetitions, and each rate as a share of the bare-FastAPI median.

    .venv/bin/python bench/bench_speed.py                      # everything (~25 min)
    .venv/bin/python bench/bench_speed.py --quick              # smoke run (a few minutes)
    .venv/bin/python bench/bench_speed.py --only lifecycle --servers bare,sqlite1,pg1
    .venv/bin/python bench/bench_speed.py --only claim,submit --db postgresql --json out.json
    .venv/bin/python bench/bench_speed.py --profile prof       # py-spy farmstead under the load
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from _harness import CpuMeter, pct, profiled, wait_quiet
from _lifecycle import KINDS, lifecycle_process, new_loop_factory, one_at_a_time
from _peers import BarePeer, FarmsteadPeer, load_jobmon_peer
from bench_core import _git_commit, instantiate_and_launch

SERVERS = {  # key: (backend, server processes); the order is the run order in a repetition
    "bare": ("none", 1), "sqlite1": ("sqlite", 1), "sqlite2": ("sqlite", 2),
    "pg1": ("postgresql", 1), "pg2": ("postgresql", 2), "jobmon": ("sqlite", 1),
    # auth on: every request carries a worker token (Authorization: Bearer), or none from the
    # trusted loopback network (as Jobmon's worker sends); not in the default --servers
    "sqlite1auth": ("sqlite", 1), "sqlite1trusted": ("sqlite", 1),
    "pg1auth": ("postgresql", 1), "pg1trusted": ("postgresql", 1),
}
AUTH = {"sqlite1auth": "token", "sqlite1trusted": "trusted", "pg1auth": "token",
        "pg1trusted": "trusted"}
AUTH_TARGET = 0.90  # with a token per request, >= 90 % of the rate with auth off
PHASES = ("lifecycle", "lookup", "heartbeat", "claim", "submit")
MODES = {"new": "new connection per request", "keep": "keep-alive"}
NAMES = {"sqlite": "SQLite", "postgresql": "PostgreSQL", "none": "-"}
SHARE_TARGET = 0.40  # farmstead on one process >= 40 % of the bare-FastAPI rate


def fmt(x: float) -> str:
    if x != x:  # nan
        return "-"
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def spread(values: list[float]) -> str:
    """`median (min-max)`, or the one value."""
    if not values:
        return "-"
    if len(values) == 1:
        return fmt(values[0])
    return f"{fmt(statistics.median(values))} ({fmt(min(values))}-{fmt(max(values))})"


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


class Report:
    """Rows of the final table and the raw results (for --json)."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str, float | None, bool]] = []
        self.raw: dict[str, Any] = {"lifecycle": {}, "figures": {}, "notes": []}

    def row(self, figure: str, backend: str, measured: str, target: str,
            ratio: float | None, failed: int = 0) -> None:
        """`failed`: wrong or failed answers behind the figure (its ratio is then not taken)."""
        if failed:
            measured += f" ({failed:,} failed or wrong answers)"
        self.rows.append((figure, backend, measured, target, ratio, failed > 0))

    def note(self, text: str) -> None:
        print(f"     {text}", flush=True)
        self.raw["notes"].append(text)


def quiet(args: argparse.Namespace, rep: Report) -> None:
    load = wait_quiet(args.wait_quiet, window=2.0)
    rep.raw.setdefault("background", []).append(load)
    if load >= 0.3:
        print(f"     WARNING other programs kept {load:.2f} cores busy before this run")


# ---- the lifecycle load ---------------------------------------------------------------------


def drive(peer: Any, url: str, mode: str, ids: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Run the lifecycle load on `ids` from `args.clients` processes; figures of the run."""
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    procs = args.clients
    start_at = time.time() + 2.0 + 0.5 * procs  # spawned processes import, then start together
    jobs = [{"index": i, "host": host, "port": int(port), "mode": mode, "ids": ids[i::procs],
             "workers": args.concurrency // procs + (i < args.concurrency % procs),
             "seconds": args.seconds, "start_at": start_at, "prefix": peer.prefix,
             "checks": peer.checks,
             "bodies": peer.bodies() if hasattr(peer, "bodies") else None,
             "header": getattr(peer, "header", "")}
            for i in range(procs)]
    with mp.get_context("spawn").Pool(procs) as pool:
        pending = pool.map_async(lifecycle_process, jobs)
        time.sleep(max(0.0, start_at - time.time() - 0.05))
        with CpuMeter(peer, peer.backend) as cpu:
            parts = pending.get()
            cpu.add_client(sum(p["cpu"] for p in parts))
    lat = {k: [x for p in parts for x in p["lat"][k]] for k in KINDS}
    requests = sum(p["requests"] for p in parts)
    seconds = max(p["seconds"] for p in parts)
    errors: Counter[str] = Counter()
    for p in parts:
        errors.update(p["errors"])
    every = [x for v in lat.values() for x in v]
    wall = cpu.wall
    return {
        "rps": sum(p["in_window"] for p in parts) / seconds, "requests": requests,
        "seconds": seconds, "instances": sum(p["instances"] for p in parts),
        "ran_out": seconds < args.seconds - 0.5,
        "p50": pct(every, 50), "p99": pct(every, 99),
        "routes": {k: {"p50": pct(v, 50), "p99": pct(v, 99), "n": len(v)} for k, v in lat.items()},
        "server_ms": 1000 * cpu.cores["server"] * wall / max(requests, 1),
        # the bench database's live backends; exited backends (any database's: other users
        # of the same PostgreSQL too) are kept apart
        "postgres_ms": 1000 * cpu.cores["postgres"] * wall / max(requests, 1),
        "pg_exited_ms": 1000 * cpu.cores["exited"] * wall / max(requests, 1),
        "client_ms": 1000 * sum(p["cpu"] for p in parts) / max(requests, 1),
        "client_cores": sum(p["cpu"] for p in parts) / seconds,
        "cores": cpu.cores, "cpu_text": cpu.text(), "errors": dict(errors),
        "connects": sum(p["connects"] for p in parts),
    }


def show_run(key: str, mode: str, r: dict[str, Any], args: argparse.Namespace,
             rep: Report, peer_log: str = "") -> None:
    routes = "; ".join(f"{k} {v['p50']:.1f}/{v['p99']:.1f}" for k, v in r["routes"].items())
    pg = f" + PostgreSQL {r['postgres_ms']:.2f} ms" if r["postgres_ms"] >= 0.005 else ""
    print(f"    {MODES[mode]:<27} {r['rps']:>8,.0f} req/s  ({r['requests']:,} requests, "
          f"{r['instances']:,} instances in {r['seconds']:.1f} s); p50/p99 ms: {routes}",
          flush=True)
    print(f"      server CPU {r['server_ms']:.2f} ms/request{pg}; load generator "
          f"{r['client_cores']:.2f} cores ({r['client_ms']:.3f} ms/request, {args.clients} "
          f"process(es)); {r['cpu_text']}")
    if r["client_cores"] > 0.75 * args.clients:
        rep.note(f"WARNING {key} {mode}: the load generator kept {r['client_cores']:.2f} cores "
                 f"busy with {args.clients} process(es): it may set the pace (try --clients 2)")
    if r["ran_out"]:
        print(f"      (the {r['instances']:,} prepared instances ran out after "
              f"{r['seconds']:.1f} s: raise --instances)")
    if r["errors"]:
        total = sum(r["errors"].values())
        top = sorted(r["errors"].items(), key=lambda kv: -kv[1])[:4]
        rep.note(f"WARNING {key} {mode}: {total} failed or unexpected answers: "
                 + "; ".join(f"{n} x {e}" for e, n in top)
                 + (f" (server log: {peer_log})" if peer_log else ""))


def make_peer(key: str, args: argparse.Namespace, work: Path) -> tuple[Any | None, str]:
    if key == "bare":
        return BarePeer(work), ""
    if key == "jobmon":
        return load_jobmon_peer(work)
    backend, workers = SERVERS[key]
    return FarmsteadPeer(backend, workers, work, args.keep, auth=AUTH.get(key, "off")), ""


def phase_lifecycle(args: argparse.Namespace, work: Path, rep: Report) -> None:
    runs: dict[str, dict[str, list[dict[str, Any]]]] = rep.raw["lifecycle"]
    names: dict[str, str] = {}
    skipped: set[str] = set()
    for n in range(args.reps):
        for key in args.servers:
            if key in skipped:
                continue
            peer, why = make_peer(key, args, work)
            if peer is None:
                print(f"\n  Jobmon: not available (see bench/README.md): {why}")
                skipped.add(key)
                continue
            names[key] = peer.name
            print(f"\n  [{n + 1}/{args.reps}] {peer.name}", flush=True)
            quiet(args, rep)
            try:
                serve_and_drive(key, peer, n, args, runs, rep)
            except Exception as exc:  # a server that fails (mid-change) loses its run, not all
                rep.note(f"WARNING {peer.name}, repetition {n + 1}: FAILED: "
                         f"{type(exc).__name__}: {str(exc)[-600:]}")
    rep.raw["server_names"] = names
    lifecycle_rows(runs, names, rep)


def serve_and_drive(key: str, peer: Any, n: int, args: argparse.Namespace,
                    runs: dict[str, dict[str, list[dict[str, Any]]]], rep: Report) -> None:
    url = peer.start(None)
    try:
        for mode in args.modes:
            ids = peer.prepare(args.instances)
            prof = args.profile if (n == 0 and mode == "new"
                                    and isinstance(peer, FarmsteadPeer)) else None
            with profiled(peer.server, prof, f"lifecycle-{key}-{mode}") \
                    if prof else contextlib.nullcontext():
                r = drive(peer, url, mode, ids, args)
            runs.setdefault(key, {}).setdefault(mode, []).append(r)
            log = peer.server.log_path if isinstance(peer, FarmsteadPeer) and peer.server else ""
            show_run(key, mode, r, args, rep, str(log))
    finally:
        peer.stop()


def lifecycle_rows(runs: dict[str, dict[str, list[dict[str, Any]]]], names: dict[str, str],
                   rep: Report) -> None:
    for mode in MODES:
        bare = med([r["rps"] for r in runs.get("bare", {}).get(mode, [])])
        pg1 = med([r["rps"] for r in runs.get("pg1", {}).get(mode, [])])
        for key in SERVERS:
            rs = runs.get(key, {}).get(mode)
            if not rs:
                continue
            rates = [r["rps"] for r in rs]
            share = med(rates) / bare if bare == bare and bare else float("nan")
            measured = f"{spread(rates)} req/s" + (
                f" = {share:.2f} of bare" if key != "bare" and share == share else "")
            target, ratio = "ceiling", None
            if key in ("sqlite1", "pg1") and mode == "new":
                target, ratio = f">= {SHARE_TARGET:.2f} of bare", share / SHARE_TARGET
            elif key == "pg2" and mode == "new" and pg1 == pg1:
                target, ratio = f"> PG 1 process ({fmt(pg1)})", med(rates) / pg1
            elif key in AUTH:
                plain = med([r["rps"] for r in runs.get(key[:-len("auth")] if key.endswith(
                    "auth") else key[:-len("trusted")], {}).get(mode, [])])
                if plain == plain and plain:
                    measured += f" = {med(rates) / plain:.2f} of auth off"
                    target, ratio = f">= {AUTH_TARGET:.2f} of auth off", (
                        med(rates) / plain / AUTH_TARGET)
            elif key not in ("bare",):
                target = "-"
            rep.row(f"lifecycle req/s, {MODES[mode]}", names.get(key, key), measured, target,
                    ratio, sum(sum(r["errors"].values()) for r in rs))
    for key in SERVERS:
        rs = runs.get(key, {}).get("new")
        if not rs:
            continue
        cpu = [r["server_ms"] for r in rs]
        pgc = [r["postgres_ms"] for r in rs]
        extra = f" + PostgreSQL {spread(pgc)} ms" if SERVERS[key][0] == "postgresql" else ""
        rep.row("server CPU per request, new connections", names.get(key, key),
                f"{spread(cpu)} ms{extra}", "-", None)
        if key in ("bare", "jobmon"):
            continue
        worst = [max(v["p99"] for v in r["routes"].values()) for r in rs]
        rep.row("worst route p99 under the load, new connections", names.get(key, key),
                f"{spread(worst)} ms", "< 100 ms", 100 / med(worst),
                sum(sum(r["errors"].values()) for r in rs))


# ---- the other figures ----------------------------------------------------------------------


def _direct_sql(db_url: str, statements: list[str]) -> None:
    """Run `statements` on the bench database itself (not through the server)."""
    if db_url.startswith("sqlite"):
        conn = sqlite3.connect(db_url.split(":///", 1)[1], timeout=120)
        try:
            for s in statements:
                conn.execute(s)
            conn.commit()
        finally:
            conn.close()
        return

    async def go() -> None:
        import asyncpg

        conn = await asyncpg.connect("postgresql://" + db_url.split("://", 1)[1])
        try:
            for s in statements:
                await conn.execute(s)
        finally:
            await conn.close()

    asyncio.run(go())


def _timed(calls: list[tuple[str, str, bytes]], url: str,
           check: Any) -> tuple[list[float], Counter[str]]:
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    with asyncio.Runner(loop_factory=new_loop_factory()) as runner:
        return runner.run(one_at_a_time(host, int(port), calls, check))


def _ok(status: int, data: bytes) -> str | None:
    return None if status == 200 else f"HTTP {status} {data[:100]!r}"


class Figures:
    """One backend's figures, on one `farmstead serve --workers 1` and one fresh database."""

    def __init__(self, backend: str, args: argparse.Namespace, work: Path, rep: Report) -> None:
        self.backend, self.args, self.rep = backend, args, rep
        self.out: dict[str, Any] = rep.raw["figures"].setdefault(backend, {})
        self.db = NAMES[backend]
        self.peer = FarmsteadPeer(backend, 1, work, args.keep)

    def run(self) -> None:
        a = self.args
        self.url = self.peer.start(None)
        try:
            client = httpx.Client(base_url=self.url, timeout=3600)
            with client:
                self.client = client
                quiet(a, self.rep)
                first_array, seconds = self.submit("bench-done")
                self.out["submit_s"] = seconds
                if "submit" in a.only:
                    target = 10.0 if self.backend == "postgresql" else 8.0
                    self.rep.row(f"submit a {a.array:,}-task array", self.db, f"{seconds:.2f} s",
                                 f"< {target:g} s", target / seconds)
                if "claim" in a.only:
                    self.seed_done(first_array)
                if {"lookup", "heartbeat", "claim"} & set(a.only):
                    array_id, seconds = self.submit("bench-queued")
                    self.out["submit_beside_s"] = seconds
                    self.first = lookup_sync(client, array_id)
                    self.array_id = array_id
                if "lookup" in a.only:
                    self.lookups()
                if "heartbeat" in a.only:
                    self.heartbeat()
                if "claim" in a.only:
                    self.claims()
        finally:
            self.peer.stop()

    def submit(self, name: str) -> tuple[int, float]:
        t0 = time.perf_counter()
        last = self.args.array - 1
        r = self.client.post("/v3/workflows", json={
            "name": name, "array": {"command": "echo {i}", "first": 0, "last": last}})
        seconds = time.perf_counter() - t0
        if r.status_code >= 300 or r.json()["total"] != self.args.array:
            raise RuntimeError(f"submit: {r.status_code} {r.text[:300]}")
        print(f"  submit {self.args.array:,} tasks ({name}): {seconds:.2f} s", flush=True)
        return int(r.json()["array_ids"][0]), seconds

    def seed_done(self, array_id: int) -> None:
        t0 = time.perf_counter()
        sql = [f"UPDATE task_instance SET status = 'D' WHERE array_id = {array_id}",
               f"UPDATE task SET status = 'D' WHERE array_id = {array_id}"]
        if self.backend == "postgresql":  # as autovacuum would, in time
            sql += ["VACUUM ANALYZE task_instance", "VACUUM ANALYZE task"]
        _direct_sql(self.peer.db_url, sql)
        print(f"  seeded: the first array's {self.args.array:,} instances and tasks set DONE in "
              f"the database directly ({time.perf_counter() - t0:.1f} s"
              + ("; then VACUUM ANALYZE" if self.backend == "postgresql" else "") + ")")

    def lookups(self) -> None:
        rng, bs, n = random.Random(1), self.args.array_batch_size, self.args.lookups
        picks = [rng.randrange(self.args.array) for _ in range(n + 100)]
        calls = [("GET", f"/v3/fsm/get_array_task_instance_id/{self.array_id}/{i // bs + 1}/"
                  f"{i % bs}", b"") for i in picks]
        expected = iter(self.first + i for i in picks)  # the array's instances are contiguous

        def check(status: int, data: bytes) -> str | None:
            want = next(expected)
            if status != 200:
                return _ok(status, data)
            got = json.loads(data)["task_instance_id"]
            return None if got == want else "answered another instance than the element's"

        lat, errors = _timed(calls, self.url, check)
        lat = lat[100:]  # the first 100 warm up
        self.out["lookup_ms"] = lat
        p50, p99 = pct(lat, 50), pct(lat, 99)
        print(f"  array lookup, {n:,} one at a time (keep-alive): p50 {p50:.2f} ms, "
              f"p99 {p99:.2f} ms, max {max(lat):.1f} ms")
        self.rep.row("array lookup p50, one at a time", self.db, f"{p50:.2f} ms", "< 2 ms",
                     2 / p50, sum(errors.values()))
        self.rep.row("array lookup p99, one at a time", self.db, f"{p99:.2f} ms", "-", None)
        self._errors("array lookup", errors)

    def heartbeat(self) -> None:
        n = min(10_000, self.args.array)
        ids, setup = asyncio.run(self._launch(n))
        times = []
        for i in range(self.args.heartbeat_calls + 1):
            t0 = time.perf_counter()
            self.peer.batch_heartbeat(ids)
            if i:
                times.append((time.perf_counter() - t0) * 1000)
        self.out["heartbeat_ms"] = times
        print(f"  batch heartbeat of {n:,} LAUNCHED ids: median {med(times):.1f} ms "
              f"(min {min(times):.1f}, max {max(times):.1f}; launching them took {setup:.1f} s)")
        if self.backend == "postgresql":
            target, ratio = "< 100 ms", 100 / med(times)
        else:
            jm = self.rep.raw["figures"].get("jobmon", {}).get("heartbeat_ms")
            target, ratio = ("< Jobmon's", med(jm) / med(times)) if jm else \
                ("< Jobmon's (not measured)", None)
        self.rep.row(f"batch heartbeat of {n:,} ids (median of {len(times)})", self.db,
                     f"{spread(times)} ms", target, ratio)

    async def _launch(self, n: int) -> tuple[list[int], float]:
        async with httpx.AsyncClient(base_url=self.url, timeout=600) as client:
            return await instantiate_and_launch(client, self.first, n)

    def claims(self) -> None:
        for limit in (1, 100):
            body = json.dumps({"limit": limit}).encode()
            calls = [("POST", "/v3/claims", body)] * (self.args.claims + 5)

            def check(status: int, data: bytes, limit: int = limit) -> str | None:
                if status != 200:
                    return f"HTTP {status} {data[:100]!r}"
                got = len(json.loads(data)["data"])
                return None if got == limit else f"claimed {got}, not {limit}"

            lat, errors = _timed(calls, self.url, check)
            lat = lat[5:]
            self.out[f"claim{limit}_ms"] = lat
            p50, p99 = pct(lat, 50), pct(lat, 99)
            print(f"  claim limit {limit}, {len(lat)} one at a time, {self.args.array:,} QUEUED "
                  f"beside {self.args.array:,} DONE: p50 {p50:.2f} ms, p99 {p99:.2f} ms")
            self.rep.row(f"claim of {limit}, p99 ({self.args.array:,} QUEUED + DONE beside)",
                         self.db, f"{p99:.2f} ms (p50 {p50:.2f})", "< 10 ms", 10 / p99,
                         sum(errors.values()))
            self._errors(f"claim {limit}", errors)

    def _errors(self, what: str, errors: Counter[str]) -> None:
        if errors:
            self.rep.note(f"WARNING {self.db} {what}: " + "; ".join(
                f"{n} x {e}" for e, n in errors.most_common(3)))


def lookup_sync(client: httpx.Client, array_id: int) -> int:
    r = client.get(f"/v3/fsm/get_array_task_instance_id/{array_id}/1/0")
    r.raise_for_status()
    return int(r.json()["task_instance_id"])


def jobmon_heartbeat(args: argparse.Namespace, work: Path, rep: Report) -> None:
    """Jobmon's batch heartbeat of 10,000 ids, when its peer can do one (compared on SQLite)."""
    peer, why = load_jobmon_peer(work)
    if peer is None or not hasattr(peer, "batch_heartbeat"):
        print(f"  Jobmon batch heartbeat: not available (see bench/README.md) {why}")
        return
    times: list[float] = []
    try:
        peer.start(None)
        ids = list(peer.prepare(min(10_000, args.array)))
        for i in range(args.heartbeat_calls + 1):
            t0 = time.perf_counter()
            peer.batch_heartbeat(ids)
            if i:
                times.append((time.perf_counter() - t0) * 1000)
    except Exception as exc:  # the peer is optional: report, go on
        rep.note(f"WARNING Jobmon batch heartbeat FAILED: {type(exc).__name__}: {exc}"[:600])
        return
    finally:
        peer.stop()
    rep.raw["figures"]["jobmon"] = {"heartbeat_ms": times}
    print(f"  Jobmon batch heartbeat of {len(ids):,} ids: median {med(times):.1f} ms")
    rep.row(f"batch heartbeat of {len(ids):,} ids (median of {len(times)})", peer.name,
            f"{spread(times)} ms", "-", None)


# ---- output and main ------------------------------------------------------------------------


def print_table(rep: Report, args: argparse.Namespace) -> None:
    print("\n## farmstead speed benchmark\n")
    print("| figure | backend | measured: median (min-max) | target | ratio |")
    print("|---|---|---|---|---|")
    for figure, backend, measured, target, ratio, failed in rep.rows:
        r = "" if ratio is None or ratio != ratio else \
            f"{ratio:.2f}x {'not valid' if failed else 'met' if ratio >= 1 else 'not met'}"
        print(f"| {figure} | {backend} | {measured} | {target} | {r} |")
    lifecycle = (
        f"Lifecycle: {args.concurrency} simulated workers (log_running, 5 x log_report_by, "
        f"log_done per instance), {args.clients} load-generator process(es), {args.seconds:g} s "
        f"per run, {args.reps} interleaved repetitions (order: {', '.join(args.servers)}); "
        "each server started fresh on a fresh database. ") if "lifecycle" in args.only else ""
    print(f"\n{lifecycle}Other figures: `farmstead serve "
          f"--workers 1`, {args.array:,}-task arrays, one request at a time on a keep-alive "
          f"connection. Ratio ≥ 1 means met. farmstead {_git_commit()}; {os.cpu_count()} cores "
          f"shared by server, database and load generator; Python {platform.python_version()}."
          + (" py-spy was attached (figures perturbed)." if args.profile else ""))
    print(f"Command: `{' '.join(['python', *sys.argv])}`")
    busy = [x for x in rep.raw.get("background", []) if x >= 0.3]
    if busy:
        print(f"- WARNING other programs kept {min(busy):.2f}-{max(busy):.2f} cores busy before "
              f"{len(busy)} of {len(rep.raw['background'])} runs (waited up to "
              f"{args.wait_quiet:g} s each): figures less trustworthy")
    for note in rep.raw["notes"]:
        print(f"- {note}")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=(__doc__ or "").split("\n", 1)[1])
    p.add_argument("--quick", action="store_true", help="smoke run: 5 s runs, 2 repetitions, "
                   "20,000-task arrays, fewer lookups and claims")
    p.add_argument("--only", default=",".join(PHASES),
                   help=f"comma-separated phases (default all): {', '.join(PHASES)}")
    p.add_argument("--servers", default="bare,sqlite1,sqlite2,pg1,pg2,jobmon",
                   help="lifecycle configurations, in run order (default "
                   "bare,sqlite1,sqlite2,pg1,pg2,jobmon)")
    p.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both",
                   help="backends for the other figures (default both)")
    p.add_argument("--modes", default="new,keep", help="lifecycle connection modes: new "
                   "(a connection per request), keep (keep-alive); default both")
    p.add_argument("--reps", type=int, help="interleaved repetitions (default 3; quick 2)")
    p.add_argument("--seconds", type=float, help="length of each lifecycle run (default 20; "
                   "quick 5)")
    p.add_argument("--instances", type=int, help="instances prepared per lifecycle run "
                   "(default 8,000; quick 2,000); a run ends early if they run out")
    p.add_argument("--concurrency", type=int, default=64, help="simulated workers (default 64)")
    p.add_argument("--clients", type=int, default=1, help="load-generator processes (default 1)")
    p.add_argument("--array", type=int, help="tasks per big array (default 1,000,000; quick "
                   "20,000)")
    p.add_argument("--lookups", type=int, help="array lookups (default 1,000; quick 300)")
    p.add_argument("--claims", type=int, help="claims per limit (default 200; quick 50)")
    p.add_argument("--heartbeat-calls", type=int, default=9)
    p.add_argument("--array-batch-size", type=int, default=1000,
                   help="must match the server's FARMSTEAD_ARRAY_BATCH_SIZE (default 1000)")
    p.add_argument("--profile", type=Path, metavar="DIR", help="py-spy each farmstead server "
                   "during its first lifecycle run (new connections); hot spots printed")
    p.add_argument("--json", type=Path, metavar="FILE", help="write the raw results here")
    p.add_argument("--wait-quiet", type=float, default=120, metavar="SECONDS",
                   help="before each run wait up to this long for other programs to use under "
                   "0.3 cores (default 120)")
    p.add_argument("--keep", action="store_true", help="keep the databases afterwards")
    a = p.parse_args()
    a.only = [x.strip() for x in a.only.split(",") if x.strip()]
    a.servers = [x.strip() for x in a.servers.split(",") if x.strip()]
    a.modes = [x.strip() for x in a.modes.split(",") if x.strip()]
    for what, got, allowed in (("--only", a.only, PHASES), ("--servers", a.servers, SERVERS),
                               ("--modes", a.modes, MODES)):
        if set(got) - set(allowed):
            p.error(f"{what}: unknown {', '.join(sorted(set(got) - set(allowed)))}")
    q = a.quick
    a.reps = a.reps or (2 if q else 3)
    a.seconds = a.seconds or (5.0 if q else 20.0)
    a.instances = a.instances or (2_000 if q else 8_000)
    a.array = a.array or (20_000 if q else 1_000_000)
    a.lookups = a.lookups or (300 if q else 1_000)
    a.claims = a.claims or (50 if q else 200)
    if q:
        a.heartbeat_calls = min(a.heartbeat_calls, 5)
    return a


def main() -> None:
    args = parse_args()
    work = Path(tempfile.mkdtemp(prefix="farmstead_bench_logs_"))
    print(f"farmstead speed benchmark ({'quick' if args.quick else 'full'}); phases "
          f"{', '.join(args.only)}; server logs in {work}", flush=True)
    rep = Report()
    if "lifecycle" in args.only:
        print(f"\n=== lifecycle: {args.concurrency} workers, {args.seconds:g} s per run, "
              f"{args.reps} repetitions of {', '.join(args.servers)} ===")
        phase_lifecycle(args, work, rep)
    backends = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
    if "heartbeat" in args.only and "sqlite" in backends:
        jobmon_heartbeat(args, work, rep)
    for backend in backends:
        if set(args.only) & {"lookup", "heartbeat", "claim", "submit"}:
            print(f"\n=== figures on {NAMES[backend]}: farmstead serve --workers 1, fresh "
                  f"database ===", flush=True)
            Figures(backend, args, work, rep).run()
    print_table(rep, args)
    if args.json:
        rep.raw["args"] = {k: (str(v) if isinstance(v, Path) else v)
                           for k, v in vars(args).items()}
        args.json.write_text(json.dumps(rep.raw, indent=1, default=str))
        print(f"raw results: {args.json}")


if __name__ == "__main__":
    main()
