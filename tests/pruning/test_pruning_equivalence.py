"""Invariant 1: the masked eval forward equals the forward of the physically pruned model, and the pruned model
equals the source Hugging Face model with every mask value multiplied into its full-width weights."""

from __future__ import annotations

import copy

import pytest
import torch

from llmshearing.pruning import attach_masks, prune_model
from llmshearing.pruning.l0_module import StructureMasks
from tests.pruning.references import scaled_source
from tests.tiny_models import FAMILIES, VOCAB_SIZE

ALL_MODULES = ['layer', 'head', 'intermediate', 'hidden']

# Per family: (pruning modules, target) cases; every kind alone and all together.
CASES = {
    'llama_mha': [
        (['layer'], {'num_hidden_layers': 2}),
        (['head'], {'num_attention_heads': 2}),
        (['intermediate'], {'intermediate_size': 40}),
        (['hidden'], {'hidden_size': 20}),
        (ALL_MODULES, {'num_hidden_layers': 2, 'num_attention_heads': 3, 'intermediate_size': 40, 'hidden_size': 20}),
    ],
    'llama3_gqa': [
        (['layer'], {'num_hidden_layers': 1}),
        (['head'], {'num_attention_heads': 4}),
        (['kv_head'], {'num_attention_heads': 4, 'num_key_value_heads': 1}),
        (['intermediate'], {'intermediate_size': 24}),
        (['hidden'], {'hidden_size': 24}),
        (
            ALL_MODULES + ['kv_head'],
            {
                'num_hidden_layers': 2,
                'num_attention_heads': 3,
                'num_key_value_heads': 1,
                'intermediate_size': 40,
                'hidden_size': 20,
            },
        ),
    ],
    'mistral': [
        (['head'], {'num_attention_heads': 6}),
        (['kv_head'], {'num_attention_heads': 4, 'num_key_value_heads': 1}),
        (ALL_MODULES, {'num_hidden_layers': 2, 'num_attention_heads': 2, 'intermediate_size': 40, 'hidden_size': 20}),
    ],
    'qwen2': [
        (['head'], {'num_attention_heads': 2}),
        (['kv_head'], {'num_attention_heads': 2, 'num_key_value_heads': 1}),
        (['hidden'], {'hidden_size': 20}),
        (ALL_MODULES, {'num_hidden_layers': 2, 'num_attention_heads': 2, 'intermediate_size': 40, 'hidden_size': 20}),
    ],
}

PARAMS = [(family, modules, target) for family, cases in CASES.items() for modules, target in cases]


def _masked_model(family: str, modules: list[str], target: dict[str, int]):
    model = FAMILIES[family]()
    l0_module = attach_masks(model, target, modules)
    with torch.no_grad():
        for mask in l0_module.masks.values():
            mask.log_alpha.uniform_(-2.0, 2.0)  # scores in (0.08, 0.92): real-valued scales
    return model.eval(), l0_module


@pytest.mark.parametrize(('family', 'modules', 'target'), PARAMS, ids=[f'{f}-{"+".join(m)}' for f, m, _ in PARAMS])
def test_pruned_forward_equals_masked_eval_forward(family, modules, target):
    model, l0_module = _masked_model(family, modules, target)
    mask_values = torch.cat(
        [gates.flatten() for gates in vars(l0_module.deterministic_masks()).values() if gates is not None]
    )
    kept_values = mask_values[mask_values != 0]
    assert ((kept_values > 0.05) & (kept_values < 0.95)).any(), 'the test needs mask values that are not just 0 and 1'

    input_ids = torch.randint(0, VOCAB_SIZE, (2, 16))
    with torch.no_grad():
        masked_logits = model(input_ids).logits
        pruned = prune_model(model)
        pruned_logits = pruned(input_ids).logits

    assert type(pruned) is type(model)
    assert not hasattr(pruned, 'l0_module')
    assert (masked_logits - pruned_logits).abs().max().item() <= 1e-5
    for field, size in l0_module.target.config_updates().items():
        assert getattr(pruned.config, field) == size
    assert pruned.config.tie_word_embeddings == model.config.tie_word_embeddings
    if model.config.tie_word_embeddings:
        assert pruned.lm_head.weight.data_ptr() == pruned.model.embed_tokens.weight.data_ptr()


