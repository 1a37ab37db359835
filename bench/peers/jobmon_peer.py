"""Jobmon's own server as a bench_speed.py peer, run from a separate virtualenv.

Jobmon's newest server (3.6) is not on PyPI; its newest published one is `jobmon-server` 3.2.2,
a Flask app. `setup()` installs it from PyPI into `bench/.peers/jobmon-venv` (git-ignored), never
into farmstead's environment, with the few extras it needs to run here:

- `sqlalchemy>=2.0,<2.1`, `flask<2.3`, `werkzeug<2.3`: the lines of its time (July 2023; it
  declares no upper bounds). With Werkzeug >= 2.3 every request without a JSON body (GET /health)
  fails with 500: its before-request hook catches the BadRequest that `get_json()` raised before
  2.3, not the 415 raised since;
- `gunicorn`: Jobmon 3.2 deployed its `wsgi.py` app under uWSGI (one thread per worker process,
  `lazy-apps`, harakiri 300 s); gunicorn's sync worker is the same model: one process
  answering one request at a time, the WSGI app loaded in the worker;
- its error handlers import `MySQLdb` (the C `mysqlclient`, which needs MySQL's headers to
  build); PyMySQL, which it already depends on, stands in for it (`install_as_MySQLdb`) before
  the app is imported (`wsgi_app()` below). On SQLite MySQLdb is never called.

The server (`JobmonPeer.start`) is `gunicorn --workers 1 --worker-class sync` on 127.0.0.1,
serving `jobmon.server.web.api.get_app()` (what `jobmon/server/web/wsgi.py` serves) on a fresh
SQLite file created by Jobmon's own `jobmon_server init_db`. Jobmon 3.2's routes have no
prefix: `POST /task_instance/{id}/log_running`.

`prepare(n)` inserts, with SQL into that file, a tool, workflow, workflow run (RUNNING) and array,
and n tasks with one task instance each, both LAUNCHED ("O"), from which Jobmon accepts
`log_running` (O->R, task O->R), `log_report_by` and `log_done` (R->D, task R->D).

    python bench/peers/jobmon_peer.py setup     # create the virtualenv (idempotent)
    python bench/peers/jobmon_peer.py check     # start it, drive 10 instances, check the rows

This module is imported by the bench (farmstead's virtualenv) and, for `wsgi_app()`, by gunicorn
in the peer's virtualenv, so it imports nothing but the standard library at module level.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

JOBMON_VERSION = "3.2.2"
REQUIREMENTS = (f"jobmon-server=={JOBMON_VERSION}", "sqlalchemy>=2.0,<2.1", "flask<2.3",
                "werkzeug<2.3", "gunicorn")
HERE = Path(__file__).resolve().parent
PEERS_DIR = HERE.parent / ".peers"
VENV = PEERS_DIR / "jobmon-venv"
MARKER = VENV / "farmstead-peer.json"  # what setup() installed, written last
INCREMENT = 279.0  # Jobmon's default next_report_increment: 90 s x 3.1
PREFIX = ""  # Jobmon 3.2 serves its routes at the root
BATCH_PATH = "/task_instance/log_report_by/batch"


def _py() -> Path:
    return VENV / "bin" / "python"


def available() -> str | None:
    """None when the peer's virtualenv is ready, else why not (what bench/_peers.py expects)."""
    try:
        got = json.loads(MARKER.read_text())
    except (OSError, ValueError):
        return (f"Jobmon {JOBMON_VERSION} is not installed: run "
                "`python bench/peers/jobmon_peer.py setup`")
    if got.get("requirements") != list(REQUIREMENTS) or not _py().exists():
        return ("the Jobmon peer's virtualenv is out of date: run "
                "`python bench/peers/jobmon_peer.py setup`")
    return None


