"""The L0 module: hard-concrete masks over a decoder's structures and the Lagrangian that aims them at a target.

Pure tensor code: it knows model *shapes*, never Hugging Face modules.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import nn

from llmshearing.choices import PRUNING_MODULES, TARGET_FIELDS
from llmshearing.pruning.hard_concrete import HardConcreteMask, log_alpha_from_scores
from llmshearing.pruning.shape import ModelShape

# The target field each mask kind moves.
_FIELD_OF_MODULE = {
    'layer': 'num_hidden_layers',
    'head': 'num_attention_heads',
    'kv_head': 'num_key_value_heads',
    'intermediate': 'intermediate_size',
    'hidden': 'hidden_size',
}


@dataclasses.dataclass
class StructureMasks:
    """Mask values per structure, ``None`` where a structure is not pruned.

    layer: (layers,); query_heads: (layers, heads) in the attention output's head order;
    kv_heads: (layers, kv_heads); intermediate: (layers, intermediate); hidden: (hidden,).
    """

    layer: torch.Tensor | None = None
    query_heads: torch.Tensor | None = None
    kv_heads: torch.Tensor | None = None
    intermediate: torch.Tensor | None = None
    hidden: torch.Tensor | None = None


class _ReverseGradient(torch.autograd.Function):
    """Identity forward, negated gradient: lets one optimizer step *maximise* over the multipliers."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return -grad


def _validate_target(source: ModelShape, target: ModelShape, pruning_modules: Sequence[str]) -> None:
    for field in TARGET_FIELDS:
        source_size, target_size = getattr(source, field), getattr(target, field)
        if not isinstance(target_size, int) or isinstance(target_size, bool) or target_size <= 0:
            raise ValueError(f'target {field} must be a positive integer, got {target_size!r}')
        if target_size > source_size:
            raise ValueError(f'target {field}={target_size} is larger than the source model\'s {source_size}')
    if target.num_attention_heads % target.num_key_value_heads:
        raise ValueError(
            f'target num_attention_heads={target.num_attention_heads} is not a multiple of '
            f'num_key_value_heads={target.num_key_value_heads}',
        )
    if source.is_multi_head and not target.is_multi_head:
        raise ValueError(
            f'target num_key_value_heads={target.num_key_value_heads} differs from num_attention_heads='
            f'{target.num_attention_heads}: a multi-head-attention source is pruned by whole heads',
        )
    if target.num_query_groups > source.num_query_groups:
        raise ValueError(
            f'target num_attention_heads={target.num_attention_heads} with num_key_value_heads='
            f'{target.num_key_value_heads} needs {target.num_query_groups} query heads per key/value head; '
            f'the source has {source.num_query_groups}',
        )
    moved = {
        'num_hidden_layers': target.num_hidden_layers != source.num_hidden_layers,
        'hidden_size': target.hidden_size != source.hidden_size,
        'intermediate_size': target.intermediate_size != source.intermediate_size,
        'num_key_value_heads': target.num_key_value_heads != source.num_key_value_heads,
        'num_attention_heads': target.num_query_groups != source.num_query_groups,
    }
    if source.is_multi_head:
        moved['num_attention_heads'] = target.num_attention_heads != source.num_attention_heads
        moved['num_key_value_heads'] = False
    for module, field in _FIELD_OF_MODULE.items():
        if moved[field] and module not in pruning_modules:
            raise ValueError(
                f'target {field}={getattr(target, field)} differs from the source\'s {getattr(source, field)} '
                f'but pruning module {module!r} is not in pruning_modules {list(pruning_modules)}',
            )


def default_pruning_modules(source: ModelShape) -> tuple[str, ...]:
    """Every mask kind that ``source`` has: ``kv_head`` only with grouped-query attention."""
    return tuple(module for module in PRUNING_MODULES if module != 'kv_head' or not source.is_multi_head)


