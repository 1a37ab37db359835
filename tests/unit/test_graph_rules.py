"""Dependencies as pure data: cycle finding, name checks, and what a workflow's status says."""

import pytest

from farmstead.fsm import workflow_status
from farmstead.schemas import TaskSpec
from farmstead.services.errors import BadRequest
from farmstead.services.graph import check_names, find_cycle


def _tasks(deps: dict[str, list[str]]) -> list[TaskSpec]:
    return [TaskSpec(name=n, command="true", depends_on=d or None) for n, d in deps.items()]


def test_no_cycle_in_a_diamond_and_in_a_long_chain() -> None:
    assert find_cycle(4, [(1, 0), (2, 0), (3, 1), (3, 2)]) == []
    n = 100_000  # iterative: no recursion limit on a chain this long
    assert find_cycle(n, [(i, i - 1) for i in range(1, n)]) == []


def test_a_cycle_is_given_as_its_path() -> None:
    cycle = find_cycle(4, [(0, 2), (1, 0), (2, 1), (3, 3)])
    assert cycle in ([0, 2, 1, 0], [3, 3])
    assert find_cycle(1, [(0, 0)]) == [0, 0]


def test_check_names_gives_edges_by_index() -> None:
    edges = check_names(_tasks({"a": [], "b": ["a"], "c": ["a", "b", "a"]}))
    assert sorted(edges) == [(1, 0), (2, 0), (2, 1)]  # a name twice is one edge


@pytest.mark.parametrize(
    ("deps", "words"),
    [
        ({"a": ["x"], "b": ["y"]}, ["'a' depends on unknown task 'x'", "'y'"]),
        ({"a": ["b"], "b": ["c"], "c": ["a"]}, ["cycle", "→"]),
    ],
)
def test_bad_names_are_named(deps: dict[str, list[str]], words: list[str]) -> None:
    with pytest.raises(BadRequest) as caught:
        check_names(_tasks(deps))
    for word in words:
        assert word in str(caught.value)


def test_a_blocked_task_ends_the_workflow_failed_once_nothing_moves() -> None:
    assert workflow_status({"D": 3, "B": 2, "F": 1}).value == "F"
    assert workflow_status({"D": 3, "B": 2, "H": 1}).value == "R"  # something still waits
    assert workflow_status({"F": 1, "B": 2}, cancelled=True).value == "C"
    assert workflow_status({"D": 3}).value == "D"
