"""Bounded types for the wire: every number, string and list a request carries fits its column.

User-given text (names, commands, paths) with a NUL or a lone surrogate is refused (422). Text a
worker or distributor reports (output tails, error messages, node names, job ids) is never
refused for its content: NULs and lone surrogates become U+FFFD and over-long text is cut to its
limit, keeping the end of tails and messages and the start of names, ids and paths, with `…`
where it was cut. So a report is stored on both databases, whatever the command printed.
"""

import re
from collections.abc import Callable
from typing import Annotated, Any

from annotated_types import Interval
from pydantic import AfterValidator, BeforeValidator, Field, StringConstraints
from pydantic.types import AllowInfNan

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1

NAME_MAX = 255  # workflow, task, array and cluster names; node names (String(255) columns)
COMMAND_MAX = 32_768  # characters of a command, after `{i}` is replaced
PATH_MAX = 4096  # file and directory paths (Linux PATH_MAX)
TAIL_MAX = 10_000  # characters of a stdout/stderr tail (the worker keeps as many)
MESSAGE_MAX = 32_768  # characters of an error message or description
JOB_ID_MAX = 255  # a distributor's job id
PROCESS_GROUP_MAX = 64  # the process_group_id column
IDS_MAX = 100_000  # ids in one batch request (heartbeats, instantiate, distributor ids)
CUT = "…"

# ---- integers: path, query and body -----------------------------------------------------------

#: a row id: 1..2**63-1 (SQLite INTEGER and PostgreSQL BIGINT)
DbId = Annotated[int, Interval(ge=1, le=INT64_MAX)]
#: an id cursor or an offset: 0..2**63-1
Cursor = Annotated[int, Interval(ge=0, le=INT64_MAX)]
#: a 32-bit column (batch and step numbers, priority, first and last of an array)
Int32 = Annotated[int, Interval(ge=INT32_MIN, le=INT32_MAX)]
#: a byte count or other 64-bit quantity: 0..2**63-1
Count64 = Annotated[int, Interval(ge=0, le=INT64_MAX)]


# ---- floats: finite, with a range --------------------------------------------------------------

#: seconds until the next report is due
Increment = Annotated[
    float,
    AllowInfNan(False),
    Interval(gt=0, le=30 * 86400),
    Field(description="seconds until the next report is due (at most 30 days)"),
]
#: a measured duration in seconds (wallclock, CPU)
Seconds = Annotated[float, AllowInfNan(False), Interval(ge=0, le=1e12)]


# ---- text ---------------------------------------------------------------------------------


def _has_lone_surrogate(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def check_text(value: str) -> str:
    """Refuse a NUL or a lone surrogate in user-given text: no database stores them."""
    if "\x00" in value:
        raise ValueError("must not contain a NUL character")
    if _has_lone_surrogate(value):
        raise ValueError("must be valid Unicode (it holds a lone surrogate)")
    return value


def not_blank(value: str) -> str:
    """Refuse text of only whitespace."""
    if not value.strip():
        raise ValueError("must not be empty")
    return value


_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_text(value: str, max_chars: int, keep_end: bool = False) -> str:
    """Text a client reported, made storable: NUL and lone surrogates → U+FFFD, cut to size."""
    value = value.replace("\x00", "\ufffd")
    if _has_lone_surrogate(value):
        value = _SURROGATE.sub("\ufffd", value)
    if len(value) > max_chars:
        keep = max_chars - len(CUT)
        value = CUT + value[-keep:] if keep_end else value[:keep] + CUT
    return value


def _reported(max_chars: int, keep_end: bool, ints: bool = False) -> Callable[[Any], Any]:
    def clean(value: Any) -> Any:
        if ints and isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        return clean_text(value, max_chars, keep_end) if isinstance(value, str) else value

    return clean


def _reported_doc(max_chars: int, keep: str) -> Any:
    return Field(
        description=f"reported text: NUL and lone surrogates become U+FFFD; over {max_chars} "
        f"characters it is cut, keeping the {keep}",
        json_schema_extra={"x-truncated-to": max_chars},
    )


#: a workflow, task or array name given by a user
Name = Annotated[
    str, StringConstraints(min_length=1, max_length=NAME_MAX), AfterValidator(check_text)
]
#: a command given by a user: not blank
Command = Annotated[
    str,
    StringConstraints(min_length=1, max_length=COMMAND_MAX),
    AfterValidator(check_text),
    AfterValidator(not_blank),
]
#: a path given by a user
PathText = Annotated[
    str, StringConstraints(min_length=1, max_length=PATH_MAX), AfterValidator(check_text)
]
#: a short label given by a user (queue name, custom resource key)
Label = Annotated[
    str, StringConstraints(min_length=1, max_length=NAME_MAX), AfterValidator(check_text)
]

#: an output tail a worker reports: the end is kept
Tail = Annotated[
    str, BeforeValidator(_reported(TAIL_MAX, keep_end=True)), _reported_doc(TAIL_MAX, "end")
]
#: an error message a worker or distributor reports: the end is kept
Message = Annotated[
    str,
    BeforeValidator(_reported(MESSAGE_MAX, keep_end=True)),
    _reported_doc(MESSAGE_MAX, "end"),
]
#: a node name a worker reports: the start is kept
NodeName = Annotated[
    str, BeforeValidator(_reported(NAME_MAX, keep_end=False)), _reported_doc(NAME_MAX, "start")
]
#: a job id a distributor reports (a number is taken as its text): the start is kept
JobId = Annotated[
    str,
    BeforeValidator(_reported(JOB_ID_MAX, keep_end=False, ints=True)),
    _reported_doc(JOB_ID_MAX, "start"),
]
#: a process group id a worker reports (a number is taken as its text)
ProcessGroupId = Annotated[
    str,
    BeforeValidator(_reported(PROCESS_GROUP_MAX, keep_end=False, ints=True)),
    _reported_doc(PROCESS_GROUP_MAX, "start"),
]
#: a log file path a worker reports: the start is kept
ReportedPath = Annotated[
    str, BeforeValidator(_reported(PATH_MAX, keep_end=False)), _reported_doc(PATH_MAX, "start")
]
