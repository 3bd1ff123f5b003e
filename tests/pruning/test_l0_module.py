"""Hard-concrete masks, the L0 module's Lagrangian, and target validation."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from llmshearing.pruning import L0Module, ModelShape, attach_masks
from llmshearing.pruning.hard_concrete import (
    LOG_ALPHA_MAX,
    LOG_ALPHA_MIN,
    HardConcreteMask,
    keep_probability,
    sample_hard_concrete,
)
from tests.pruning.references import log_alpha_keeping, nonzero_indices
from tests.tiny_models import FAMILIES, VOCAB_SIZE

MHA = ModelShape(
    hidden_size=32, num_attention_heads=4, num_key_value_heads=4, head_dim=8, intermediate_size=64, num_hidden_layers=3
)
GQA = ModelShape(
    hidden_size=32, num_attention_heads=8, num_key_value_heads=2, head_dim=16, intermediate_size=64, num_hidden_layers=3
)
ALL_MODULES = ['layer', 'head', 'intermediate', 'hidden']


def test_keep_probability_matches_the_sampling_distribution():
    log_alpha = torch.tensor([-2.0, 0.0, 1.5]).repeat(20000, 1)
    samples = sample_hard_concrete(log_alpha)
    assert samples.min().item() == 0.0 and samples.max().item() == 1.0
    empirical = (samples > 0).float().mean(0)
    expected = keep_probability(log_alpha[0])
    # Binomial standard error with n = 20000 is at most 0.0036: allow 5 of them.
    assert torch.allclose(empirical, expected, atol=0.018)


def test_keep_probability_and_deterministic_values_match_hand_worked_numbers():
    # Stretch (l, r) = (-0.1, 1.1), temperature 2/3: z > 0 iff the concrete sample s > 1/12, so
    # P(z > 0) = sigmoid(log_alpha - (2/3) ln(1/11)) = 1 / (1 + exp(-log_alpha) * 11^(-2/3)).
    log_alpha = torch.tensor([0.0, -2.0, math.log(100.0)])
    assert keep_probability(log_alpha).tolist() == pytest.approx(
        [1 / (1 + 11 ** (-2 / 3)), 1 / (1 + math.e**2 * 11 ** (-2 / 3)), 1 / (1 + 11 ** (-2 / 3) / 100)], abs=1e-6
    )  # 0.83182, 0.40098, 0.99798
    # A kept deterministic gate carries sigmoid(0.8 * log_alpha / (2/3)) = sigmoid(1.2 * log_alpha).
    mask = HardConcreteMask((3,), num_kept=3)
    with torch.no_grad():
        mask.log_alpha.copy_(torch.tensor([0.0, -1.0, math.log(100.0)]))
    assert mask.deterministic().tolist() == pytest.approx([0.5, 1 / (1 + math.exp(1.2)), 1 / (1 + 100**-1.2)], abs=1e-6)


def test_a_sample_is_the_stretched_concrete_of_its_uniform_draw():
    """z = clamp(1.2 * sigmoid(1.5 * (ln u - ln(1 - u) + log_alpha)) - 0.1, 0, 1) for the uniform u that the
    generator draws; z > 0 exactly where u > 1 - P(z > 0)."""
    log_alpha = torch.tensor([-2.0, 0.0, 1.5]).repeat(200, 1)
    samples = sample_hard_concrete(log_alpha, torch.Generator().manual_seed(7))
    u = torch.empty_like(log_alpha).uniform_(1e-6, 1 - 1e-6, generator=torch.Generator().manual_seed(7))
    concrete = 1 / (1 + torch.exp(-1.5 * (torch.log(u) - torch.log(1 - u) + log_alpha)))
    torch.testing.assert_close(samples, (1.2 * concrete - 0.1).clamp(0, 1), rtol=1e-5, atol=1e-6)
    keep = 1 / (1 + torch.exp(-log_alpha) * 11 ** (-2 / 3))
    assert torch.equal(samples > 0, u > 1 - keep)
    assert (samples == 0).any() and (samples == 1).any() and ((samples > 0) & (samples < 1)).any()


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


def test_deterministic_masks_keep_the_structures_with_the_highest_log_alphas():
    """Hand-chosen log-alphas, the kept indices written out: layers, hidden dimensions, MLP channels per layer,
    key/value heads per layer and query heads per key/value group are each the top of their own row."""
    shape = ModelShape(
        hidden_size=6, num_attention_heads=8, num_key_value_heads=2, head_dim=2, intermediate_size=5,
        num_hidden_layers=3,
    )
    target = {'hidden_size': 3, 'num_attention_heads': 2, 'num_key_value_heads': 1, 'intermediate_size': 2,
              'num_hidden_layers': 2}
    l0_module = L0Module(shape, ['layer', 'head', 'kv_head', 'intermediate', 'hidden'], target)
    log_alphas = {
        'layer': [0.5, -1.0, 2.0],
        'hidden': [0.1, 3.0, -2.0, 1.0, 0.0, 2.0],
        'intermediate': [[1.0, 0.0, 3.0, -1.0, 2.0], [-1.0, -2.0, 0.0, 4.0, 1.0], [4.0, 3.0, -3.0, 0.0, -4.0]],
        'kv_head': [[1.0, -1.0], [-1.0, 1.0], [0.5, 2.0]],
        # (layer, kv group, query head in the group): 2 of 4 kept per group.
        'head': [[[0.0, 2.0, 1.0, -1.0], [3.0, -3.0, 0.0, 0.0]],
                 [[1.0, 1.5, 2.0, 2.5], [2.0, -1.0, 3.0, 0.5]],
                 [[0.0, 0.0, 0.0, 0.0], [-2.0, 1.0, -1.0, 1.5]]],
    }
    with torch.no_grad():
        for kind, values in log_alphas.items():
            l0_module.masks[kind].log_alpha.copy_(torch.tensor(values))
    masks = l0_module.deterministic_masks()

    assert nonzero_indices(masks.layer) == [0, 2]
    assert nonzero_indices(masks.hidden) == [1, 3, 5]
    assert nonzero_indices(masks.intermediate) == [[2, 4], [3, 4], [0, 1]]
    assert nonzero_indices(masks.kv_heads) == [[0], [1], [1]]
    # Query head h is head h % 4 of group h // 4: layer 0 keeps group 0's heads 1, 2; layer 1 group 1's heads 0, 2;
    # layer 2 group 1's heads 1, 3.
    assert nonzero_indices(masks.query_heads) == [[1, 2], [4, 6], [5, 7]]
    # A kept query head carries its own gate times its key/value head's: sigmoid(1.2 * 2) * sigmoid(1.2 * 1) in
    # layer 0, head 1.
    assert masks.query_heads[0, 1].item() == pytest.approx(0.916827 * 0.768525, abs=1e-5)
    assert masks.hidden[1].item() == pytest.approx(0.973403, abs=1e-6)  # sigmoid(1.2 * 3)


def test_constrain_parameters_clamps_log_alpha():
    mask = HardConcreteMask((3,), num_kept=1)
    with torch.no_grad():
        mask.log_alpha.copy_(torch.tensor([-50.0, 0.0, 50.0]))
    mask.constrain_parameters()
    assert mask.log_alpha.tolist() == pytest.approx([LOG_ALPHA_MIN, 0.0, LOG_ALPHA_MAX])


def test_lagrangian_holds_every_row_to_the_target_with_hand_worked_values():
    l0_module = L0Module(MHA, ['head', 'hidden'], {'num_attention_heads': 2, 'hidden_size': 16})
    with torch.no_grad():
        # Keep probabilities per layer (a row of 4 heads): expected sparsities 0.5, 0.25 and 0.5 (mean 5/12).
        l0_module.masks['head'].log_alpha.copy_(log_alpha_keeping([[0.5] * 4, [0.75] * 4, [0.9, 0.9, 0.1, 0.1]]))
        l0_module.masks['hidden'].log_alpha.copy_(log_alpha_keeping([0.8] * 32))  # sparsity 0.2
        l0_module.lambdas['head'].copy_(torch.tensor([0.5, 2.0]))
        l0_module.lambdas['hidden'].copy_(torch.tensor([-1.0, 3.0]))
    # Half-way through the warm-up both targets are 0.25: head gaps per layer 0.25, 0, 0.25; hidden gap -0.05.
    #   heads:  mean(0.5*0.25 + 2*0.0625, 0, 0.5*0.25 + 2*0.0625) = 1/6
    #   hidden: -1*(-0.05) + 3*0.0025 = 0.0575
    # (one sparsity for all heads, 5/12, would give 0.5/6 + 2/36 + 0.0575 = 0.19639).
    lagrangian = l0_module.lagrangian(0.5)
    assert lagrangian.item() == pytest.approx(1 / 6 + 0.0575, abs=1e-6)

    lagrangian.backward()
    # Reversed gradients, so that a descent step on the lambdas ascends the Lagrangian: -mean(gap), -mean(gap^2).
    assert l0_module.lambdas['head'].grad.tolist() == pytest.approx([-1 / 6, -0.125 / 3], abs=1e-6)
    assert l0_module.lambdas['hidden'].grad.tolist() == pytest.approx([0.05, -0.0025], abs=1e-6)
    # d/d log_alpha of head i in layer r: (1/3) * (0.5 + 4 gap_r) * (-1/4) * p_i (1 - p_i).
    head_grad = l0_module.masks['head'].log_alpha.grad
    assert head_grad[0, 0].item() == pytest.approx(1 / 3 * 1.5 * -0.25 * 0.25, abs=1e-6)
    assert head_grad[1, 0].item() == pytest.approx(1 / 3 * 0.5 * -0.25 * 0.1875, abs=1e-6)
    assert head_grad[2, 0].item() == pytest.approx(1 / 3 * 1.5 * -0.25 * 0.09, abs=1e-6)


def test_grouped_query_heads_are_held_to_the_target_per_key_value_group():
    l0_module = L0Module(GQA, ['head', 'kv_head', 'intermediate', 'layer', 'hidden'], {'num_attention_heads': 4})
    sparsities = l0_module.expected_sparsities()
    shapes = {name: tuple(sparsity.shape) for name, sparsity in sparsities.items()}
    # 3 layers, 2 kv groups of 4 query heads: a row is one group's query heads, or one layer's kv heads / channels.
    assert shapes == {'head': (3, 2), 'kv_head': (3,), 'intermediate': (3,), 'layer': (), 'hidden': ()}
    with torch.no_grad():
        l0_module.masks['head'].log_alpha.copy_(log_alpha_keeping([[[0.25] * 4, [0.75] * 4]] * 3))
        l0_module.lambdas['head'].copy_(torch.tensor([1.0, 1.0]))
    # The other multipliers are 0. Target 2 of 4 per group (sparsity 0.5); group gaps +0.25 and -0.25 in every
    # layer, although every layer as a whole is at the target: mean(0.25 + 0.0625, -0.25 + 0.0625) = 0.0625.
    assert l0_module.lagrangian(1.0).item() == pytest.approx(0.0625, abs=1e-6)


def test_eval_at_the_expected_shape_keeps_each_rows_own_expected_count():
    shape = dataclasses.replace(MHA, intermediate_size=4, num_hidden_layers=2)
    l0_module = L0Module(shape, ['intermediate'], {'intermediate_size': 2}, eval_target_shape=False)
    with torch.no_grad():
        # Expected counts 3.6 and 1.8: layer 0 keeps 4 channels, layer 1 its top 2, channels 1 and 3 (one count for
        # both would be 3).
        l0_module.masks['intermediate'].log_alpha.copy_(log_alpha_keeping([[0.9] * 4, [0.2, 0.9, 0.1, 0.6]]))
    l0_module.eval()
    kept = l0_module().intermediate != 0
    assert kept.tolist() == [[True, True, True, True], [False, True, False, True]]


def test_all_kept_start_is_the_clamped_log_alpha_5_of_the_original_code():
    l0_module = L0Module(GQA, ALL_MODULES, {'num_attention_heads': 4, 'hidden_size': 16})
    l0_module.init_all_kept()
    for mask in l0_module.masks.values():
        assert torch.equal(mask.log_alpha, torch.full(mask.shape, math.log(100.0)))
        # P(z > 0) = sigmoid(ln 100 + (2/3) ln 11) = 100 * 11^(2/3) / (1 + 100 * 11^(2/3)) = 0.99798
        assert torch.allclose(mask.keep_probability(), torch.tensor(0.99798), atol=1e-5)


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
        (
            GQA,
            ALL_MODULES + ['kv_head'],
            {'num_attention_heads': 3},
            'target num_attention_heads=3 is not a multiple of num_key_value_heads=2',
        ),
        (
            GQA,
            ALL_MODULES,
            {'num_attention_heads': 4, 'num_key_value_heads': 1},
            "pruning module 'kv_head' is not in pruning_modules",
        ),
        (
            MHA,
            ['layer', 'head'],
            {'hidden_size': 16},
            "target hidden_size=16 differs from the source's 32 but pruning module 'hidden'",
        ),
        (MHA, ['layer'], {'num_attention_heads': 2}, "pruning module 'head' is not in pruning_modules"),
        (
            GQA,
            ['kv_head'],
            {'num_key_value_heads': 1, 'num_attention_heads': 8},
            'needs 8 query heads per key/value head; the source has 4',
        ),
        (
            MHA,
            ['head'],
            {'num_attention_heads': 2, 'num_key_value_heads': 1},
            'a multi-head-attention source is pruned by whole heads',
        ),
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
    target, modules = (
        {'hidden_size': 24, 'num_attention_heads': 4, 'intermediate_size': 32},
        ['head', 'intermediate', 'hidden'],
    )
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
    l0_module = attach_masks(
        model,
        {'hidden_size': 24, 'num_attention_heads': 2, 'intermediate_size': 32},
        ['head', 'intermediate', 'hidden'],
    )
    assert l0_module.masks['hidden'].log_alpha.dtype == torch.float32
    gradients = _mask_gradients(model, torch.randint(0, VOCAB_SIZE, (2, 12)))
    assert all(torch.isfinite(gradient).all() and gradient.abs().sum() > 0 for gradient in gradients.values())
    model.eval()
    with torch.no_grad():
        assert model(torch.randint(0, VOCAB_SIZE, (1, 8))).logits.dtype == torch.bfloat16
