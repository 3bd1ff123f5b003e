"""Closing the shared memory that Streaming datasets leave open."""

from __future__ import annotations

import gc

from streaming.base.shared.memory import SharedMemory as StreamingSharedMemory


def close_streaming_shared_memory() -> None:
    """Close the maps and file descriptors of every Streaming ``SharedMemory`` of this process (one whose
    creation failed has no block to close)."""
    for candidate in gc.get_objects():
        if isinstance(candidate, StreamingSharedMemory) and hasattr(candidate, 'shm'):
            candidate.shm.close()
