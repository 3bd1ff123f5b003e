"""Everything that touches Hugging Face modules of the Llama layout (Llama, Mistral, Qwen2).

``attach_masks`` makes a model compute with L0 masks: forward hooks scale the attention output per
query head, the MLP's inner channels, each layer's residual branches and the hidden width, and the
RMSNorms become ``MaskedRMSNorm``. ``prune_model`` folds the deterministic mask values into the weights
and cuts them to the final shape, returning a plain model of the same class.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_utils import no_init_weights

from llmshearing.pruning.l0_module import L0Module, StructureMasks
from llmshearing.pruning.shape import ModelShape

L0_MODULE_NAME = 'l0_module'
SUPPORTED_MODEL_TYPES = ('llama', 'mistral', 'qwen2')


class _CurrentMasks:
    """The masks of the forward in progress, drawn once per forward by the model's pre-hook, and the number of
    hidden dimensions they keep (which every ``MaskedRMSNorm`` of that forward divides by)."""

    def __init__(self) -> None:
        self.set(StructureMasks())

    def set(self, masks: StructureMasks) -> None:
        self.masks = masks
        self.kept_hidden = None if masks.hidden is None else (masks.hidden != 0).sum()


class MaskedRMSNorm(nn.Module):
    """RMSNorm over the hidden dimensions the hidden mask keeps, times the mask.

    It computes what the pruned model's RMSNorm computes on the kept dimensions. The residual stream is
    exactly zero outside them (the embeddings and every residual branch are multiplied by the mask), so
    the sum of squares over all dimensions is the sum over the kept ones. ``weight`` is the replaced
    norm's own parameter.
    """

    def __init__(self, norm: nn.Module, current: _CurrentMasks):
        super().__init__()
        self.weight = norm.weight
        self.variance_epsilon = norm.variance_epsilon
        self._current = current

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_mask = self._current.masks.hidden  # (hidden,)
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).sum(-1, keepdim=True) / self._current.kept_hidden
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return (self.weight * hidden_mask.to(input_dtype)) * hidden_states.to(input_dtype)


def _check_model_type(model: PreTrainedModel) -> None:
    model_type = getattr(model.config, 'model_type', None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f'model_type {model_type!r} is not supported; expected one of {list(SUPPORTED_MODEL_TYPES)}')


def _check_layout(model: PreTrainedModel) -> None:
    _check_model_type(model)
    if hasattr(model, L0_MODULE_NAME):
        raise ValueError('masks are already attached to this model')


def _scale_input(scale_of_call):
    def hook(module: nn.Module, args: tuple) -> tuple:
        hidden_states = args[0]
        return (hidden_states * scale_of_call().to(hidden_states.dtype), *args[1:])

    return hook


def _scale_output(scale_of_call):
    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return output * scale_of_call().to(output.dtype)

    return hook


def _residual_scale(current: _CurrentMasks, layer_index: int):
    """Scale of a layer's residual branches: its layer gate times the hidden mask."""

    def scale() -> torch.Tensor:
        masks = current.masks
        layer_gate = masks.layer[layer_index] if masks.layer is not None else 1.0
        hidden = masks.hidden if masks.hidden is not None else 1.0
        return torch.as_tensor(layer_gate * hidden)

    return scale


