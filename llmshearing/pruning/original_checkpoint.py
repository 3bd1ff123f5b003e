"""Pruning checkpoints of the original LLM-Shearing code (princeton-nlp/LLM-Shearing) as Hugging Face Llama.

Such a checkpoint is a Composer checkpoint whose ``state.model`` holds ``model.transformer.*`` weights
and the hard-concrete masks ``model.l0_module.masks.<kind>.z_loga``. The run's config, with the target
sizes, is the ``config.pt`` that the original ``train.py`` writes into the save folder.

The original deterministic masks differ from ours: per group they zero the lowest scores (tied scores,
common at the clamp, are then chosen otherwise than by our top-k), without a target each group keeps its
own expected count, and attention (``head_layer``) and MLP (``mlp``) carry separate layer gates. The masks
here follow the original rule exactly and are folded into the weights by ``prune_model`` with
``scale_embedding=False``: the original forward of a pruning run draws its masks after the token embedding,
so unlike ours it never multiplies the embedding by the hidden mask.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.modeling_utils import no_init_weights

from llmshearing.pruning.hard_concrete import (
    DETERMINISTIC_SHARPNESS,
    EPSILON,
    LIMIT_LEFT,
    LIMIT_RIGHT,
    LOG_ALPHA_MAX,
    LOG_ALPHA_MIN,
    TEMPERATURE,
)
from llmshearing.pruning.l0_module import L0Module, StructureMasks
from llmshearing.pruning.llama_layout import L0_MODULE_NAME
from llmshearing.pruning.shape import ModelShape

BLOCK_PREFIX = 'model.transformer.blocks.'
MASK_PREFIX = 'model.l0_module.masks.'
MASK_SUFFIX = '.z_loga'
LAMBDA_PREFIX = 'model.l0_module.lambdas.'
RUN_CONFIG_NAME = 'config.pt'

# Without a run config: Llama-2's values. The original rotary embedding always uses base 10000, and its
# RMSNorm defaults to eps 1e-6 where the run config does not set ``rms_norm_eps``.
DEFAULT_RMS_NORM_EPS = 1e-5
DEFAULT_MAX_SEQ_LEN = 4096
ROPE_THETA = 10000.0
ORIGINAL_RMS_NORM_EPS = 1e-6

_TOP_LEVEL_NAMES = {
    'model.transformer.wte.weight': 'model.embed_tokens.weight',
    'model.transformer.ln_f.weight': 'model.norm.weight',
    'model.transformer.output.weight': 'lm_head.weight',
}
_BLOCK_NAMES = {
    'ln_1.weight': 'input_layernorm.weight',
    'attn.wq.weight': 'self_attn.q_proj.weight',
    'attn.wk.weight': 'self_attn.k_proj.weight',
    'attn.wv.weight': 'self_attn.v_proj.weight',
    'attn.out_proj.weight': 'self_attn.o_proj.weight',
    'ln_2.weight': 'post_attention_layernorm.weight',
    'mlp.gate_proj.weight': 'mlp.gate_proj.weight',
    'mlp.up_proj.weight': 'mlp.up_proj.weight',
    'mlp.down_proj.weight': 'mlp.down_proj.weight',
}
_ROTARY_BUFFER = 'attn.rotary_emb.inv_freq'

# The target-model field that sets each original mask kind's kept count.
_TARGET_FIELD = {
    'hidden': 'd_model',
    'head': 'n_heads',
    'intermediate': 'intermediate_size',
    'layer': 'n_layers',
    'head_layer': 'n_layers',
    'mlp': 'n_layers',
}
# The mask kind of ours that removes what each StructureMasks field masks.
_PRUNING_MODULE = {'layer': 'layer', 'query_heads': 'head', 'intermediate': 'intermediate', 'hidden': 'hidden'}
# Logit of the stretched distribution's zero point, as the original computes it.
_ZERO_QUANTILE = (0 - LIMIT_LEFT) / (LIMIT_RIGHT - LIMIT_LEFT)
_ZERO_LOGIT = math.log(_ZERO_QUANTILE) - math.log(1 - _ZERO_QUANTILE)


def is_original_checkpoint(checkpoint: Mapping[str, Any]) -> bool:
    """Whether a loaded Composer checkpoint holds the original code's model (``model.transformer.blocks.*``)."""
    return any(name.startswith(BLOCK_PREFIX) for name in checkpoint['state']['model'])


