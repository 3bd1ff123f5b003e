"""The wheel: every module, every recipe as ``llmshearing/recipes/``, the entry points, and a recipe resolver that
finds the recipes in the installed package, from any working directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.paths import REPO

SOURCES = ('setup.py', 'README.md', 'llmshearing', 'yamls')
ENTRY_POINTS = (
    'llmshearing = llmshearing.cli:main',
    'shearing = llmshearing.pruning.algorithm:Shearing',
    'distillation = llmshearing.distillation.algorithm:Distillation',
    'dynamic_text = llmshearing.data.dataloader:build_dynamic_text_dataloader',
    'dynamic_loading = llmshearing.callbacks.dynamic_loading:DynamicLoading',
    'jsonl = llmshearing.loggers:JSONLinesLogger',
)


@pytest.fixture(scope='module')
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the checkout's package sources (the build leaves no files in the checkout)."""
    root = tmp_path_factory.mktemp('wheel')
    source = root / 'source'
    source.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns('__pycache__'))
        else:
            shutil.copy(REPO / name, source / name)
    command = [sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q', '-w', str(root)]
    result = subprocess.run([*command, str(source)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel_file,) = root.glob('llm_shearing-*.whl')
    return wheel_file


def test_the_wheel_holds_every_module_and_recipe_and_nothing_else(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {path.relative_to(REPO).as_posix() for path in (REPO / 'llmshearing').rglob('*.py')}
    recipes = {
        f'llmshearing/recipes/{path.relative_to(REPO / "yamls").as_posix()}'
        for path in (REPO / 'yamls').rglob('*.yaml')
    }
    assert 'llmshearing/recipes/tiny/pruning.yaml' in recipes
    package_files = {name for name in names if not name.startswith('llm_shearing-')}
    assert package_files == modules | recipes
    for recipe in recipes:
        relative = recipe.removeprefix('llmshearing/recipes/')
        assert zipfile.ZipFile(wheel).read(recipe) == (REPO / 'yamls' / relative).read_bytes(), recipe


def test_the_wheel_declares_the_command_and_the_plugins(wheel):
    archive = zipfile.ZipFile(wheel)
    (entry_points,) = [name for name in archive.namelist() if name.endswith('.dist-info/entry_points.txt')]
    text = archive.read(entry_points).decode()
    for entry_point in ENTRY_POINTS:
        assert entry_point in text


def test_the_installed_package_finds_its_own_recipes_from_any_folder(wheel, tmp_path):
    site = tmp_path / 'site'
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    script = 'import llmshearing.resources as r; print(r.__file__); print(r.recipe_path("tiny/pruning.yaml"))'
    result = subprocess.run(
        [sys.executable, '-c', script], cwd=elsewhere, capture_output=True, text=True,
        env=os.environ | {'PYTHONPATH': str(site)},
    )
    assert result.returncode == 0, result.stderr
    module_file, recipe = result.stdout.split()
    assert module_file == str(site / 'llmshearing' / 'resources.py')
    assert recipe == str(site / 'llmshearing' / 'recipes' / 'tiny' / 'pruning.yaml')
