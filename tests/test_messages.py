"""The words a hurried person reads: usage errors in one line that ends with where the help
is, suggestions only when they are close, and numbers that read right."""

from __future__ import annotations

import pytest

from moondream_cli.cli.app import main
from moondream_cli.errors import InputError
from moondream_cli.grammars import choices_constraint
from moondream_cli.images import _check_size


def _usage(capsys: pytest.CaptureFixture[str], *argv: str) -> list[str]:
    with pytest.raises(SystemExit) as done:
        main(list(argv))
    assert done.value.code == 2
    return capsys.readouterr().err.splitlines()


def test_an_unknown_option_is_one_line_without_unrelated_suggestions(
    capsys: pytest.CaptureFixture[str],
) -> None:
    lines = _usage(capsys, "describe", "--bogus", "x.jpg")
    assert lines == ["mdream: error: no such option: --bogus — see 'mdream describe --help'"]


def test_a_mistyped_option_gets_the_close_one(capsys: pytest.CaptureFixture[str]) -> None:
    (line,) = _usage(capsys, "describe", "--verbos", "x.jpg")
    assert "no such option: --verbos (did you mean --verbose?)" in line


def test_a_bad_choice_names_the_choices_without_a_validator_prefix(
    capsys: pytest.CaptureFixture[str],
) -> None:
    (line,) = _usage(capsys, "describe", "x.jpg", "--length", "huge")
    assert "'huge' is not one of 'short', 'normal', 'long'" in line
    assert "Value error" not in line


def test_plain_mdream_shows_the_help_and_nothing_after_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as done:
        main([])
    captured = capsys.readouterr()
    assert done.value.code == 2
    assert "Commands" in captured.out + captured.err
    assert "Try '" not in captured.err and "error" not in captured.err


def test_a_size_just_over_the_limit_never_reads_as_the_limit() -> None:
    with pytest.raises(InputError, match=r"1001×1000 is 1\.001 MP, over the 1 MP limit"):
        _check_size((1001, 1000), 1)
    with pytest.raises(InputError, match=r"20000×20000 is 400 MP, over the 250 MP limit"):
        _check_size((20000, 20000), 250)


def test_one_token_is_one_token() -> None:
    constraint = choices_constraint(["yes", "no"])
    with pytest.raises(InputError, match=r"within 1 token \("):
        constraint.check("ye", 1)


def test_a_batch_llama_cpp_cannot_make_is_a_usage_error_naming_the_limit(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # It used to load the model, then blame the model file: "cannot create a context".
    (line,) = _usage(capsys, "describe", "x.jpg", "--batch", "257")
    assert "batch must be at most 256 (llama.cpp's limit on the sequences of one context)" in line


def test_help_reads_as_a_person_writes_it() -> None:
    from typer.testing import CliRunner

    from moondream_cli.cli.app import app

    runner = CliRunner()
    usages = {
        ("describe",): "mdream describe [OPTIONS] IMAGE...",
        ("ask",): "mdream ask [OPTIONS] IMAGE... [QUESTION]",
        ("bundle", "install"): "mdream bundle install [OPTIONS] TARBALL",
        ("bundle", "default"): "mdream bundle default [OPTIONS] [NAME]",
    }
    for words, usage in usages.items():
        shown = runner.invoke(app, [*words, "--help"], terminal_width=100).output
        assert usage in shown, shown
        for noise in ("<bool>", "<list[str]>", "<int range>", "<float range>", "[default:"):
            assert noise not in shown, (words, noise)
