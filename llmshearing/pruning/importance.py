"""One-shot importance pruning (Minitron, LLM-Pruner) through the one physical-pruning path.

``importance_scores`` measures every structure once; ``importance_masks`` keeps the top-scoring structures of
each kind at the target shape (the same widths in every layer) as 0/1 ``StructureMasks``, which ``prune_model``
folds like any other masks. ``llmshearing prune-oneshot`` (``llmshearing.commands.prune_oneshot``) does both on
calibration samples of prepared data.

Methods:
- ``activation`` (Minitron): mean activation magnitudes on calibration tokens (attention-head output norms,
  MLP channel activations, RMSNorm outputs per hidden dimension); layers by block importance,
  1 - cos(layer input, layer output). Block importance needs the same single pass as the other scores; the
  alternative, the loss increase when each layer is dropped, needs one more pass per layer.
- ``taylor`` (LLM-Pruner, first order): ``|w * dL/dw|`` summed over each structure's weights, the gradient of the
  LM loss accumulated over the calibration samples.
- ``magnitude``: the squared weight norm of each structure; needs no data (the floor).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel

from llmshearing.checks import ParameterError
from llmshearing.choices import DEFAULT_IMPORTANCE, IMPORTANCE_METHODS
from llmshearing.pruning.l0_module import L0Module, StructureMasks
from llmshearing.pruning.llama_layout import recording_activation_scores, weight_structure_scores
from llmshearing.pruning.shape import ModelShape

log = logging.getLogger(__name__)


def importance_scores(
    model: PreTrainedModel,
    method: str,
    batches: Iterable[torch.Tensor] = (),
) -> StructureMasks:
    """Score every layer, query head, key/value head, MLP channel and hidden dimension (``StructureMasks`` layout,
    higher is more important). ``batches`` are ``(batch, seq)`` token ids; ``magnitude`` ignores them."""
    if method not in IMPORTANCE_METHODS:
        raise ParameterError('method', f'must be one of {list(IMPORTANCE_METHODS)}, got {method!r}')
    if method == 'magnitude':
        return weight_structure_scores(model, lambda weight: weight.detach().float().square())
    device = model.get_input_embeddings().weight.device
    was_training = model.training
    model.eval()
    num_batches = 0
    try:
        if method == 'activation':
            with recording_activation_scores(model) as means, torch.no_grad():
                for batch in batches:
                    model(input_ids=batch.to(device))
                    num_batches += 1
                scores = means()
        else:
            model.zero_grad(set_to_none=True)
            for batch in batches:
                input_ids = batch.to(device)
                model(input_ids=input_ids, labels=input_ids).loss.backward()
                num_batches += 1
            scores = weight_structure_scores(model, lambda weight: (weight.detach() * weight.grad).abs())
            model.zero_grad(set_to_none=True)
    finally:
        model.train(was_training)
    if num_batches == 0:
        raise ValueError(f'importance method {method!r} needs calibration batches; none were given')
    return scores


def mask_kind_scores(l0_module: L0Module, scores: StructureMasks) -> dict[str, torch.Tensor]:
    """The scores in the shape of each of ``l0_module``'s mask kinds."""
    source = l0_module.source
    by_kind = {}
    for kind, mask in l0_module.masks.items():
        if kind == 'head':
            score = scores.kv_heads if source.is_multi_head else scores.query_heads
        else:
            score = {'layer': scores.layer, 'kv_head': scores.kv_heads, 'intermediate': scores.intermediate,
                     'hidden': scores.hidden}[kind]
        by_kind[kind] = score.reshape(mask.shape).float()
    return by_kind


def top_gates(scores: torch.Tensor, num_kept: int) -> torch.Tensor:
    """1 for the ``num_kept`` highest scores along the last dimension (ties: the lower index), else 0."""
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    return torch.zeros_like(scores).scatter_(-1, order[..., :num_kept], 1.0)