def test_deterministic_masks_have_exactly_the_target_shape():
    _, l0_module = _masked_model('llama3_gqa', ALL_MODULES + ['kv_head'], CASES['llama3_gqa'][-1][1])
    masks = l0_module.deterministic_masks()
    assert (masks.layer != 0).sum().item() == 2
    assert (masks.hidden != 0).sum().item() == 20
    assert (masks.intermediate != 0).sum(-1).tolist() == [40, 40, 40]
    assert (masks.kv_heads != 0).sum(-1).tolist() == [1, 1, 1]
    assert (masks.query_heads != 0).sum(-1).tolist() == [3, 3, 3]
    # Kept query heads sit in the kept kv group.
    for layer_query, layer_kv in zip(masks.query_heads, masks.kv_heads):
        groups = (layer_query != 0).reshape(2, 4).any(-1)
        assert groups.tolist() == (layer_kv != 0).tolist()


def test_pruned_model_converts_dtype():
    model, _ = _masked_model('llama_mha', ['hidden'], {'hidden_size': 24})
    pruned = prune_model(model, dtype=torch.bfloat16)
    assert pruned.model.embed_tokens.weight.dtype == torch.bfloat16
    assert pruned.config.torch_dtype == torch.bfloat16


def test_prune_model_without_masks_is_an_error():
    with pytest.raises(ValueError, match='call attach_masks first'):
        prune_model(FAMILIES['llama_mha']())


def hand_masks(l0_module, values: str, generator: torch.Generator) -> StructureMasks:
    """Masks that keep the final shape's counts of randomly chosen structures, with values 1 (``binary``) or in
    [0.3, 0.9] (``scaled``)."""
    source, target = l0_module.source, l0_module.final_shape()

    def gates(rows: tuple[int, ...], size: int, num_kept: int) -> torch.Tensor:
        kept = torch.rand(*rows, size, generator=generator).argsort(-1)[..., :num_kept]
        value = torch.ones(*rows, num_kept) if values == 'binary' else 0.3 + 0.6 * torch.rand(*rows, num_kept)
        return torch.zeros(*rows, size).scatter_(-1, kept, value)

    layers = source.num_hidden_layers
    if source.is_multi_head:
        query_heads = kv_heads = gates((layers,), source.num_attention_heads, target.num_attention_heads)
    else:
        kv_heads = gates((layers,), source.num_key_value_heads, target.num_key_value_heads)
        within = gates((layers, source.num_key_value_heads), source.num_query_groups, target.num_query_groups)
        query_heads = (within * kv_heads.unsqueeze(-1)).reshape(layers, source.num_attention_heads)
    return StructureMasks(
        layer=gates((), layers, target.num_hidden_layers),
        query_heads=query_heads,
        kv_heads=kv_heads,
        intermediate=gates((layers,), source.intermediate_size, target.intermediate_size),
        hidden=gates((), source.hidden_size, target.hidden_size),
    )


FULL_CASES = {family: cases[-1] for family, cases in CASES.items()}


@pytest.mark.parametrize('values', ['binary', 'scaled'])
@pytest.mark.parametrize('family', list(FULL_CASES))
def test_pruned_model_equals_the_source_with_the_masks_in_its_weights(family, values):
    """0/1 masks: the pruned model is the source with the dropped heads, channels, layers and hidden dimensions zeroed;
    real-valued masks: the source with its weights scaled. The reference is a plain HF model, not the masked forward."""
    modules, target = FULL_CASES[family]
    source = FAMILIES[family]()
    model = copy.deepcopy(source)
    l0_module = attach_masks(model, target, modules)
    masks = hand_masks(l0_module, values, torch.Generator().manual_seed(0))
    input_ids = torch.randint(0, VOCAB_SIZE, (2, 16))
    with torch.no_grad():
        pruned_logits = prune_model(model.eval(), masks=masks)(input_ids).logits
        expected = scaled_source(source, masks)(input_ids).logits
    assert (pruned_logits - expected).abs().max().item() <= 1e-5
