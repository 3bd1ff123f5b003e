"""Hard-concrete masks, the L0 module's Lagrangian, and target validation."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import FAMILIES, VOCAB_SIZE

from llmshearing.pruning import L0Module, ModelShape, attach_masks
from llmshearing.pruning.hard_concrete import (
    LOG_ALPHA_MAX,
    LOG_ALPHA_MIN,
    HardConcreteMask,
    keep_probability,
    sample_hard_concrete,
)

MHA = ModelShape(hidden_size=32, num_attention_heads=4, num_key_value_heads=4, head_dim=8, intermediate_size=64, num_hidden_layers=3)
GQA = ModelShape(hidden_size=32, num_attention_heads=8, num_key_value_heads=2, head_dim=16, intermediate_size=64, num_hidden_layers=3)
ALL_MODULES = ['layer', 'head', 'intermediate', 'hidden']


def test_keep_probability_matches_the_sampling_distribution():
    log_alpha = torch.tensor([-2.0, 0.0, 1.5]).repeat(20000, 1)
    samples = sample_hard_concrete(log_alpha)
    assert samples.min().item() == 0.0 and samples.max().item() == 1.0
    empirical = (samples > 0).float().mean(0)
    expected = keep_probability(log_alpha[0])
    # Binomial standard error with n = 20000 is at most 0.0036: allow 5 of them.
    assert torch.allclose(empirical, expected, atol=0.018)


def test_keep_probability_gradient_flows_to_log_alpha():
    mask = HardConcreteMask((5,), num_kept=2)
    mask.expected_sparsity().backward()
    assert (mask.log_alpha.grad < 0).all()


def test_training_forward_samples_afresh_and_eval_is_deterministic():
    model = FAMILIES['llama_mha']()
    attach_masks(model, {'intermediate_size': 32, 'hidden_size': 24}, ['intermediate', 'hidden'])
    input_ids = torch.randint(0, VOCAB_SIZE, (1, 8))
    model.train()
    with torch.no_grad():
        first, second = model(input_ids).logits, model(input_ids).logits
    assert not torch.equal(first, second)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(input_ids).logits, model(input_ids).logits)


def test_deterministic_gates_keep_top_scores_with_their_values():
    mask = HardConcreteMask((2, 4), num_kept=2)
    with torch.no_grad():
        mask.log_alpha.copy_(torch.tensor([[0.1, 2.0, -1.0, 1.0], [3.0, -3.0, 0.5, 0.0]]))
    gates = mask.deterministic()
    assert (gates != 0).tolist() == [[False, True, False, True], [True, False, True, False]]
    expected = torch.sigmoid(mask.log_alpha / (2 / 3) * 0.8)
    assert torch.equal(gates[gates != 0], expected[gates != 0])


def test_constrain_parameters_clamps_log_alpha():
    mask = HardConcreteMask((3,), num_kept=1)
    with torch.no_grad():
        mask.log_alpha.copy_(torch.tensor([-50.0, 0.0, 50.0]))
    mask.constrain_parameters()
    assert mask.log_alpha.tolist() == pytest.approx([LOG_ALPHA_MIN, 0.0, LOG_ALPHA_MAX])


def test_lagrangian_value_and_gradient_ascent_on_lambdas():
    l0_module = L0Module(MHA, ['head', 'hidden'], {'num_attention_heads': 2, 'hidden_size': 16})
    with torch.no_grad():
        l0_module.lambdas['head'].copy_(torch.tensor([0.5, 2.0]))
        l0_module.lambdas['hidden'].copy_(torch.tensor([-1.0, 3.0]))
    progress = 0.25
    lagrangian = l0_module.lagrangian(progress)
    head_gap = l0_module.masks['head'].expected_sparsity() - progress * 0.5
    hidden_gap = l0_module.masks['hidden'].expected_sparsity() - progress * 0.5
    expected = 0.5 * head_gap + 2.0 * head_gap**2 - hidden_gap + 3.0 * hidden_gap**2
    assert lagrangian.item() == pytest.approx(expected.item(), rel=1e-6)

    lagrangian.backward()
    # Reversed gradients: a descent step on the lambdas is an ascent step on the Lagrangian.
    assert l0_module.lambdas['head'].grad.tolist() == pytest.approx([-head_gap.item(), -head_gap.item() ** 2], rel=1e-5)
    assert l0_module.lambdas['hidden'].grad.tolist() == pytest.approx([-hidden_gap.item(), -hidden_gap.item() ** 2], rel=1e-5)


def test_target_sparsity_warms_up_linearly():
    l0_module = L0Module(MHA, ['intermediate', 'layer'], {'intermediate_size': 16, 'num_hidden_layers': 2})
    assert l0_module.target_sparsities(0.0) == {'intermediate': 0.0, 'layer': 0.0}
    assert l0_module.target_sparsities(0.5) == pytest.approx({'intermediate': 0.375, 'layer': 1 / 6})
    assert l0_module.target_sparsities(2.0) == pytest.approx({'intermediate': 0.75, 'layer': 1 / 3})


def test_overall_sparsity_target_constrains_parameters():
    l0_module = L0Module(GQA, ALL_MODULES, target_sparsity=0.5)
    assert list(l0_module.lambdas) == ['params']
    expected = l0_module.expected_sparsities()['params']
    assert expected.item() == pytest.approx(1 - l0_module.expected_num_params().item() / GQA.num_non_embedding_params())
    assert l0_module.target_sparsities(1.0) == {'params': 0.5}
    # With every gate near certain, the final shape is the source's.
    with torch.no_grad():
        for mask in l0_module.masks.values():
            mask.log_alpha.fill_(LOG_ALPHA_MAX)
    assert l0_module.final_shape() == GQA


def test_overall_sparsity_final_shape_rounds_expected_counts():
    l0_module = L0Module(GQA, ['head', 'kv_head', 'intermediate'], target_sparsity=0.5)
    with torch.no_grad():
        l0_module.masks['head'].log_alpha.copy_(torch.tensor([6.0, 6.0, -6.0, -6.0]).repeat(3, 2, 1))
        l0_module.masks['kv_head'].log_alpha.copy_(torch.tensor([6.0, -6.0]).repeat(3, 1))
        l0_module.masks['intermediate'].log_alpha.fill_(6.0)
        l0_module.masks['intermediate'].log_alpha[:, :16] = -6.0
    shape = l0_module.final_shape()
    assert (shape.num_attention_heads, shape.num_key_value_heads, shape.intermediate_size) == (2, 1, 48)


@pytest.mark.parametrize(
    ('shape', 'modules', 'target', 'message'),
    [
        (MHA, ALL_MODULES, {'hidden_size': 64}, "target hidden_size=64 is larger than the source model's 32"),
        (MHA, ALL_MODULES, {'intermediate_size': 0}, 'target intermediate_size must be a positive integer, got 0'),
        (MHA, ALL_MODULES, {'num_hidden_layers': 2.5}, 'target num_hidden_layers must be a positive integer, got 2.5'),
        (MHA, ALL_MODULES, {'head_dim': 4}, "Unknown target field(s) ['head_dim']"),
        (GQA, ALL_MODULES + ['kv_head'], {'num_attention_heads': 3}, 'target num_attention_heads=3 is not a multiple of num_key_value_heads=2'),
        (GQA, ALL_MODULES, {'num_attention_heads': 4, 'num_key_value_heads': 1}, "pruning module 'kv_head' is not in pruning_modules"),
        (MHA, ['layer', 'head'], {'hidden_size': 16}, "target hidden_size=16 differs from the source's 32 but pruning module 'hidden'"),
        (MHA, ['layer'], {'num_attention_heads': 2}, "pruning module 'head' is not in pruning_modules"),
        (GQA, ['kv_head'], {'num_key_value_heads': 1, 'num_attention_heads': 8}, 'needs 8 query heads per key/value head; the source has 4'),
        (MHA, ['head'], {'num_attention_heads': 2, 'num_key_value_heads': 1}, 'a multi-head-attention source is pruned by whole heads'),
        (MHA, ['kv_head'], {}, "pruning module 'kv_head' needs grouped-query attention"),
        (MHA, ['mlp'], {}, "Unknown pruning module 'mlp'"),
        (MHA, [], {}, 'pruning_modules is empty'),
        (MHA, ['head', 'head'], {}, 'pruning_modules lists a module twice'),
    ],
)
def test_infeasible_targets_name_the_field(shape, modules, target, message):
    with pytest.raises(ValueError) as error:
        L0Module(shape, modules, target)
    assert message in str(error.value)


@pytest.mark.parametrize('sparsity', [0.0, 1.0, -0.2])
def test_overall_sparsity_out_of_range(sparsity):
    with pytest.raises(ValueError, match=f'target_sparsity must be in \\(0, 1\\), got {sparsity}'):
        L0Module(MHA, ALL_MODULES, target_sparsity=sparsity)


def test_target_and_sparsity_are_exclusive():
    with pytest.raises(ValueError, match='Give exactly one of target and target_sparsity'):
        L0Module(MHA, ALL_MODULES, {'hidden_size': 16}, target_sparsity=0.5)


def test_unsupported_family_and_double_attach():
    model = FAMILIES['llama_mha']()
    attach_masks(model, {'hidden_size': 16}, ['hidden'])
    with pytest.raises(ValueError, match='masks are already attached'):
        attach_masks(model, {'hidden_size': 16}, ['hidden'])
    model.config.model_type = 'gpt2'
    with pytest.raises(ValueError, match="model_type 'gpt2' is not supported"):
        attach_masks(model, {'hidden_size': 16}, ['hidden'])


def test_multi_head_source_keeps_kv_heads_with_heads():
    assert MHA.with_target({'num_attention_heads': 2}).num_key_value_heads == 2
    assert GQA.with_target({'num_attention_heads': 4}).num_key_value_heads == 2
    assert math.isclose(L0Module(MHA, ['head'], {'num_attention_heads': 2}).target_sparsities(1.0)['head'], 0.5)


def _mask_gradients(model, input_ids) -> dict[str, torch.Tensor]:
    l0_module = model.l0_module
    l0_module.generator = torch.Generator().manual_seed(0)
    model.train()
    loss = model(input_ids=input_ids, labels=input_ids).loss + l0_module.lagrangian(1.0)
    loss.backward()
    return {name: mask.log_alpha.grad.clone() for name, mask in l0_module.masks.items()}


def test_activation_checkpointing_keeps_the_mask_gradients():
    target, modules = {'hidden_size': 24, 'num_attention_heads': 4, 'intermediate_size': 32}, ['head', 'intermediate', 'hidden']
    input_ids = torch.randint(0, VOCAB_SIZE, (2, 12))
    plain = FAMILIES['llama3_gqa']()
    checkpointed = FAMILIES['llama3_gqa']()
    checkpointed.load_state_dict(plain.state_dict())
    attach_masks(plain, target, modules)
    attach_masks(checkpointed, target, modules)
    checkpointed.l0_module.load_state_dict(plain.l0_module.state_dict())
    checkpointed.gradient_checkpointing_enable(gradient_checkpointing_kwargs={'use_reentrant': False})
    expected, recomputed = _mask_gradients(plain, input_ids), _mask_gradients(checkpointed, input_ids)
    for name in modules:
        assert expected[name].abs().sum() > 0
        torch.testing.assert_close(recomputed[name], expected[name], rtol=1e-5, atol=1e-7)


def test_bf16_weights_run_with_fp32_masks():
    model = FAMILIES['qwen2']().to(torch.bfloat16)
    l0_module = attach_masks(model, {'hidden_size': 24, 'num_attention_heads': 2, 'intermediate_size': 32}, ['head', 'intermediate', 'hidden'])
    assert l0_module.masks['hidden'].log_alpha.dtype == torch.float32
    gradients = _mask_gradients(model, torch.randint(0, VOCAB_SIZE, (2, 12)))
    assert all(torch.isfinite(gradient).all() and gradient.abs().sum() > 0 for gradient in gradients.values())
    model.eval()
    with torch.no_grad():
        assert model(torch.randint(0, VOCAB_SIZE, (1, 8))).logits.dtype == torch.bfloat16
