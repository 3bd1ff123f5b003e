"""The tree passes ``ruff check`` (configured in ``pyproject.toml``), and the docs name no paths of a machine."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from tests.paths import REPO

MACHINE_PATHS = ('/root/', '/home/', '/work/', '/tmp/pytest')
DOC_SUFFIXES = ('.md', '.json')


@pytest.mark.skipif(importlib.util.find_spec('ruff') is None, reason="ruff is not installed (the 'dev' extra has it)")
def test_ruff_check_is_clean():
    result = subprocess.run(
        [sys.executable, '-m', 'ruff', 'check', str(REPO)], capture_output=True, text=True, cwd=REPO
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_docs_name_no_machine_paths():
    files = [REPO / 'README.md', *sorted(path for path in (REPO / 'docs').rglob('*') if path.suffix in DOC_SUFFIXES)]
    found = [
        f'{path.relative_to(REPO)}:{number}: {machine_path}'
        for path in files
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        for machine_path in MACHINE_PATHS
        if machine_path in line
    ]
    advice = 'paths of a machine in the docs (write ~/.cache/..., $HOME or a path relative to the checkout):'
    assert not found, '\n'.join([advice, *found])
