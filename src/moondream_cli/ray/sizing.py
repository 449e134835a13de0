"""How many Ray workers to start, what each asks Ray for, and how many images a task holds:
pure functions of the cluster's resources and the workers' batches."""

from __future__ import annotations

from ..errors import UsageError

# Images per task: a worker's continuous batching drains at the end of each one, so a chunk
# holds two of its engine's batches (a GPU's may be 32; the CPU's up to 7), never fewer than
# CHUNK. More would fill the batch longer but hold the first records back as long.
CHUNK = 4
BATCHES_PER_CHUNK = 2


def workers_for(
    requested: int | None, *, nodes: int, cpus: int, gpus: int
) -> tuple[int, dict[str, int]]:
    """How many workers to start, and what each asks Ray for.

    With GPUs in the cluster (``gpus``: 0 under ``--cpu``): one worker per GPU by default,
    each holding one (``num_gpus=1``), so that each sizes its batch from a GPU's memory of
    its own; more workers than GPUs would share one, each counting the same free memory as
    its own, and are refused. Without: one worker per node, one CPU each; more workers than
    CPUs are refused, as Ray would wait for ever for CPUs that do not exist (busy ones it
    waits for rightly).
    """
    if gpus > 0:
        count = requested or gpus
        if count > gpus:
            raise UsageError(
                f"{count} workers need {count} GPUs (one each: workers sharing a GPU would "
                f"each size their batch for all of its memory); the Ray cluster has {gpus}: "
                f"pass --workers {gpus} or fewer, or --cpu to run on the CPUs"
            )
        return count, {"num_cpus": 1, "num_gpus": 1}
    count = requested or max(1, nodes)
    if count > cpus:
        raise UsageError(
            f"{count} workers need {count} CPUs (one each); the Ray cluster has {cpus}: "
            "pass a smaller --workers, or add nodes"
        )
    return count, {"num_cpus": 1}


def chunk_size(batches: list[int]) -> int:
    """Images per task: ``BATCHES_PER_CHUNK`` of the largest worker batch (a chunk can go to
    any worker), so the tail where a worker's batch drains is a small part of each chunk."""
    return max(CHUNK, BATCHES_PER_CHUNK * max(batches, default=1))


__all__ = ["BATCHES_PER_CHUNK", "CHUNK", "chunk_size", "workers_for"]
