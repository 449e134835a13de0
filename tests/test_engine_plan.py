"""The engine's layout rules as pure functions: sequences, KV cells, micro-batches."""

from __future__ import annotations

import pytest

from moondream_cli.engine import EngineOptions
from moondream_cli.engine.native import Device
from moondream_cli.engine.plan import (
    CPU_UBATCH,
    MAX_AUTO_BATCH,
    PREFILL_GROUP,
    cpu_batch,
    gpu_batch,
    gpu_free_bytes,
    kv_bytes_per_position,
    plan,
)

MOONDREAM_KV = kv_bytes_per_position(24, 2048)  # Moondream2's text model: 24 layers, 2048 wide


def test_a_lone_cpu_sequence_keeps_the_whole_context_in_spare_cells() -> None:
    layout = plan(EngineOptions(), on_gpu=False, image_positions=730, kv_bytes_per_position=1)
    assert (layout.batch, layout.seq_positions, layout.seq_cells) == (1, 2048, 2304)
    assert layout.n_ubatch == CPU_UBATCH and layout.flash_attn is False
    assert layout.image_positions is None  # nothing was sized for the image


def test_the_cpu_batches_what_fits_in_about_one_sequences_memory() -> None:
    # Moondream2's describe: 730 image positions + a ~40-byte prompt + 256 tokens.
    options = EngineOptions(seq_tokens=40 + 256)
    layout = plan(options, on_gpu=False, image_positions=730, kv_bytes_per_position=1)
    assert (layout.batch, layout.seq_positions, layout.seq_cells) == (2, 1280, 1280)
    assert layout.n_ctx <= 1.25 * 2048
    assert layout.image_positions == 730  # an image taking more must stop the run


@pytest.mark.parametrize(
    ("image", "seq_tokens", "want"),
    [(None, 300, (1, 2048)), (17, None, (1, 2048)), (17, 200, (7, 256)), (730, 600, (1, 2048))],
)
def test_cpu_batch_needs_to_know_both_the_image_and_the_text(
    image: int | None, seq_tokens: int | None, want: tuple[int, int]
) -> None:
    assert cpu_batch(2048, image, seq_tokens) == want


def test_a_gpu_batch_takes_half_the_free_memory_and_is_capped() -> None:
    per_seq = MOONDREAM_KV * 2048  # 384 MiB
    assert gpu_batch(4 * per_seq, per_seq) == 1  # half of it holds one sequence, counted twice
    assert gpu_batch(1, per_seq) == 1
    assert gpu_batch(10**15, per_seq) == MAX_AUTO_BATCH
    layout = plan(
        EngineOptions(),
        on_gpu=True,
        image_positions=None,
        kv_bytes_per_position=MOONDREAM_KV,
        gpu_free_bytes=16 * per_seq,
    )
    assert (layout.batch, layout.seq_cells, layout.n_ubatch) == (4, 2048, 512)
    assert layout.flash_attn is None  # llama.cpp decides on a GPU


def _gpu_plan(free: int | None, pending: int = 0) -> int:
    return plan(
        EngineOptions(),
        on_gpu=True,
        image_positions=None,
        kv_bytes_per_position=MOONDREAM_KV,
        gpu_free_bytes=free,
        gpu_pending_bytes=pending,
    ).batch


def test_unknown_gpu_memory_gets_a_cautious_batch_of_at_most_two() -> None:
    assert 1 <= _gpu_plan(None) <= 2
    # What used to be the fallback, 8 sequences, is 3 GiB of KV cache beside the weights.
    assert _gpu_plan(None) * MOONDREAM_KV * 2048 <= 768 * 2**20


def test_the_gpu_batch_is_sized_from_the_device_apis_figure() -> None:
    per_seq = MOONDREAM_KV * 2048
    devices = [Device("Vulkan0", "AMD Radeon RX 7600", 8 * per_seq, 8 * 2**30)]
    assert _gpu_plan(gpu_free_bytes(devices)) == 2  # half of 8 sequences' worth, each counted twice
    devices = [Device("CUDA0", "NVIDIA H200", 10**12, 10**12)]
    assert _gpu_plan(gpu_free_bytes(devices)) == MAX_AUTO_BATCH