def setup() -> None:
    """Create bench/.peers/jobmon-venv with Jobmon's server from PyPI; nothing if it is ready."""
    if available() is None:
        print(f"jobmon peer: {VENV} is ready ({', '.join(REQUIREMENTS)})")
        return
    PEERS_DIR.mkdir(parents=True, exist_ok=True)
    if not _py().exists():
        print(f"jobmon peer: creating the virtualenv {VENV}")
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    print(f"jobmon peer: pip install {' '.join(REQUIREMENTS)}")
    done = subprocess.run([str(_py()), "-m", "pip", "install", "-q", *REQUIREMENTS],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"pip failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    probe = ("import pymysql; pymysql.install_as_MySQLdb(); import importlib.metadata as m; "
             "import jobmon.server.web.api, gunicorn; "
             "print(m.version('jobmon-server'), m.version('sqlalchemy'), m.version('flask'), "
             "m.version('werkzeug'), m.version('gunicorn'))")
    versions = subprocess.run([str(_py()), "-c", probe], check=True, capture_output=True,
                              text=True).stdout.split()
    print("jobmon peer: installed jobmon-server {}, SQLAlchemy {}, Flask {}, Werkzeug {}, "
          "gunicorn {}".format(*versions))
    helptext = subprocess.run([str(VENV / "bin" / "gunicorn"), "--help"], capture_output=True,
                              text=True).stdout
    MARKER.write_text(json.dumps({"requirements": list(REQUIREMENTS), "versions": versions,
                                  "no_control_socket": "--no-control-socket" in helptext}))


def wsgi_app() -> Any:
    """The WSGI app gunicorn serves (in the peer's virtualenv): Jobmon's own `get_app()`."""
    import pymysql  # type: ignore[import-untyped]  # the peer's virtualenv only

    pymysql.install_as_MySQLdb()  # Jobmon's error handlers import MySQLdb.OperationalError
    from jobmon.server.web.api import get_app  # type: ignore[import-untyped]

    return get_app()


def bodies() -> dict[str, dict[str, Any]]:
    """The bodies Jobmon 3.2.2's worker node sends (worker_node_task_instance.py), per route.

    Its requester adds `server_structlog_context` to every POST and the query parameter
    `?client_jobmon_version=3.2.2`, which the server ignores. Required by the server:
    log_running: process_group_id, next_report_increment; log_report_by: next_report_increment;
    log_done: nothing. log_report_by writes every optional field it is not given as NULL.
    """
    return {
        "log_running": {"nodename": "bench-node", "process_group_id": "4242",
                        "next_report_increment": INCREMENT, "distributor_id": "1_0",
                        "server_structlog_context": {}},
        "log_report_by": {"next_report_increment": INCREMENT, "stdout": "/dev/null",
                          "stderr": "/dev/null", "distributor_id": "1_0",
                          "server_structlog_context": {}},
        "log_done": {"stdout": "/dev/null", "stderr": "/dev/null", "stdout_log": "",
                     "stderr_log": "", "nodename": "bench-node", "distributor_id": "1_0",
                     "server_structlog_context": {}},
    }


