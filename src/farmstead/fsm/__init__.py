"""The state machines of farmstead, as data. Pure Python: imports nothing of ours."""

from farmstead.fsm.decide import (
    Apply,
    Decision,
    Invalid,
    Same,
    Untimely,
    decide,
    retry_resources,
    task_path,
)
from farmstead.fsm.statuses import (
    LIVE_TI,
    TERMINAL_TASK,
    TERMINAL_TI,
    TaskStatus,
    TIStatus,
    WorkflowStatus,
    workflow_status,
)
from farmstead.fsm.tables import (
    CONSISTENT_LIVE_PAIRS,
    TASK_VALID,
    TI_REWRITES,
    TI_UNTIMELY,
    TI_VALID,
    tables_as_json,
)

__all__ = [
    "CONSISTENT_LIVE_PAIRS",
    "LIVE_TI",
    "TASK_VALID",
    "TERMINAL_TASK",
    "TERMINAL_TI",
    "TI_REWRITES",
    "TI_UNTIMELY",
    "TI_VALID",
    "Apply",
    "Decision",
    "Invalid",
    "Same",
    "TIStatus",
    "TaskStatus",
    "Untimely",
    "WorkflowStatus",
    "decide",
    "retry_resources",
    "tables_as_json",
    "task_path",
    "workflow_status",
]
