"""``llmshearing export``: a Composer checkpoint of a pruning run to a plain, pruned Hugging Face model."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import torch
from composer.models import HuggingFaceModel
from composer.models.huggingface import get_hf_config_from_composer_state_dict
from transformers import AutoModelForCausalLM, PreTrainedModel
from transformers.modeling_utils import no_init_weights

from llmshearing.pruning.algorithm import Shearing
from llmshearing.pruning.llama_layout import attach_masks, prune_model

log = logging.getLogger(__name__)

DTYPES = {'bf16': torch.bfloat16, 'fp16': torch.float16, 'fp32': torch.float32}
MODEL_PREFIX = 'model.'


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or the ``latest-rank0.pt`` of a save folder."""
    path = Path(path)
    if path.is_dir():
        path = path / 'latest-rank0.pt'
    if not path.is_file():
        raise FileNotFoundError(f'checkpoint {path} does not exist')
    return path


def _mask_config(checkpoint: dict[str, Any], path: Path) -> dict[str, Any]:
    for name, algorithm_state in checkpoint['state'].get('algorithms', []):
        if name == Shearing.__qualname__ and 'mask_config' in algorithm_state:
            return algorithm_state['mask_config']
    raise ValueError(f'checkpoint {path} has no shearing algorithm state: it was not saved by a pruning run')


def masked_model_from_checkpoint(path: str | Path) -> tuple[PreTrainedModel, dict[str, Any]]:
    """The source HF model with its masks and weights as saved, in eval mode, and the raw checkpoint."""
    path = resolve_checkpoint(path)
    checkpoint = torch.load(path, map_location='cpu', weights_only=False)
    if 'huggingface' not in checkpoint['state'].get('integrations', {}):
        raise ValueError(f'checkpoint {path} does not hold a Hugging Face model (no integrations.huggingface state)')
    mask_config = _mask_config(checkpoint, path)
    config = get_hf_config_from_composer_state_dict(checkpoint)
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
    attach_masks(model, **mask_config)
    weights = {
        name.removeprefix(MODEL_PREFIX): tensor
        for name, tensor in checkpoint['state']['model'].items()
        if name.startswith(MODEL_PREFIX)
    }
    model.load_state_dict(weights, strict=True)
    return model.eval(), checkpoint


def export(checkpoint_path: str | Path, output_dir: str | Path, dtype: str = 'bf16', overwrite: bool = False) -> Path:
    """Write the pruned model (safetensors), its config and the run's tokenizer to ``output_dir``."""
    if dtype not in DTYPES:
        raise ValueError(f'dtype {dtype!r} is not one of {sorted(DTYPES)}')
    output_dir = Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()) and not overwrite:
        raise FileExistsError(f'output folder {output_dir} is not empty; pass --overwrite to replace its files')
    model, checkpoint = masked_model_from_checkpoint(checkpoint_path)
    pruned = prune_model(model, dtype=DTYPES[dtype])
    log.info('Pruned %s to %s', model.l0_module.source, model.l0_module.final_shape())
    pruned.save_pretrained(output_dir, safe_serialization=True)
    tokenizer = HuggingFaceModel.load_huggingface_tokenizer_from_saved_state(checkpoint['state']['integrations']['huggingface'])
    if tokenizer is not None:
        tokenizer.save_pretrained(output_dir)
    log.info('Wrote %s', output_dir)
    return output_dir


def add_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser('export', help='Export a pruning checkpoint as a pruned Hugging Face model')
    parser.add_argument('checkpoint', help='Composer checkpoint file, or a save folder (its latest-rank0.pt)')
    parser.add_argument('output_dir', help='folder for the pruned model, config and tokenizer')
    parser.add_argument('--dtype', choices=sorted(DTYPES), default='bf16', help='weight dtype (default: bf16)')
    parser.add_argument('--overwrite', action='store_true', help='replace files in a non-empty output folder')
    parser.set_defaults(run=lambda args: export(args.checkpoint, args.output_dir, args.dtype, args.overwrite))
