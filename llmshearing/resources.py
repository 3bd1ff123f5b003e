"""Where the package's files are: the recipes (``yamls/`` at the top of a checkout, ``llmshearing/recipes/`` inside an
installed wheel) and the cache of files made on first use."""

from __future__ import annotations

import os
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