def batch_body(ids: list[int], increment: float = INCREMENT) -> dict[str, Any]:
    """The distributor's batch heartbeat body (POST BATCH_PATH). The server updates
    report_by_date of the listed instances that are LAUNCHED and answers `null`: no count."""
    return {"next_report_increment": increment, "task_instance_ids": list(ids),
            "server_structlog_context": {}}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class JobmonPeer:
    """One `gunicorn` process serving Jobmon 3.2.2 on a fresh SQLite file per start."""

    backend = "sqlite"
    prefix = PREFIX
    checks = True  # Jobmon answers R, R, D like farmstead: task_instance[1] / status

    def __init__(self, work_dir: Path | None = None, wal: bool = False) -> None:
        self.name = f"Jobmon {JOBMON_VERSION}, SQLite"
        self.work_dir = Path(work_dir).resolve() if work_dir else PEERS_DIR
        self.wal = wal  # Jobmon leaves SQLite's rollback journal; True switches the file to WAL
        self.proc: subprocess.Popen[bytes] | None = None
        self.tmp: Path | None = None
        self.db_path: Path | None = None
        self.url = ""
        self.batch = 0  # array_batch_num of the last prepare()

    @property
    def db_url(self) -> str:
        return f"sqlite:///{self.db_path}" if self.db_path else ""

    def start(self, port: int | None = None) -> str:
        why = available()
        if why:
            raise RuntimeError(why)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix="jobmon-peer-", dir=self.work_dir))
        self.db_path = self.tmp / "jobmon.db"
        self.batch = 0
        env = {**os.environ, "JOBMON__DB__SQLALCHEMY_DATABASE_URI": self.db_url}
        subprocess.run([str(VENV / "bin" / "jobmon_server"), "init_db",
                        "--sqlalchemy_database_uri", self.db_url],
                       check=True, env=env, capture_output=True)
        if self.wal:
            with sqlite3.connect(self.db_path) as db:
                db.execute("PRAGMA journal_mode=WAL")
        # newer gunicorns open a control socket in the home directory: not needed here
        quiet = ["--no-control-socket"] if json.loads(MARKER.read_text()).get(
            "no_control_socket") else []
        port = port or _free_port()
        self.url = f"http://127.0.0.1:{port}"
        log = self.tmp / "server.log"
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [str(VENV / "bin" / "gunicorn"), "--workers", "1", "--worker-class", "sync",
                 "--bind", f"127.0.0.1:{port}", "--backlog", "2048", "--timeout", "300",
                 *quiet, "--pythonpath", str(HERE), "jobmon_peer:wsgi_app()"],
                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=self.tmp)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Jobmon's server exited: {log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return self.url
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.2)
        tail = log.read_text()[-3000:]
        self.stop()
        raise RuntimeError(f"Jobmon's server did not start: {tail}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # gunicorn's master stops its worker on SIGTERM
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp = self.db_path = None

    def pids(self) -> list[int]:
        """gunicorn's master and its worker (the one that answers)."""
        if self.proc is None or self.proc.poll() is not None:
            return []
        try:
            import psutil

            parent = psutil.Process(self.proc.pid)
            return [parent.pid] + [c.pid for c in parent.children(recursive=True)]
        except ImportError:
            return [self.proc.pid]
        except Exception:  # psutil.NoSuchProcess
            return []

    def prepare(self, n: int) -> list[int]:
        """n task instances LAUNCHED (task LAUNCHED too), ready for log_running; their ids.

        Each call adds one array batch of n (tasks named bench_{batch}_{step}, distributor_id
        "{batch}_{step}", steps 0-based) to the workflow run created by the first call.
        """
        assert self.db_path is not None, "start() first"
        self.batch += 1
        b = self.batch
        db = sqlite3.connect(self.db_path, timeout=60, isolation_level=None)
        try:
            db.execute("BEGIN IMMEDIATE")
            if b == 1:
                self._insert_workflow(db)
            wf, wfr, arr, ttv, tr = db.execute(
                "SELECT w.id, r.id, a.id, a.task_template_version_id, "
                "(SELECT MAX(id) FROM task_resources) FROM workflow w "
                "JOIN workflow_run r ON r.workflow_id = w.id JOIN array a ON a.workflow_id = w.id"
            ).fetchone()
            node0 = db.execute("SELECT COALESCE(MAX(id), 0) FROM node").fetchone()[0] + 1
            task0 = db.execute("SELECT COALESCE(MAX(id), 0) FROM task").fetchone()[0] + 1
            ti0 = db.execute("SELECT COALESCE(MAX(id), 0) FROM task_instance").fetchone()[0] + 1
            db.executemany(
                "INSERT INTO node (id, task_template_version_id, node_args_hash) VALUES (?,?,?)",
                ((node0 + i, ttv, f"bench-{b}-{i}") for i in range(n)))
            db.executemany(
                "INSERT INTO task (id, workflow_id, node_id, task_args_hash, array_id, name, "
                "command, task_resources_id, num_attempts, max_attempts, resource_scales, "
                "fallback_queues, status, status_date) "
                "VALUES (?,?,?,?,?,?,?,?,1,3,'{}','[]','O',CURRENT_TIMESTAMP)",
                ((task0 + i, wf, node0 + i, f"bench-{b}-{i}", arr, f"bench_{b}_{i}", "true", tr)
                 for i in range(n)))
            db.executemany(
                "INSERT INTO task_instance (id, workflow_run_id, array_id, task_id, "
                "task_resources_id, array_batch_num, array_step_id, distributor_id, status, "
                "submitted_date, status_date, report_by_date) "
                "VALUES (?,?,?,?,?,?,?,?,'O',CURRENT_TIMESTAMP,CURRENT_TIMESTAMP,"
                "datetime('now', '+86400 seconds'))",
                ((ti0 + i, wfr, arr, task0 + i, tr, b, i, f"{b}_{i}") for i in range(n)))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        finally:
            db.close()
        return list(range(ti0, ti0 + n))

    @staticmethod
    def _insert_workflow(db: sqlite3.Connection) -> None:
        """The rows a task needs above it, as Jobmon's client would have bound them."""
        now = "CURRENT_TIMESTAMP"
        db.execute("INSERT INTO tool (id, name) VALUES (1, 'farmstead-bench')")
        db.execute("INSERT INTO tool_version (id, tool_id) VALUES (1, 1)")
        db.execute("INSERT INTO task_template (id, tool_version_id, name) VALUES (1, 1, 'bench')")
        db.execute("INSERT INTO task_template_version (id, task_template_id, command_template, "
                   "arg_mapping_hash) VALUES (1, 1, 'true', 'bench')")
        db.execute(f"INSERT INTO dag (id, hash, created_date) VALUES (1, 'bench', {now})")
        db.execute("INSERT INTO workflow (id, tool_version_id, dag_id, workflow_args_hash, "
                   "task_hash, description, name, workflow_args, max_concurrently_running, "
                   f"status, created_date, status_date) VALUES (1, 1, 1, 'bench', 'bench', '', "
                   f"'bench', '{{}}', 1000000, 'R', {now}, {now})")
        db.execute("INSERT INTO workflow_run (id, workflow_id, user, jobmon_version, "
                   "jobmon_server_version, status, created_date, status_date, heartbeat_date) "
                   f"VALUES (1, 1, 'bench', '{JOBMON_VERSION}', '{JOBMON_VERSION}', 'R', {now}, "
                   f"{now}, datetime('now', '+1 day'))")
        db.execute("INSERT INTO array (id, name, task_template_version_id, workflow_id, "
                   f"max_concurrently_running, created_date) VALUES (1, 'bench', 1, 1, 1000000, "
                   f"{now})")
        # queue 1 is the "dummy" cluster's null.q (init_db); "V" = validated resources
        db.execute("INSERT INTO task_resources (id, queue_id, task_resources_type_id, "
                   "requested_resources) VALUES (1, 1, 'V', ?)",
                   (json.dumps({"runtime": 3600, "memory": 1}),))

    def batch_heartbeat(self, ids: list[int]) -> None:
        """One distributor batch heartbeat of `ids` (Jobmon answers `null`, so no count)."""
        req = urllib.request.Request(
            f"{self.url}{BATCH_PATH}", data=json.dumps(batch_body(ids)).encode(),
            headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(req, timeout=300) as r:
            if r.status != 200:
                raise RuntimeError(f"batch heartbeat: HTTP {r.status}")
            r.read()

    def bodies(self) -> dict[str, dict[str, Any]]:
        return bodies()


def make_peer(work_dir: Path | None = None) -> JobmonPeer:
    return JobmonPeer(work_dir)


def _check() -> None:
    """Start, prepare 10, drive each through the lifecycle with httpx, check the rows."""
    import httpx

    peer = JobmonPeer()
    url = peer.start()
    assert peer.db_path is not None
    print(f"jobmon peer: serving {url} (gunicorn pids {peer.pids()}), database {peer.db_path}")
    try:
        ids = peer.prepare(10)
        body = bodies()
        q = {"client_jobmon_version": JOBMON_VERSION}
        with httpx.Client(base_url=url, timeout=30) as c:
            for ti in ids:
                r = c.post(f"/task_instance/{ti}/log_running", json=body["log_running"], params=q)
                assert r.status_code == 200 and r.json()["task_instance"][1] == "R", r.text
                for _ in range(5):
                    r = c.post(f"/task_instance/{ti}/log_report_by", json=body["log_report_by"],
                               params=q)
                    assert r.status_code == 200 and r.json() == {"status": "R"}, r.text
                r = c.post(f"/task_instance/{ti}/log_done", json=body["log_done"], params=q)
                assert r.status_code == 200 and r.json() == {"status": "D"}, r.text
        print("jobmon peer: last answers:", r.json(), "; log_running answered",
              "task_instance=[id, status, workflow_run_id, task_id, name, command, workflow_id, "
              "stdout_dir, stderr_dir]")
        with sqlite3.connect(peer.db_path) as db:
            rows = db.execute(
                "SELECT ti.status, t.status, ti.nodename, ti.process_group_id, "
                "ti.report_by_date > datetime('now', '+270 seconds') FROM task_instance ti "
                "JOIN task t ON t.id = ti.task_id ORDER BY ti.id").fetchall()
        print("jobmon peer: rows (ti status, task status, nodename, pgid, report_by ~ now+279s):")
        for row in rows:
            print("   ", row)
        assert all(r[:2] == ("D", "D") and r[4] == 1 for r in rows), rows
        # sequential rate, a new connection per request (as Jobmon's worker's requests.post);
        # http.client, not httpx.post, which builds an SSL context per call (~40 ms of client CPU)
        import http.client

        import psutil

        more = peer.prepare(200)
        encoded = {k: json.dumps(v).encode() for k, v in body.items()}
        procs = [psutil.Process(p) for p in peer.pids()]
        cpu0 = sum(sum(p.cpu_times()[:2]) for p in procs)
        t0, count = time.perf_counter(), 0
        for ti in more:
            for kind in ("log_running",) + ("log_report_by",) * 5 + ("log_done",):
                conn = http.client.HTTPConnection("127.0.0.1", int(url.rsplit(":", 1)[1]))
                conn.request("POST", f"/task_instance/{ti}/{kind}", encoded[kind],
                             {"Content-Type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                conn.close()
                assert resp.status == 200, resp.status
                count += 1
        dt = time.perf_counter() - t0
        cpu = sum(sum(p.cpu_times()[:2]) for p in procs) - cpu0
        print(f"jobmon peer: sequential, new connection each: {count} requests in {dt:.2f} s = "
              f"{count / dt:.0f} requests/s; server CPU {cpu / count * 1000:.1f} ms/request")
        batch = peer.prepare(10_000)
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            peer.batch_heartbeat(batch)
            times.append((time.perf_counter() - t0) * 1000)
        with sqlite3.connect(peer.db_path) as db:
            fresh = db.execute("SELECT COUNT(*) FROM task_instance WHERE array_batch_num = ? "
                               "AND report_by_date < datetime('now', '+300 seconds')",
                               (peer.batch,)).fetchone()[0]
        print(f"jobmon peer: batch heartbeat of 10,000 LAUNCHED ids: "
              f"{', '.join(f'{t:.0f}' for t in times)} ms; rows now due within 300 s: {fresh}")
    finally:
        peer.stop()


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "setup"
    if what == "setup":
        setup()
    elif what == "check":
        setup()
        _check()
    else:
        sys.exit(f"usage: {sys.argv[0]} [setup|check]")
