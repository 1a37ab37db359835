"""The executor's state file: a journal that a restarted executor reads back (a real file)."""

import os
from pathlib import Path

from farmstead.client.reaper import Record, StateFile


def test_journal_reads_back_what_still_runs(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    state = StateFile(path)
    pid = os.getpid()  # a live process: add() records its start time
    for ti in (1, 2, 3):
        state.add(ti, pid)
    state.remove(2)
    left = StateFile(path).load()
    assert sorted(r.task_instance_id for r in left) == [1, 3]
    assert all(isinstance(r, Record) and r.pgid == pid and r.start > 0 for r in left)


def test_torn_last_line_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    state = StateFile(path)
    state.add(7, os.getpid())
    state.add(8, os.getpid())
    with open(path, "ab") as f:
        f.write(b"[9, 12")  # a write cut short by a crash
    assert sorted(r.task_instance_id for r in StateFile(path).load()) == [7, 8]


def test_compaction_keeps_the_records_and_bounds_the_file(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    state = StateFile(path)
    state.add(1, os.getpid())  # stays running throughout
    for ti in range(2, 3000):
        state.add(ti, os.getpid())
        state.remove(ti)
    lines = path.read_text().splitlines()
    assert len(lines) <= StateFile.COMPACT_AFTER + 10, len(lines)
    assert [r.task_instance_id for r in StateFile(path).load()] == [1]


def test_no_file_is_left_once_nothing_runs(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    state = StateFile(path)
    state.add(1, os.getpid())
    assert path.exists()
    state.remove(1)
    assert not path.exists()
    assert StateFile(path).load() == []
