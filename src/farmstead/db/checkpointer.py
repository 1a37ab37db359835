"""SQLite's WAL checkpoints, off the write path.

In WAL mode SQLite appends every commit to the write-ahead log and copies the log back into the
database file at a checkpoint. By default the connection whose commit takes the log past 1,000
pages runs that checkpoint itself, inside its COMMIT: the writer thread, and every write queued
behind it, waits for the copy and its fsync. farmstead's writer connection turns that off
(`PRAGMA wal_autocheckpoint=0`) and this thread checkpoints instead, on a connection of its own,
every `interval` seconds while the writer is in use: a PASSIVE checkpoint never blocks the
writer or the readers (it copies what no reader still needs), so the writer only commits.
"""

import contextlib
import logging
import sqlite3
import threading

log = logging.getLogger("farmstead.db")


class Checkpointer:
    """A daemon thread that checkpoints one SQLite database's WAL every `interval` seconds."""

    def __init__(self, path: str, interval: float = 0.5, lock_timeout: float = 5.0) -> None:
        self.path = path
        self.interval = interval
        self.lock_timeout = lock_timeout
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.runs = 0  # checkpoints run (for tests and the curious)

    def ensure_started(self) -> None:
        """Start the thread if it is not running (cheap when it is)."""
        if self._thread is not None:
            return
        with self._start_lock:
            if self._thread is None and not self._stop.is_set():
                thread = threading.Thread(
                    target=self._serve, name="farmstead-db-checkpointer", daemon=True
                )
                thread.start()
                self._thread = thread

    def _serve(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            while not self._stop.wait(self.interval):
                try:
                    if conn is None:
                        conn = sqlite3.connect(
                            self.path, timeout=self.lock_timeout, check_same_thread=False
                        )
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    self.runs += 1
                except sqlite3.Error as exc:  # e.g. the file went away: try again later
                    log.warning("WAL checkpoint of %s failed: %s", self.path, exc)
                    if conn is not None:
                        with contextlib.suppress(sqlite3.Error):
                            conn.close()
                        conn = None
        finally:
            if conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                    conn.close()

    def close(self) -> None:
        """Stop the thread after a last checkpoint."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()
