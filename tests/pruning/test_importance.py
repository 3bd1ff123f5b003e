"""One-shot importance pruning: exact target shapes per family, the least important structure goes first, the
command's outputs and bad input, and on SmolLM2 with real text a far lower loss than random structures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmshearing import cli
from llmshearing.commands.prune_oneshot import prune_oneshot
from llmshearing.pruning import (
    L0Module,
    ModelShape,
    attach_masks,
    default_pruning_modules,
    importance_masks,
    prune_model,
)
from llmshearing.pruning.importance import IMPORTANCE_METHODS, importance_scores, masks_from_scores
from llmshearing.toy import save_toy_model
from tests.paths import SHARED
from tests.tiny_models import FAMILIES, VOCAB_SIZE

REDPAJAMA_SAMPLE = SHARED / 'data' / 'redpajama-sample'
ALL_KINDS = ['layer', 'head', 'intermediate', 'hidden']
TARGETS = {
    'llama_mha': (ALL_KINDS, {'num_hidden_layers': 2, 'num_attention_heads': 3, 'intermediate_size': 40,
                              'hidden_size': 20}),
    'llama3_gqa': (ALL_KINDS + ['kv_head'], {'num_hidden_layers': 2, 'num_attention_heads': 3,
                                             'num_key_value_heads': 1, 'intermediate_size': 40, 'hidden_size': 24}),
    'qwen2': (ALL_KINDS + ['kv_head'], {'num_hidden_layers': 2, 'num_attention_heads': 2, 'num_key_value_heads': 1,
                                        'intermediate_size': 40, 'hidden_size': 20}),
}


def random_batches(count: int = 2, batch_size: int = 2, seq_len: int = 16) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randint(0, VOCAB_SIZE, (batch_size, seq_len), generator=generator) for _ in range(count)]


@pytest.mark.parametrize('method', IMPORTANCE_METHODS)
@pytest.mark.parametrize('family', sorted(TARGETS))
def test_pruned_model_has_exactly_the_target_shape(family: str, method: str):
    modules, target = TARGETS[family]
    model = FAMILIES[family]()
    masks = importance_masks(model, target, modules, random_batches(), method)
    for name, value in vars(masks).items():
        if value is not None:
            assert set(value.unique().tolist()) <= {0.0, 1.0}, name
    source = ModelShape.from_config(model.config)
    expected = source.with_target(target)
    attach_masks(model, target, modules)
    pruned = prune_model(model, masks=masks)
    assert ModelShape.from_config(pruned.config) == expected
    assert sum(p.numel() for n, p in pruned.named_parameters() if 'embed' not in n and 'lm_head' not in n) == (
        expected.num_non_embedding_params()
    )


def zero_head_and_channel(model, head: int, channel: int, weights: str) -> None:
    """Zero one query head (with its key/value head in multi-head attention) and one MLP channel in every layer:
    ``'all'`` their every weight, ``'output'`` only the weights that carry them into the residual stream."""
    head_dim = model.config.hidden_size // model.config.num_attention_heads
    rows = slice(head * head_dim, (head + 1) * head_dim)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[:, rows] = 0
            layer.mlp.down_proj.weight[:, channel] = 0
            if weights == 'all':
                for projection in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    projection.weight[rows] = 0
                layer.mlp.gate_proj.weight[channel] = 0
                layer.mlp.up_proj.weight[channel] = 0


@pytest.mark.parametrize(
    ('method', 'weights'), [(method, 'all') for method in IMPORTANCE_METHODS] + [('taylor', 'output')]
)
def test_a_zeroed_structure_is_pruned_first(method: str, weights: str):
    model = FAMILIES['llama_mha']()
    zero_head_and_channel(model, head=2, channel=13, weights=weights)
    masks = importance_masks(model, {'num_attention_heads': 3, 'intermediate_size': 63}, ['head', 'intermediate'],
                             random_batches(), method)
    assert (masks.query_heads[:, 2] == 0).all() and (masks.query_heads.sum(-1) == 3).all()
    assert (masks.intermediate[:, 13] == 0).all() and (masks.intermediate.sum(-1) == 63).all()


def test_a_layer_that_adds_nothing_to_the_residual_stream_is_dropped_first_by_activation_importance():
    """A block whose attention and MLP outputs are zero passes its input through unchanged: cosine similarity 1
    between its input and output, block importance 1 - 1 = 0, the lowest of the layers."""
    model = FAMILIES['llama_mha']()
    num_layers = model.config.num_hidden_layers
    with torch.no_grad():
        model.model.layers[1].self_attn.o_proj.weight.zero_()
        model.model.layers[1].mlp.down_proj.weight.zero_()
    masks = importance_masks(model, {'num_hidden_layers': num_layers - 1}, ['layer'], random_batches(), 'activation')
    assert masks.layer.tolist() == [1.0 if index != 1 else 0.0 for index in range(num_layers)]


def test_scores_need_calibration_batches_except_magnitude():
    model = FAMILIES['llama_mha']()
    with pytest.raises(ValueError, match="importance method 'activation' needs calibration batches"):
        importance_scores(model, 'activation', [])
    with pytest.raises(ValueError, match="method must be one of"):
        importance_scores(model, 'random', [])
    assert importance_scores(model, 'magnitude').hidden.shape == (32,)


def test_infeasible_target_is_rejected_like_shearing():
    with pytest.raises(ValueError, match='target num_attention_heads=5 is larger than the source model'):
        importance_masks(FAMILIES['llama_mha'](), {'num_attention_heads': 5}, ['head'], [], 'magnitude')


# The command ------------------------------------------------------------------------------------------------------


def test_prune_oneshot_writes_the_model_scores_and_plot(toy_source_and_data, tmp_path: Path):
    model_dir, data_dir = toy_source_and_data
    out = tmp_path / 'pruned'
    target = 'hidden_size=24,num_attention_heads=2,num_key_value_heads=1,intermediate_size=32,num_hidden_layers=2'
    assert cli.main(['prune-oneshot', str(model_dir), str(out), '--data', str(data_dir), '--target', target,
                     '--calibration-samples', '6', '--batch-size', '3', '--dtype', 'fp32']) == 0
    pruned = AutoModelForCausalLM.from_pretrained(out)
    assert (pruned.config.hidden_size, pruned.config.num_attention_heads, pruned.config.num_key_value_heads,
            pruned.config.intermediate_size, pruned.config.num_hidden_layers) == (24, 2, 1, 32, 2)
    AutoTokenizer.from_pretrained(out)
    report = json.loads((out / 'importance.json').read_text())
    assert report['method'] == 'activation' and report['calibration']['samples'] == 6
    assert [len(kept) for kept in report['kept']['intermediate']] == [32] * 3
    assert len(report['kept']['layer']) == 2 and len(report['kept']['hidden']) == 24
    assert len(report['scores']['head']) == 3  # (layers, kv heads, query heads per kv head)
    assert (out / 'kept_structures.png').read_bytes()[:4] == b'\x89PNG'


@pytest.mark.parametrize(
    ('extra', 'message'),
    [
        (['--target', 'num_attention_heads=5'], 'target num_attention_heads=5 is larger than the source model'),
        (['--target', 'heads=2'], "unknown target field 'heads'"),
        (['--target', 'num_hidden_layers=2', '--domains', 'gamma'], "no training split for domain(s) ['gamma']"),
        (['--target', 'num_hidden_layers=2', '--no-data'], '--data is needed: importance activation scores on'),
        (['--target', 'num_hidden_layers=2', '--calibration-samples', '0'],
         '--calibration-samples must be positive, got 0'),
        (['--target', 'num_hidden_layers=2', '--seq-len', '-1'], '--seq-len must be positive, got -1'),
    ],
)
def test_prune_oneshot_bad_input(toy_source_and_data, tmp_path: Path, capsys, extra: list[str], message: str):
    model_dir, data_dir = toy_source_and_data
    data = [] if '--no-data' in extra else ['--data', str(data_dir)]
    extra = [argument for argument in extra if argument != '--no-data']
    out = tmp_path / 'pruned'
    assert exit_code('prune-oneshot', str(model_dir), str(out), *data, *extra) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def exit_code(*arguments: str) -> int:
    """The command's exit status, whether it returns it or argparse exits with it."""
    try:
        return cli.main(list(arguments))
    except SystemExit as exit:
        return exit.code