def _block_index(name: str) -> int:
    return int(name.removeprefix(BLOCK_PREFIX).split('.', 1)[0])


def hf_weights(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model weights under Hugging Face Llama names (fp32); the rotary buffers are dropped."""
    weights, unknown = {}, []
    for name, tensor in state.items():
        if name.startswith(BLOCK_PREFIX):
            block_name = name.removeprefix(BLOCK_PREFIX).split('.', 1)[1]
            if block_name == _ROTARY_BUFFER:
                continue
            if block_name in _BLOCK_NAMES:
                weights[f'model.layers.{_block_index(name)}.{_BLOCK_NAMES[block_name]}'] = tensor.float()
                continue
        elif name in _TOP_LEVEL_NAMES:
            weights[_TOP_LEVEL_NAMES[name]] = tensor.float()
            continue
        elif name.startswith('model.l0_module.'):
            continue
        unknown.append(name)
    if unknown:
        raise ValueError(f'not a Llama checkpoint of the original code: unknown weights {unknown[:5]}')
    return weights


def original_log_alphas(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ``z_loga`` of every original mask kind."""
    return {
        name.removeprefix(MASK_PREFIX).removesuffix(MASK_SUFFIX): tensor.detach().float()
        for name, tensor in state.items()
        if name.startswith(MASK_PREFIX) and name.endswith(MASK_SUFFIX)
    }


def _num_heads(state: Mapping[str, torch.Tensor], model_config: Mapping[str, Any] | None, hidden_size: int) -> int:
    """From the run config, else the head mask, else the rotary buffer (``head_dim / 2`` frequencies)."""
    if model_config is not None:
        return int(model_config['n_heads'])
    head_log_alpha = state.get(f'{MASK_PREFIX}head{MASK_SUFFIX}')
    if head_log_alpha is not None:
        return head_log_alpha.shape[-1]
    inv_freq = state.get(f'{BLOCK_PREFIX}0.{_ROTARY_BUFFER}')
    if inv_freq is not None:
        return hidden_size // (2 * inv_freq.numel())
    raise ValueError(f'cannot tell the number of attention heads: no {RUN_CONFIG_NAME}, head mask or rotary buffer')


def llama_config(state: Mapping[str, torch.Tensor], model_config: Mapping[str, Any] | None) -> LlamaConfig:
    """The source model's config: sizes from the weights and the run config, the rest as the original model."""
    vocab_size, hidden_size = state['model.transformer.wte.weight'].shape
    num_layers = 1 + max(_block_index(name) for name in state if name.startswith(BLOCK_PREFIX))
    num_heads = _num_heads(state, model_config, hidden_size)
    max_seq_len, rms_norm_eps = DEFAULT_MAX_SEQ_LEN, DEFAULT_RMS_NORM_EPS
    if model_config is not None:
        max_seq_len = model_config['max_seq_len']
        rms_norm_eps = model_config.get('rms_norm_eps', ORIGINAL_RMS_NORM_EPS)
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=state[f'{BLOCK_PREFIX}0.mlp.gate_proj.weight'].shape[0],
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=int(max_seq_len),
        rms_norm_eps=float(rms_norm_eps),
        rope_theta=ROPE_THETA,
        tie_word_embeddings=False,
        torch_dtype=torch.float32,
    )


