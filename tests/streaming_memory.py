"""Closing the shared memory that Streaming datasets leave open, and listing what this process holds open."""

from __future__ import annotations

import gc
import os

from streaming.base.shared.memory import SharedMemory as StreamingSharedMemory


def close_streaming_shared_memory() -> None:
    """Close the maps and file descriptors of every Streaming ``SharedMemory`` of this process (one whose
    creation failed has no block to close)."""
    for candidate in gc.get_objects():
        if isinstance(candidate, StreamingSharedMemory) and hasattr(candidate, 'shm'):
            candidate.shm.close()


def open_descriptors() -> dict[str, str]:
    """This process's open file descriptors (Linux ``/proc/self/fd``): number → what it points to (the descriptor
    that listed them is gone by then)."""
    targets = {}
    for descriptor in os.listdir('/proc/self/fd'):
        try:
            targets[descriptor] = os.readlink(f'/proc/self/fd/{descriptor}')
        except FileNotFoundError:
            pass
    return targets
