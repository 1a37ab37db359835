"""taskfarm's own server (PyPI `taskfarm` 0.4.0) as a bench_taskfarm.py peer, in its own virtualenv.

taskfarm 0.4.0 is a Flask app (Flask-SQLAlchemy, Flask-HTTPAuth, authlib's JWT, passlib); it
declares no version bounds. `setup()` installs it from PyPI into `bench/.peers/taskfarm-venv`
(git-ignored), never into farmstead's environment, with the lines of its time where the newest
break it:

- `flask<2.3`, `werkzeug<2.3`: its `request.get_json()` checks expect the pre-2.3 behaviour;
- `flask-sqlalchemy<3`, `sqlalchemy<2`: its `Model.query` and `db.create_all()` outside an
  application context are Flask-SQLAlchemy 2's (3.0 needs a context, SQLAlchemy 2 drops
  `Query.get` semantics it relies on);
- `psycopg2-binary`: its PostgreSQL driver (it takes `DATABASE_URL` as an SQLAlchemy URL);
- `gunicorn`: the issue's deployment, 2 sync workers (one request at a time each).

`TaskfarmPeer.start()` creates a fresh PostgreSQL database, creates taskfarm's tables and one
user with taskfarm's own `adminTF --init-db -u USER -p PASSWORD`, and serves `taskfarm:app` with
`gunicorn --workers 2`; `stop()` stops it and drops the database.

    python bench/peers/taskfarm_peer.py setup     # create the virtualenv (idempotent)

This module imports nothing but the standard library at module level.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

TASKFARM_VERSION = "0.4.0"
REQUIREMENTS = (f"taskfarm=={TASKFARM_VERSION}", "flask<2.3", "werkzeug<2.3",
                "flask-sqlalchemy<3", "sqlalchemy<2", "psycopg2-binary", "gunicorn")
HERE = Path(__file__).resolve().parent
PEERS_DIR = HERE.parent / ".peers"
VENV = PEERS_DIR / "taskfarm-venv"
MARKER = VENV / "farmstead-peer.json"  # what setup() installed, written last


def available() -> str | None:
    """None when the peer's virtualenv is ready, else why not."""
    try:
        got = json.loads(MARKER.read_text())
    except (OSError, ValueError):
        return (f"taskfarm {TASKFARM_VERSION} is not installed: run "
                "`python bench/peers/taskfarm_peer.py setup`")
    if got.get("requirements") != list(REQUIREMENTS):
        return ("the taskfarm peer's virtualenv is out of date: run "
                "`python bench/peers/taskfarm_peer.py setup`")
    return None


def setup() -> None:
    """Create bench/.peers/taskfarm-venv with taskfarm's server from PyPI; nothing if ready."""
    if available() is None:
        print(f"taskfarm peer: {VENV} is ready ({', '.join(REQUIREMENTS)})")
        return
    PEERS_DIR.mkdir(parents=True, exist_ok=True)
    py = VENV / "bin" / "python"
    if not py.exists():
        print(f"taskfarm peer: creating the virtualenv {VENV}")
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    print(f"taskfarm peer: pip install {' '.join(REQUIREMENTS)}")
    done = subprocess.run([str(py), "-m", "pip", "install", "-q", *REQUIREMENTS],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"pip failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    probe = ("import importlib.metadata as m; print(' '.join(m.version(p) for p in "
             "('taskfarm', 'flask', 'flask-sqlalchemy', 'sqlalchemy', 'gunicorn')))")
    versions = subprocess.run([str(py), "-c", probe], check=True, capture_output=True,
                              text=True).stdout.split()
    print("taskfarm peer: installed taskfarm {}, Flask {}, Flask-SQLAlchemy {}, SQLAlchemy {}, "
          "gunicorn {}".format(*versions))
    MARKER.write_text(json.dumps({"requirements": list(REQUIREMENTS), "versions": versions}))


class TaskfarmPeer:
    """taskfarm 0.4.0 under `gunicorn --workers 2` on a PostgreSQL database of its own.

    `database_url`: an SQLAlchemy URL of an empty database (the caller creates and drops it).
    """

    name = f"taskfarm {TASKFARM_VERSION} (gunicorn, 2 workers)"

    def __init__(self, database_url: str, user: str, password: str, log_path: Path) -> None:
        self.database_url, self.user, self.password = database_url, user, password
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def _env(self) -> dict[str, str]:
        # a secret of this run only: taskfarm signs its tokens with it
        return {**os.environ, "DATABASE_URL": self.database_url,
                "SECRET_KEY": os.urandom(16).hex(), "PYTHONWARNINGS": "ignore"}

    def start(self, port: int, timeout: float = 60) -> str:
        env = self._env()
        subprocess.run([str(VENV / "bin" / "adminTF"), "--init-db", "-u", self.user,
                        "-p", self.password], env=env, check=True, capture_output=True)
        cmd = [str(VENV / "bin" / "gunicorn"), "--workers", "2", "--bind", f"127.0.0.1:{port}",
               "--log-level", "warning", "taskfarm:app"]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"taskfarm exited: {self.log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url + "/", timeout=2) as answer:
                    if answer.status == 200:
                        time.sleep(1.0)  # the second worker too
                        return self.url
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"taskfarm did not start: {self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


if __name__ == "__main__":
    if sys.argv[1:] == ["setup"]:
        setup()
    else:
        sys.exit("usage: python bench/peers/taskfarm_peer.py setup")