def original_deterministic_gates(log_alpha: torch.Tensor, num_kept: int | None) -> torch.Tensor:
    """The original deterministic gates of one group (1-D ``log_alpha``).

    With a target, the ``size - num_kept`` lowest scores ``sigmoid(0.8 * log_alpha / T)`` become zero;
    without one (``num_kept=None``) the group zeroes as many as it drops in expectation, rounded.
    ``log_alpha`` is first clamped as the original does before every use.
    """
    log_alpha = log_alpha.clamp(LOG_ALPHA_MIN, LOG_ALPHA_MAX)
    if num_kept is None:
        expected_kept = 1 - torch.sigmoid(_ZERO_LOGIT * TEMPERATURE - log_alpha).clamp(EPSILON, 1 - EPSILON)
        num_zeros = round(log_alpha.numel() - expected_kept.sum().item())
    else:
        num_zeros = log_alpha.numel() - num_kept
    score = torch.sigmoid(log_alpha / TEMPERATURE * DETERMINISTIC_SHARPNESS)
    if num_zeros > 0:
        score[torch.topk(score, k=num_zeros, largest=False).indices] = 0.0
    return score


def original_deterministic_masks(
    log_alphas: Mapping[str, torch.Tensor],
    target_model: Mapping[str, Any] | None,
) -> dict[str, torch.Tensor]:
    """The original code's eval masks per kind; a 1-D kind is one group, a per-layer kind one per row."""
    unsupported = sorted(set(log_alphas) - set(_TARGET_FIELD))
    if unsupported:
        raise ValueError(f'original mask kinds {unsupported} cannot be exported to a Llama model')
    masks = {}
    for kind, log_alpha in log_alphas.items():
        num_kept = int(target_model[_TARGET_FIELD[kind]]) if target_model is not None else None
        groups = log_alpha.reshape(-1, log_alpha.shape[-1])
        gates = [original_deterministic_gates(group, num_kept) for group in groups]
        masks[kind] = torch.stack(gates).reshape(log_alpha.shape)
    return masks


def _kept_per_layer(mask: torch.Tensor, kept_layers: torch.Tensor, what: str) -> int:
    """The number of nonzero entries per kept layer, which a Llama model needs to be the same in every layer."""
    counts = (mask[kept_layers] != 0).sum(-1)
    if (counts != counts[0]).any():
        per_layer = dict(zip(kept_layers.tolist(), counts.tolist()))
        raise ValueError(f'the masks keep different numbers of {what} per layer {per_layer}; Llama needs the same')
    return int(counts[0])


def structure_masks(masks: Mapping[str, torch.Tensor], source: ModelShape) -> StructureMasks:
    """Our per-structure masks with the original masked forward's values.

    A layer's attention output is scaled by ``head_z * head_layer_z`` and its MLP output by
    ``intermediate_z * mlp_z``; these products become the head and channel masks, and the layer mask keeps
    the layers whose ``head_layer`` and ``mlp`` gates are both nonzero (they must agree).
    """
    num_layers = source.num_hidden_layers
    attention_gate = masks.get('head_layer', masks.get('layer'))
    mlp_gate = masks.get('mlp', masks.get('layer'))
    keeps_attention = attention_gate != 0 if attention_gate is not None else torch.ones(num_layers, dtype=torch.bool)
    keeps_mlp = mlp_gate != 0 if mlp_gate is not None else torch.ones(num_layers, dtype=torch.bool)
    disagreeing = torch.nonzero(keeps_attention != keeps_mlp).flatten().tolist()
    if disagreeing:
        raise ValueError(
            f'the head_layer and mlp masks disagree on layers {disagreeing}: a Llama layer keeps both its '
            'attention and its MLP or neither',
        )

    query_heads, intermediate = masks.get('head'), masks.get('intermediate')
    if attention_gate is not None:
        heads = query_heads if query_heads is not None else torch.ones(num_layers, source.num_attention_heads)
        query_heads = heads * attention_gate.unsqueeze(-1)
    if mlp_gate is not None:
        channels = intermediate if intermediate is not None else torch.ones(num_layers, source.intermediate_size)
        intermediate = channels * mlp_gate.unsqueeze(-1)
    has_layer_gates = attention_gate is not None or mlp_gate is not None
    return StructureMasks(
        layer=keeps_attention.float() if has_layer_gates else None,
        query_heads=query_heads,
        kv_heads=query_heads,
        intermediate=intermediate,
        hidden=masks.get('hidden'),
    )


