"""Two documented settings of ``algorithms.shearing`` in a real Trainer, against constructions made here from the
masks' log-alphas and the formulas of docs/configuration.md: ``eval_target_shape: false`` (every paper recipe's)
evaluates with the count each layer keeps in expectation, ``true`` with the target's; ``target_sparsity`` trains and
exports a model of the shape the masks keep in expectation, whose Hugging Face parameter count is the count of
that shape worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from llmshearing.pruning import Shearing
from llmshearing.pruning.l0_module import StructureMasks
from tests.pruning.references import scaled_source
from tests.pruning.trainers import samples, trainer_with
from tests.tiny_models import VOCAB_SIZE, tiny_llama

# The hard-concrete constants of docs/pruning.md: stretch (l, r) = (-0.1, 1.1), temperature 2/3; a deterministic
# mask keeps its gates with the score sigmoid(0.8 * log_alpha / temperature).
TEMPERATURE = 2 / 3
HEAD_LOG_ALPHAS = [[4.0, 3.5, 3.0, -4.0], [4.0, 3.0, 3.5, 2.5], [-3.0, 4.0, -4.0, -3.5]]
HEAD_DIM = 8


def keep_probability(log_alpha: torch.Tensor) -> torch.Tensor:
    """P(gate > 0) = sigmoid(log_alpha - temperature * ln(-l / r))."""
    return torch.sigmoid(log_alpha - TEMPERATURE * math.log(0.1 / 1.1))


def hand_masks(log_alpha: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """Per group (row), the ``counts[row]`` highest-scoring gates with their scores, zeros elsewhere."""
    scores = torch.sigmoid(0.8 * log_alpha / TEMPERATURE)
    masks = torch.zeros_like(scores)
    for row, count in enumerate(counts):
        kept = scores[row].topk(count).indices
        masks[row, kept] = scores[row, kept]
    return masks


def masked_by_hand(model: LlamaForCausalLM, heads: torch.Tensor, channels: torch.Tensor) -> LlamaForCausalLM:
    """The model whose head outputs and MLP channels are scaled by the masks (every layer and hidden dimension
    kept)."""
    masks = StructureMasks(layer=torch.ones(len(heads)), query_heads=heads, intermediate=channels,
                           hidden=torch.ones(model.config.hidden_size))
    return scaled_source(model, masks)


def loss_of(model: LlamaForCausalLM, input_ids: torch.Tensor) -> float:
    with torch.no_grad():
        logits = model(input_ids).logits
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), input_ids[:, 1:].flatten()).item()


@pytest.mark.parametrize('eval_target_shape', [True, False])
def test_evaluation_uses_the_target_shape_or_each_layers_expected_count(eval_target_shape):
    """Heads: target 2 per layer; in expectation layer 0 keeps 3, layer 1 all 4, layer 2 one. MLP channels: target 32
    of 64; in expectation each layer keeps its own count. Composer's eval loop gives the loss of the model masked
    here with those counts."""
    # Weights ten times the default scale: the layers' outputs, so the mask values, move the loss (by about 1e-3
    # when the masks' scores change by a few percent; at the default scale by 1e-6).
    source = tiny_llama(initializer_range=0.2)
    shearing = Shearing(
        {'num_attention_heads': 2, 'intermediate_size': 32}, ['head', 'intermediate'],
        eval_target_shape=eval_target_shape,
    )
    eval_data = samples(8, 2)
    run = trainer_with(shearing, source, samples(4, 1), eval_dataloader=DataLoader(eval_data, batch_size=4))
    head_log_alpha = torch.tensor(HEAD_LOG_ALPHAS)
    channel_log_alpha = 3 * torch.randn(3, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        shearing.l0_module.masks['head'].log_alpha.copy_(head_log_alpha)
        shearing.l0_module.masks['intermediate'].log_alpha.copy_(channel_log_alpha)

    expected_heads = keep_probability(head_log_alpha).sum(-1)
    assert expected_heads.round().tolist() == [3, 4, 1]
    expected_channels = keep_probability(channel_log_alpha).sum(-1).round().int().tolist()
    assert len(set(expected_channels)) == 3 and 32 not in expected_channels
    target_shape = masked_by_hand(
        source, hand_masks(head_log_alpha, [2] * 3), hand_masks(channel_log_alpha, [32] * 3)
    )
    expected_shape = masked_by_hand(
        source, hand_masks(head_log_alpha, [3, 4, 1]), hand_masks(channel_log_alpha, expected_channels)
    )
    evaluated_model, other_model = (
        (target_shape, expected_shape) if eval_target_shape else (expected_shape, target_shape)
    )

    run.eval()
    evaluated = run.state.eval_metrics['eval']['LanguageCrossEntropy'].compute().item()
    input_ids = torch.stack([sample['input_ids'] for sample in eval_data])
    assert evaluated == pytest.approx(loss_of(evaluated_model, input_ids), rel=1e-5)
    assert abs(evaluated - loss_of(other_model, input_ids)) > 1e-3  # the two settings evaluate different models


def llama_parameter_count(hidden: int, heads: int, intermediate: int, layers: int) -> int:
    """A Llama without biases and with an untied output layer, multi-head attention of HEAD_DIM: per layer q, k,
    v, o (hidden x heads * HEAD_DIM each), gate, up, down (hidden x intermediate each) and two norms; the final
    norm; the embedding and the output layer (vocabulary x hidden each)."""
    per_layer = 4 * hidden * heads * HEAD_DIM + 3 * hidden * intermediate + 2 * hidden
    return layers * per_layer + hidden + 2 * VOCAB_SIZE * hidden


def test_target_sparsity_exports_the_shape_the_masks_keep_in_expectation(tmp_path):
    """Four training batches with target_sparsity 0.5, from masks whose layers keep different counts; the export's
    config has, for each kind, the count its gates keep in expectation averaged over the layers (the same in every
    layer: docs/configuration.md), and transformers counts the parameters of that shape."""
    shearing = Shearing(
        None, ['head', 'intermediate'], target_sparsity=0.5, lag_lr=0.5, export_dir=str(tmp_path / 'pruned'),
        export_dtype='fp32',
    )
    run = trainer_with(shearing, tiny_llama(), samples(16, 1), num_batches=4, lr=1e-3)
    with torch.no_grad():
        shearing.l0_module.masks['head'].log_alpha.copy_(torch.tensor(HEAD_LOG_ALPHAS))
        layer_offsets = torch.tensor([[3.0], [0.0], [-3.0]])
        channel_log_alpha = torch.randn(3, 64, generator=torch.Generator().manual_seed(4)) + layer_offsets
        shearing.l0_module.masks['intermediate'].log_alpha.copy_(channel_log_alpha)
    run.fit()
    per_layer = [
        keep_probability(shearing.l0_module.masks[kind].log_alpha.detach()).sum(-1) for kind in ('head', 'intermediate')
    ]
    heads, channels = (round(counts.mean().item()) for counts in per_layer)
    assert all(round(counts.max().item()) > round(counts.mean().item()) for counts in per_layer)  # layers differ

    pruned = AutoModelForCausalLM.from_pretrained(tmp_path / 'pruned')
    config = pruned.config
    assert (config.num_attention_heads, config.num_key_value_heads) == (heads, heads)
    assert config.intermediate_size == channels
    assert (config.hidden_size, config.num_hidden_layers) == (32, 3)
    assert pruned.num_parameters() == llama_parameter_count(32, heads, channels, 3)
