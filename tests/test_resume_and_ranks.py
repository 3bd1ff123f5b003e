"""Invariant 4 on the tiny recipes: a pruning (alone, or with distillation in amp_bf16) or continued pre-training
run killed and restarted with autoresume (a teacher re-loaded from its folder) equals the uninterrupted run bit for
bit; and two ranks (gloo, CPU) agree on masks, multipliers and domain weights while reading disjoint samples."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llmshearing.loggers import read_metrics
from llmshearing.toy import save_toy_model, write_random_domain_data
from tests.kill_after_batch import KILL_AFTER_BATCH
from tests.paths import REPO

TINY_PRUNING = REPO / 'yamls' / 'tiny' / 'pruning.yaml'
TINY_CONTINUED_PRETRAINING = REPO / 'yamls' / 'tiny' / 'continued_pretraining.yaml'
TINY_PRUNING_DISTILLATION = REPO / 'yamls' / 'tiny' / 'pruning_distillation.yaml'
DOMAINS = ['code', 'reference', 'docs']
pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def assets(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp('resume')
    save_toy_model(root / 'source')
    write_random_domain_data(root / 'data', DOMAINS, train_samples=96, eval_samples=4, seq_len=64)
    return root


def _command(assets: Path, output_dir: Path, *extra: str, recipe: Path = TINY_PRUNING) -> list[str]:
    return [
        sys.executable, str(REPO / 'train.py'), str(recipe),
        f'variables.model_path={assets / "source"}', f'variables.data_local={assets / "data"}',
        f'variables.output_dir={output_dir}', 'max_duration=16ba', 'eval_interval=4ba', 'save_interval=4ba',
        *extra,
    ]


def _run(command: list[str], cwd: Path) -> None:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def _final_state(output_dir: Path) -> dict:
    latest = output_dir / 'checkpoints' / 'latest-rank0.pt'
    assert os.readlink(latest).endswith('-ba16-rank0.pt')
    return torch.load(latest, map_location='cpu', weights_only=False)['state']


def _last_value_per_batch(output_dir: Path, name: str) -> dict[int, float]:
    return dict(read_metrics(output_dir / 'metrics.jsonl')[name])


@pytest.mark.parametrize(
    ('recipe', 'metrics', 'extra'),
    [
        (
            TINY_PRUNING,
            ('loss/train/total', 'shearing/lagrangian', 'dynamic_loading/proportion/code', 'dynamic_loading/loss/code'),
            (),
        ),
        (
            TINY_CONTINUED_PRETRAINING,
            ('loss/train/total', 'dynamic_loading/proportion/code', 'dynamic_loading/loss/code'),
            (),
        ),
        (  # in amp_bf16 (on a CPU: fp32 + cpu_autocast), the teacher loaded in bf16 and run under the autocast
            TINY_PRUNING_DISTILLATION,
            (
                'loss/train/total',
                'loss/train/kd',
                'loss/train/lm',
                'shearing/lagrangian',
                'dynamic_loading/proportion/code',
            ),
            ('precision=amp_bf16',),
        ),
    ],
    ids=['pruning', 'continued_pretraining', 'pruning_distillation_amp_bf16'],
)
def test_killed_and_resumed_run_equals_the_uninterrupted_run(assets, recipe, metrics, extra):
    run_dir = assets / f'{recipe.stem}{"_" if extra else ""}{"_".join(extra)}'
    uninterrupted = run_dir / 'uninterrupted'
    _run(_command(assets, uninterrupted, *extra, recipe=recipe), assets)

    interrupted = run_dir / 'interrupted'
    command = _command(
        assets, interrupted, *extra, f'code_paths=[{REPO / "tests" / "kill_after_batch.py"}]',
        'callbacks.kill_after_batch={}', recipe=recipe,
    )
    environment = os.environ | {KILL_AFTER_BATCH: '8'}
    killed = subprocess.run(command, cwd=assets, capture_output=True, text=True, env=environment)
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-3000:] + killed.stderr[-3000:]
    assert os.readlink(interrupted / 'checkpoints' / 'latest-rank0.pt').endswith('-ba8-rank0.pt')
    assert not list((interrupted / 'checkpoints').glob('*-ba1[26]-rank0.pt'))
    _run(command, assets)

    expected, resumed = _final_state(uninterrupted), _final_state(interrupted)
    assert expected['model'].keys() == resumed['model'].keys()
    for name, tensor in expected['model'].items():
        assert torch.equal(tensor, resumed['model'][name]), name
    assert any('l0_module.masks' in name for name in expected['model']) == (recipe != TINY_CONTINUED_PRETRAINING)
    assert expected['callbacks']['DynamicLoading'] == resumed['callbacks']['DynamicLoading']
    assert expected['algorithms'] == resumed['algorithms']
    assert expected['dataset_state'] == resumed['dataset_state']
    for metric in metrics:
        expected_series = _last_value_per_batch(uninterrupted, metric)
        assert len(expected_series) >= 4, metric
        assert expected_series == _last_value_per_batch(interrupted, metric), metric


def test_two_ranks_agree_and_read_disjoint_samples(assets):
    output_dir = assets / 'two-ranks'
    composer = str(Path(sys.executable).with_name('composer'))
    command = [composer, '-n', '2', *_command(assets, output_dir)[1:]] + [
        f'code_paths=[{REPO / "tests" / "rank_recorder.py"}]',
        f'callbacks.record_rank_state.folder={output_dir / "ranks"}',
        'device_train_microbatch_size=2',
    ]
    _run(command, assets)
    rank0, rank1 = (json.loads((output_dir / 'ranks' / f'rank{rank}.json').read_text()) for rank in (0, 1))
    assert rank0['log_alpha'] == rank1['log_alpha']
    assert rank0['lambdas'] == rank1['lambdas']
    assert rank0['proportions'] == rank1['proportions']
    assert rank0['proportions'] != pytest.approx([0.5, 0.25, 0.25], abs=1e-6), 'the domain weights were updated'
    assert len(rank0['rows']) == len(rank1['rows']) == 16 * 2
    assert not {tuple(row) for row in rank0['rows']} & {tuple(row) for row in rank1['rows']}
