"""One settings object per run, in groups: every field of a group is an option of each command
that takes the group, shown in the group's --help panel, and the CLI hands the command
exactly what was typed, typed."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, get_args

import pytest
import typer
import typer.main
from typer.testing import CliRunner

from moondream_cli.cli.app import app
from moondream_cli.cli.options import GROUPS, SETTINGS_FIELD, with_groups
from moondream_cli.errors import UsageError
from moondream_cli.records import Format
from moondream_cli.settings import (
    ClusterOptions,
    ConsoleOptions,
    InputOptions,
    ModelOptions,
    OutputOptions,
    SamplingOptions,
    Settings,
)

ALL = (InputOptions, OutputOptions, ModelOptions, SamplingOptions, ClusterOptions, ConsoleOptions)


def test_every_field_of_a_group_has_its_option_in_the_groups_table() -> None:
    for group, spec in GROUPS.items():
        assert list(spec.options) == [f.name for f in dataclasses.fields(group)], group
    assert set(SETTINGS_FIELD.values()) == {f.name for f in dataclasses.fields(Settings)}


def test_no_two_groups_share_an_option_name() -> None:
    flags = [
        name
        for spec in GROUPS.values()
        for annotation in spec.options.values()
        for name in get_args(annotation)[1].param_decls
    ]
    assert len(flags) == len(set(flags))


def _params(command: str) -> dict[str, str | None]:
    """The command's options: their name → the --help panel they are shown in."""
    root = typer.main.get_command(app)
    group = root
    for word in command.split():
        group = group.commands[word]  # type: ignore[attr-defined]
    return {p.name: getattr(p, "rich_help_panel", None) for p in group.params if p.name}


def test_each_command_takes_the_groups_it_declares_and_no_more() -> None:
    every = {f.name for g in ALL for f in dataclasses.fields(g)}
    for name in ("describe", "ask"):
        params = _params(name)
        assert every <= set(params), name
        assert "settings" not in params
        for group in ALL:
            for f in dataclasses.fields(group):
                assert params[f.name] == GROUPS[group].panel, (name, f.name)
    doctor = _params("doctor")
    model = {f.name for f in dataclasses.fields(ModelOptions)}
    assert model <= set(doctor)
    # No --sidecar, --ray, --files-from, --quiet (its --format is its report's own).
    assert (every - model) & set(doctor) == {"fmt"}
    assert doctor["fmt"] is None


def _capture(*args: str, groups: tuple[type, ...] = ALL) -> Settings:
    seen: list[Settings] = []

    def command(
        images: Annotated[list[str] | None, typer.Argument()] = None, *, settings: Settings
    ) -> None:
        seen.append(settings)

    probe = typer.Typer()
    probe.command()(with_groups(*groups)(command))
    result = CliRunner().invoke(probe, list(args))
    assert result.exit_code == 0, result.output
    return seen[0]


def test_the_command_gets_the_defaults_of_the_dataclasses() -> None:
    assert _capture("x.jpg") == Settings()


def test_the_command_gets_each_option_typed_in_its_group() -> None:
    got = _capture(
        "x.jpg", "--threads", "3", "--format", "csv", "--cpu", "-m", "/models/m", "-n", "9",
        "--temperature", "0.5", "--sidecar", "--ext", "cap", "--quiet", "-r",
    )  # fmt: skip
    want = Settings(
        inputs=InputOptions(recursive=True),
        outputs=OutputOptions(fmt=Format.CSV, sidecar=True, ext="cap"),
        model=ModelOptions(threads=3, cpu=True, model_dir=Path("/models/m")),
        sampling=SamplingOptions(max_tokens=9, temperature=0.5),
        console=ConsoleOptions(quiet=True),
    )
    assert got == want


def test_a_group_a_command_does_not_take_is_not_an_option() -> None:
    probe = typer.Typer()
    probe.command()(with_groups(ModelOptions)(lambda *, settings: None))
    result = CliRunner().invoke(probe, ["--sidecar"])
    assert result.exit_code == 2
    assert _capture("--cpu", groups=(ModelOptions,)) == Settings(model=ModelOptions(cpu=True))


def test_a_choice_outside_the_enum_is_refused_by_the_parser() -> None:
    probe = typer.Typer()
    probe.command()(with_groups(OutputOptions)(lambda *, settings: None))
    result = CliRunner().invoke(probe, ["--format", "xml"])
    assert result.exit_code == 2
    assert "'xml'" in result.output and "'tsv'" in result.output


def test_settings_build_the_engine_options_and_sampling() -> None:
    s = Settings(
        model=ModelOptions(cpu=True, threads=2, batch=None),
        sampling=SamplingOptions(max_tokens=None, temperature=0.7, seed=5),
    )
    options = s.engine_options(batch=1, seq_tokens=300)
    assert (options.gpu, options.threads, options.batch, options.seq_tokens) == (False, 2, 1, 300)
    yours = dataclasses.replace(s, model=dataclasses.replace(s.model, batch=4))
    assert yours.engine_options(batch=1).batch == 4  # yours wins
    sampling = s.sampler(64, grammar="root ::= x")
    assert (sampling.max_tokens, sampling.temperature, sampling.seed) == (64, 0.7, 5)
    assert sampling.grammar == "root ::= x"
    twelve = dataclasses.replace(s, sampling=dataclasses.replace(s.sampling, max_tokens=12))
    assert twelve.sampler(64).max_tokens == 12


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: ModelOptions(threads=0), "threads must be at least 1, not 0"),
        (lambda: ModelOptions(batch=257), "batch must be at most 256"),
        (lambda: ModelOptions(max_megapixels=0), "max_megapixels must be at least 0.01"),
        (lambda: SamplingOptions(max_tokens=-5), "max_tokens must be at least 1, not -5"),
        (lambda: SamplingOptions(max_tokens=0), "max_tokens must be at least 1, not 0"),
        (lambda: SamplingOptions(temperature=-1), "temperature must be at least 0"),
        (lambda: SamplingOptions(temperature=float("nan")), "temperature must be at least 0"),
        (lambda: SamplingOptions(seed=3), "seed only matters with a temperature above 0"),
        (lambda: ClusterOptions(workers=0), "workers must be at least 1"),
        (lambda: ConsoleOptions(quiet=True, verbose=True), "contradict each other"),
    ],
)
def test_a_group_refuses_what_no_command_line_could_mean(
    make: Callable[[], object], message: str
) -> None:
    # The same rule for the CLI and the Python API: a usage error naming the setting.
    with pytest.raises(UsageError, match=re.escape(message)):
        make()
