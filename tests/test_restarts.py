"""Restarts of a real tiny pruning run (tests/test_run_record.py and tests/test_checkpoints.py cover the cases one
by one, without training): killed in the middle of writing a checkpoint, or with its newest checkpoint damaged, the
same command resumes from the newest good checkpoint and ends bit-identical to the uninterrupted run; a rerun with
other settings stops before training, naming them; a finished run says so. Four short trainings (about 40 s each on
2 CPU cores) make these slow tests."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llmshearing.checkpoints import INCOMPLETE_FOLDER
from llmshearing.pruning.export import LATEST_MONOLITHIC
from llmshearing.toy import save_toy_model, write_random_domain_data
from tests.kill_during_save import KILL_DURING_SAVE
from tests.paths import REPO

TINY_PRUNING = REPO / 'yamls' / 'tiny' / 'pruning.yaml'
pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def assets(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp('restarts')
    save_toy_model(root / 'source')
    write_random_domain_data(root / 'data', ['code', 'reference', 'docs'], train_samples=96, eval_samples=4, seq_len=64)
    return root


def _command(assets: Path, output_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable, str(REPO / 'train.py'), str(TINY_PRUNING),
        f'variables.model_path={assets / "source"}', f'variables.data_local={assets / "data"}',
        f'variables.output_dir={output_dir}', 'max_duration=16ba', 'eval_interval=4ba', 'save_interval=4ba',
        f'code_paths=[{REPO / "tests" / "kill_during_save.py"}]', 'callbacks.kill_during_save={}', *extra,
    ]


def _run(command: list[str], cwd: Path, environment: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, env={**os.environ, **(environment or {})})


def _succeeds(command: list[str], cwd: Path) -> str:
    result = _run(command, cwd)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stderr


@pytest.fixture(scope='module')
def uninterrupted(assets) -> Path:
    output_dir = assets / 'uninterrupted'
    _succeeds(_command(assets, output_dir), assets)
    return output_dir


def _assert_same_final_state(expected_dir: Path, resumed_dir: Path) -> None:
    states = []
    for output_dir in (expected_dir, resumed_dir):
        latest = output_dir / 'checkpoints' / LATEST_MONOLITHIC
        assert os.readlink(latest) == 'ep0-ba16-rank0.pt'
        states.append(torch.load(latest, map_location='cpu', weights_only=False)['state'])
    expected, resumed = states
    assert expected['model'].keys() == resumed['model'].keys()
    for name, tensor in expected['model'].items():
        assert torch.equal(tensor, resumed['model'][name]), name
    assert expected['callbacks']['DynamicLoading'] == resumed['callbacks']['DynamicLoading']
    assert expected['algorithms'] == resumed['algorithms']
    assert expected['dataset_state'] == resumed['dataset_state']


def test_a_kill_while_a_checkpoint_is_written_resumes_from_the_newest_complete_one(assets, uninterrupted):
    output_dir = assets / 'killed'
    command = _command(assets, output_dir)
    killed = _run(command, assets, {KILL_DURING_SAVE: 'ep0-ba12-rank0.pt'})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    checkpoints = output_dir / 'checkpoints'
    partial = checkpoints / 'ep0-ba12-rank0.pt'
    complete_size = (uninterrupted / 'checkpoints' / 'ep0-ba12-rank0.pt').stat().st_size
    assert 0 < partial.stat().st_size < complete_size
    assert os.readlink(checkpoints / LATEST_MONOLITHIC) == 'ep0-ba8-rank0.pt'

    stderr = _succeeds(command, assets)
    aside = checkpoints / INCOMPLETE_FOLDER / 'ep0-ba12-rank0.pt'
    assert f'checkpoint {partial} has no sha256 and is not a whole checkpoint' in stderr
    assert f'moved to {aside}, not loaded' in stderr
    assert aside.stat().st_size < complete_size
    _assert_same_final_state(uninterrupted, output_dir)


def test_a_damaged_newest_checkpoint_is_passed_over_for_the_previous_one(assets, uninterrupted):
    output_dir = assets / 'damaged'
    shutil.copytree(uninterrupted, output_dir, symlinks=True)
    newest = output_dir / 'checkpoints' / 'ep0-ba16-rank0.pt'
    data = bytearray(newest.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4096] = os.urandom(4096)
    newest.write_bytes(bytes(data))

    stderr = _succeeds(_command(assets, output_dir), assets)
    assert f'checkpoint {newest} does not match its sha256' in stderr
    assert f'resuming from {output_dir / "checkpoints" / "ep0-ba12-rank0.pt"}' in stderr
    assert (output_dir / 'checkpoints' / INCOMPLETE_FOLDER / 'ep0-ba16-rank0.pt').read_bytes() == bytes(data)
    _assert_same_final_state(uninterrupted, output_dir)


def test_a_rerun_with_other_settings_stops_before_training(assets, uninterrupted):
    files_before = sorted((uninterrupted / 'checkpoints').iterdir())
    command = _command(
        assets, uninterrupted, 'run_name=another', 'seed=18', 'optimizer.lr=0.002',
        'algorithms.shearing.target.hidden_size=32',
    )
    result = _run(command, assets)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f'error: save_folder: {uninterrupted / "checkpoints"} holds checkpoints of a run with other settings '
        '(algorithms.shearing.target.hidden_size: 48 → 32; eval_loader.dataset.shuffle_seed: 17 → 18; '
        'optimizer.lr: 0.001 → 0.002; seed: 17 → 18; train_loader.dataset.shuffle_seed: 17 → 18); to start a new '
        f'run use a new save_folder (or move {uninterrupted / "checkpoints"} away), or set '
        'llmshearing.accept_changed_run=true to continue them with the new settings'
    )
    assert sorted((uninterrupted / 'checkpoints').iterdir()) == files_before


def test_rerunning_a_finished_run_says_it_is_finished(assets, uninterrupted):
    files_before = sorted((uninterrupted / 'checkpoints').iterdir())
    stderr = _succeeds(_command(assets, uninterrupted), assets)
    assert stderr.strip().splitlines()[-1] == (
        f'the run in {uninterrupted / "checkpoints"} is finished: its newest checkpoint ep0-ba16-rank0.pt is at 16ba '
        'of max_duration 16ba; nothing to train. Raise max_duration to train further, or use a new save_folder to '
        'start over'
    )
    assert sorted((uninterrupted / 'checkpoints').iterdir()) == files_before
