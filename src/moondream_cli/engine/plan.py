"""How to lay out a context on this machine: threads, sequences, KV cells and micro-batches.

Pure functions of the options and of what the hardware and the model files say, so that each
rule can be tested without loading a model. The measurements behind the numbers are in
bench/README.md.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ModelError
from ..gguf_meta import read_metadata
from .options import EngineOptions

if TYPE_CHECKING:
    from .native import Device

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
# When the GPU's free memory cannot be read: few enough sequences that their KV caches
# (384 MiB each for Moondream2 at n_ctx 2048) fit beside the weights on a 4 GB card or an
# 8 GB Mac; 8 did not.
GPU_UNKNOWN_BATCH = 2
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
    gpu_pending_bytes: int = 0,
) -> Plan:
    """The layout for ``options`` on this machine.

    ``image_positions``: what "BOS, image" takes (:func:`image_positions`, None if unknown),
    to size the CPU's batch; ``kv_bytes_per_position``: one sequence's KV bytes per position;
    ``gpu_free_bytes``: free GPU memory, when ``on_gpu`` (None if unknown:
    :func:`gpu_free_bytes` of the devices); ``gpu_pending_bytes``: what is still to be loaded
    there after it was read (the mmproj); ``prefill_positions``: what an image takes, to size
    n_batch for batched prefill.
    """
    n_ctx = options.n_ctx
    sized_for: int | None = None
    if options.batch:
        batch, seq_positions = max(1, options.batch), n_ctx
    elif on_gpu:
        free = None if gpu_free_bytes is None else max(0, gpu_free_bytes - gpu_pending_bytes)
        batch, seq_positions = gpu_batch(free, kv_bytes_per_position * n_ctx), n_ctx
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
    KV cache twice (the compute buffers grow with the batch too); ``GPU_UNKNOWN_BATCH`` when
    the free memory is unknown."""
    if free_bytes is None:
        return GPU_UNKNOWN_BATCH
    per_seq = 2 * kv_bytes_per_sequence
    return max(1, min(MAX_AUTO_BATCH, int(free_bytes * 0.5) // max(1, per_seq)))


def gpu_free_bytes(devices: Iterable[Device]) -> int | None:
    """Free memory on the GPUs llama.cpp spreads the model over, from each backend's own
    figure (``ggml_backend_dev_memory``); None when one of them cannot say.

    As llama.cpp picks its devices: the discrete GPUs when there are any, their memory added
    up (it splits the layers, and their KV caches, across them); else the GPUs that share the
    CPU's memory (Apple's Metal, integrated GPUs), whose figures all come out of the same
    RAM, so it counts once: the largest of them.
    """
    devices = list(devices)
    discrete = [d for d in devices if not d.unified]
    if discrete:
        if any(d.free_bytes is None for d in discrete):
            return None
        return sum(d.free_bytes or 0 for d in discrete)
    unified = [d.free_bytes for d in devices]
    if not unified or None in unified:
        return None
    return max(b or 0 for b in unified)


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
