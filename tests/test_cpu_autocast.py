"""``precision: amp_bf16`` on a CPU: Composer runs in fp32 and ``cpu_autocast`` autocasts the forward and the loss."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llmshearing.cpu_autocast import NAME, with_cpu_autocast
from llmshearing.loggers import read_metrics
from llmshearing.preflight import load_train_config
from llmshearing.toy import save_toy_model, write_random_domain_data
from tests.paths import REPO

TINY_PRUNING = REPO / 'yamls' / 'tiny' / 'pruning.yaml'
LLAMA2_PRUNING = REPO / 'yamls' / 'pruning' / 'llama2_7b_to_2.7b.yaml'
DOMAINS = ['code', 'reference', 'docs']
BATCHES = 8
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason='the fp32 + cpu_autocast form is for CPU machines')


def test_amp_bf16_becomes_fp32_with_cpu_autocast():
    config = load_train_config(LLAMA2_PRUNING, [])
    assert config.precision == 'fp32'
    assert dict(config.algorithms[NAME]) == {}
    assert 'shearing' in config.algorithms


def test_other_precisions_are_left_as_they_are():
    config = load_train_config(TINY_PRUNING, [])
    assert config.precision == 'fp32'
    assert NAME not in config.algorithms
    unchanged = with_cpu_autocast(load_train_config(TINY_PRUNING, ['precision=amp_fp16']))
    assert unchanged.precision == 'amp_fp16'
    assert NAME not in unchanged.algorithms


def test_an_amp_bf16_config_without_algorithms_gets_them(tmp_path: Path):
    yaml = tmp_path / 'run.yaml'
    yaml.write_text('precision: amp_bf16\nmax_duration: 1ba\n')
    config = load_train_config(yaml, [])
    assert (config.precision, list(config.algorithms)) == ('fp32', [NAME])


def _train(assets: Path, output_dir: Path, *extra: str) -> dict[int, float]:
    command = [
        sys.executable, str(REPO / 'train.py'), str(TINY_PRUNING),
        f'variables.model_path={assets / "source"}', f'variables.data_local={assets / "data"}',
        f'variables.output_dir={output_dir}', f'max_duration={BATCHES}ba', f'eval_interval={BATCHES}ba',
        f'save_interval={BATCHES}ba', *extra,
    ]
    result = subprocess.run(command, cwd=assets, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return dict(read_metrics(output_dir / 'metrics.jsonl')['loss/train/lm'])


@pytest.mark.slow
def test_a_tiny_pruning_run_in_amp_bf16_is_close_to_fp32_and_not_equal(tmp_path: Path):
    save_toy_model(tmp_path / 'source')
    write_random_domain_data(tmp_path / 'data', DOMAINS, train_samples=32, eval_samples=4, seq_len=64)
    fp32 = _train(tmp_path, tmp_path / 'fp32')
    bf16 = _train(tmp_path, tmp_path / 'bf16', 'precision=amp_bf16')
    assert sorted(fp32) == sorted(bf16) == list(range(BATCHES))
    differences = [abs(fp32[batch] - bf16[batch]) for batch in fp32]
    assert max(differences) < 0.05, differences
    assert max(differences) > 0, 'the bf16 run computed exactly the fp32 losses: autocast was not active'