def pruned_sizes(masks: StructureMasks, source: ModelShape) -> dict[str, int]:
    """The target (HF config names) that ``masks`` keep."""
    kept_layers = torch.arange(source.num_hidden_layers)
    if masks.layer is not None:
        kept_layers = torch.nonzero(masks.layer).flatten()
    if kept_layers.numel() == 0:
        raise ValueError('the masks remove every layer')
    sizes = {'num_hidden_layers': kept_layers.numel()}
    if masks.query_heads is not None:
        sizes['num_attention_heads'] = _kept_per_layer(masks.query_heads, kept_layers, 'attention heads')
    if masks.intermediate is not None:
        sizes['intermediate_size'] = _kept_per_layer(masks.intermediate, kept_layers, 'MLP channels')
    if masks.hidden is not None:
        sizes['hidden_size'] = int((masks.hidden != 0).sum())
    return sizes


def _run_config(checkpoint_path: Path) -> Mapping[str, Any] | None:
    """The run's config (an OmegaConf ``DictConfig``) saved beside the checkpoint, if it is there."""
    path = checkpoint_path.parent / RUN_CONFIG_NAME
    if not path.is_file():
        return None
    return torch.load(path, map_location='cpu', weights_only=False)


def _target_model(
    state: Mapping[str, torch.Tensor],
    model_config: Mapping[str, Any] | None,
    path: Path,
) -> Mapping[str, Any] | None:
    """The run's target sizes, ``None`` for a run without a target model."""
    if model_config is not None:
        return model_config['l0_module'].get('target_model')
    if any(name.startswith(f'{LAMBDA_PREFIX}lambda_1_') for name in state):
        raise ValueError(
            f'{path} was pruned towards a target model whose sizes are in the run\'s {RUN_CONFIG_NAME}; '
            f'copy that file from the run\'s save folder next to the checkpoint',
        )
    return None


def model_and_masks_from_original_checkpoint(
    checkpoint: Mapping[str, Any],
    path: Path,
) -> tuple[LlamaForCausalLM, StructureMasks]:
    """The source model as a Hugging Face Llama, with the original deterministic masks.

    The model carries an L0 module of the shape those masks keep, so that ``prune_model(model,
    masks=masks, scale_embedding=False)`` folds them in. ``path`` is the checkpoint's file, beside which its
    run config may lie.
    """
    state = checkpoint['state']['model']
    log_alphas = original_log_alphas(state)
    if not log_alphas:
        raise ValueError(f'{path} holds no l0_module masks: it is not a pruning checkpoint')
    run_config = _run_config(path)
    model_config = run_config['model'] if run_config is not None else None
    config = llama_config(state, model_config)
    with no_init_weights():
        model = LlamaForCausalLM(config)
    weights = hf_weights(state)
    missing = sorted(set(model.state_dict()) - set(weights))
    if missing:
        raise ValueError(f'{path} lacks the weights of {missing[:5]}')
    model.load_state_dict(weights, strict=True)

    source = ModelShape.from_config(config)
    masks = structure_masks(original_deterministic_masks(log_alphas, _target_model(state, model_config, path)), source)
    pruning_modules = [module for field, module in _PRUNING_MODULE.items() if getattr(masks, field) is not None]
    model.add_module(L0_MODULE_NAME, L0Module(source, pruning_modules, target=pruned_sizes(masks, source)))
    return model.eval(), masks
