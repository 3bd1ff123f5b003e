"""One registration at a time of Streaming's shared-memory names on a machine.

mosaicml-streaming 0.12 names a ``StreamingDataset``'s shared memory ``NNNNNN_<name>`` (``/dev/shm``), with
``NNNNNN`` the first number no other dataset on the machine holds. ``get_shm_prefix`` looks for that number, then
the node's local leader creates ``NNNNNN_locals``; two unrelated processes that build a dataset at the same moment
both find the same free number, and the second creation fails with ``FileExistsError: /NNNNNN_locals``
(mosaicml/streaming#884). Numbers stay taken until a process exits, so a long test session holds hundreds.

``serialize_shm_prefix_registration`` makes each local leader hold a machine-wide file lock from its search to
its creation, so that processes that import ``llmshearing.data`` never pick the same number. The other ranks
of a job only attach to the leader's names, and take no lock.
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Callable
from typing import Any

import streaming.base.dataset
from filelock import FileLock
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
