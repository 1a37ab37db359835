"""Invariant queries: each returns the ids of rows that break one rule (any database)."""

from sqlalchemy import text

from farmstead.db.engine import Conn
from farmstead.fsm import CONSISTENT_LIVE_PAIRS, LIVE_TI
from farmstead.fsm.statuses import ASSIGNED_TI

_LIVE = ", ".join(f"'{s.value}'" for s in sorted(LIVE_TI))
_ASSIGNED = ", ".join(f"'{s.value}'" for s in sorted(ASSIGNED_TI))
_PAIRS = " OR ".join(
    f"(ti.status = '{a.value}' AND t.status = '{b.value}')"
    for a, b in sorted(CONSISTENT_LIVE_PAIRS)
)

#: name -> (what it means, SQL selecting offending ids)
CHECKS: dict[str, tuple[str, str]] = {
    "two_live_instances": (
        "a task with more than one live instance",
        f"SELECT task_id FROM task_instance WHERE status IN ({_LIVE}) "
        "GROUP BY task_id HAVING count(*) > 1",
    ),
    "attempts_mismatch": (
        "a task whose num_attempts differs from its number of instances",
        "SELECT t.id FROM task t LEFT JOIN (SELECT task_id, count(*) AS n FROM task_instance "
        "GROUP BY task_id) c ON c.task_id = t.id WHERE coalesce(c.n, 0) != t.num_attempts",
    ),
    "settled_task_with_live_instance": (
        "a DONE, ERROR_FATAL, HELD or BLOCKED task with a live instance",
        f"SELECT DISTINCT t.id FROM task t JOIN task_instance ti ON ti.task_id = t.id "
        f"WHERE t.status IN ('D', 'F', 'H', 'B') AND ti.status IN ({_LIVE})",
    ),
    "unsettled_task_without_instance": (
        "an unfinished task with no live instance (nothing will ever move it)",
        f"SELECT t.id FROM task t WHERE t.status NOT IN ('D', 'F', 'H', 'B') AND NOT EXISTS ("
        f"SELECT 1 FROM task_instance ti WHERE ti.task_id = t.id AND ti.status IN ({_LIVE}))",
    ),
    "pair_mismatch": (
        "a live instance whose status does not fit its task's",
        f"SELECT ti.id FROM task_instance ti JOIN task t ON t.id = ti.task_id "
        f"WHERE ti.status IN ({_LIVE}) AND NOT ({_PAIRS})",
    ),
    "done_without_one_done_instance": (
        "a DONE task without exactly one DONE instance (besides those of its resets), or a DONE "
        "instance of another task",
        "SELECT t.id FROM task t LEFT JOIN (SELECT task_id, count(*) AS n FROM task_instance "
        "WHERE status = 'D' GROUP BY task_id) d ON d.task_id = t.id "
        "WHERE coalesce(d.n, 0) != t.resets + CASE WHEN t.status = 'D' THEN 1 ELSE 0 END",
    ),
    "counter_mismatch": (
        "an array whose running counters (array_count: QUEUED, holding an agent) differ from "
        "its instances",
        'SELECT a.id FROM "array" a LEFT JOIN array_count c ON c.array_id = a.id '
        "LEFT JOIN (SELECT array_id, sum(CASE WHEN status = 'Q' THEN 1 ELSE 0 END) AS q, "
        f"sum(CASE WHEN status IN ({_ASSIGNED}) THEN 1 ELSE 0 END) AS n "
        "FROM task_instance GROUP BY array_id) i ON i.array_id = a.id "
        "WHERE coalesce(c.queued, 0) != coalesce(i.q, 0) "
        "OR coalesce(c.assigned, 0) != coalesce(i.n, 0)",
    ),
    "task_counter_mismatch": (
        "an array whose running task counts by status (task_count) differ from its tasks, or "
        "are filed under another workflow than its own",
        "SELECT array_id FROM (SELECT array_id, status FROM ("
        "SELECT array_id, status, n FROM task_count UNION ALL "
        "SELECT array_id, status, -count(*) FROM task GROUP BY array_id, status) d "
        "GROUP BY array_id, status HAVING sum(n) != 0) m "
        'UNION SELECT c.array_id FROM task_count c JOIN "array" a ON a.id = c.array_id '
        "WHERE c.workflow_id != a.workflow_id",
    ),
    "held_but_ready": (
        "a HELD task whose upstream tasks and workflows are all DONE (a missed release)",
        "SELECT t.id FROM task t WHERE t.status = 'H' AND NOT EXISTS (SELECT 1 FROM task_edge e "
        "JOIN task u ON u.id = e.upstream_id WHERE e.downstream_id = t.id AND u.status != 'D') "
        "AND NOT EXISTS (SELECT 1 FROM workflow_edge w JOIN task u "
        "ON u.workflow_id = w.upstream_workflow_id "
        "WHERE w.downstream_workflow_id = t.workflow_id AND u.status != 'D')",
    ),
    "held_after_failure": (
        "a HELD task with an ERROR_FATAL or BLOCKED upstream task (a missed block)",
        "SELECT DISTINCT t.id FROM task t JOIN task_edge e ON e.downstream_id = t.id "
        "JOIN task u ON u.id = e.upstream_id WHERE t.status = 'H' AND u.status IN ('F', 'B')",
    ),
    "deadline_mismatch": (
        "an instance LAUNCHED or RUNNING without a deadline row, or one in another status with one",
        "SELECT ti.id FROM task_instance ti LEFT JOIN task_instance_deadline d "
        "ON d.task_instance_id = ti.id "
        "WHERE (ti.status IN ('O', 'R')) != (d.task_instance_id IS NOT NULL)",
    ),
    "instance_event_mismatch": (
        "an instance whose last event does not end in its status (or a moved one with none)",
        "SELECT ti.id FROM task_instance ti LEFT JOIN (SELECT entity_id, max(id) AS mid "
        "FROM event WHERE entity = 'task_instance' GROUP BY entity_id) e ON e.entity_id = ti.id "
        "LEFT JOIN event ev ON ev.id = e.mid "
        "WHERE (ev.id IS NULL AND ti.status != 'Q') "
        "OR (ev.id IS NOT NULL AND ev.to_status != ti.status)",
    ),
    "task_event_mismatch": (
        "a task whose last event does not end in its status (or a moved one with none)",
        "SELECT t.id FROM task t LEFT JOIN (SELECT entity_id, max(id) AS mid FROM event "
        "WHERE entity = 'task' GROUP BY entity_id) e ON e.entity_id = t.id "
        "LEFT JOIN event ev ON ev.id = e.mid "
        "WHERE (ev.id IS NULL AND t.status NOT IN ('Q', 'H')) "
        "OR (ev.id IS NOT NULL AND ev.to_status != t.status)",
    ),
    "broken_event_chain": (
        "an event whose from-status is not the previous event's to-status",
        "SELECT id FROM (SELECT id, from_status, LAG(to_status) OVER (PARTITION BY entity, "
        "entity_id ORDER BY id) AS prev FROM event WHERE entity IN ('task', 'task_instance')) c "
        "WHERE prev IS NOT NULL AND (from_status IS NULL OR from_status != prev)",
    ),
}


async def run_check(conn: Conn, name: str, sample: int = 20) -> tuple[int, list[int]]:
    """How many rows break check `name`, and the first `sample` of their ids."""
    sql = CHECKS[name][1]
    count = (await conn.execute(text(f"SELECT count(*) FROM ({sql}) x"))).scalar_one()
    ids = (await conn.execute(text(f"SELECT * FROM ({sql}) x LIMIT {int(sample)}"))).scalars()
    return int(count), [int(i) for i in ids]
