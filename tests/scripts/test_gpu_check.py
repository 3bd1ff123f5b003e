"""scripts/gpu/check.sh: its dry run (toy sizes, CPU) runs every part to the end, and its pieces behave."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from scripts.gpu import check
from tests.paths import REPO


@pytest.mark.slow
def test_dry_run_runs_every_part_and_writes_the_summary(tmp_path):
    environment = os.environ | {'PYTHON': sys.executable}
    result = subprocess.run(
        ['bash', str(REPO / 'scripts' / 'gpu' / 'check.sh'), '--dry-run', '--output-dir', str(tmp_path)],
        capture_output=True, text=True, env=environment,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((tmp_path / 'gpu_check.json').read_text())
    assert list(summary['parts']) == list(check.PARTS)
    for name, part in summary['parts'].items():
        assert part['status'] == 'ok', (name, part)
        assert part['checks'] and all(part['checks'].values()), (name, part['checks'])
        assert (tmp_path / f'{name}.log').is_file()
    assert summary['parts']['composer_train']['resume']['max_relative_difference'] == 0.0
    assert summary['parts']['environment']['plugin_registered']
    lines = result.stdout.splitlines()
    assert lines[0] == '==== GPU check (dry run: toy sizes on the CPU) ===='
    assert lines[-2:] == ['==== all parts ok ====', f'written: {tmp_path / "gpu_check.json"}']


def test_a_part_that_raises_records_its_error(tmp_path, monkeypatch):
    def broken(settings, work_dir):
        raise RuntimeError('no GPU here')

    monkeypatch.setitem(check.PART_FUNCTIONS, 'environment', broken)
    check.run_part('environment', check.DRY_RUN, tmp_path, tmp_path / 'result.json')
    result = json.loads((tmp_path / 'result.json').read_text())
    assert (result['status'], result['error']) == ('error', 'RuntimeError: no GPU here')


def test_output_folder_is_required_and_a_summary_is_never_overwritten(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv('OUT', raising=False)
    with pytest.raises(SystemExit):
        check.main(['--dry-run'])
    assert '--output-dir is required when $OUT is unset' in capsys.readouterr().err
    (tmp_path / 'gpu_check.json').write_text('{}')
    with pytest.raises(SystemExit):
        check.main(['--dry-run', '--output-dir', str(tmp_path)])
    assert f'{tmp_path / "gpu_check.json"} already exists' in capsys.readouterr().err
    assert (tmp_path / 'gpu_check.json').read_text() == '{}'


@pytest.mark.parametrize('config', [check.LLAMA2_7B, check.LLAMA3_8B], ids=['llama2_7b', 'llama3_8b'])
def test_model_flops_per_token_counts_every_matmul_weight(config):
    config = config | {'num_hidden_layers': 32}
    with torch.device('meta'):
        model = LlamaForCausalLM(LlamaConfig(**config))
    matmul_weights = sum(module.weight.numel() for module in model.modules() if isinstance(module, torch.nn.Linear))
    attention = 12 * 32 * 4096 * 4096
    assert check.model_flops_per_token(config, 4096) == 6 * matmul_weights + attention
