"""Memory budgets for buffers that the pipeline sizes from the data rather than from a constant."""

from __future__ import annotations

import ctypes
import os
import sys

M_ARENA_MAX = -8  # glibc mallopt parameter


def physical_memory_bytes() -> int:
    """Physical memory of this machine (POSIX), or 8 GiB where it cannot be read."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def shuffle_budget_bytes() -> int:
    """What one input pipeline's shuffle buffer may hold: $ENGINE_SHUFFLE_BUDGET_MB if set, else a sixteenth
    of physical memory."""
    if os.environ.get("ENGINE_SHUFFLE_BUDGET_MB"):
        return int(float(os.environ["ENGINE_SHUFFLE_BUDGET_MB"]) * (1 << 20))
    return physical_memory_bytes() // 16


def shuffle_buffer_size(num_examples: int, bytes_per_example: int, budget_bytes: int | None = None) -> int:
    """The whole shard if it fits the memory budget, else as many examples as the budget holds."""
    budget = shuffle_budget_bytes() if budget_bytes is None else budget_bytes
    return max(1, min(num_examples, budget // max(1, bytes_per_example)))


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Caps glibc's malloc arenas for this process (unless MALLOC_ARENA_MAX is set); True if applied.

    tf.data threads freeing variable-size buffers (TFRecord records in a shuffle buffer) made resident memory
    grow 619 -> 743 MB over 10 epochs with glibc's default of 8 arenas per core, and stay at 612-626 MB with 2
    (benchmarks/input_pipeline.py --variants=stream_rss). Call before TensorFlow starts its threads.
    """
    if os.environ.get("MALLOC_ARENA_MAX") or not sys.platform.startswith("linux"):
        return False
    try:
        return ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, arenas) == 1
    except (OSError, AttributeError):
        return False
