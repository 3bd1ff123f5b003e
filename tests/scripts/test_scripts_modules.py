"""The modules of scripts/ run as ``python -m scripts.<folder>.<name>`` from the repository root and import each
other as ``scripts.<folder>.<name>``: nothing in scripts/ or tests/ edits ``sys.path``."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys

import pytest

from tests.paths import REPO

PATH_EDIT = re.compile(r'\bsys\.path\.(insert|append)\b')
MODULES = sorted(
    '.'.join(path.relative_to(REPO).with_suffix('').parts) for path in (REPO / 'scripts').rglob('*.py')
)


@pytest.mark.parametrize('folder', ['scripts', 'tests'])
def test_no_file_changes_sys_path(folder: str):
    files = [path for path in (REPO / folder).rglob('*') if path.is_file() and path.suffix in ('.py', '.sh', '')]
    offenders = [
        f'{path.relative_to(REPO)}:{number}'
        for path in files
        for number, line in enumerate(path.read_text(errors='replace').splitlines(), 1)
        if PATH_EDIT.search(line)
    ]
    assert not offenders, offenders


@pytest.mark.parametrize('module', MODULES)
def test_every_module_of_scripts_imports_by_its_package_name(module: str):
    importlib.import_module(module)


def test_an_experiment_runs_as_a_module_from_the_repository_root():
    result = subprocess.run(
        [sys.executable, '-m', 'scripts.experiments.mask_init', '--help'], cwd=REPO, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith('usage: python -m scripts.experiments.mask_init [-h] [--quick]')
