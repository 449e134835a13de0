"""One settings object per run: every field is an option of describe and ask, and the CLI
hands the command exactly what was typed, typed."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer
import typer.main
from typer.testing import CliRunner

from moondream_cli.cli.app import app
from moondream_cli.cli.options import SETTING_OPTIONS, with_settings
from moondream_cli.records import Format
from moondream_cli.settings import Settings


def test_every_setting_is_an_option_of_describe_and_ask() -> None:
    fields = [f.name for f in dataclasses.fields(Settings)]
    assert list(SETTING_OPTIONS) == fields  # in the dataclass's order
    root = typer.main.get_command(app)
    for name in ("describe", "ask"):
        command = root.commands[name]  # type: ignore[attr-defined]
        params = {p.name for p in command.params}
        assert set(fields) <= params, name
        assert "settings" not in params


def _capture(*args: str) -> Settings:
    seen: list[Settings] = []

    def command(
        images: Annotated[list[str] | None, typer.Argument()] = None, *, settings: Settings
    ) -> None:
        seen.append(settings)

    probe = typer.Typer()
    probe.command()(with_settings(command))
    result = CliRunner().invoke(probe, list(args))
    assert result.exit_code == 0, result.output
    return seen[0]


def test_the_command_gets_the_defaults_of_the_dataclass() -> None:
    assert _capture("x.jpg") == Settings()


def test_the_command_gets_each_option_typed() -> None:
    got = _capture(
        "x.jpg", "--threads", "3", "--format", "csv", "--cpu", "-m", "/models/m", "-n", "9",
        "--temperature", "0.5", "--sidecar", "--ext", "cap", "--quiet", "-r",
    )  # fmt: skip
    want = Settings(
        threads=3,
        fmt=Format.CSV,
        cpu=True,
        model_dir=Path("/models/m"),
        max_tokens=9,
        temperature=0.5,
        sidecar=True,
        ext="cap",
        quiet=True,
        recursive=True,
    )
    assert got == want


def test_a_choice_outside_the_enum_is_refused_by_the_parser() -> None:
    probe = typer.Typer()
    probe.command()(with_settings(lambda *, settings: None))
    result = CliRunner().invoke(probe, ["--format", "xml"])
    assert result.exit_code == 2
    assert "'xml'" in result.output and "'tsv'" in result.output


def test_settings_build_the_engine_options_and_sampling() -> None:
    s = Settings(cpu=True, threads=2, max_tokens=None, temperature=0.7, seed=5, batch=None)
    options = s.engine_options(batch=1, seq_tokens=300)
    assert (options.gpu, options.threads, options.batch, options.seq_tokens) == (False, 2, 1, 300)
    assert dataclasses.replace(s, batch=4).engine_options(batch=1).batch == 4  # yours wins
    sampling = s.sampling(64, grammar="root ::= x")
    assert (sampling.max_tokens, sampling.temperature, sampling.seed) == (64, 0.7, 5)
    assert sampling.grammar == "root ::= x"
    assert dataclasses.replace(s, max_tokens=12).sampling(64).max_tokens == 12
