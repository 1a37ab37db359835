"""The Slurm executor's pure parts: options from a task's resources (checked before anything is
submitted), array specs, and the verdict on an element that ended without a report."""

import pytest

from farmstead.client.slurm import BadOption, Element, options_for, steps_spec
from farmstead.client.slurm_executor import verdict


def test_resources_become_sbatch_options() -> None:
    res = {
        "memory": 1.5,
        "runtime": 61,
        "cores": 4,
        "queue": "short",
        "custom": {"slurm_account": "lab-1", "slurm_qos": "high", "slurm_options": "--nice=10"},
    }
    assert options_for(res) == [
        "--mem=1536M",
        "--time=2",
        "--cpus-per-task=4",
        "--partition=short",
        "--account=lab-1",
        "--qos=high",
        "--nice=10",
    ]


def test_defaults_come_first_and_a_partition_of_its_own_wins_over_queue() -> None:
    res = {"queue": "short", "custom": {"slurm_partition": "gpu"}}
    assert options_for(res, ("--account=x",)) == ["--account=x", "--partition=gpu"]
    assert options_for(None) == []
    assert options_for({"runtime": 1, "memory": 0.0001}) == ["--mem=1M", "--time=1"]


@pytest.mark.parametrize(
    ("custom", "words"),
    [
        ({"slurm_partition": "a b"}, "not a Slurm partition name"),
        ({"slurm_account": "x;rm -rf /"}, "not a Slurm account name"),
        ({"slurm_qos": 3}, "not a Slurm qos name"),
        ({"slurm_options": "-p short"}, "is not a long option"),
        ({"slurm_options": "--array=0-3"}, "--array is set by the executor"),
        ({"slurm_options": "--wrap='rm x'"}, "--wrap is set by the executor"),
        ({"slurm_options": "--output=/tmp/x"}, "--output is set by the executor"),
        ({"slurm_options": "--comment='open"}, "No closing quotation"),
        ({"slurm_options": 5}, "must be a string"),
    ],
)
def test_bad_options_are_refused_with_a_reason(custom: dict[str, object], words: str) -> None:
    with pytest.raises(BadOption, match=words):
        options_for({"custom": custom})


def test_quoted_values_stay_one_option() -> None:
    res = {"custom": {"slurm_options": "--comment='two words' --constraint=a100"}}
    assert options_for(res) == ["--comment=two words", "--constraint=a100"]


@pytest.mark.parametrize(
    ("steps", "at_once", "spec"),
    [
        ([0], None, "0"),
        ([3, 1, 2, 0], None, "0-3"),
        ([0, 1, 2, 5, 7, 8], 4, "0-2,5,7-8%4"),
        ([9, 9, 4], None, "4,9"),
    ],
)
def test_array_spec_joins_ranges(steps: list[int], at_once: int | None, spec: str) -> None:
    assert steps_spec(steps, at_once) == spec


@pytest.mark.parametrize(
    ("state", "reason", "status", "words"),
    [
        ("TIMEOUT", "TimeLimit", "Z", "Slurm: TIMEOUT (TimeLimit): over its requested resources"),
        ("OUT_OF_MEMORY", "", "Z", "Slurm: OUT_OF_MEMORY: over"),
        ("NODE_FAIL", "", "U", "not the task's fault"),
        ("PREEMPTED", "", "U", "not the task's fault"),
        ("BOOT_FAIL", "", "U", "not the task's fault"),
        ("CANCELLED", "", "E", "cancelled in Slurm, not by farmstead"),
        ("COMPLETED", "", "U", "its worker never reported"),
        ("FAILED", "NonZeroExitCode", "U", "Slurm: FAILED (NonZeroExitCode): the job ended"),
    ],
)
def test_an_element_that_ended_without_a_report_is_judged_by_its_slurm_state(
    state: str, reason: str, status: str, words: str
) -> None:
    got, why = verdict("12_3", Element(state, reason))
    assert got == status and words in why


def test_a_job_slurm_forgot_is_an_unknown_error() -> None:
    assert verdict("12_3", None) == ("U", "Slurm no longer knows job 12_3 and it never reported")
    assert Element("TIMEOUT").ended and not Element("RUNNING").ended