def _validate_pruning_modules(source: ModelShape, pruning_modules: Sequence[str]) -> None:
    if not pruning_modules:
        raise ValueError('pruning_modules is empty; choose from ' + str(list(PRUNING_MODULES)))
    for module in pruning_modules:
        if module not in PRUNING_MODULES:
            raise ValueError(f'Unknown pruning module {module!r}; expected one of {list(PRUNING_MODULES)}')
    if len(set(pruning_modules)) != len(pruning_modules):
        raise ValueError(f'pruning_modules lists a module twice: {list(pruning_modules)}')
    if source.is_multi_head and 'kv_head' in pruning_modules:
        raise ValueError(
            "pruning module 'kv_head' needs grouped-query attention; a multi-head-attention source has one "
            "query head per key/value head: prune whole heads with 'head'",
        )


class L0Module(nn.Module):
    """Hard-concrete masks for the chosen structures of ``source``, and their Lagrangian.

    Give either ``target`` (a dict in HF config names; missing fields keep the source's size) or
    ``target_sparsity`` (the fraction of non-embedding parameters to remove; the final shape is then the
    one the masks learn). ``pruning_modules`` defaults to ``default_pruning_modules(source)``.
    """

    def __init__(
        self,
        source: ModelShape,
        pruning_modules: Sequence[str] | None = None,
        target: Mapping[str, int] | None = None,
        target_sparsity: float | None = None,
        droprate_init: float = 0.5,
        eval_target_shape: bool = True,
    ):
        super().__init__()
        pruning_modules = list(default_pruning_modules(source) if pruning_modules is None else pruning_modules)
        _validate_pruning_modules(source, pruning_modules)
        if (target is None) == (target_sparsity is None):
            raise ValueError('Give exactly one of target and target_sparsity')
        if target_sparsity is not None and not 0.0 < target_sparsity < 1.0:
            raise ValueError(f'target_sparsity must be in (0, 1), got {target_sparsity}')
        self.source = source
        self.pruning_modules = pruning_modules
        self.target_sparsity = target_sparsity
        self.target = None if target is None else source.with_target(target)
        if self.target is not None:
            _validate_target(source, self.target, pruning_modules)
        self.eval_target_shape = eval_target_shape

        self.masks = nn.ModuleDict(
            {
                module: HardConcreteMask(self._mask_shape(module), self._num_kept(module), droprate_init)
                for module in pruning_modules
            },
        )
        constraints = pruning_modules if self.target is not None else ['params']
        # (lambda_1, lambda_2) per constraint.
        self.lambdas = nn.ParameterDict({name: nn.Parameter(torch.zeros(2)) for name in constraints})
        # Draws the training samples; ``None`` uses torch's global generator.
        self.generator: torch.Generator | None = None
        self._bypassed = False

    def _mask_shape(self, module: str) -> tuple[int, ...]:
        s = self.source
        if module == 'layer':
            return (s.num_hidden_layers,)
        if module == 'head' and s.is_multi_head:
            return (s.num_hidden_layers, s.num_attention_heads)
        if module == 'head':
            return (s.num_hidden_layers, s.num_key_value_heads, s.num_query_groups)
        if module == 'kv_head':
            return (s.num_hidden_layers, s.num_key_value_heads)
        if module == 'intermediate':
            return (s.num_hidden_layers, s.intermediate_size)
        return (s.hidden_size,)

    def _num_kept(self, module: str) -> int | None:
        t = self.target
        if t is None:
            return None
        if module == 'head' and not self.source.is_multi_head:
            return t.num_query_groups
        return getattr(t, _FIELD_OF_MODULE[module])

    @torch.no_grad()
    def init_all_kept(self) -> None:
        """Start every gate where the original LLM-Shearing code starts it (log-alpha 5, clamped to ln 100: kept in
        practically every sample), the start of the released Sheared-LLaMA runs."""
        for mask in self.masks.values():
            mask.init_all_kept()

    def reset_parameters(self) -> None:
        for mask in self.masks.values():
            mask.reset_parameters()
        with torch.no_grad():
            for lambdas in self.lambdas.values():
                lambdas.zero_()

    @torch.no_grad()
    def init_from_scores(self, kind_scores: Mapping[str, torch.Tensor], scale: float) -> None:
        """Start every mask from importance scores (one tensor per mask kind, in the mask's shape): the
        deterministic masks keep exactly the top-scoring structures at the target counts."""
        if self.target is None:
            raise ValueError('importance initialisation needs a target shape, not target_sparsity')
        for kind, mask in self.masks.items():
            scores = kind_scores[kind]
            if tuple(scores.shape) != mask.shape:
                raise ValueError(
                    f'importance scores of {kind!r} have shape {tuple(scores.shape)}; the mask has {mask.shape}'
                )
            mask.log_alpha.copy_(log_alpha_from_scores(scores.to(mask.log_alpha), mask.num_kept, scale))

    @contextlib.contextmanager
    def bypass(self) -> Iterator[None]:
        """Inside the block, forwards compute with masks of all ones: the source model."""
        self._bypassed = True
        try:
            yield
        finally:
            self._bypassed = False

    def ones(self) -> StructureMasks:
        """Masks of all ones: the forward of the source model."""
        return self.structure_masks(
            {kind: torch.ones(mask.shape, device=self.device) for kind, mask in self.masks.items()}
        )

    @torch.no_grad()
    def constrain_parameters(self) -> None:
        """Clamp every ``log_alpha`` into its allowed range (after each optimizer step)."""
        for mask in self.masks.values():
            mask.constrain_parameters()

    # Masks ---------------------------------------------------------------------------------------

    def forward(self) -> StructureMasks:
        """A fresh sample of every mask in training; deterministic masks in eval; all ones while bypassed."""
        if self._bypassed:
            return self.ones()
        if self.training:
            return self.structure_masks({module: mask.sample(self.generator) for module, mask in self.masks.items()})
        return self.deterministic_masks(target_shape=self.eval_target_shape)

    def deterministic_masks(self, target_shape: bool = True) -> StructureMasks:
        """Hard masks with real-valued scales: the final shape, or (``target_shape=False``) what the masks keep in
        expectation now, group by group (so one layer may keep more heads than another)."""
        return self.structure_masks(
            {
                module: mask.deterministic(None if target_shape else mask.expected_num_kept_per_group())
                for module, mask in self.masks.items()
            },
        )

    def structure_masks(self, gates: Mapping[str, torch.Tensor]) -> StructureMasks:
        """Turn per-kind gates into per-structure masks (query heads combine ``head`` and ``kv_head``)."""
        s = self.source
        kv_heads = gates.get('kv_head')
        query_heads = None
        if s.is_multi_head:
            kv_heads = query_heads = gates.get('head')
        elif 'head' in gates or kv_heads is not None:
            # (layers, kv_heads, groups) -> (layers, heads): query head h belongs to kv head h // groups.
            within_group = gates.get('head', torch.ones(self._mask_shape('head'), device=self.device))
            group = kv_heads.unsqueeze(-1) if kv_heads is not None else 1.0
            query_heads = (within_group * group).reshape(s.num_hidden_layers, s.num_attention_heads)
        return StructureMasks(
            layer=gates.get('layer'),
            query_heads=query_heads,
            kv_heads=kv_heads,
            intermediate=gates.get('intermediate'),
            hidden=gates.get('hidden'),
        )

    @property
    def masked_structures(self) -> set[str]:
        """Names of the ``StructureMasks`` fields that these masks set."""
        return {name for name, value in vars(self.ones()).items() if value is not None}

    def final_shape(self) -> ModelShape:
        """The shape ``prune_model`` produces from the current masks."""
        if self.target is not None:
            return self.target
        kept = {module: mask.final_num_kept() for module, mask in self.masks.items()}
        sizes = {_FIELD_OF_MODULE[m]: n for m, n in kept.items() if m != 'head' or self.source.is_multi_head}
        if self.source.is_multi_head and 'head' in kept:
            sizes['num_key_value_heads'] = kept['head']
        kv_heads = sizes.get('num_key_value_heads', self.source.num_key_value_heads)
        if 'head' in kept and not self.source.is_multi_head:
            sizes['num_attention_heads'] = kv_heads * kept['head']
        else:
            sizes.setdefault('num_attention_heads', kv_heads * self.source.num_query_groups)
        return dataclasses.replace(self.source, **sizes)

    # Expected size and the Lagrangian ------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return next(iter(self.lambdas.values())).device

    def expected_num_params(self, keep: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Expected non-embedding parameter count: differentiable in the masks' keep probabilities.

        ``keep`` maps mask kinds to keep probabilities (default: the masks' own); pass 0/1 indicators
        to count a hard shape exactly.
        """
        if keep is None:
            keep = {module: mask.keep_probability() for module, mask in self.masks.items()}
        s = self.source
        ones = torch.ones(s.num_hidden_layers, device=self.device)
        masks = self.structure_masks(keep)
        layer = masks.layer if masks.layer is not None else ones
        hidden = masks.hidden.sum() if masks.hidden is not None else s.hidden_size * ones[0]
        query_heads = masks.query_heads.sum(-1) if masks.query_heads is not None else s.num_attention_heads * ones
        kv_heads = masks.kv_heads.sum(-1) if masks.kv_heads is not None else s.num_key_value_heads * ones
        intermediate = masks.intermediate.sum(-1) if masks.intermediate is not None else s.intermediate_size * ones
        # Everything below is (layers,).
        attention = hidden * s.head_dim * (2 * query_heads + 2 * kv_heads)
        attention = attention + s.qkv_bias * s.head_dim * (query_heads + 2 * kv_heads) + s.o_bias * hidden
        mlp = 3 * hidden * intermediate + s.mlp_bias * (2 * intermediate + hidden)
        norms = 2 * hidden
        return (layer * (attention + mlp + norms)).sum() + hidden

    def expected_sparsities(self) -> dict[str, torch.Tensor]:
        """Expected sparsity per constraint: of every group of each mask kind (shape ``mask.shape[:-1]``: one
        layer's heads or MLP channels, one key/value group's query heads; a scalar for layers and hidden), or of
        the parameters (a scalar) for an overall target."""
        if self.target is None:
            return {'params': 1.0 - self.expected_num_params() / self.source.num_non_embedding_params()}
        return {module: mask.expected_sparsity() for module, mask in self.masks.items()}

    def target_sparsities(self, progress: float) -> dict[str, float]:
        """Target sparsity per constraint, warmed up linearly: ``progress`` runs from 0 to 1."""
        progress = min(max(progress, 0.0), 1.0)
        if self.target is None:
            return {'params': progress * self.target_sparsity}
        return {
            module: progress * (1.0 - mask.num_kept / mask.group_size)
            for module, mask in self.masks.items()
        }

    def lagrangian(self, progress: float) -> torch.Tensor:
        """``sum_k mean_r [lambda_1,k (s_k,r - t_k) + lambda_2,k (s_k,r - t_k)^2]`` over constraints ``k`` and their
        groups ``r`` (see ``expected_sparsities``); the masks descend it, the lambdas ascend it.

        Each group is held to the target on its own, as in the original LLM-Shearing code: the quadratic term pulls
        every layer towards the count that the deterministic masks will keep in it.
        """
        expected, target = self.expected_sparsities(), self.target_sparsities(progress)
        total = torch.zeros((), device=self.device)
        for name, lambdas in self.lambdas.items():
            gap = expected[name] - target[name]
            lambda_1, lambda_2 = _ReverseGradient.apply(lambdas)
            total = total + (lambda_1 * gap + lambda_2 * gap * gap).mean()
        return total
