"""A wrong training config fails before training, naming its key."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import LlamaForCausalLM

from llmshearing.preflight import check_train_config, load_train_config
from llmshearing.toy import byte_level_tokenizer, llama_config, save_toy_model, write_random_domain_data
from tests.paths import REPO

TINY_PRUNING = REPO / 'yamls' / 'tiny' / 'pruning.yaml'
DOMAINS = ['code', 'reference', 'docs']  # the tiny recipe's


@pytest.fixture(scope='module')
def assets(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp('preflight')
    save_toy_model(root / 'source')
    small_vocab = root / 'small-vocab'
    LlamaForCausalLM(llama_config(vocab_size=100)).save_pretrained(small_vocab)
    byte_level_tokenizer().save_pretrained(small_vocab)
    write_random_domain_data(root / 'data', DOMAINS, train_samples=4, eval_samples=2, seq_len=8)
    return root


def _config(assets: Path, *overrides: str):
    base = [
        f'variables.model_path={assets / "source"}',
        f'variables.data_local={assets / "data"}',
        f'save_folder={assets / "fresh"}',
    ]
    return load_train_config(TINY_PRUNING, base + list(overrides))


def test_the_tiny_recipe_passes(assets):
    assert check_train_config(_config(assets)).algorithms['shearing']['target']['hidden_size'] == 48


@pytest.mark.parametrize(
    ('overrides', 'error', 'message'),
    [
        (
            ['variables.model_path=/nowhere/model'],
            FileNotFoundError,
            'model.pretrained_model_name_or_path: /nowhere/model does not exist',
        ),
        (
            ['variables.data_local=/nowhere/data'],
            FileNotFoundError,
            'train_loader.dataset.local: /nowhere/data does not exist',
        ),
        (['load_path=/nowhere/ckpt.pt'], FileNotFoundError, 'load_path: /nowhere/ckpt.pt does not exist'),
        (['tokenizer.name=/nowhere/tokenizer'], FileNotFoundError, 'tokenizer.name: /nowhere/tokenizer does not exist'),
        (
            ['algorithms.shearing.target.hidden_size=128'],
            ValueError,
            "algorithms.shearing: target hidden_size=128 is larger than the source model's 64",
        ),
        (
            ['algorithms.shearing.pruning_modules=[layer]'],
            ValueError,
            "algorithms.shearing: target num_attention_heads=2 differs from the source's 4",
        ),
        (['max_sequence_length=8'], ValueError, 'max_sequence_length'),
        (['algorithms.shearing.lag_lr=0'], ValueError, 'algorithms.shearing.lag_lr must be positive, got 0'),
        (['algorithms.shearing.lag_rate=1'], ValueError, 'algorithms.shearing.lag_rate is not a setting'),
    ],
)
def test_bad_settings_name_their_key(assets, overrides, error, message):
    with pytest.raises(error) as raised:
        check_train_config(_config(assets, *overrides))
    assert message in str(raised.value)


@pytest.mark.parametrize(
    ('overrides', 'message'),
    [
        (
            ['algorithms.shearing.lagrangian_warmpu=8ba'],
            'algorithms.shearing.lagrangian_warmpu is not a setting; the settings are target, pruning_modules, '
            'target_sparsity, lagrangian_warmup, lag_lr, droprate_init, eval_target_shape, export_dir, export_dtype, '
            'init, importance_method, importance_file, calibration_batches, init_scale',
        ),
        (
            ['callbacks.dynamic_loading.updat=doremi'],
            'callbacks.dynamic_loading.updat is not a setting; the settings are reference, update, eta, smoothing, '
            'excess, max_step, domains, initial_proportions',
        ),
        (
            ['train_loader.drop_lst=true'],
            'train_loader.drop_lst is not a setting; the settings are dataset, drop_last, num_workers, pin_memory, '
            'prefetch_factor, persistent_workers, timeout',
        ),
        (
            ['train_loader.dataset.proportion=[1]'],
            'train_loader.dataset.proportion is not a setting; the settings are local, domains, proportions, split, '
            'remote, max_seq_len, shuffle_seed, epoch_size, shuffle_algo, shuffle_block_size, cache_limit, '
            'download_retry, download_timeout, validate_hash, keep_zip, allow_unsafe_types',
        ),
        (
            ['eval_loader.dataset.shufle=true'],
            'eval_loader.dataset.shufle is not a setting; the settings are local, domains, split, merged, remote, '
            'max_seq_len, shuffle, shuffle_seed, predownload, cache_limit, download_retry, download_timeout, '
            'validate_hash, keep_zip, allow_unsafe_types',
        ),
        (
            ['variables.domains=[code,reference,books]'],
            "train_loader.dataset.domains: no data for domain 'books': {data}/train/books/index.json does not exist",
        ),
        (
            ['eval_loader.dataset.domains=[code,reference,books]'],
            "eval_loader.dataset.domains: no data for domain 'books': {data}/eval/books/index.json does not exist",
        ),
        (
            ['variables.domains=[code,reference]'],
            'train_loader.dataset.proportions: expected 2 values, one per domain, got 3',
        ),
    ],
)
def test_a_typo_or_a_domain_the_data_lacks_is_named_before_training(assets, overrides, message):
    with pytest.raises(ValueError) as raised:
        check_train_config(_config(assets, *overrides))
    assert str(raised.value) == message.format(data=assets / 'data')


def _manifest(data: Path, tokenizer: dict) -> None:
    (data / 'manifest.json').write_text(json.dumps({'seq_len': 8, 'tokenizer': tokenizer}))


def test_data_tokenized_with_a_larger_vocabulary_than_the_model(assets, tmp_path):
    data = tmp_path / 'data'
    write_random_domain_data(data, DOMAINS, train_samples=4, eval_samples=2, seq_len=8)
    _manifest(data, {'path': '/elsewhere/tokenizer', 'vocab_size': 32000})
    with pytest.raises(ValueError) as raised:
        check_train_config(_config(assets, f'variables.data_local={data}'))
    assert str(raised.value) == (
        f'train_loader.dataset.local: {data} was tokenized with a vocabulary of 32000 tokens ({data}/manifest.json), '
        "more than the vocab_size of model.pretrained_model_name_or_path (259): prepare the data with the model's "
        'tokenizer'
    )
    _manifest(data, {'path': '/elsewhere/tokenizer', 'vocab_size': 259})  # the byte-level tokenizer's 256 + 3
    check_train_config(_config(assets, f'variables.data_local={data}'))


def test_data_without_a_vocabulary_in_its_manifest_is_not_checked_and_the_log_says_so(assets, caplog):
    with caplog.at_level(logging.WARNING, logger='llmshearing.preflight'):
        check_train_config(_config(assets))
    assert [record.getMessage() for record in caplog.records] == [
        f"{loader}.dataset.local: {assets / 'data' / 'manifest.json'} records no vocabulary size: the data's token "
        "ids are not checked against the model's vocab_size"
        for loader in ('train_loader', 'eval_loader')
    ]


def test_train_py_names_a_misspelt_recipe_path(tmp_path):
    recipe = tmp_path / 'prunnig.yaml'
    finished = subprocess.run(
        [sys.executable, str(REPO / 'train.py'), str(recipe)], capture_output=True, text=True, timeout=300,
    )
    assert (finished.returncode, finished.stderr.splitlines()[-1]) == (1, f'error: config {recipe} does not exist')


def test_tokenizer_larger_than_the_model_vocabulary(assets):
    config = _config(assets, f'variables.model_path={assets / "small-vocab"}', f'tokenizer.name={assets / "source"}')
    with pytest.raises(
        ValueError,
        match=r'tokenizer.name: .* has 259 tokens, '
        r'more than the vocabulary of model.pretrained_model_name_or_path \(100\)',
    ):
        check_train_config(config)


def test_a_used_save_folder_without_autoresume(assets, tmp_path):
    (tmp_path / 'ep0-ba12-rank0.pt').write_bytes(b'')
    config = _config(assets, f'save_folder={tmp_path}')
    config.autoresume = False
    with pytest.raises(FileExistsError, match=f'save_folder: {tmp_path} already holds files'):
        check_train_config(config)
    config.save_overwrite = True
    check_train_config(config)
    assert (tmp_path / 'ep0-ba12-rank0.pt').exists()


def test_missing_yaml(tmp_path):
    with pytest.raises(FileNotFoundError, match=f'config {tmp_path / "none.yaml"} does not exist'):
        load_train_config(tmp_path / 'none.yaml', [])


TINY_INSTRUCTION_TUNING = REPO / 'yamls' / 'tiny' / 'instruction_tuning.yaml'
PRUNING_IN_INSTRUCTION_TUNING = (
    'algorithms.shearing: pruning does not run on instruction data (train_loader.name: finetuning): prune and '
    'continue pre-training on the pre-training domains, export, then instruction-tune the pruned model; remove '
    'algorithms.shearing'
)
DYNAMIC_LOADING_IN_INSTRUCTION_TUNING = (
    'callbacks.dynamic_loading: dynamic batch loading re-weights the pre-training domains of a dynamic_text loader, '
    'and instruction data (train_loader.name: finetuning) has no domains; remove the callback'
)


def _instruction_config(assets: Path, tmp_path: Path, *overrides: str):
    for split in ('train', 'eval'):
        (tmp_path / f'{split}.jsonl').write_text('{"messages": []}\n')
    base = [f'variables.model_path={assets / "source"}', f'variables.data_local={tmp_path}',
            f'variables.output_dir={tmp_path / "run"}']
    return load_train_config(TINY_INSTRUCTION_TUNING, base + list(overrides))


def test_the_tiny_instruction_tuning_recipe_passes(assets, tmp_path):
    assert check_train_config(_instruction_config(assets, tmp_path)).train_loader['name'] == 'finetuning'


@pytest.mark.parametrize(
    ('overrides', 'error', 'message'),
    [
        (['algorithms.shearing.target.hidden_size=48'], ValueError, PRUNING_IN_INSTRUCTION_TUNING),
        (['callbacks.dynamic_loading.domains=[a]'], ValueError, DYNAMIC_LOADING_IN_INSTRUCTION_TUNING),
        (
            ['train_loader.dataset.hf_kwargs.data_files.train=/nowhere/train.jsonl'],
            FileNotFoundError,
            'train_loader.dataset.hf_kwargs.data_files: /nowhere/train.jsonl does not exist',
        ),
        (
            ['eval_loader.dataset.hf_kwargs.data_files={eval: [/nowhere/a.jsonl]}'],
            FileNotFoundError,
            'eval_loader.dataset.hf_kwargs.data_files: /nowhere/a.jsonl does not exist',
        ),
    ],
)
def test_instruction_tuning_refuses_pruning_and_dynamic_loading_and_missing_files(
    assets, tmp_path, overrides, error, message
):
    with pytest.raises(error) as raised:
        check_train_config(_instruction_config(assets, tmp_path, *overrides))
    assert str(raised.value) == message