def importance_masks(
    model: PreTrainedModel,
    target: Mapping[str, int],
    pruning_modules: Sequence[str] | None = None,
    batches: Iterable[torch.Tensor] = (),
    method: str = DEFAULT_IMPORTANCE,
) -> StructureMasks:
    """0/1 masks of exactly the target shape keeping the most important structures (``prune_model(model,
    masks=...)`` after ``attach_masks`` cuts them out). Target and modules (default: ``default_pruning_modules``)
    are checked as for ``shearing``."""
    l0_module = L0Module(ModelShape.from_config(model.config), pruning_modules, target)
    return masks_from_scores(l0_module, importance_scores(model, method, batches))


def kind_gates(l0_module: L0Module, scores: StructureMasks) -> dict[str, torch.Tensor]:
    """Per mask kind of ``l0_module``: 1 for the top structures at its target count, 0 for the rest."""
    kind_scores = mask_kind_scores(l0_module, scores)
    return {kind: top_gates(kind_scores[kind], mask.num_kept) for kind, mask in l0_module.masks.items()}


def masks_from_scores(l0_module: L0Module, scores: StructureMasks) -> StructureMasks:
    """The top structures of each mask kind at ``l0_module``'s target counts, as 0/1 ``StructureMasks``."""
    return l0_module.structure_masks(kind_gates(l0_module, scores))


def calibration_batches(
    data_dir: Path,
    domains: Sequence[str] | None,
    num_samples: int,
    seq_len: int | None,
    batch_size: int,
    vocab_size: int,
) -> list[torch.Tensor]:
    """``num_samples`` training samples of prepared data, taken in turn from each domain, in batches."""
    from streaming import LocalDataset

    train_dir = data_dir / 'train'
    if not train_dir.is_dir():
        raise FileNotFoundError(f'prepared data {data_dir} has no train/ folder (the output of prepare-data)')
    available = sorted(path.name for path in train_dir.iterdir() if (path / 'index.json').is_file())
    domains = list(domains) if domains else available
    missing = [domain for domain in domains if domain not in available]
    if missing or not domains:
        raise FileNotFoundError(
            f'prepared data {data_dir} has no training split for domain(s) {missing}; it has {available}',
        )
    datasets = [LocalDataset(str(train_dir / domain)) for domain in domains]
    samples = []
    for index in range(num_samples):
        dataset = datasets[index % len(datasets)]
        tokens = np.asarray(dataset[(index // len(datasets)) % len(dataset)]['tokens'], dtype=np.int64)
        samples.append(tokens[:seq_len] if seq_len else tokens)
    stacked = torch.from_numpy(np.stack(samples))
    if stacked.max().item() >= vocab_size:
        raise ValueError(
            f'prepared data {data_dir} has token id {stacked.max().item()}, outside the model\'s vocabulary of '
            f'{vocab_size}: prepare the data with the model\'s tokenizer',
        )
    return list(stacked.split(batch_size))


def importance_report(
    method: str, target: Mapping[str, int], l0_module: L0Module, scores: StructureMasks,
    gates: Mapping[str, torch.Tensor], calibration: Mapping[str, Any],
) -> dict[str, Any]:
    """What ``importance.json`` holds: the settings, every score per mask kind and what ``gates`` kept."""
    kind_scores = mask_kind_scores(l0_module, scores)
    masks = l0_module.structure_masks(gates)
    return {
        'method': method,
        'source': vars(l0_module.source),
        'target': dict(target),
        'final_shape': vars(l0_module.final_shape()),
        'pruning_modules': list(l0_module.pruning_modules),
        'calibration': dict(calibration),
        'scores': {kind: score.tolist() for kind, score in kind_scores.items()},
        'kept': {kind: [torch.nonzero(row).flatten().tolist() for row in gate.reshape(-1, gate.shape[-1])]
                 if gate.dim() > 1 else torch.nonzero(gate).flatten().tolist() for kind, gate in gates.items()},
        'masks_kept_per_structure': {name: int((value != 0).sum()) for name, value in vars(masks).items()
                                     if value is not None},
    }
