"""What a task asks for: the documented resource keys, each typed and bounded, and the scales
applied after a resource error. Stored as given (the same keys at the top level of the JSON)."""

import math
from collections.abc import Callable
from typing import Annotated, Any, Literal

from annotated_types import Interval
from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    StringConstraints,
    WithJsonSchema,
    with_config,
)
from pydantic.types import AllowInfNan
from typing_extensions import TypedDict

from farmstead.bounds import INT64_MAX, Label, PathText, check_text
from farmstead.fsm.decide import RESOURCE_MAX

CUSTOM_MAX_KEYS = 64
CUSTOM_KEY_MAX = 64
CUSTOM_TEXT_MAX = 1024
SCALE_MIN, SCALE_MAX = 1.0, 10.0


def _positive_number(key: str, unit: str) -> Callable[[Any], int | float]:
    """A validator of a number above 0 and at most RESOURCE_MAX[key]; ints stay ints."""
    top = RESOURCE_MAX[key]

    def check(value: Any) -> int | float:
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or not math.isfinite(value) or not 0 < value <= top:
            raise ValueError(f"must be a number above 0 and at most {top:g} ({unit})")
        return value  # type: ignore[no-any-return]

    return check


def _number_schema(key: str, unit: str) -> WithJsonSchema:
    return WithJsonSchema(
        {"type": "number", "exclusiveMinimum": 0, "maximum": RESOURCE_MAX[key], "description": unit}
    )


def _custom_value(value: Any) -> bool | int | float | str:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and -INT64_MAX - 1 <= value <= INT64_MAX:
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    if isinstance(value, str) and len(value) <= CUSTOM_TEXT_MAX:
        return check_text(value)
    raise ValueError(
        f"must be a string of at most {CUSTOM_TEXT_MAX} characters, a finite number or a boolean"
    )


Memory = Annotated[
    int | float, PlainValidator(_positive_number("memory", "GB")), _number_schema("memory", "GB")
]
Runtime = Annotated[
    int | float,
    PlainValidator(_positive_number("runtime", "seconds")),
    _number_schema("runtime", "seconds"),
]
Cores = Annotated[int, Interval(ge=1, le=int(RESOURCE_MAX["cores"]))]
CustomKey = Annotated[
    str, StringConstraints(min_length=1, max_length=CUSTOM_KEY_MAX), AfterValidator(check_text)
]
CustomValue = Annotated[
    bool | int | float | str,
    PlainValidator(_custom_value),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "maxLength": CUSTOM_TEXT_MAX},
                {"type": "integer", "minimum": -INT64_MAX - 1, "maximum": INT64_MAX},
                {"type": "number", "minimum": -1e308, "maximum": 1e308},
                {"type": "boolean"},
            ]
        }
    ),
]


@with_config(ConfigDict(extra="forbid", strict=True, allow_inf_nan=False))
class ResourceKeys(TypedDict, total=False):
    """The resources a task asks for; every key is optional."""

    memory: Memory
    runtime: Runtime
    cores: Cores
    queue: Label
    stdout: PathText
    stderr: PathText
    custom: Annotated[
        dict[CustomKey, CustomValue],
        Field(max_length=CUSTOM_MAX_KEYS, description="your own keys: short scalars"),
    ]


KNOWN_KEYS = tuple(ResourceKeys.__annotations__)


def _known_keys(value: Any) -> Any:
    if isinstance(value, dict):
        for key in value:
            if key not in KNOWN_KEYS:
                shown = repr(key[:40] + "…" if isinstance(key, str) and len(key) > 40 else key)
                raise ValueError(
                    f"unknown key {shown}; the known keys are {', '.join(KNOWN_KEYS)} "
                    "(put keys of your own under 'custom')"
                )
    return value


#: `resources` in a request: memory (GB), runtime (s), cores, queue, stdout and stderr
#: directories, and `custom` (a flat object of your own short scalars)
Resources = Annotated[
    ResourceKeys,
    BeforeValidator(_known_keys),
    Field(
        description="memory (GB), runtime (seconds), cores, queue, stdout and stderr (log "
        "directories), custom (an object of your own keys: strings, numbers, booleans)"
    ),
]

ScaleKey = Literal["memory", "runtime", "cores"]
Scale = Annotated[float, AllowInfNan(False), Interval(ge=SCALE_MIN, le=SCALE_MAX)]
#: factors applied after a resource error, per key (default memory and runtime x1.5)
ResourceScales = Annotated[
    dict[ScaleKey, Scale],
    Field(
        max_length=3,
        description=f"factors ({SCALE_MIN:g} to {SCALE_MAX:g}) applied after a resource error; "
        "default memory and runtime x1.5; {} for none",
    ),
]
