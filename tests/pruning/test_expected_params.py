"""Invariant 2: the L0 module's expected parameter count at the target masks is the HF model's exact count, and at
any keep probabilities the expected number of a real HF model's parameters that survive."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, LlamaConfig, MistralConfig, Qwen2Config

from llmshearing.pruning import L0Module, ModelShape
from tests.pruning.references import hf_non_embedding_params
from tests.tiny_models import tiny_gqa_llama, tiny_llama, tiny_qwen2

LLAMA2_7B = LlamaConfig(
    hidden_size=4096, num_attention_heads=32, num_hidden_layers=32, intermediate_size=11008, vocab_size=32000
)
LLAMA3_8B = LlamaConfig(
    hidden_size=4096, num_attention_heads=32, num_key_value_heads=8, num_hidden_layers=32, intermediate_size=14336,
    vocab_size=128256, rope_theta=500000.0,
)
MISTRAL_7B = MistralConfig(
    hidden_size=4096, num_attention_heads=32, num_key_value_heads=8, num_hidden_layers=32, intermediate_size=14336,
    vocab_size=32000,
)
QWEN25_1_5B = Qwen2Config(
    hidden_size=1536, num_attention_heads=12, num_key_value_heads=2, num_hidden_layers=28, intermediate_size=8960,
    vocab_size=151936, tie_word_embeddings=True,
)
ALL_MODULES = ['layer', 'head', 'intermediate', 'hidden']
GQA_MODULES = ALL_MODULES + ['kv_head']

CASES = {
    'llama2-7b-to-2.7b': (
        LLAMA2_7B,
        ALL_MODULES,
        dict(hidden_size=2560, num_attention_heads=20, intermediate_size=6912),
    ),
    'llama2-7b-to-1.3b': (
        LLAMA2_7B,
        ALL_MODULES,
        dict(hidden_size=2048, num_attention_heads=16, intermediate_size=5504, num_hidden_layers=24),
    ),
    'llama2-7b-to-370m': (
        LLAMA2_7B,
        ALL_MODULES,
        dict(hidden_size=1024, num_attention_heads=8, intermediate_size=2816, num_hidden_layers=24),
    ),
    'llama3-8b-gqa-heads': (
        LLAMA3_8B,
        ALL_MODULES,
        dict(hidden_size=3072, num_attention_heads=24, intermediate_size=8192, num_hidden_layers=28),
    ),
    'llama3-8b-gqa-kv-heads': (
        LLAMA3_8B,
        GQA_MODULES,
        dict(
            hidden_size=2048,
            num_attention_heads=16,
            num_key_value_heads=4,
            intermediate_size=5632,
            num_hidden_layers=24,
        ),
    ),
    'mistral-7b': (
        MISTRAL_7B,
        GQA_MODULES,
        dict(hidden_size=2560, num_attention_heads=12, num_key_value_heads=4, intermediate_size=6912),
    ),
    'qwen2.5-1.5b-biases-tied': (
        QWEN25_1_5B,
        GQA_MODULES,
        dict(
            hidden_size=1024, num_attention_heads=4, num_key_value_heads=1, intermediate_size=4096, num_hidden_layers=20
        ),
    ),
}


def target_config(config, target: dict[str, int]):
    shape = ModelShape.from_config(config).with_target(target)
    return AutoConfig.for_model(**(config.to_dict() | shape.config_updates()))


@pytest.mark.parametrize('case', list(CASES))
def test_expected_params_at_target_masks_equal_hf_count(case):
    config, modules, target = CASES[case]
    l0_module = L0Module(ModelShape.from_config(config), modules, target)
    masks = l0_module.deterministic_masks()
    gates = {module: mask.deterministic() for module, mask in l0_module.masks.items()}
    kept = {module: (values != 0).float() for module, values in gates.items()}
    expected = l0_module.expected_num_params(kept).item()
    assert expected == hf_non_embedding_params(target_config(config, target))
    assert l0_module.target.num_non_embedding_params() == expected
    assert masks.hidden is not None


@pytest.mark.parametrize(
    'config', [LLAMA2_7B, LLAMA3_8B, MISTRAL_7B, QWEN25_1_5B], ids=['llama2', 'llama3', 'mistral', 'qwen2']
)
def test_source_shape_counts_like_hf(config):
    shape = ModelShape.from_config(config)
    l0_module = L0Module(shape, GQA_MODULES if not shape.is_multi_head else ALL_MODULES, target={})
    all_kept = {module: torch.ones(mask.shape) for module, mask in l0_module.masks.items()}
    assert shape.num_non_embedding_params() == hf_non_embedding_params(config)
    assert l0_module.expected_num_params(all_kept).item() == hf_non_embedding_params(config)


def test_expected_params_follow_keep_probabilities():
    """Half of every structure kept in expectation: each term scales by the product of its factors."""
    shape = ModelShape(
        hidden_size=8,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=2,
        intermediate_size=6,
        num_hidden_layers=2,
    )
    l0_module = L0Module(shape, ALL_MODULES, target={'hidden_size': 4})
    half = {module: torch.full(mask.shape, 0.5) for module, mask in l0_module.masks.items()}
    hidden, heads, intermediate = 4.0, 2.0, 3.0
    per_layer = hidden * 2 * (4 * heads) + 3 * hidden * intermediate + 2 * hidden
    assert l0_module.expected_num_params(half).item() == pytest.approx(2 * 0.5 * per_layer + hidden)


def survival_probability(name: str, shape: torch.Size, keep: dict[str, torch.Tensor], head_dim: int) -> torch.Tensor:
    """For every element of the HF parameter ``name``: the probability that it survives, the product of the keep
    probabilities of the distinct structures it belongs to (its layer, the hidden dimension it reads or writes, its
    query or key/value head, its MLP channel)."""
    hidden = keep['hidden']
    if name == 'model.norm.weight':
        return hidden
    _, _, layer_index, module, *rest = name.split('.')
    layer = int(layer_index)
    kept_layer = keep['layer'][layer]
    query_heads = keep['query_heads'][layer].repeat_interleave(head_dim)
    kv_heads = keep['kv_heads'][layer].repeat_interleave(head_dim)
    channels = keep['intermediate'][layer]
    reads = {  # (output rows, input columns) of each weight
        'q_proj': (query_heads, hidden), 'k_proj': (kv_heads, hidden), 'v_proj': (kv_heads, hidden),
        'o_proj': (hidden, query_heads), 'gate_proj': (channels, hidden), 'up_proj': (channels, hidden),
        'down_proj': (hidden, channels),
    }
    if module in ('input_layernorm', 'post_attention_layernorm'):
        probability = hidden
    else:
        rows, columns = reads[rest[0]]
        probability = rows.unsqueeze(-1) * columns if rest[1] == 'weight' else rows
    assert probability.shape == shape, name
    return kept_layer * probability


@pytest.mark.parametrize(
    ('make_model', 'modules'),
    [
        (lambda: tiny_llama(attention_bias=True, mlp_bias=True), ALL_MODULES),
        (tiny_gqa_llama, GQA_MODULES),
        (tiny_qwen2, GQA_MODULES),
    ],
    ids=['llama_mha_all_biases', 'llama3_gqa', 'qwen2_qkv_biases_tied'],
)
def test_expected_params_are_the_expected_number_of_surviving_hf_parameters(make_model, modules):
    """Random keep probabilities per structure, each gate independent: the expected count is the sum, over every
    non-embedding parameter element of the HF model, of the probability that all the structures it belongs to
    are kept."""
    model = make_model()
    shape = ModelShape.from_config(model.config)
    l0_module = L0Module(shape, modules, target={})
    generator = torch.Generator().manual_seed(0)
    keep = {
        kind: torch.rand(mask.shape, generator=generator, dtype=torch.float64)
        for kind, mask in l0_module.masks.items()
    }
    layers = shape.num_hidden_layers
    if shape.is_multi_head:  # a head and its key/value head are one structure
        query_heads = kv_heads = keep['head']
    else:  # query head h belongs to key/value head h // groups
        query_heads = (keep['head'] * keep['kv_head'].unsqueeze(-1)).reshape(layers, shape.num_attention_heads)
        kv_heads = keep['kv_head']
    structures = {'layer': keep['layer'], 'hidden': keep['hidden'], 'intermediate': keep['intermediate'],
                  'query_heads': query_heads, 'kv_heads': kv_heads}
    embedding_ids = {id(model.get_input_embeddings().weight), id(model.get_output_embeddings().weight)}
    expected = sum(
        survival_probability(name, parameter.shape, structures, shape.head_dim).sum().item()
        for name, parameter in model.named_parameters()
        if id(parameter) not in embedding_ids
    )
    assert l0_module.expected_num_params(keep).item() == pytest.approx(expected, rel=1e-9)
