"""Where the recipes are: ``yamls/`` at the top of a checkout, ``llmshearing/recipes/`` inside an installed wheel."""

from __future__ import annotations

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
