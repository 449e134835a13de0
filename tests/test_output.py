"""The CLI's one stderr writer: error, warning and note lines, quiet, and llama.cpp's lines."""

from __future__ import annotations

import pytest

from moondream_cli.cli.output import Output
from moondream_cli.errors import Failed, Interrupted, ModelError


def test_lines_have_one_prefix_each_and_quiet_keeps_only_errors(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for quiet in (False, True):
        out = Output(quiet=quiet, live=False)
        out.error("a.jpg: corrupt")
        out.warn("disk almost full")
        out.info("no images found")
    assert capsys.readouterr().err.splitlines() == [
        "mdream: error: a.jpg: corrupt",
        "mdream: warning: disk almost full",
        "mdream: no images found",
        "mdream: error: a.jpg: corrupt",
    ]


def test_a_newline_or_escape_in_a_name_cannot_forge_or_drive_a_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    Output(live=False).error("a.jpg\nmdream: all good\x1b[2J: corrupt")
    assert capsys.readouterr().err == "mdream: error: a.jpg\\nmdream: all good\\x1b[2J: corrupt\n"


def test_steps_are_announced_without_a_bar_except_a_folder_run(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with Output(live=False) as out:
        out.start("downloading text.gguf", 100)
        out.advance(100)
        out.finish()
        out.start("images", None, unit="images")
        out.advance(1, failed=1)
    assert capsys.readouterr().err == "mdream: downloading text.gguf\n"
    assert not Output(live=False).wants_total


def test_errors_are_reported_once_and_interruptions_plainly(
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = Output(live=False)
    out.report(ModelError("no model", path="/m"))
    out.report(Interrupted("terminated", 143))
    out.report(Failed("2 of 5 inputs failed"))  # each was reported as it failed
    assert capsys.readouterr().err.splitlines() == [
        "mdream: error: /m: no model",
        "mdream: terminated",
    ]


def test_native_log_pieces_come_out_as_whole_lines(capsys: pytest.CaptureFixture[str]) -> None:
    out = Output(live=False)
    for piece in ("llama_model_load: ", "loading\nclip: ", "ok\n", "."):
        out.native_log(piece)
    assert capsys.readouterr().err == "llama_model_load: loading\nclip: ok\n"


def test_the_eta_uses_the_same_overall_rate_as_the_rate_column() -> None:
    # "3/63 0.14 img/s … ETA 0:00:01": rich's windowed speed drove the ETA.
    from moondream_cli.cli.output import _bar

    bars = _bar("images")
    bars.add_task("images", total=63, failed=0)
    task = bars.tasks[0]
    task.start_time = task.get_time() - 21.4
    task.completed = 3
    shown = [str(column.render(task)) for column in bars.columns if not isinstance(column, str)]
    assert "0.14 img/s" in shown
    assert "ETA 0:07:08" in shown  # 60 images left at 3 per 21.4 s
