"""A real ``composer train.py yamls/tiny/pruning.yaml`` run, exported and loaded in plain transformers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmshearing import cli
from llmshearing.pruning.export import masked_model_from_checkpoint
from llmshearing.toy import save_toy_model, write_random_domain_data
from tests.paths import REPO

DOMAINS = ['code', 'reference', 'docs']
TARGET = {'hidden_size': 48, 'num_attention_heads': 2, 'intermediate_size': 64, 'num_hidden_layers': 3}


@pytest.fixture(scope='module')
def pruning_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp('pruning-run')
    source = save_toy_model(root / 'source')
    write_random_domain_data(root / 'data', DOMAINS, train_samples=32, eval_samples=4, seq_len=64)
    command = [
        str(Path(sys.executable).with_name('composer')),
        '-n',
        '1',
        str(REPO / 'train.py'),
        str(REPO / 'yamls/tiny/pruning.yaml'),
        f'variables.model_path={source}',
        f'variables.data_local={root / "data"}',
        f'save_folder={root / "checkpoints"}',
        'max_duration=16ba',
        'eval_interval=8ba',
        f'algorithms.shearing.export_dir={root / "pruned"}',
        'algorithms.shearing.export_dtype=fp32',
    ]
    result = subprocess.run(
        command, cwd=root, capture_output=True, text=True, env=os.environ | {'PYTHONUNBUFFERED': '1'}
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert 'shearing/expected_sparsity/hidden' in result.stdout + result.stderr
    return root


def test_run_ends_with_masks_of_exactly_the_target_shape(pruning_run):
    model, _ = masked_model_from_checkpoint(pruning_run / 'checkpoints')
    masks = model.l0_module.deterministic_masks()
    assert (masks.hidden != 0).sum().item() == TARGET['hidden_size']
    assert (masks.layer != 0).sum().item() == TARGET['num_hidden_layers']
    assert (masks.query_heads != 0).sum(-1).tolist() == [TARGET['num_attention_heads']] * 4
    assert (masks.intermediate != 0).sum(-1).tolist() == [TARGET['intermediate_size']] * 4
    # Which structures are kept follows the trained log-alphas: in every row, each kept gate's log-alpha is at least
    # every dropped one's (a multi-head source's query-head mask is its head mask).
    for kind, kept in (('hidden', masks.hidden), ('layer', masks.layer), ('head', masks.query_heads),
                       ('intermediate', masks.intermediate)):
        log_alpha = model.l0_module.masks[kind].log_alpha.detach()
        for row_log_alpha, row_kept in zip(log_alpha.reshape(-1, kept.shape[-1]), kept.reshape(-1, kept.shape[-1])):
            assert row_log_alpha[row_kept != 0].min() >= row_log_alpha[row_kept == 0].max(), kind
    # The masks were trained: they moved away from their initial values.
    assert model.l0_module.lambdas['hidden'].abs().sum().item() > 0


def test_export_loads_in_transformers_and_matches_the_masked_model(pruning_run, tmp_path):
    output = tmp_path / 'pruned'
    assert (
        cli.main(['export', str(pruning_run / 'checkpoints' / 'latest-rank0.pt'), str(output), '--dtype', 'fp32']) == 0
    )
    assert (output / 'model.safetensors').is_file()

    pruned = AutoModelForCausalLM.from_pretrained(output).eval()
    for field, size in TARGET.items():
        assert getattr(pruned.config, field) == size
    masked, _ = masked_model_from_checkpoint(pruning_run / 'checkpoints')
    input_ids = torch.randint(3, 259, (2, 32))
    with torch.no_grad():
        assert (pruned(input_ids).logits - masked(input_ids).logits).abs().max().item() <= 1e-5

    tokenizer = AutoTokenizer.from_pretrained(output)
    prompt = tokenizer('Shearing', return_tensors='pt')
    generated = pruned.generate(**prompt, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    assert generated.shape == (1, prompt['input_ids'].shape[1] + 5)


def test_the_run_writes_the_pruned_model_when_it_ends(pruning_run, tmp_path):
    assert cli.main(['export', str(pruning_run / 'checkpoints'), str(tmp_path / 'cli'), '--dtype', 'fp32']) == 0
    written_at_end = AutoModelForCausalLM.from_pretrained(pruning_run / 'pruned').eval()
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / 'cli').eval()
    input_ids = torch.randint(3, 259, (1, 16))
    with torch.no_grad():
        assert torch.equal(written_at_end(input_ids).logits, exported(input_ids).logits)
    assert (pruning_run / 'pruned' / 'tokenizer.json').is_file()


def test_export_writes_bf16_by_default(pruning_run, tmp_path):
    assert cli.main(['export', str(pruning_run / 'checkpoints'), str(tmp_path / 'bf16')]) == 0
    with safe_open(tmp_path / 'bf16' / 'model.safetensors', framework='pt') as weights:
        assert {weights.get_tensor(name).dtype for name in weights.keys()} == {torch.bfloat16}
    assert json.loads((tmp_path / 'bf16' / 'config.json').read_text())['torch_dtype'] == 'bfloat16'


def test_export_refuses_a_non_empty_output_folder(pruning_run, tmp_path, capsys):
    (tmp_path / 'keep.txt').write_text('mine')
    assert cli.main(['export', str(pruning_run / 'checkpoints'), str(tmp_path)]) == 2
    assert f'output folder {tmp_path} is not empty; pass --overwrite' in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ['keep.txt']


def test_export_of_a_missing_checkpoint(tmp_path, capsys):
    assert cli.main(['export', str(tmp_path / 'nope.pt'), str(tmp_path / 'out')]) == 2
    assert f'checkpoint {tmp_path / "nope.pt"} does not exist' in capsys.readouterr().err
    assert not (tmp_path / 'out').exists()


def test_export_of_a_checkpoint_without_masks(pruning_run, tmp_path, capsys):
    checkpoint = torch.load(pruning_run / 'checkpoints' / 'latest-rank0.pt', map_location='cpu', weights_only=False)
    checkpoint['state']['algorithms'] = []
    torch.save(checkpoint, tmp_path / 'plain.pt')
    assert cli.main(['export', str(tmp_path / 'plain.pt'), str(tmp_path / 'out')]) == 2
    assert 'has no shearing algorithm state: it was not saved by a pruning run' in capsys.readouterr().err
