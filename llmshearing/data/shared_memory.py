"""One registration at a time of Streaming's shared-memory names on a machine.

mosaicml-streaming 0.12 names a ``StreamingDataset``'s shared memory ``NNNNNN_<name>`` (``/dev/shm``), with
``NNNNNN`` the first number no other dataset on the machine holds. ``get_shm_prefix`` looks for that number, then
the node's local leader creates ``NNNNNN_locals``; two unrelated processes that build a dataset at the same moment
both find the same free number, and the second creation fails with ``FileExistsError: /NNNNNN_locals``
(mosaicml/streaming#884). Numbers stay taken until a process exits, so a long test session holds hundreds.

``serialize_shm_prefix_registration`` makes each local leader hold a machine-wide file lock from its search to
its creation, so that processes that import ``llmshearing.data`` never pick the same number. The other ranks
of a job only attach to the leader's names, and take no lock.

The search attaches to each taken name to read it, and Streaming keeps every attachment (one file descriptor
each) until the process exits: a process holding N numbers leaks about 6 N descriptors per dataset it builds,
which ends in ``OSError: [Errno 24] Too many open files`` in processes that build many datasets, or on machines
where killed jobs left numbers behind. ``close_prefix_search_attachments`` makes the search's attachments close
as soon as the search drops them.

``release_shared_memory`` gives a dataset's names and blocks back before the process exits (what
``DynamicStreamingDataset.close()`` and ``DomainStreamingDataset.close()`` do), for processes that build many.
"""

from __future__ import annotations

import atexit
import functools
import os
import tempfile
from collections.abc import Callable
from typing import Any

import streaming.base.dataset
import streaming.base.shared.prefix
from filelock import FileLock
from streaming import StreamingDataset
from streaming.base.shared import SharedArray, SharedBarrier, SharedScalar
from streaming.base.shared.memory import SharedMemory as StreamingSharedMemory
from streaming.base.world import World

REGISTRATION_LOCK = os.path.join(tempfile.gettempdir(), 'llmshearing_streaming_shm_registration.lock')


def _locked(get_shm_prefix: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(get_shm_prefix)
    def get_shm_prefix_locked(streams_local: list[str], streams_remote: list[str | None], world: World, **kwargs):
        if not world.is_local_leader:
            return get_shm_prefix(streams_local, streams_remote, world, **kwargs)
        with FileLock(REGISTRATION_LOCK):
            return get_shm_prefix(streams_local, streams_remote, world, **kwargs)

    get_shm_prefix_locked.serialized = True
    return get_shm_prefix_locked


def serialize_shm_prefix_registration() -> None:
    """Make every ``StreamingDataset`` built in this process register its shared memory under the lock."""
    if not getattr(streaming.base.dataset.get_shm_prefix, 'serialized', False):
        streaming.base.dataset.get_shm_prefix = _locked(streaming.base.dataset.get_shm_prefix)


class _TransientAttachment(StreamingSharedMemory):
    """Streaming's ``SharedMemory`` whose attachments to existing blocks are not kept until the process exits:
    they close when their last reference goes. Blocks it creates are still cleaned up at exit."""

    def __init__(self, name: str | None = None, create: bool | None = None, size: int = 0, auto_cleanup: bool = True):
        super().__init__(name, create, size, auto_cleanup=auto_cleanup and create is not False)


def close_prefix_search_attachments() -> None:
    """Make Streaming's shared-memory prefix search close each block it attaches to once it is done with it."""
    streaming.base.shared.prefix.SharedMemory = _TransientAttachment


def _streaming_shared_memory(dataset: StreamingDataset) -> list[StreamingSharedMemory]:
    """The shared memory blocks a Streaming dataset holds: its own and those of its shared arrays, scalars and
    barrier."""
    found = []
    pending = list(vars(dataset).values())
    while pending:
        value = pending.pop()
        if isinstance(value, StreamingSharedMemory):
            found.append(value)
        elif isinstance(value, (SharedArray, SharedBarrier, SharedScalar)):
            pending.extend(vars(value).values())
    return found


def release_shared_memory(dataset: StreamingDataset) -> None:
    """Release what a Streaming dataset holds until the process exits: its claim on its local folders, then its
    shared memory blocks (closed, and unlinked where this process created them), forgetting Streaming's exit-time
    clean-up of them. The dataset cannot be read afterwards."""
    StreamingDataset.__del__(dataset)
    for memory in _streaming_shared_memory(dataset):
        memory.cleanup()
        atexit.unregister(memory.cleanup)
