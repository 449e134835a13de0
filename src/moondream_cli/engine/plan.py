"""How to lay out a context on this machine: threads, sequences, KV cells and micro-batches.

Pure functions of the options and of what the hardware and the model files say, so that each
rule can be tested without loading a model. The measurements behind the numbers are in
bench/README.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..errors import ModelError
from ..gguf_meta import read_metadata
from .options import EngineOptions

MAX_AUTO_BATCH = 32
# The CPU's automatic batch: its KV caches together stay within this many times one
# n_ctx-sized cache (so peak memory barely moves), and it stays below 8 sequences, where
# llama.cpp switches the decode step's matrix kernel: below it, every answer is bit-identical
# to the one the image gets on its own.
CPU_KV_BUDGET = 1.25
CPU_MAX_AUTO_BATCH = 7
# Tokens per micro-batch on the CPU: causal attention in 256-token blocks does less work than
# in 512 (bench/README.md, "Micro-batches").
CPU_UBATCH = 256
GPU_UBATCH = 512
GPU_FALLBACK_BATCH = 8  # when the free GPU memory cannot be read
# The most images whose prefills go in one llama_decode (batched prefill): n_batch grows to
# hold them, and so do the host copies of their embeddings (6 MB an image for Moondream2).
PREFILL_GROUP = 8


@dataclass(frozen=True)
class Plan:
    """A context's layout: ``batch`` sequences, each with its own KV stream."""

    batch: int  # sequences decoded together
    seq_positions: int  # KV positions one sequence may use
    seq_cells: int  # KV cells its stream gets (spare cells on the CPU, `cpu_kv_cells`)
    n_batch: int
    n_ubatch: int
    flash_attn: bool | None  # the text model's; None: llama.cpp decides
    # Positions per image the CPU batch was sized for; an image that takes more must stop
    # the run, or answers would be cut short. None: no image-dependent sizing.
    image_positions: int | None = None
    batched_prefill: bool = False  # images that start together: one llama_decode

    @property
    def n_ctx(self) -> int:
        """KV cells in all."""
        return self.seq_cells * self.batch


def plan(
    options: EngineOptions,
    *,
    on_gpu: bool,
    image_positions: int | None,
    kv_bytes_per_position: int,
    gpu_free_bytes: int | None = None,
    prefill_positions: int | None = None,
) -> Plan:
    """The layout for ``options`` on this machine.

    ``image_positions``: what "BOS, image" takes (:func:`image_positions`, None if unknown),
    to size the CPU's batch; ``kv_bytes_per_position``: one sequence's KV bytes per position;
    ``gpu_free_bytes``: free GPU memory, when ``on_gpu`` (None if unknown);
    ``prefill_positions``: what an image takes, to size n_batch for batched prefill.
    """
    n_ctx = options.n_ctx
    sized_for: int | None = None
    if options.batch:
        batch, seq_positions = max(1, options.batch), n_ctx
    elif on_gpu:
        batch, seq_positions = gpu_batch(gpu_free_bytes, kv_bytes_per_position * n_ctx), n_ctx
    else:
        batch, seq_positions = cpu_batch(n_ctx, image_positions, options.seq_tokens)
        if batch > 1:
            sized_for = image_positions
    n_ubatch = options.n_ubatch or (GPU_UBATCH if on_gpu else CPU_UBATCH)
    flash_attn = options.flash_attn
    if flash_attn is None and not on_gpu:
        flash_attn = False
    seq_cells = seq_positions if on_gpu else cpu_kv_cells(seq_positions)
    batched = on_gpu if options.batched_prefill is None else options.batched_prefill
    batched = batched and batch > 1 and prefill_positions is not None
    n_batch = options.n_batch
    if batched and prefill_positions is not None:
        # Room for a group of images in one llama_decode (llama.cpp caps n_batch at n_ctx).
        group = min(batch, PREFILL_GROUP) * prefill_positions
        n_batch = max(n_batch, min(group, seq_cells * batch))
    return Plan(
        batch=batch,
        seq_positions=seq_positions,
        seq_cells=seq_cells,
        n_batch=n_batch,
        n_ubatch=min(n_ubatch, options.n_batch),
        flash_attn=flash_attn,
        image_positions=sized_for,
        batched_prefill=batched,
    )


def cpu_batch(n_ctx: int, image: int | None, seq_tokens: int | None) -> tuple[int, int]:
    """(sequences, positions each) on the CPU: as many sequences sized to what they need as
    fit in ``CPU_KV_BUDGET`` × one ``n_ctx`` sequence; one of ``n_ctx`` if that is fewer than
    2, or if what a sequence needs is unknown."""
    if seq_tokens is None or image is None:
        return 1, n_ctx
    seq_positions = cpu_kv_cells(image + seq_tokens)
    batch = min(CPU_MAX_AUTO_BATCH, int(CPU_KV_BUDGET * n_ctx) // seq_positions)
    return (batch, seq_positions) if batch >= 2 else (1, n_ctx)


def gpu_batch(free_bytes: int | None, kv_bytes_per_sequence: int) -> int:
    """Sequences on a GPU: as many as half its free memory holds, counting each sequence's
    KV cache twice (the compute buffers grow with the batch too)."""
    if free_bytes is None:
        return GPU_FALLBACK_BATCH
    per_seq = 2 * kv_bytes_per_sequence
    return max(1, min(MAX_AUTO_BATCH, int(free_bytes * 0.5) // max(1, per_seq)))


def kv_bytes_per_position(n_layer: int, n_embd: int) -> int:
    """f16 K and V for every layer at one position of one sequence."""
    return 2 * 2 * n_layer * n_embd


def cpu_kv_cells(positions: int) -> int:
    """KV cells to give a CPU sequence that needs ``positions``: an odd multiple of 256.

    Without flash attention llama.cpp stores V transposed, so writing one token's V touches
    one element per row, rows (cells × 2 bytes) apart. With a power-of-two cell count that
    stride is a power of two too, and the rows land in the same few cache sets: the image
    prefill's V writes then take several times as long (bench/README.md, "KV cells"). Only
    spare cells are added: llama.cpp attends over the used cells (rounded up to 256) either
    way, so answers are identical.
    """
    blocks = -(-max(1, positions) // 256)
    return 256 * (blocks | 1)


def image_positions(mmproj: os.PathLike[str] | str) -> int | None:
    """KV positions "BOS, image" takes, from the mmproj's header: one per patch for the
    plain MLP projector Moondream2 uses. None for anything else (it may tile images)."""
    try:
        meta = read_metadata(Path(mmproj))
    except ModelError:
        return None
    size, patch = meta.get("clip.vision.image_size"), meta.get("clip.vision.patch_size")
    if meta.get("clip.projector_type") != "mlp" or not isinstance(size, int):
        return None
    if not isinstance(patch, int) or patch < 1:
        return None
    return (size // patch) ** 2 + 1


@lru_cache(maxsize=1)
def physical_cores() -> int:
    """Physical cores (hyper-threads share one core's arithmetic units)."""
    cores: set[tuple[str, str]] = set()
    try:
        phys = core = ""
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "physical id":
                    phys = value
                elif key == "core id":
                    core = value
                elif not key and (phys or core):
                    cores.add((phys, core))
                    phys = core = ""
        if phys or core:
            cores.add((phys, core))
    except OSError:
        pass
    logical = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(len(cores) or (logical or 1), logical or 1))


@lru_cache(maxsize=1)
def cpu_has_amx() -> bool:
    """True on CPUs with Intel AMX (Sapphire Rapids and later)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return "amx_int8" in line.split()
    except OSError:
        pass
    return False