def test_the_mmproj_still_to_load_is_taken_off_the_free_memory() -> None:
    per_seq = MOONDREAM_KV * 2048
    assert _gpu_plan(16 * per_seq) == 4
    assert _gpu_plan(16 * per_seq, pending=8 * per_seq) == 2
    assert _gpu_plan(per_seq, pending=2 * per_seq) == 1  # never below one sequence


def test_discrete_gpus_add_up_and_integrated_ones_are_then_left_out() -> None:
    # llama.cpp splits the layers (and their KV caches) over the discrete GPUs, and uses an
    # integrated GPU only when there is no discrete one.
    devices = [
        Device("CUDA0", "RTX 3060", 6 * 2**30, 12 * 2**30),
        Device("CUDA1", "RTX 3060", 5 * 2**30, 12 * 2**30),
        Device("Vulkan2", "Intel UHD 770", 30 * 2**30, 32 * 2**30, unified=True),
    ]
    assert gpu_free_bytes(devices) == 11 * 2**30


def test_unified_memory_counts_once() -> None:
    # Metal's figure (working set minus what is allocated) and an integrated GPU's come out
    # of the same RAM: adding them would count it twice.
    metal = Device("MTL0", "Apple M2", 5 * 2**30, 5 * 2**30 + 2**29, unified=True)
    igpu = Device("Vulkan0", "Apple M2 (MoltenVK)", 4 * 2**30, 8 * 2**30, unified=True)
    assert gpu_free_bytes([metal]) == 5 * 2**30
    assert gpu_free_bytes([metal, igpu]) == 5 * 2**30


def test_a_device_that_cannot_say_its_memory_makes_the_figure_unknown() -> None:
    devices = [Device("CUDA0", "a", 8 * 2**30, 8 * 2**30), Device("Vulkan1", "b", None, None)]
    assert gpu_free_bytes(devices) is None
    assert gpu_free_bytes([]) is None
    assert gpu_free_bytes([Device("MTL0", "Apple M1", None, None, unified=True)]) is None


def test_an_explicit_batch_and_micro_batch_win() -> None:
    options = EngineOptions(batch=3, n_ubatch=4096, flash_attn=True)
    layout = plan(options, on_gpu=False, image_positions=730, kv_bytes_per_position=1)
    assert (layout.batch, layout.seq_positions) == (3, 2048)
    assert layout.n_ubatch == options.n_batch  # never more than a whole batch
    assert layout.flash_attn is True


def test_batched_prefill_is_the_gpus_and_sizes_n_batch_for_a_group_of_images() -> None:
    gpu = plan(
        EngineOptions(batch=12),
        on_gpu=True,
        image_positions=None,
        kv_bytes_per_position=MOONDREAM_KV,
        prefill_positions=730,
    )
    assert gpu.batched_prefill and gpu.n_batch == PREFILL_GROUP * 730
    assert gpu.n_ubatch == 512  # the micro-batch stays what it was
    cpu = plan(EngineOptions(batch=2), on_gpu=False, image_positions=730, kv_bytes_per_position=1)
    assert not cpu.batched_prefill and cpu.n_batch == EngineOptions().n_batch
    told = plan(
        EngineOptions(batch=2, batched_prefill=True),
        on_gpu=False,
        image_positions=730,
        kv_bytes_per_position=1,
        prefill_positions=730,
    )
    assert told.batched_prefill and told.n_batch == 2 * 730
    alone = plan(
        EngineOptions(batch=1, batched_prefill=True),
        on_gpu=True,
        image_positions=None,
        kv_bytes_per_position=1,
        prefill_positions=730,
    )
    assert not alone.batched_prefill and alone.n_batch == EngineOptions().n_batch
