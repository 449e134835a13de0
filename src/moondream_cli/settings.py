"""What a run is set up with: one typed object that every front-end builds once, in groups.

Each group is the settings of one concern — where the images come from, where the answers
go, which model runs where, how answers are sampled, the cluster, what reaches stderr — and
each command takes the groups it needs (``cli/options.py`` gives every group's fields their
options, shown in one ``--help`` panel per group). :class:`Settings` holds one of each; a
command that does not take a group gets its defaults. The CLI builds a ``Settings`` from its
options, ``moondream_cli.Moondream`` from its arguments, and the runner takes it as it is.

Adding a setting means: a field in its group here, its option in that group's table in
``cli/options.py``, and nothing else (a test holds the two to each other). Copy with
``dataclasses.replace``, never field by field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import UsageError
from .records import Format, SidecarName
from .reference import Fit

if TYPE_CHECKING:  # the engine's package loads Pillow: not for `mdream --help`
    from .engine.options import EngineOptions, Sampling


# llama.cpp's LLAMA_MAX_SEQ: a context with more sequences cannot be made at all.
MAX_BATCH = 256


def _at_least(name: str, value: float | None, least: float, most: float | None = None) -> None:
    """The one range check of a numeric setting, for the command line and the Python API
    alike: a usage error (exit 2) that names the setting, not a command-line flag."""
    if value is not None and not value >= least:  # NaN too
        raise UsageError(f"{name} must be at least {least:g}, not {value:g}")
    if value is not None and most is not None and value > most:
        raise UsageError(f"{name} must be at most {most:g}, not {value:g}")


# ggml's GGML_MAX_N_THREADS: more crashed it (65,536: SIGSEGV; 32,768: libgomp gave up).
MAX_THREADS = 512


@dataclass(frozen=True)
class InputOptions:
    """Where the images come from, besides the command's arguments."""

    recursive: bool = False  # descend into subfolders of folder arguments
    files_from: str | None = None  # a file of paths, '-' for stdin
    null: bool = False  # --files-from entries end in NUL


@dataclass(frozen=True)
class OutputOptions:
    """Where the answers go: stdout in a format, sidecars, and what a failure does."""

    fmt: Format | None = None  # None: text, or nothing on stdout with --sidecar
    sidecar: bool = False  # each answer in a file beside its image
    ext: str = ".txt"  # the sidecar suffix
    # a.txt / a.xmp (stem) or a.jpg.txt / a.jpg.xmp (full); None: stem for .txt, full for XMP
    sidecar_name: SidecarName | None = None
    xmp: bool = False  # the caption (or --style tags' keywords) into the image's XMP sidecar
    xmp_tag_root: str = "mdream"  # the tag mdream's keywords sit under (a/b for a deeper one)
    overwrite: bool = False  # replace existing sidecars instead of skipping their images
    fail_fast: bool = False  # stop at the first input that fails
    resume: str | None = None  # an earlier --format jsonl output: skip what it answered

    def __post_init__(self) -> None:
        from .xmp.rules import tag_path

        tag_path(self.xmp_tag_root)  # a usage error for a root that names no tag


@dataclass(frozen=True)
class ModelOptions:
    """Which model, where it runs, and how images are fed to it."""

    model_dir: Path | None = None  # None: $MDREAM_MODEL, else the default bundle
    cpu: bool = False  # stay on the CPU even when a GPU is there
    threads: int | None = None  # None: engine.default_threads()
    batch: int | None = None  # images answered together; None: the engine's plan
    fit: Fit = Fit.STRETCH  # the reference's stretch to the projector's square, or letterbox
    max_megapixels: float = 250  # larger images are refused (images.MAX_MEGAPIXELS, the same)

    def __post_init__(self) -> None:
        _at_least("threads", self.threads, 1, MAX_THREADS)
        _at_least("batch", self.batch, 1)
        if self.batch is not None and self.batch > MAX_BATCH:
            raise UsageError(
                f"batch must be at most {MAX_BATCH} (llama.cpp's limit on the sequences of one "
                f"context), not {self.batch}"
            )
        _at_least("max_megapixels", self.max_megapixels, 0.01)


@dataclass(frozen=True)
class SamplingOptions:
    """How answers are made."""

    max_tokens: int | None = None  # None: what suits the question (describe's length, ...)
    temperature: float = 0.0  # 0: greedy
    seed: int | None = None

    def __post_init__(self) -> None:
        _at_least("max_tokens", self.max_tokens, 1)
        _at_least("temperature", self.temperature, 0.0)
        if self.seed is not None and not self.temperature:
            raise UsageError("seed only matters with a temperature above 0 (greedy is exact)")


@dataclass(frozen=True)
class ClusterOptions:
    """Many machines (moondream_cli.ray; the 'ray' extra)."""

    ray: str | None = None  # a Ray cluster's address: answer the images there
    workers: int | None = None  # model copies on the cluster; None: one per node
    unordered: bool = False  # records as they finish, not in input order

    def __post_init__(self) -> None:
        _at_least("workers", self.workers, 1)


@dataclass(frozen=True)
class ConsoleOptions:
    """What reaches stderr."""

    verbose: bool = False  # llama.cpp's and libmtmd's own log lines
    quiet: bool = False  # errors only: no progress, no notes

    def __post_init__(self) -> None:
        if self.quiet and self.verbose:
            raise UsageError("--quiet and --verbose contradict each other: choose one")


@dataclass(frozen=True)
class Settings:
    """One of each group; the groups a command does not take keep their defaults."""

    inputs: InputOptions = field(default_factory=InputOptions)
    outputs: OutputOptions = field(default_factory=OutputOptions)
    model: ModelOptions = field(default_factory=ModelOptions)
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    cluster: ClusterOptions = field(default_factory=ClusterOptions)
    console: ConsoleOptions = field(default_factory=ConsoleOptions)

    def sampler(self, default_max_tokens: int, grammar: str | None = None) -> Sampling:
        """How answers are sampled; ``default_max_tokens`` when no ``max_tokens`` is set."""
        from .engine.options import Sampling

        s = self.sampling
        return Sampling(
            max_tokens=s.max_tokens or default_max_tokens,
            temperature=s.temperature,
            seed=s.seed,
            grammar=grammar,
        )

    def engine_options(
        self, *, batch: int | None = None, seq_tokens: int | None = None
    ) -> EngineOptions:
        """The engine's options: ``batch`` when the settings leave it open, and
        ``seq_tokens``, the most text tokens one sequence needs (``EngineOptions``)."""
        from .engine.options import EngineOptions

        m = self.model
        return EngineOptions(
            threads=m.threads,
            gpu=not m.cpu,
            verbose=self.console.verbose,
            batch=m.batch if m.batch is not None else batch,
            seq_tokens=seq_tokens,
            fit=m.fit,
        )