def attach_masks(
    model: PreTrainedModel,
    target: Mapping[str, int] | None = None,
    pruning_modules: Sequence[str] | None = None,
    target_sparsity: float | None = None,
    droprate_init: float = 0.5,
    eval_target_shape: bool = True,
) -> L0Module:
    """Attach L0 masks to a Llama-layout causal LM, aimed at ``target`` (HF config names), over ``pruning_modules``
    (default: ``default_pruning_modules`` of the model's shape).

    Afterwards ``model.train()`` forwards draw a fresh mask sample per forward and ``model.eval()``
    forwards use the deterministic masks. The L0 module becomes ``model.l0_module``, so the model's
    state dict (and any checkpoint of it) carries the masks and the multipliers.
    """
    _check_layout(model)
    source = ModelShape.from_config(model.config)
    l0_module = L0Module(source, pruning_modules, target, target_sparsity, droprate_init, eval_target_shape)
    l0_module.to(model.get_input_embeddings().weight.device)
    l0_module.train(model.training)
    model.add_module(L0_MODULE_NAME, l0_module)

    current = _CurrentMasks()

    def draw_masks(module: nn.Module, args: tuple) -> None:
        current.set(l0_module())

    model.register_forward_pre_hook(draw_masks)
    masked = l0_module.masked_structures
    decoder = model.model
    if 'hidden' in masked:
        decoder.embed_tokens.register_forward_hook(_scale_output(lambda: current.masks.hidden))
        decoder.norm = MaskedRMSNorm(decoder.norm, current)
    for index, layer in enumerate(decoder.layers):
        if 'query_heads' in masked:
            layer.self_attn.o_proj.register_forward_pre_hook(
                _scale_input(lambda i=index: _per_head(current.masks.query_heads[i], source.head_dim)),
            )
        if 'intermediate' in masked:
            layer.mlp.down_proj.register_forward_pre_hook(_scale_input(lambda i=index: current.masks.intermediate[i]))
        if 'layer' in masked or 'hidden' in masked:
            layer.self_attn.o_proj.register_forward_hook(_scale_output(_residual_scale(current, index)))
            layer.mlp.down_proj.register_forward_hook(_scale_output(_residual_scale(current, index)))
        if 'hidden' in masked:
            layer.input_layernorm = MaskedRMSNorm(layer.input_layernorm, current)
            layer.post_attention_layernorm = MaskedRMSNorm(layer.post_attention_layernorm, current)
    return l0_module


def _kept(mask: torch.Tensor | None, size: int) -> torch.Tensor:
    """Indices a mask keeps (all of ``size`` without a mask)."""
    if mask is None:
        return torch.arange(size)
    return torch.nonzero(mask != 0).flatten().cpu()


def _per_head(mask: torch.Tensor, head_dim: int) -> torch.Tensor:
    return mask.repeat_interleave(head_dim)


