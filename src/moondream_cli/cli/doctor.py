"""`mdream doctor`: is this installation healthy, and does inference stay private?"""

from __future__ import annotations

import json
from enum import Enum
from typing import TYPE_CHECKING, Annotated, TextIO

import typer

from ..records import escape_line
from ..settings import ModelOptions, Settings
from .options import with_groups
from .output import claim_stdout

if TYPE_CHECKING:
    from ..doctor import Report


class ReportFormat(str, Enum):
    TEXT = "text"
    JSON = "json"


EPILOG = """Examples:

  mdream doctor

  mdream doctor --format json | jq .self_check

  mdream doctor --no-self-check

Exit 0 when healthy; otherwise the exit code of what failed (3 no model installed, or a
model or bundle problem; 4 network use during inference).
"""


def register_doctor_command(app: typer.Typer) -> None:
    app.command("doctor", epilog=EPILOG)(with_groups(ModelOptions)(doctor_command))


def doctor_command(
    *,
    fmt: Annotated[
        ReportFormat, typer.Option("--format", "-f", help="Report format. Default: text.")
    ] = (ReportFormat.TEXT),
    no_self_check: Annotated[
        bool,
        typer.Option(
            "--no-self-check", help="Skip the tiny inference under the guard.", metavar=""
        ),
    ] = False,
    settings: Settings,
) -> None:
    """Report versions, backend, models and a privacy self-check."""
    from .. import doctor as core
    from ..errors import Failed

    out = claim_stdout()  # the self-check loads a model: native prints must not reach stdout
    report = core.gather(settings, self_check=not no_self_check)
    if fmt is ReportFormat.JSON:
        out.write(json.dumps(report.to_dict(), indent=2) + "\n")
    else:
        render_text(report, out)
    out.flush()
    if report.exit_code:
        raise Failed("the installation is not healthy (see the report)", report.exit_code)


def _size(n: int | None) -> str:
    return "unknown" if n is None else f"{n / 2**30:.1f} GiB"


def render_text(report: Report, out: TextIO) -> None:
    rows: list[tuple[str, str]] = [
        ("mdream", report.mdream),
        ("python", f"{report.python} ({report.python_executable})"),
        ("platform", report.platform),
        ("llama-cpp-python", report.llama_cpp or "not loadable"),
        (
            "backend",
            report.backend + ("" if report.gpu_offload else " (no GPU offload in this build)"),
        ),
    ]
    if report.gpu_offload:
        if report.devices:
            for d in report.devices:
                rows.append(
                    (
                        "gpu",
                        f"{d.name}: {d.description}, {_size(d.free_bytes)} free of "
                        f"{_size(d.total_bytes)}",
                    )
                )
        else:
            rows.append(("gpu", "unknown (ggml's device list is not available)"))
    if report.gpu_missing:
        rows.append(("gpu", f"none: {report.gpu_missing}"))
    rows += [
        ("data", f"{report.mdream_home} (from {report.mdream_home_from})"),
        ("models", report.models_dir),
        ("default model", report.default_bundle or "none"),
    ]
    if report.mdream_model:
        rows.append(("MDREAM_MODEL", report.mdream_model))
    if not report.bundles:
        rows.append(("bundles", "none installed"))
    for b in report.bundles:
        mark = " (default)" if b.default else ""
        rows.append(("bundle", f"{b.name}{mark}: {b.state} — {b.detail}"))
    rows += [("leftover", note) for note in report.leftovers]
    check = report.self_check
    timing = f" in {check.seconds:.2f} s" if check.seconds is not None else ""
    model = f" [model {check.model}]" if check.model else ""
    rows.append(("self-check", f"{check.status.upper()}{timing}{model}: {check.detail}"))
    for problem in report.problems:
        rows.append(("problem", problem))
    rows.append(("healthy", "yes" if report.healthy else "no"))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        # Names, paths, manifests and the model's answer: one line each, never a control.
        out.write(f"{key.ljust(width)}  {escape_line(value)}\n")
