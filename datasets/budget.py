"""Memory budgets for buffers that the pipeline sizes from the data rather than from a constant."""

from __future__ import annotations

import os


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