def test_prune_oneshot_errors_name_parameters_in_python(toy_source_and_data, tmp_path: Path):
    model_dir, data_dir = toy_source_and_data
    with pytest.raises(ValueError, match='^calibration_samples must be positive, got 0$'):
        prune_oneshot(model_dir, tmp_path / 'pruned', {'num_hidden_layers': 2}, data_dir=data_dir,
                      calibration_samples=0)
    with pytest.raises(ValueError, match='^data_dir is needed'):
        prune_oneshot(model_dir, tmp_path / 'pruned', {'num_hidden_layers': 2})


def test_prune_oneshot_default_modules_on_multi_head_attention(tmp_path: Path):
    """The default pruning modules fit the source: a multi-head-attention Llama gets no ``kv_head``."""
    model_dir = save_toy_model(tmp_path / 'mha', hidden_size=32, num_attention_heads=4, num_key_value_heads=4,
                               intermediate_size=48, num_hidden_layers=3)
    out = tmp_path / 'pruned'
    assert cli.main(['prune-oneshot', str(model_dir), str(out), '--importance', 'magnitude', '--dtype', 'fp32',
                     '--target', 'hidden_size=24,num_attention_heads=2,intermediate_size=32,num_hidden_layers=2']) == 0
    pruned = AutoModelForCausalLM.from_pretrained(out)
    assert (pruned.config.num_attention_heads, pruned.config.num_key_value_heads) == (2, 2)
    report = json.loads((out / 'importance.json').read_text())
    assert report['pruning_modules'] == ['layer', 'head', 'intermediate', 'hidden']


