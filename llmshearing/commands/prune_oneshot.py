"""``llmshearing prune-oneshot``: prune a model once to a target shape by structure importance, without training."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from llmshearing.checks import ParameterError, check_output_dir, check_positive
from llmshearing.choices import (
    DEFAULT_CALIBRATION_BATCH_SIZE,
    DEFAULT_CALIBRATION_SAMPLES,
    DEFAULT_IMPORTANCE,
    DEFAULT_WEIGHT_DTYPE,
    IMPORTANCE_METHODS,
    WEIGHT_DTYPES,
)
from llmshearing.pruning.export import write_pruned_model
from llmshearing.pruning.importance import calibration_batches, importance_report, importance_scores, kind_gates
from llmshearing.pruning.l0_module import L0Module
from llmshearing.pruning.llama_layout import attach_masks
from llmshearing.pruning.shape import ModelShape
from llmshearing.report import plot_kept_structures

log = logging.getLogger(__name__)


def prune_oneshot(
    model_dir: str | Path,
    output_dir: str | Path,
    target: Mapping[str, int],
    *,
    data_dir: str | Path | None = None,
    domains: Sequence[str] | None = None,
    pruning_modules: Sequence[str] | None = None,
    importance: str = DEFAULT_IMPORTANCE,
    calibration_samples: int = DEFAULT_CALIBRATION_SAMPLES,
    seq_len: int | None = None,
    batch_size: int = DEFAULT_CALIBRATION_BATCH_SIZE,
    dtype: str = DEFAULT_WEIGHT_DTYPE,
    overwrite: bool = False,
) -> Path:
    """Score every structure of ``model_dir`` by ``importance`` on ``calibration_samples`` training samples of
    ``data_dir`` (prepared data; ``magnitude`` needs none), keep the top ones of each of ``pruning_modules`` (default:
    ``default_pruning_modules`` of the source) at the ``target`` shape, and write the pruned model, its
    ``importance.json`` and ``kept_structures.png`` to ``output_dir``. Every check comes before the weights are read.
    """
    model_dir, output_dir = Path(model_dir), Path(output_dir)
    if not (model_dir / 'config.json').is_file():
        raise FileNotFoundError(f'model folder {model_dir} does not exist or has no config.json')
    check_output_dir(output_dir, overwrite)
    check_positive(calibration_samples=calibration_samples, batch_size=batch_size, seq_len=seq_len)
    if importance not in IMPORTANCE_METHODS:
        raise ParameterError('importance', f'must be one of {list(IMPORTANCE_METHODS)}, got {importance!r}')
    if dtype not in WEIGHT_DTYPES:
        raise ParameterError('dtype', f'must be one of {list(WEIGHT_DTYPES)}, got {dtype!r}')
    if importance != 'magnitude' and data_dir is None:
        raise ParameterError('data_dir', f'is needed: importance {importance} scores on calibration samples')
    l0_module = L0Module(ModelShape.from_config(AutoConfig.from_pretrained(model_dir)), pruning_modules, target)
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    batches = [] if importance == 'magnitude' else calibration_batches(
        Path(data_dir), domains, calibration_samples, seq_len, batch_size, model.config.vocab_size,
    )
    num_samples = sum(len(batch) for batch in batches)
    log.info('Scoring %s by %s importance on %d calibration samples', l0_module.source, importance, num_samples)
    scores = importance_scores(model, importance, tqdm(batches, desc='calibration batches', unit='batch'))
    gates = kind_gates(l0_module, scores)
    masks = l0_module.structure_masks(gates)
    attach_masks(model, target, l0_module.pruning_modules)
    write_pruned_model(model, AutoTokenizer.from_pretrained(model_dir), output_dir, dtype, masks=masks)
    calibration = {'data': None if data_dir is None else str(data_dir), 'domains': domains, 'samples': num_samples,
                   'seq_len': seq_len, 'batch_size': batch_size}
    report = importance_report(importance, target, l0_module, scores, gates, calibration)
    (output_dir / 'importance.json').write_text(json.dumps(report, indent=1) + '\n')
    if masks.query_heads is not None and masks.intermediate is not None:
        plot_kept_structures(masks).savefig(output_dir / 'kept_structures.png', dpi=100)
    log.info('Wrote %s (%s)', output_dir, l0_module.final_shape())
    return output_dir
