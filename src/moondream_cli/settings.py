"""What a run is set up with, in one typed object that every front-end builds once.

The CLI builds a :class:`Settings` from its options (one option per field, ``cli/options.py``),
``moondream_cli.Moondream`` from its arguments, and the runner takes it as it is. Adding a
setting means: a field here, its option there, and nothing else — the runner and the engine
read it from here. Copy with ``dataclasses.replace``, never field by field.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .records import Format
from .reference import Fit

if TYPE_CHECKING:  # the engine's package loads Pillow: not for `mdream --help`
    from .engine.options import EngineOptions, Sampling


@dataclass(frozen=True)
class Settings:
    # -- inputs
    recursive: bool = False  # descend into subfolders of folder arguments
    files_from: str | None = None  # a file of paths, '-' for stdin
    null: bool = False  # --files-from entries end in NUL
    # -- outputs
    fmt: Format | None = None  # None: text, or nothing on stdout with --sidecar
    sidecar: bool = False  # each answer in a file beside its image
    ext: str = ".txt"  # the sidecar suffix
    overwrite: bool = False  # replace existing sidecars instead of skipping their images
    fail_fast: bool = False  # stop at the first input that fails
    resume: str | None = None  # an earlier --format jsonl output: skip what it answered
    # -- the model and where it runs
    model_dir: Path | None = None  # None: $MDREAM_MODEL, else the default bundle
    cpu: bool = False  # stay on the CPU even when a GPU is there
    threads: int | None = None  # None: physical cores
    # -- answers
    max_tokens: int | None = None  # None: what suits the question (describe's length, ...)
    temperature: float = 0.0  # 0: greedy
    seed: int | None = None
    batch: int | None = None  # images answered together; None: the engine's plan
    fit: Fit = Fit.STRETCH  # the reference's stretch to the projector's square, or letterbox
    max_megapixels: float = 250  # larger images are refused (images.MAX_MEGAPIXELS, the same)
    # -- many machines (moondream_cli.ray; the 'ray' extra)
    ray: str | None = None  # a Ray cluster's address: answer the images there
    workers: int | None = None  # model copies on the cluster; None: one per node
    unordered: bool = False  # records as they finish, not in input order
    # -- what reaches stderr
    verbose: bool = False  # llama.cpp's and libmtmd's own log lines
    quiet: bool = False  # errors only: no progress, no notes

    def sampling(self, default_max_tokens: int, grammar: str | None = None) -> Sampling:
        """How answers are sampled; ``default_max_tokens`` when no ``max_tokens`` is set."""
        from .engine.options import Sampling

        return Sampling(
            max_tokens=self.max_tokens or default_max_tokens,
            temperature=self.temperature,
            seed=self.seed,
            grammar=grammar,
        )

    def engine_options(
        self, *, batch: int | None = None, seq_tokens: int | None = None
    ) -> EngineOptions:
        """The engine's options: ``batch`` when the settings leave it open, and
        ``seq_tokens``, the most text tokens one sequence needs (``EngineOptions``)."""
        from .engine.options import EngineOptions

        return EngineOptions(
            threads=self.threads,
            gpu=not self.cpu,
            verbose=self.verbose,
            batch=self.batch if self.batch is not None else batch,
            seq_tokens=seq_tokens,
            fit=self.fit,
        )
