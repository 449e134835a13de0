"""The engine's settings: how a model is loaded and run (:class:`EngineOptions`), and how an
answer is sampled (:class:`Sampling`). Plain frozen data; copy with ``dataclasses.replace``."""

from __future__ import annotations

from dataclasses import dataclass

from ..reference import Fit


@dataclass(frozen=True)
class EngineOptions:
    threads: int | None = None  # None: engine.default_threads()
    gpu: bool = True  # offload everything when the build supports it
    n_ctx: int = 2048  # per sequence, unless the CPU's automatic batch sizes them (seq_tokens)
    n_batch: int = 1024
    verbose: bool = False
    # Sequences that `Engine.ask_many` decodes together. None: on a GPU as many as half the
    # free memory holds KV caches for, at most MAX_AUTO_BATCH; on the CPU see `seq_tokens`.
    batch: int | None = None
    # The most text tokens one sequence needs after its image (its longest question prompt
    # plus the answer's max_tokens; an upper bound will do). On the CPU it lets the automatic
    # batch size each sequence's KV cache to what it needs instead of n_ctx, and fit 2 or 3 in
    # about the memory of one (bench/README.md, "Batched folder runs"). None (unknown): 1
    # sequence on the CPU.
    seq_tokens: int | None = None
    # Tokens llama.cpp computes at once. None: CPU_UBATCH on the CPU, 512 elsewhere.
    n_ubatch: int | None = None
    # llama.cpp's flash attention in the text model and in the vision encoder. None: off for
    # the text model on the CPU, where it halves the answer speed (bench/README.md, "Flash
    # attention"); elsewhere llama.cpp decides (on wherever it is supported).
    flash_attn: bool | None = None
    vision_flash_attn: bool | None = None
    # Images that start together (continuous batching) evaluated into the KV cache in one
    # llama_decode, their encodes back to back. None: on the GPU only; on the CPU it does
    # not pay (bench/README.md, "Batched image prefill").
    batched_prefill: bool | None = None
    # How an image is fitted to the projector's square: the reference's stretch, or
    # llama.cpp's letterbox (docs/fidelity.md).
    fit: Fit = Fit.STRETCH


@dataclass(frozen=True)
class Sampling:
    max_tokens: int = 256
    temperature: float = 0.0  # 0: greedy, same input gives the same output
    seed: int | None = None
    grammar: str | None = None  # GBNF, root rule "root"
    # Exactly max_tokens tokens: EOS is masked and no turn marker stops the answer.
    # For benchmarks, where both sides must generate the same number of tokens.
    fixed_length: bool = False
    # Score instead of answering (`mdream grep`): the answer is the model's probability of
    # yes against no at the first answer position, P(yes) / (P(yes) + P(no)), summed over
    # these token ids (the tokens a "yes" or a "no" can start with); nothing is sampled.
    yes_no: tuple[tuple[int, ...], tuple[int, ...]] | None = None
