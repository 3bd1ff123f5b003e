"""Where the tests find the repository and the read-only data beside it (``../shared``, optional), the paths of this
machine behind an experiment report's portable ones, and the mark of the opt-in experiment runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / 'shared'


def experiment_test(duration: str) -> pytest.MarkDecorator:
    """Skip an experiment's end-to-end run, which takes ``duration`` (the reason's start), unless
    ``LLMSHEARING_EXPERIMENT_TESTS=1``."""
    return pytest.mark.skipif(
        os.environ.get('LLMSHEARING_EXPERIMENT_TESTS') != '1',
        reason=f'{duration}: set LLMSHEARING_EXPERIMENT_TESTS=1 to run it',
    )


def machine_path(portable: str) -> Path:
    """The folder a report names as ``portable`` (relative to the checkout, ``../`` beside it, or under ``$HOME``)."""
    if portable.startswith('$HOME/'):
        return Path.home() / portable.removeprefix('$HOME/')
    return Path(os.path.normpath(REPO / portable))
