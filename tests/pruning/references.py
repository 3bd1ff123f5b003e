"""References for the pruning tests that do not use the code under test: log-alphas for chosen keep probabilities
(the hard-concrete closed form), a source model with masks multiplied into its weights (plain HF modules), the
indices a mask keeps, and a configuration's parameter count as transformers builds it."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel
from transformers.modeling_utils import no_init_weights

from llmshearing.pruning.l0_module import StructureMasks


def log_alpha_keeping(probabilities) -> torch.Tensor:
    """Log-alphas whose gates are non-zero with these probabilities: P(z > 0) = sigmoid(log_alpha + (2/3) ln 11) for
    the stretch (-0.1, 1.1) and temperature 2/3 of Louizos et al."""
    p = torch.as_tensor(probabilities, dtype=torch.float64)
    return (torch.log(p) - torch.log1p(-p) - 2 / 3 * math.log(11)).float()


def nonzero_indices(values: torch.Tensor) -> list:
    """The indices of the non-zero entries of every row (the last dimension), nested as ``values`` is."""
    if values.dim() > 1:
        return [nonzero_indices(row) for row in values]
    return torch.nonzero(values).flatten().tolist()


def scaled_source(source: PreTrainedModel, masks: StructureMasks, scale_embedding: bool = True) -> PreTrainedModel:
    """The source model at full width with the masks multiplied into its weights, built with plain HF modules.

    The token embedding's columns and every residual branch's output rows (``o_proj``, ``down_proj``) carry the
    hidden mask, those branches also their layer's gate, ``o_proj``'s input columns the query heads' masks and
    ``down_proj``'s the MLP channels': outside the kept hidden dimensions the residual stream is zero. A pruned model's
    RMSNorm averages over the k kept dimensions of n; HF's averages over all n, which a weight times sqrt(k / n) and an
    epsilon times k / n turn into the same: sqrt(k/n) x / sqrt(|x|^2 / n + eps k / n) = x / sqrt(|x|^2 / k + eps).
    A tied output layer stays the unscaled embedding (the final norm's output carries the hidden mask).
    ``scale_embedding=False``: the embedding's kept columns stay as they are (its dropped ones are zeroed).
    """
    config = copy.deepcopy(source.config)
    config.tie_word_embeddings = False
    hidden = masks.hidden
    kept_fraction = (hidden != 0).sum().item() / hidden.numel()
    config.rms_norm_eps = source.config.rms_norm_eps * kept_fraction
    state = {name: tensor.detach().clone() for name, tensor in source.state_dict().items()}
    state['lm_head.weight'] = source.get_output_embeddings().weight.detach().clone()
    norm_scale = hidden * math.sqrt(kept_fraction)
    state['model.embed_tokens.weight'] *= hidden if scale_embedding else (hidden != 0).float()
    state['model.norm.weight'] *= norm_scale
    for index in range(config.num_hidden_layers):
        prefix = f'model.layers.{index}'
        residual = (hidden * masks.layer[index]).unsqueeze(-1)
        state[f'{prefix}.input_layernorm.weight'] *= norm_scale
        state[f'{prefix}.post_attention_layernorm.weight'] *= norm_scale
        attention_output = state[f'{prefix}.self_attn.o_proj.weight']  # (hidden, heads * head_dim)
        head_dim = attention_output.shape[1] // config.num_attention_heads
        attention_output *= residual * masks.query_heads[index].repeat_interleave(head_dim)
        state[f'{prefix}.mlp.down_proj.weight'] *= residual * masks.intermediate[index]
    with no_init_weights():
        reference = type(source)(config)
    reference.load_state_dict(state, strict=True, assign=True)
    return reference.eval()


def hf_non_embedding_params(config) -> int:
    """Exact count of a model built from ``config`` on the meta device, without embeddings and LM head."""
    with torch.device('meta'):
        model = AutoModelForCausalLM.from_config(config)
    embedding_ids = {id(model.get_input_embeddings().weight), id(model.get_output_embeddings().weight)}
    return sum(p.numel() for p in model.parameters() if id(p) not in embedding_ids)


def hf_num_params(folder: Path) -> int:
    """Exact parameter count of the model saved in ``folder`` (tied embeddings once), built from its config on the
    meta device."""
    with torch.device('meta'):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
    return sum(p.numel() for p in model.parameters())
