"""The Slurm executor's options from a task's resources, checked before anything is submitted."""

import pytest

from farmstead.client.slurm import BadOption, options_for, steps_spec


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
