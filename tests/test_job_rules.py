"""The rules between options (``job.RULES``), one case per rule: a job that breaks it, and
only it, is refused with its message (exit 2); the same job with the rule kept is made."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from moondream_cli.errors import EXIT_USAGE, UsageError
from moondream_cli.job import RULES, Job
from moondream_cli.records import Format
from moondream_cli.settings import (
    ClusterOptions,
    InputOptions,
    OutputOptions,
    SamplingOptions,
    Settings,
)

In, Out, Cl = InputOptions, OutputOptions, ClusterOptions

# (what breaks the rule: Job fields, and the message it gets)
CASES: list[tuple[dict[str, Any], str]] = [
    ({"inputs": ()}, "no images given"),
    ({"settings": Settings(inputs=In(null=True))}, "-0/--null only applies to --files-from"),
    (
        {"inputs": ("-",), "settings": Settings(inputs=In(files_from="-"))},
        "stdin cannot hold both an image and the --files-from list",
    ),
    ({"settings": Settings(outputs=Out(overwrite=True))}, "only apply with --sidecar"),
    (
        {"inputs": ("-",), "settings": Settings(outputs=Out(sidecar=True))},
        "--sidecar needs image files",
    ),
    (
        {"questions": ("a?", "b?"), "settings": Settings(outputs=Out(sidecar=True))},
        "--sidecar holds one answer per image",
    ),
    ({"questions": ("  ",)}, "the question is empty"),
    (
        {"settings": Settings(outputs=Out(sidecar=True, ext="jpg"))},
        "--ext jpg is an image suffix",
    ),
    ({"settings": Settings(cluster=Cl(workers=2))}, "--workers and --unordered only apply"),
    (
        {"inputs": ("-",), "settings": Settings(cluster=Cl(ray="h:1"))},
        "--ray needs image files the workers can read",
    ),
    ({"settings": Settings(outputs=Out(resume="r.jsonl"))}, "add --format jsonl"),
]

VALID = Job(("a.jpg",), ("What?",), Settings(), 8)


def test_every_rule_has_a_case() -> None:
    assert len(CASES) == len(RULES)


@pytest.mark.parametrize(("change", "message"), CASES, ids=[m for _, m in CASES])
def test_a_job_that_breaks_one_rule_is_refused_with_its_message(
    change: dict[str, Any], message: str
) -> None:
    with pytest.raises(UsageError) as caught:
        replace(VALID, **change)
    assert message in str(caught.value)
    assert caught.value.exit_code == EXIT_USAGE
    # Exactly one rule is broken: each case tests its own row, not a neighbour's.
    probe = object.__new__(Job)
    for name, value in {**vars(VALID), **change}.items():
        object.__setattr__(probe, name, value)
    assert sum(rule.broken(probe) for rule in RULES) == 1


def test_the_same_options_in_a_valid_combination_are_accepted() -> None:
    ok = [
        Settings(inputs=In(files_from="list.txt", null=True)),
        Settings(outputs=Out(sidecar=True, overwrite=True, ext=".cap")),
        Settings(cluster=Cl(ray="h:1", workers=2, unordered=True)),
        Settings(outputs=Out(fmt=Format.JSONL, resume="r.jsonl")),
        Settings(sampling=SamplingOptions(temperature=0.5, seed=3)),
    ]
    for settings in ok:
        assert replace(VALID, settings=settings).settings == settings
