"""A run's record kept with its checkpoints: autoresume into another run's checkpoints stops before training,
naming what changed; a finished run says so (configs of the tiny recipes, checkpoint files made here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from composer.core import Timestamp

from llmshearing.checkpoints import write_checksum
from llmshearing.preflight import check_train_config, load_train_config
from llmshearing.pruning.export import LATEST_MONOLITHIC
from llmshearing.run_record import (
    RECORD_NAME,
    RunFinished,
    check_not_finished,
    pop_run_options,
    prepare_save_folder,
)
from llmshearing.toy import save_toy_model, write_random_domain_data
from tests.paths import REPO

TINY_PRUNING = REPO / 'yamls' / 'tiny' / 'pruning.yaml'
TINY_CONTINUED_PRETRAINING = REPO / 'yamls' / 'tiny' / 'continued_pretraining.yaml'


@pytest.fixture(scope='module')
def assets(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp('run-record')
    save_toy_model(root / 'source')
    # The tiny recipe's domains, and the long one of test_long_values_are_shortened.
    write_random_domain_data(root / 'data', ['code', 'reference', 'docs', 'a' * 50], 4, 2, 8)
    return root


def _prepare(assets: Path, folder: Path, *overrides: str, recipe: Path = TINY_PRUNING) -> None:
    config = load_train_config(
        recipe,
        [f'variables.model_path={assets / "source"}', f'variables.data_local={assets / "data"}',
         f'save_folder={folder}', *overrides],
    )
    options = pop_run_options(config)
    prepare_save_folder(config, check_train_config(config), accept_changed_run=options.get('accept_changed_run', False))


def _save_checkpoint(folder: Path, batch: int) -> None:
    path = folder / f'ep0-ba{batch}-rank0.pt'
    torch.save({'state': {'timestamp': {'Timestamp': Timestamp(batch=batch, sample=4 * batch).state_dict()}}}, path)
    write_checksum(path)
    (folder / LATEST_MONOLITHIC).unlink(missing_ok=True)
    (folder / LATEST_MONOLITHIC).symlink_to(path.name)


def test_a_run_with_other_settings_stops_naming_what_changed(assets, tmp_path):
    _prepare(assets, tmp_path)
    _save_checkpoint(tmp_path, 8)
    with pytest.raises(ValueError) as error:
        _prepare(
            assets, tmp_path, 'seed=18', 'optimizer.lr=0.002', 'algorithms.shearing.target.hidden_size=32',
            'run_name=another', 'max_duration=48ba', 'save_interval=2ba',
        )
    message = str(error.value)
    assert f'save_folder: {tmp_path} holds checkpoints of a run with other settings' in message
    for change in (
        'algorithms.shearing.target.hidden_size: 48 → 32',
        'optimizer.lr: 0.001 → 0.002',
        'seed: 17 → 18',
        'train_loader.dataset.shuffle_seed: 17 → 18',
    ):
        assert change in message
    assert 'run_name' not in message and 'max_duration' not in message and 'save_interval' not in message
    assert 'use a new save_folder' in message and 'llmshearing.accept_changed_run=true' in message


@pytest.mark.parametrize('checkpoint', ['sharded', 'custom name'])
def test_a_changed_run_stops_whatever_its_latest_checkpoint_is(assets, tmp_path, checkpoint):
    _prepare(assets, tmp_path)
    if checkpoint == 'sharded':  # Composer's sharded checkpoint: a folder of per-rank files, its own latest link
        (tmp_path / 'ep0-ba8').mkdir()
        (tmp_path / 'ep0-ba8' / '.metadata').touch()
        (tmp_path / 'latest-sharded-rank0').symlink_to('ep0-ba8')
    else:  # a monolithic checkpoint under another save_filename
        torch.save({'state': {}}, tmp_path / 'step-8.pt')
        (tmp_path / LATEST_MONOLITHIC).symlink_to('step-8.pt')
    with pytest.raises(ValueError) as error:
        _prepare(assets, tmp_path, 'seed=18')
    message = str(error.value)
    assert f'save_folder: {tmp_path} holds checkpoints of a run with other settings' in message
    assert 'seed: 17 → 18' in message


def test_a_matching_rerun_keeps_the_record_and_a_changed_one_can_be_accepted(assets, tmp_path):
    _prepare(assets, tmp_path)
    _save_checkpoint(tmp_path, 8)
    record = tmp_path / RECORD_NAME
    written = record.stat().st_mtime_ns
    _prepare(assets, tmp_path, 'max_duration=48ba', 'run_name=again', 'eval_interval=2ba')
    assert record.stat().st_mtime_ns == written
    _prepare(assets, tmp_path, 'seed=18', 'llmshearing.accept_changed_run=true')
    assert json.loads((tmp_path / 'run.1.json').read_text())['settings']['seed'] == 17
    assert json.loads(record.read_text())['settings']['seed'] == 18


def test_long_values_are_shortened(assets, tmp_path):
    # values are cut to 40 characters: 39 of them, then an ellipsis; '["code", "reference", "docs", "' is 31 long
    _prepare(assets, tmp_path)
    _save_checkpoint(tmp_path, 8)
    with pytest.raises(ValueError, match=r'callbacks\.dynamic_loading\.domains: \["code", "reference", "docs"\] → '
                                         r'\["code", "reference", "docs", "aaaaaaaa…;'):
        _prepare(assets, tmp_path, f'variables.domains=[code,reference,docs,{"a" * 50}]',
                 'train_loader.dataset.proportions=[0.25,0.25,0.25,0.25]')


def test_another_kind_of_run_is_named(assets, tmp_path):
    _prepare(assets, tmp_path)
    _save_checkpoint(tmp_path, 8)
    with pytest.raises(ValueError, match=(
        f'save_folder: {tmp_path} holds the checkpoints of a pruning run and this config is a continued '
        'pre-training run, which cannot continue them; to start a new run use a new save_folder')):
        _prepare(assets, tmp_path, recipe=TINY_CONTINUED_PRETRAINING)


def test_checkpoints_without_a_record_are_named(assets, tmp_path):
    _save_checkpoint(tmp_path, 8)
    with pytest.raises(ValueError, match=f'save_folder: {tmp_path} holds checkpoints without a run record'):
        _prepare(assets, tmp_path)
    _prepare(assets, tmp_path, 'llmshearing.accept_changed_run=true')
    assert json.loads((tmp_path / RECORD_NAME).read_text())['kind'] == 'pruning'


def test_a_folder_without_checkpoints_takes_the_new_record(assets, tmp_path):
    _prepare(assets, tmp_path)
    _prepare(assets, tmp_path, 'seed=18')
    assert json.loads((tmp_path / RECORD_NAME).read_text())['settings']['seed'] == 18


def test_an_unknown_run_option_is_named(assets, tmp_path):
    with pytest.raises(ValueError, match='llmshearing.accept_changed is not a run option; the options are '
                                         'accept_changed_run'):
        _prepare(assets, tmp_path, 'llmshearing.accept_changed=true')


@pytest.mark.parametrize(('max_duration', 'finished'), [('8ba', True), ('9ba', False), ('32sp', True), ('33sp', False)])
def test_a_finished_run_says_so(assets, tmp_path, max_duration, finished):
    _prepare(assets, tmp_path)
    _save_checkpoint(tmp_path, 8)
    config = load_train_config(
        TINY_PRUNING,
        [f'variables.model_path={assets / "source"}', f'variables.data_local={assets / "data"}',
         f'save_folder={tmp_path}', f'max_duration={max_duration}'],
    )
    if not finished:
        check_not_finished(check_train_config(config))
        return
    with pytest.raises(RunFinished, match=(
        f'the run in {tmp_path} is finished: its newest checkpoint ep0-ba8-rank0.pt is at '
        f'{"8ba" if max_duration.endswith("ba") else "32sp"} of max_duration {max_duration}; nothing to train')):
        check_not_finished(check_train_config(config))
