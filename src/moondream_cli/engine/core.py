"""The engine: one loaded Moondream2 pair answering questions about images.

An image is evaluated once as the KV-cache prefix "BOS, image"; each question then only
evaluates its own tokens after that prefix, so further questions on the same image cost just
their own text. Pixels go straight from memory into libmtmd: no files, no URLs, no
re-encoding. Many images at once go through :mod:`.batching`.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable

from ..errors import InputError, UsageError
from ..images import Pixels
from ..locate import ModelFiles
from ..reference import Fit
from . import native
from .batching import ContinuousBatch
from .options import EngineOptions, Sampling
from .plan import Plan
from .runtime import Runtime, Timings
from .slot import Answer, Request, Slot


class Engine:
    """One loaded text model + mmproj. Not thread-safe: one generation at a time.

    Usable as a context manager; after :meth:`close` every method raises RuntimeError.
    """

    def __init__(self, files: ModelFiles, options: EngineOptions | None = None) -> None:
        self.files = files
        self.options = options or EngineOptions()
        self._runtime: Runtime | None = Runtime(files, self.options)
        self.last_tokens = 0  # tokens sampled by the last `ask` (EOS or stop included)
        self.peak_live = 0  # most sequences `ask_many` decoded together in its last call

    @property
    def _rt(self) -> Runtime:
        if self._runtime is None:
            raise RuntimeError("the engine is closed")
        return self._runtime

    # -- what it is ------------------------------------------------------------------------
    @property
    def plan(self) -> Plan:
        """How the context is laid out: sequences, KV cells, micro-batch."""
        return self._rt.plan

    @property
    def batch(self) -> int:
        """Sequences :meth:`ask_many` decodes together."""
        return self._rt.plan.batch

    @property
    def threads(self) -> int:
        return self._rt.threads

    @property
    def on_gpu(self) -> bool:
        return self._rt.on_gpu

    @property
    def gpu_missing(self) -> str | None:
        """Why this GPU build runs on the CPU (no GPU it can use, e.g. a driver too old for
        its CUDA), in one line; None on a GPU, with ``gpu=False``, or on a CPU build."""
        return self._rt.gpu_missing

    @property
    def load_seconds(self) -> dict[str, float]:
        """Seconds loading took, by part: "text model", "context", "mmproj"."""
        return dict(self._rt.load_seconds)

    @property
    def image_size(self) -> int | None:
        """The projector's square input side, from the mmproj's header (378 for Moondream2)."""
        return self._rt.image_size

    @property
    def fit(self) -> Fit:
        """How images are fitted to :attr:`image_size` (``images.fit``)."""
        return self._rt.fit

    @property
    def pre_tokenizer(self) -> str:
        """The pre-tokenizer llama.cpp uses, mdream's load-time fix included."""
        return self._rt.pre_tokenizer

    @property
    def n_ctx(self) -> int:
        """Positions one sequence may use: image, question and answer."""
        return self._rt.n_ctx

    @property
    def context(self) -> native.Context:
        """The llama.cpp context, for reading what it was given (``n_ctx``, ``n_ubatch``)."""
        return self._rt.context

    @property
    def timings(self) -> Timings:
        """Time spent inside llama.cpp by phase, accumulated; ``timings.reset()`` restarts it."""
        return self._rt.timings

    @property
    def kept_bos(self) -> frozenset[int]:
        """Sequences whose BOS is kept for their next image."""
        return self._rt.kept_bos

    def tokenize(self, text: str) -> list[int]:
        """``text`` as the model's tokens, control tokens spelled out (never parsed)."""
        return self._rt.model.tokenize(text)

    def close(self) -> None:
        if self._runtime is not None:
            self._runtime.close()
            self._runtime = None

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one image at a time, in slot 0 ----------------------------------------------------
    def _image_slot(self) -> Slot:
        slot = self._rt.slots[0]
        if not slot.prefix_len:
            raise UsageError("no image has been set")
        return slot

    @property
    def image_key(self) -> object:
        """The key of the image :meth:`set_image` holds (None: none, or none given)."""
        return self._rt.slots[0].key

    @property
    def image_positions(self) -> int:
        """Positions "BOS, image" of the current image take (0: no image)."""
        return self._rt.slots[0].prefix_len

    def set_image(self, pixels: Pixels, *, key: object = None, label: str | None = None) -> None:
        """Evaluate "BOS, image" as the cache prefix. ``key`` identifies the image for reuse."""
        rt = self._rt
        slot = rt.slots[0]
        if key is not None and key == slot.key:
            return
        slot.key, slot.label = None, label
        rt.eval_image(slot, pixels)
        slot.key = key

    def ask(
        self,
        question: str,
        sampling: Sampling | None = None,
        on_text: Callable[[str], None] | None = None,
    ) -> str:
        """Answer ``question`` about the current image; ``on_text`` receives streamed text."""
        rt, slot = self._rt, self._image_slot()
        rt.stage_question(slot, question, sampling or Sampling(), on_text=on_text)
        return self._answer(slot)

    def continue_image(
        self,
        kept: int,
        tokens: list[int],
        sampling: Sampling,
        on_text: Callable[[str], None] | None = None,
    ) -> tuple[str, list[int]]:
        """A conversation's next turn: keep the first ``kept`` tokens that follow the current
        image in the KV cache (earlier turns, not evaluated again), evaluate ``tokens`` after
        them, and answer. Returns the answer and every token now after the kept ones (the
        prompt's, then the answer's as fed back), for the next turn to match against."""
        rt, slot = self._rt, self._image_slot()
        start = slot.prefix_len + kept
        room = self.n_ctx - start - len(tokens)
        if room < 1:
            raise InputError(
                f"the conversation needs {start + len(tokens)} positions; {self.n_ctx} fit"
            )
        rt.context.remove(slot.seq, start)
        slot.ask(rt.model, tokens, min(sampling.max_tokens, room), sampling, on_text)
        slot.pos = start
        return self._answer(slot), [*tokens, *slot.fed]

    def _answer(self, slot: Slot) -> str:
        """Evaluate the question staged in ``slot`` and sample its answer to the end."""
        rt = self._rt
        try:
            rt.decode_prompts([slot])
            while not slot.sample(rt.context):
                self.last_tokens = slot.tokens
                rt.decode_step([slot])
        finally:
            slot.drop()
        self.last_tokens = slot.tokens
        text, slot.text = slot.text, None
        assert text is not None
        return text

    def trace_logits(
        self, question: str, steps: int, choose: Callable[[memoryview], int]
    ) -> list[int]:
        """For measurements: evaluate ``question`` after the current image, then ``steps``
        times hand ``choose`` the next-token logits (float32, valid during the call) and feed
        the token it returns. Returns the tokens fed."""
        rt, slot = self._rt, self._image_slot()
        rt.stage_question(slot, question, Sampling())
        try:
            rt.decode_prompts([slot])
        finally:
            slot.drop()  # the caller chooses the tokens: no sampler
        return rt.follow(slot, steps, choose)

    # -- many images at once ---------------------------------------------------------------
    def ask_many(
        self,
        requests: Iterable[Request | None],
        sampling: Sampling | None = None,
        *,
        ready: Callable[[], bool] | None = None,
    ) -> Generator[Answer, None, None]:
        """Answer every request's questions, :attr:`batch` images at a time (continuous
        batching, :mod:`.batching`).

        Answers come in the order they finish; ``Answer.tag`` and ``index`` say whose they
        are. Greedy answers are token-identical to :meth:`set_image` + :meth:`ask`. Requests
        are read lazily, so the caller can decode the next images while these run.
        ``ready()``, if given, says whether the next request can be had at once: while it
        says no and some sequence is running, that one goes on instead of waiting for the
        input (a slow pipe). ``requests`` may also yield None for "nothing ready after all":
        the running sequences go on, or, with none running, the next request is asked for at
        once.
        """
        self.peak_live = 0
        # The run empties every sequence: the single path's image is gone after it.
        batch = ContinuousBatch(self._rt, sampling or Sampling())
        try:
            yield from batch.run(requests, ready)
        finally:
            self.peak_live = batch.peak_live
