"""``llmshearing export`` of Composer's two checkpoint formats: two ranks on CPU (gloo, FSDP2) run the same pruning
job saving a monolithic and a sharded (``torch.distributed.checkpoint``) checkpoint, and both export to the same
pruned model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llmshearing import cli
from llmshearing.callbacks.dynamic_loading import final_domain_weights
from llmshearing.pruning.export import EXPORTED_STATE, load_checkpoint
from llmshearing.toy import save_toy_model, write_random_domain_data
from tests.paths import REPO

DOMAINS = ['code', 'reference', 'docs']
STATE_DICT_TYPES = ('full', 'sharded')
pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def save_folders(tmp_path_factory) -> dict[str, Path]:
    """The save folder of a two-rank FSDP run per ``state_dict_type``."""
    root = tmp_path_factory.mktemp('export-formats')
    save_toy_model(root / 'source')
    write_random_domain_data(root / 'data', DOMAINS, train_samples=32, eval_samples=4, seq_len=64)
    folders = {}
    for state_dict_type in STATE_DICT_TYPES:
        output_dir = root / state_dict_type
        command = [
            str(Path(sys.executable).with_name('composer')), '-n', '2', str(REPO / 'train.py'),
            str(REPO / 'yamls' / 'tiny' / 'pruning.yaml'), f'variables.model_path={root / "source"}',
            f'variables.data_local={root / "data"}', f'variables.output_dir={output_dir}', 'max_duration=2ba',
            'eval_interval=2ba', 'save_interval=2ba', f'fsdp_config={{state_dict_type: {state_dict_type}}}',
            # Under FSDP an importance start reads prune-oneshot's file; the formats do not depend on the start.
            'algorithms.shearing.init=uniform',
            f'algorithms.shearing.export_dir={output_dir / "pruned"}', 'algorithms.shearing.export_dtype=fp32',
        ]
        # Composer's FSDP1 needs CUDA; FSDP2 shards on CPU as well.
        environment = os.environ | {'FSDP_VERSION': '2'}
        # A rank that hangs (waiting for the other in a collective) fails the test instead of blocking the suite.
        result = subprocess.run(command, cwd=root, capture_output=True, text=True, env=environment, timeout=900)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        folders[state_dict_type] = output_dir / 'checkpoints'
    return folders


def test_the_runs_wrote_one_checkpoint_of_each_format(save_folders):
    assert (save_folders['full'] / 'latest-rank0.pt').is_file()
    sharded = save_folders['sharded'] / 'latest-sharded-rank0'
    assert sorted(path.name for path in sharded.iterdir()) == ['.metadata', '__0_0.distcp', '__1_0.distcp']


def test_both_formats_load_the_same_weights_and_nothing_else(save_folders):
    (_, full), (_, sharded) = (load_checkpoint(folder) for folder in save_folders.values())
    assert set(full['state']) == set(sharded['state']) == set(EXPORTED_STATE)
    assert full['state']['model'].keys() == sharded['state']['model'].keys()
    for name, tensor in full['state']['model'].items():
        assert torch.equal(tensor, sharded['state']['model'][name]), name
    assert full['state']['algorithms'] == sharded['state']['algorithms']


def test_export_of_the_sharded_checkpoint_equals_export_of_the_monolithic_one(save_folders, tmp_path):
    for state_dict_type, folder in save_folders.items():
        assert cli.main(['export', str(folder), str(tmp_path / state_dict_type), '--dtype', 'fp32']) == 0
    full, sharded = (tmp_path / name for name in STATE_DICT_TYPES)
    assert sorted(path.name for path in full.iterdir()) == sorted(path.name for path in sharded.iterdir())
    full_weights, sharded_weights = (load_file(folder / 'model.safetensors') for folder in (full, sharded))
    assert full_weights.keys() == sharded_weights.keys()
    for name, tensor in full_weights.items():
        assert torch.equal(tensor, sharded_weights[name]), name
    for name in ('config.json', 'tokenizer.json'):
        assert (full / name).read_text() == (sharded / name).read_text(), name


def test_the_run_exports_at_its_end_what_export_cuts_from_its_checkpoint(save_folders, tmp_path):
    """The ranks gather the FSDP2 shards for the export at the end of the run (rank 0 alone would wait for the
    others forever)."""
    for state_dict_type, folder in save_folders.items():
        assert cli.main(['export', str(folder), str(tmp_path / state_dict_type), '--dtype', 'fp32']) == 0
        at_the_end = load_file(folder.parent / 'pruned' / 'model.safetensors')
        exported = load_file(tmp_path / state_dict_type / 'model.safetensors')
        assert at_the_end.keys() == exported.keys()
        for name, tensor in exported.items():
            assert torch.equal(at_the_end[name], tensor), (state_dict_type, name)


def test_a_folder_without_a_checkpoint_is_an_error_naming_it(tmp_path, capsys):
    assert cli.main(['export', str(tmp_path), str(tmp_path / 'out')]) == 2
    message = (
        f'checkpoint folder {tmp_path} has no latest-rank0.pt or latest-sharded-rank0 and is not a sharded checkpoint '
        '(no .metadata)'
    )
    assert message in capsys.readouterr().err
    assert not (tmp_path / 'out').exists()



@pytest.mark.parametrize(
    ('content', 'problem'),
    [
        (b'{"model_type": "llama"}\n', 'is not a torch.save file (or it is truncated)'),
        ({'weights': torch.zeros(2)}, 'holds no Composer state with a model'),
    ],
)
def test_a_file_that_is_not_a_checkpoint_is_an_error_naming_it(tmp_path, capsys, content, problem):
    path = tmp_path / 'model.pt'
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    assert cli.main(['export', str(path), str(tmp_path / 'out')]) == 2
    message = (
        f'llmshearing export: error: checkpoint {path} {problem}: expected a Composer checkpoint file (torch.save), '
        'a sharded checkpoint folder or a save folder\n'
    )
    assert capsys.readouterr().err == message
    assert not (tmp_path / 'out').exists()

def test_both_formats_give_the_domain_weights_the_run_ended_with(save_folders):
    full, sharded = (final_domain_weights(folder) for folder in save_folders.values())
    assert list(full) == DOMAINS
    assert sharded == full