def _slice_linear(
    linear: nn.Linear,
    rows: torch.Tensor,
    cols: torch.Tensor,
    row_scale: torch.Tensor | None = None,
    col_scale: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """A linear layer's weight (and bias) with the scales folded in, cut to ``rows`` x ``cols``."""
    weight = linear.weight.detach().float()  # (out, in)
    bias = linear.bias.detach().float() if linear.bias is not None else None
    if col_scale is not None:
        weight = weight * col_scale.float()
    if row_scale is not None:
        weight = weight * row_scale.float().unsqueeze(-1)
        bias = bias * row_scale.float() if bias is not None else None
    state = {'weight': weight[rows][:, cols]}
    if bias is not None:
        state['bias'] = bias[rows]
    return state


def _prefixed(prefix: str, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f'{prefix}.{name}': tensor for name, tensor in state.items()}


@torch.no_grad()
def pruned_state_dict(
    model: PreTrainedModel,
    l0_module: L0Module,
    masks: StructureMasks | None = None,
    scale_embedding: bool = True,
) -> dict[str, torch.Tensor]:
    """The weights of the pruned model with every mask value folded in (fp32).

    ``masks`` default to the L0 module's deterministic masks; given masks must keep its final shape.
    ``scale_embedding=False`` folds a masked forward that does not multiply the token embeddings by the
    hidden mask (the original LLM-Shearing L0 forward): the kept embedding columns stay as they are.
    """
    source = l0_module.source
    masks = masks if masks is not None else l0_module.deterministic_masks(target_shape=True)
    masks = StructureMasks(**{k: v.detach().float().cpu() if v is not None else None for k, v in vars(masks).items()})
    hidden = masks.hidden
    kept_hidden = _kept(hidden, source.hidden_size)
    kept_layers = _kept(masks.layer, source.num_hidden_layers).tolist()
    tied = bool(getattr(model.config, 'tie_word_embeddings', False))
    decoder = model.model

    def norm_weight(norm: nn.Module, fold_hidden: bool = True) -> dict[str, torch.Tensor]:
        weight = norm.weight.detach().float()
        if hidden is not None and fold_hidden:
            weight = weight * hidden
        return {'weight': weight[kept_hidden]}

    embedding = decoder.embed_tokens.weight.detach().float()  # (vocab, hidden)
    embedding_has_hidden = hidden is not None and scale_embedding
    if embedding_has_hidden:
        embedding = embedding * hidden
    state = {'model.embed_tokens.weight': embedding[:, kept_hidden]}
    # A tied output layer is the embedding: if that carries the hidden mask, the final norm must not as well.
    state |= _prefixed('model.norm', norm_weight(decoder.norm, fold_hidden=not (tied and embedding_has_hidden)))
    if tied:
        state['lm_head.weight'] = state['model.embed_tokens.weight']
    else:
        state |= _prefixed(
            'lm_head', _slice_linear(model.lm_head, torch.arange(model.lm_head.out_features), kept_hidden)
        )

    for new_index, index in enumerate(kept_layers):
        layer = decoder.layers[index]
        attention, mlp = layer.self_attn, layer.mlp
        residual_scale = torch.ones(source.hidden_size) if hidden is None else hidden.clone()
        if masks.layer is not None:
            residual_scale = residual_scale * masks.layer[index]
        query_heads = masks.query_heads[index] if masks.query_heads is not None else None
        kv_heads = masks.kv_heads[index] if masks.kv_heads is not None else None
        intermediate = masks.intermediate[index] if masks.intermediate is not None else None
        kept_q = _kept(query_heads, source.num_attention_heads)
        kept_kv = _kept(kv_heads, source.num_key_value_heads)
        q_rows = (kept_q.unsqueeze(-1) * source.head_dim + torch.arange(source.head_dim)).flatten()
        kv_rows = (kept_kv.unsqueeze(-1) * source.head_dim + torch.arange(source.head_dim)).flatten()
        kept_channels = _kept(intermediate, source.intermediate_size)
        query_scale = _per_head(query_heads, source.head_dim) if query_heads is not None else None

        prefix = f'model.layers.{new_index}'
        state |= _prefixed(f'{prefix}.input_layernorm', norm_weight(layer.input_layernorm))
        state |= _prefixed(f'{prefix}.post_attention_layernorm', norm_weight(layer.post_attention_layernorm))
        state |= _prefixed(f'{prefix}.self_attn.q_proj', _slice_linear(attention.q_proj, q_rows, kept_hidden))
        state |= _prefixed(f'{prefix}.self_attn.k_proj', _slice_linear(attention.k_proj, kv_rows, kept_hidden))
        state |= _prefixed(f'{prefix}.self_attn.v_proj', _slice_linear(attention.v_proj, kv_rows, kept_hidden))
        state |= _prefixed(
            f'{prefix}.self_attn.o_proj',
            _slice_linear(attention.o_proj, kept_hidden, q_rows, row_scale=residual_scale, col_scale=query_scale),
        )
        state |= _prefixed(f'{prefix}.mlp.gate_proj', _slice_linear(mlp.gate_proj, kept_channels, kept_hidden))
        state |= _prefixed(f'{prefix}.mlp.up_proj', _slice_linear(mlp.up_proj, kept_channels, kept_hidden))
        state |= _prefixed(
            f'{prefix}.mlp.down_proj',
            _slice_linear(mlp.down_proj, kept_hidden, kept_channels, row_scale=residual_scale, col_scale=intermediate),
        )
    return state


def pruned_config(model: PreTrainedModel, shape: ModelShape):
    """The source config with the pruned shape (``head_dim`` explicit, everything else, RoPE included, kept)."""
    config = copy.deepcopy(model.config)
    for name, value in shape.config_updates().items():
        setattr(config, name, value)
    config.use_cache = True
    if getattr(config, 'max_window_layers', None) is not None:
        config.max_window_layers = min(config.max_window_layers, shape.num_hidden_layers)
    return config


def prune_model(
    model: PreTrainedModel,
    dtype: torch.dtype | None = None,
    masks: StructureMasks | None = None,
    scale_embedding: bool = True,
) -> PreTrainedModel:
    """A plain model of the same class, cut to the final shape with every mask value folded in.

    Its forward equals the masked model's eval forward. ``dtype`` defaults to the model's own. ``masks``
    replace the deterministic masks of ``model.l0_module`` and must keep its final shape.
    ``scale_embedding=False``: the masked forward leaves the token embeddings unscaled (see ``pruned_state_dict``).
    """
    l0_module = getattr(model, L0_MODULE_NAME, None)
    if not isinstance(l0_module, L0Module):
        raise ValueError('prune_model needs a model with masks; call attach_masks first')
    dtype = dtype or model.get_input_embeddings().weight.dtype
    config = pruned_config(model, l0_module.final_shape())
    config.torch_dtype = dtype
    state = pruned_state_dict(model, l0_module, masks, scale_embedding)
    with no_init_weights():
        pruned = type(model)(config)
    # The folded weights become the parameters: the model's own, never written, are freed without a copy.
    pruned.load_state_dict({name: tensor.to(dtype) for name, tensor in state.items()}, strict=True, assign=True)
    pruned.tie_weights()
    return pruned.to(dtype).eval()


# Importance of structures -------------------------------------------------------------------------------------------


@torch.no_grad()
def weight_structure_scores(
    model: PreTrainedModel,
    element_score: Callable[[torch.Tensor], torch.Tensor],
) -> StructureMasks:
    """Per-structure sums of a per-weight score (e.g. ``w**2``, or ``|w * dL/dw|`` after a backward pass).

    Each structure owns the weights that disappear with it: a query head its rows of ``q_proj`` and columns of
    ``o_proj``; a key/value head its rows of ``k_proj`` and ``v_proj`` plus its query heads; an MLP channel its rows
    of ``gate_proj``/``up_proj`` and column of ``down_proj``; a hidden dimension its embedding column and every
    weight that reads or writes it; a layer all of its weights. Returned in ``StructureMasks`` layout (fp32, CPU).
    """
    _check_model_type(model)
    source = ModelShape.from_config(model.config)
    decoder = model.model

    def score(module: nn.Module, name: str = 'weight') -> torch.Tensor:
        parameter = getattr(module, name, None)
        if parameter is None:
            return torch.zeros(())
        return element_score(parameter).detach().float().cpu()

    def rows_with_bias(linear: nn.Linear) -> torch.Tensor:
        return score(linear).sum(1) + score(linear, 'bias')

    num_layers, head_dim = source.num_hidden_layers, source.head_dim
    query_heads = torch.zeros(num_layers, source.num_attention_heads)
    kv_heads = torch.zeros(num_layers, source.num_key_value_heads)
    intermediate = torch.zeros(num_layers, source.intermediate_size)
    layers = torch.zeros(num_layers)
    hidden = score(decoder.embed_tokens).sum(0) + score(decoder.norm)
    if not getattr(model.config, 'tie_word_embeddings', False):
        hidden += score(model.lm_head).sum(0)
    for index, layer in enumerate(decoder.layers):
        attention, mlp = layer.self_attn, layer.mlp
        q_scores, k_scores, v_scores = score(attention.q_proj), score(attention.k_proj), score(attention.v_proj)
        o_scores = score(attention.o_proj)  # (hidden, heads * head_dim)
        gate_scores, up_scores, down_scores = score(mlp.gate_proj), score(mlp.up_proj), score(mlp.down_proj)
        norms = score(layer.input_layernorm) + score(layer.post_attention_layernorm)
        query_rows = rows_with_bias(attention.q_proj) + o_scores.sum(0)  # (heads * head_dim,)
        query_heads[index] = query_rows.view(source.num_attention_heads, head_dim).sum(-1)
        kv_rows = rows_with_bias(attention.k_proj) + rows_with_bias(attention.v_proj)
        kv_heads[index] = kv_rows.view(source.num_key_value_heads, head_dim).sum(-1) + query_heads[index].view(
            source.num_key_value_heads, source.num_query_groups,
        ).sum(-1)
        intermediate[index] = gate_scores.sum(1) + up_scores.sum(1) + down_scores.sum(0)
        hidden += q_scores.sum(0) + k_scores.sum(0) + v_scores.sum(0) + gate_scores.sum(0) + up_scores.sum(0) + norms
        hidden += o_scores.sum(1) + down_scores.sum(1)
        layers[index] = sum(element_score(parameter).detach().float().sum().cpu() for parameter in layer.parameters())
    return StructureMasks(layer=layers, query_heads=query_heads, kv_heads=kv_heads, intermediate=intermediate,
                          hidden=hidden)


@contextlib.contextmanager
def recording_activation_scores(model: PreTrainedModel) -> Iterator[Callable[[], StructureMasks]]:
    """Record activation importance (Minitron) over the forwards run inside the block; yields a function that
    returns the means so far in ``StructureMasks`` layout.

    A query head scores the mean L2 norm of its attention output (the input of ``o_proj``), a key/value head the
    sum of its query heads' scores, an MLP channel the mean |activation| entering ``down_proj``, a hidden dimension
    the mean |output| of every RMSNorm summed, and a layer its block importance: the mean over tokens of
    1 - cos(layer input, layer output).
    """
    _check_model_type(model)
    source = ModelShape.from_config(model.config)
    decoder = model.model
    num_layers = source.num_hidden_layers
    sums = StructureMasks(
        layer=torch.zeros(num_layers),
        query_heads=torch.zeros(num_layers, source.num_attention_heads),
        intermediate=torch.zeros(num_layers, source.intermediate_size),
        hidden=torch.zeros(source.hidden_size),
    )
    num_tokens = torch.zeros((), dtype=torch.float64)

    def count_tokens(module: nn.Module, args: tuple, kwargs: dict) -> None:
        input_ids = kwargs.get('input_ids', args[0] if args else None)
        num_tokens.add_(input_ids.numel())

    def attention_output(index: int):
        def hook(module: nn.Module, args: tuple) -> None:
            heads = args[0].detach().float().unflatten(-1, (source.num_attention_heads, source.head_dim))
            sums.query_heads[index] += heads.norm(dim=-1).sum((0, 1)).cpu()  # (batch, seq, heads) -> (heads,)

        return hook

    def mlp_activation(index: int):
        def hook(module: nn.Module, args: tuple) -> None:
            sums.intermediate[index] += args[0].detach().float().abs().sum((0, 1)).cpu()

        return hook

    def norm_output(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        sums.hidden += output.detach().float().abs().sum((0, 1)).cpu()

    def block_importance(index: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            layer_input = (args[0] if args else kwargs['hidden_states']).detach().float()
            layer_output = (output[0] if isinstance(output, tuple) else output).detach().float()
            similarity = nn.functional.cosine_similarity(layer_input, layer_output, dim=-1)  # (batch, seq)
            sums.layer[index] += (1.0 - similarity).sum().cpu()

        return hook

    handles = [model.register_forward_pre_hook(count_tokens, with_kwargs=True)]
    handles.append(decoder.norm.register_forward_hook(norm_output))
    for index, layer in enumerate(decoder.layers):
        handles.append(layer.self_attn.o_proj.register_forward_pre_hook(attention_output(index)))
        handles.append(layer.mlp.down_proj.register_forward_pre_hook(mlp_activation(index)))
        handles.append(layer.input_layernorm.register_forward_hook(norm_output))
        handles.append(layer.post_attention_layernorm.register_forward_hook(norm_output))
        handles.append(layer.register_forward_hook(block_importance(index), with_kwargs=True))

    def means() -> StructureMasks:
        tokens = max(num_tokens.item(), 1.0)
        query_heads = sums.query_heads / tokens
        kv_heads = query_heads.view(num_layers, source.num_key_value_heads, source.num_query_groups).sum(-1)
        return StructureMasks(layer=sums.layer / tokens, query_heads=query_heads, kv_heads=kv_heads,
                              intermediate=sums.intermediate / tokens, hidden=sums.hidden / tokens)

    try:
        yield means
    finally:
        for handle in handles:
            handle.remove()