def test_default_pruning_modules_follow_the_attention():
    mha = ModelShape(64, 4, 4, 16, 128, 2)
    gqa = ModelShape(64, 4, 2, 16, 128, 2)
    assert default_pruning_modules(mha) == ('layer', 'head', 'intermediate', 'hidden')
    assert default_pruning_modules(gqa) == ('layer', 'head', 'kv_head', 'intermediate', 'hidden')
    l0_module = L0Module(gqa, target={'num_attention_heads': 2, 'num_key_value_heads': 1})
    assert l0_module.pruning_modules == list(default_pruning_modules(gqa))


def test_prune_oneshot_keeps_an_existing_output(toy_source_and_data, tmp_path: Path, capsys):
    model_dir, data_dir = toy_source_and_data
    out = tmp_path / 'pruned'
    out.mkdir()
    (out / 'keep.txt').write_text('keep')
    assert cli.main(['prune-oneshot', str(model_dir), str(out), '--data', str(data_dir),
                     '--target', 'num_hidden_layers=2']) == 2
    assert 'is not empty; pass --overwrite' in capsys.readouterr().err
    assert sorted(path.name for path in out.iterdir()) == ['keep.txt']


# The real model ---------------------------------------------------------------------------------------------------

HALF_TARGET = {'hidden_size': 512, 'num_attention_heads': 6, 'num_key_value_heads': 3, 'intermediate_size': 1024,
               'num_hidden_layers': 24}  # 48.9% of SmolLM2's non-embedding parameters
HALF_MODULES = ['layer', 'head', 'kv_head', 'intermediate', 'hidden']


def real_text_batches(tokenizer, domains: list[str], file_index: int, count: int, seq_len: int) -> list[torch.Tensor]:
    """``count`` samples of ``seq_len`` tokens, one per document from the domains in turn, from each domain's
    ``file_index``-th file (calibration and held-out samples come from different files)."""
    documents = {}
    for domain in domains:
        path = sorted((REDPAJAMA_SAMPLE / domain).glob('*.jsonl'))[file_index]
        documents[domain] = iter(json.loads(line)['text'] for line in path.read_text().splitlines())
    samples = []
    while len(samples) < count:
        for domain in domains:
            ids = tokenizer(next(documents[domain])).input_ids
            if len(ids) >= seq_len:
                samples.append(torch.tensor(ids[:seq_len]))
    return [torch.stack(samples[start:start + 2]) for start in range(0, count, 2)]


def held_out_loss(model, batches: list[torch.Tensor]) -> float:
    with torch.no_grad():
        return sum(model(input_ids=batch, labels=batch).loss.item() for batch in batches) / len(batches)


@pytest.mark.skipif(not REDPAJAMA_SAMPLE.is_dir(), reason='needs ../shared/data/redpajama-sample (real text)')
def test_smollm2_importance_beats_random_structures(smollm2: Path):
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    domains = ['c4-rp', 'wiki', 'github', 'arxiv']
    calibration = real_text_batches(tokenizer, domains, file_index=0, count=8, seq_len=128)
    held_out = real_text_batches(tokenizer, domains, file_index=1, count=8, seq_len=128)
    losses = {}
    for method in ('activation', 'taylor', 'random'):
        model = AutoModelForCausalLM.from_pretrained(smollm2, torch_dtype=torch.float32)
        if method == 'random':
            l0_module = L0Module(ModelShape.from_config(model.config), HALF_MODULES, HALF_TARGET)
            scores = importance_scores(model, 'magnitude')
            generator = torch.Generator().manual_seed(0)
            for name, value in vars(scores).items():
                setattr(scores, name, torch.rand(value.shape, generator=generator))
            masks = masks_from_scores(l0_module, scores)
        else:
            masks = importance_masks(model, HALF_TARGET, HALF_MODULES, calibration, method)
        attach_masks(model, HALF_TARGET, HALF_MODULES)
        losses[method] = held_out_loss(prune_model(model, masks=masks), held_out)
    assert losses['activation'] < losses['random'] - 2.0, losses
    assert losses['taylor'] < losses['random'] - 2.0, losses
