"""Two CPU ranks of one gloo group for the tests, met through a file instead of a TCP port."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import torch

WORLD_SIZE = 2


def join_group(rank: int, rendezvous: Path) -> None:
    """Join the two-rank gloo group that meets at the file ``rendezvous``, with the rank variables Composer and
    Streaming read; a rank that waits a minute for the other fails instead of hanging."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE), LOCAL_WORLD_SIZE='2')
    torch.distributed.init_process_group(
        'gloo', init_method=f'file://{rendezvous}', rank=rank, world_size=WORLD_SIZE,
        timeout=datetime.timedelta(seconds=60),
    )
