"""`mdream grep`: find images by what they show, ranked by the model's own probability.

Each query becomes a yes/no question (``prompts.grep_question``) and each image gets, per
query, the model's probability of a yes against a no at the first answer token: one
forward pass after the image, no token sampled, every query on one encode of the image
(the image's KV prefix is reused, as for ``ask -q``). An image matches when any query's
score reaches ``min_p``. The images are answered by the same backends as describe and ask
(local continuous batching, or Ray), with the same inputs, guard, errors and progress.

A score is the model's probability, not a calibrated truth: on its own world the tests'
trained model separates well, and what a threshold means for a real folder is for its
user to see (``--scores``, ``--sort``).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, TextIO

from . import interrupt
from .errors import OutputError
from .progress import Progress
from .records import escape, escape_line

if TYPE_CHECKING:  # the job's module loads Pillow: not for `mdream --help`
    from .job import Job
    from .runner import ImageResult


class GrepFormat(str, Enum):
    """One record per image, every query's score in it."""

    JSONL = "jsonl"
    CSV = "csv"
    TSV = "tsv"


@dataclass(frozen=True)
class GrepPolicy:
    """What ``mdream grep`` prints: the options grep users know, and the score's own."""

    queries: tuple[str, ...]  # as typed: the records' keys
    min_p: float = 0.5  # the threshold a score must reach
    invert: bool = False  # -v: the images that do not match
    count: bool = False  # -c: how many, not which
    print0: bool = False  # -Z: NUL after each path, for xargs -0
    scores: bool = False  # score<TAB>path
    top: int | None = None  # the K best, best first (reads every input first)
    sort: bool = False  # best first (reads every input first)
    fmt: GrepFormat | None = None

    @property
    def ranked(self) -> bool:
        return self.sort or self.top is not None


@dataclass(frozen=True)
class Hit:
    """One image's scores, one per query, or why it has none."""

    path: str
    scores: tuple[float, ...] = ()
    error: str | None = None

    @property
    def best(self) -> float:
        return max(self.scores, default=0.0)

    def matches(self, min_p: float) -> bool:
        return self.error is None and self.best >= min_p


@dataclass
class GrepOutcome:
    seen: int = 0
    matched: int = 0  # images that match (or, with -v, that do not)
    failed: int = 0


def run_grep(job: Job, policy: GrepPolicy, out: TextIO, progress: Progress) -> GrepOutcome:
    """Score every input of ``job`` (its questions are the queries' questions, its
    ``scoring`` on) and print what ``policy`` asks for; errors go to ``progress``."""
    from .backends import Hooks, backend_for

    outcome = GrepOutcome()
    with job.sources() as sources:
        progress.start("images", None, unit="images")
        try:
            hooks = Hooks(note=progress.info, warn=progress.warn)
            results = backend_for(job.settings).results(job, sources, hooks)
            try:
                hits = _hits(results, outcome, progress)
                _print(hits if not policy.ranked else _ranked(hits, policy), policy, out, outcome)
            finally:
                results.close()
        finally:
            progress.finish()
    return outcome


def _hits(
    results: Iterable[ImageResult], outcome: GrepOutcome, progress: Progress
) -> Iterator[Hit]:
    for result in results:
        records = result.records
        outcome.seen += 1
        bad = [r for r in records if not r.ok]
        if bad:
            outcome.failed += 1
            progress.error(f"{records[0].path}: {bad[0].error}")
            progress.advance(1, failed=1)
            yield Hit(records[0].path, error=bad[0].error)
            continue
        progress.advance(1)
        if records:
            yield Hit(records[0].path, tuple(float(r.answer or 0) for r in records))


def _ranked(hits: Iterable[Hit], policy: GrepPolicy) -> list[Hit]:
    ranked = sorted(hits, key=lambda h: -h.best if h.error is None else 1.0)
    return ranked[: policy.top] if policy.top is not None else ranked


def _print(hits: Iterable[Hit], policy: GrepPolicy, out: TextIO, outcome: GrepOutcome) -> None:
    end = "\0" if policy.print0 else "\n"
    if policy.fmt is not None:
        _write(out, _header(policy))
    for hit in hits:
        wanted = hit.error is None and hit.matches(policy.min_p) != policy.invert
        outcome.matched += wanted
        if policy.fmt is not None:
            _write(out, _record(hit, policy))
        elif wanted and not policy.count:
            path = hit.path if policy.print0 else escape(hit.path)
            _write(out, f"{hit.best:.4f}\t{path}{end}" if policy.scores else f"{path}{end}")
    if policy.count and policy.fmt is None:
        _write(out, f"{outcome.matched}\n")


def _header(policy: GrepPolicy) -> str:
    if policy.fmt is GrepFormat.JSONL:
        return ""
    columns = ["path", "match", *(f"score: {q}" for q in policy.queries), "error"]
    return _row(columns, policy.fmt)


def _record(hit: Hit, policy: GrepPolicy) -> str:
    match = hit.matches(policy.min_p)
    if policy.fmt is GrepFormat.JSONL:
        by_query = dict(zip(policy.queries, hit.scores, strict=False)) if hit.scores else None
        record = {"path": hit.path, "match": match, "scores": by_query, "error": hit.error}
        return json.dumps(record, ensure_ascii=False) + "\n"
    cells = [f"{s:.4f}" for s in hit.scores] or [""] * len(policy.queries)
    return _row([hit.path, "yes" if match else "no", *cells, hit.error or ""], policy.fmt)


def _row(cells: list[str], fmt: GrepFormat | None) -> str:
    if fmt is GrepFormat.TSV:
        return "\t".join(escape(c) for c in cells) + "\n"
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(cells)
    return buffer.getvalue()


def _write(out: TextIO, text: str) -> None:
    if not text:
        return
    try:
        with interrupt.shielded():  # a line lands whole, or not at all
            out.write(text)
            out.flush()
    except BrokenPipeError:
        raise
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise OutputError(
            f"cannot write the results to stdout: {escape_line(str(reason))}"
        ) from exc
