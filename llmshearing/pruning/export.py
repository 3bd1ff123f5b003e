"""A Composer checkpoint of a pruning run to a plain, pruned Hugging Face model (``llmshearing export``).

It reads checkpoints of this package's runs and of the original LLM-Shearing code: monolithic ones (one
``torch.save`` file, memory-mapped) and Composer's sharded ones (a ``torch.distributed.checkpoint`` folder written by
FSDP with ``state_dict_type: sharded``), on a CPU. Only the model's weights, the algorithm state (the mask
configuration) and the Hugging Face integration state (config, tokenizer) are read, never the optimizer's state, so
the peak memory is about the source model's weights plus the pruned model's.
"""

from __future__ import annotations

import logging
import pickle
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from composer.models import HuggingFaceModel
from composer.models.huggingface import get_hf_config_from_composer_state_dict
from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.modeling_utils import no_init_weights

from llmshearing.checks import ParameterError, check_output_dir
from llmshearing.choices import DEFAULT_WEIGHT_DTYPE, WEIGHT_DTYPES
from llmshearing.pruning.l0_module import StructureMasks
from llmshearing.pruning.llama_layout import attach_masks, prune_model
from llmshearing.pruning.original_checkpoint import is_original_checkpoint, model_and_masks_from_original_checkpoint

log = logging.getLogger(__name__)

DTYPES = {name: getattr(torch, torch_name) for name, torch_name in WEIGHT_DTYPES.items()}
MODEL_PREFIX = 'model.'
LATEST_MONOLITHIC = 'latest-rank0.pt'
"""Composer's link to rank 0's latest monolithic checkpoint (llm-foundry's default ``save_latest_filename``)."""
LATEST_CHECKPOINTS = (LATEST_MONOLITHIC, 'latest-sharded-rank0')
"""The links Composer keeps in a save folder to its latest monolithic and latest sharded checkpoint."""
SHARDED_METADATA = '.metadata'
EXPORTED_STATE = ('model', 'algorithms', 'integrations')
"""The parts of a checkpoint's ``state`` that export reads."""


def is_sharded_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a sharded (``torch.distributed.checkpoint``) checkpoint folder."""
    return (path / SHARDED_METADATA).is_file()


def latest_checkpoints(folder: Path) -> list[Path]:
    """The links of ``LATEST_CHECKPOINTS`` in a save folder that lead to a checkpoint."""
    return [folder / name for name in LATEST_CHECKPOINTS if (folder / name).exists()]


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, a sharded checkpoint folder, or the latest checkpoint of a save folder."""
    path = Path(path)
    if path.is_dir() and not is_sharded_checkpoint(path):
        latest = latest_checkpoints(path)
        if not latest:
            raise FileNotFoundError(
                f'checkpoint folder {path} has no {" or ".join(LATEST_CHECKPOINTS)} and is not a sharded checkpoint '
                f'(no {SHARDED_METADATA})'
            )
        path = latest[0]
    if not (path.is_file() or is_sharded_checkpoint(path)):
        raise FileNotFoundError(f'checkpoint {path} does not exist')
    return path


def _mask_config(checkpoint: dict[str, Any], path: Path) -> dict[str, Any]:
    for _, algorithm_state in checkpoint['state'].get('algorithms', []):
        if 'mask_config' in algorithm_state:
            return algorithm_state['mask_config']
    raise ValueError(f'checkpoint {path} has no shearing algorithm state: it was not saved by a pruning run')


def load_checkpoint(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """The checkpoint's path and the parts of its state that export reads (``EXPORTED_STATE``), as
    ``{'state': {...}}``. A monolithic checkpoint is memory-mapped: only the pages of the tensors used are read."""
    path = resolve_checkpoint(path)
    if is_sharded_checkpoint(path):
        keys = {f'state.{name}' for name in EXPORTED_STATE}
        with warnings.catch_warnings():
            warnings.filterwarnings('ignore', 'torch.distributed is unavailable or uninitialized')  # one process reads
            return path, _load_state_dict_from_keys(keys, checkpoint_id=str(path))
    state = _monolithic_state(path)
    return path, {'state': {name: state[name] for name in EXPORTED_STATE if name in state}}


def _monolithic_state(path: Path) -> dict[str, Any]:
    """The ``state`` of a one-file Composer checkpoint, memory-mapped; ``ValueError`` naming the file if it is not
    one."""
    expected = 'expected a Composer checkpoint file (torch.save), a sharded checkpoint folder or a save folder'
    if not zipfile.is_zipfile(path):
        raise ValueError(f'checkpoint {path} is not a torch.save file (or it is truncated): {expected}')
    try:
        checkpoint = torch.load(path, map_location='cpu', mmap=True, weights_only=False)
    except (RuntimeError, pickle.UnpicklingError, EOFError) as error:
        raise ValueError(f'checkpoint {path} cannot be read ({error}): {expected}') from None
    state = checkpoint.get('state') if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or 'model' not in state:
        raise ValueError(f'checkpoint {path} holds no Composer state with a model: {expected}')
    return state


def masked_model_from_checkpoint(path: str | Path) -> tuple[PreTrainedModel, dict[str, Any]]:
    """The source HF model with its masks and weights as saved, in eval mode, and the raw checkpoint."""
    path, checkpoint = load_checkpoint(path)
    return _masked_model(checkpoint, path), checkpoint


def _masked_model(checkpoint: dict[str, Any], path: Path) -> PreTrainedModel:
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
    # The checkpoint's tensors become the parameters: the model's own, never written, are freed without a copy.
    model.load_state_dict(weights, strict=True, assign=True)
    model.tie_weights()
    return model.eval()


def _tokenizer(
    checkpoint: dict[str, Any],
    tokenizer_path: str | Path | None,
    files_dir: Path,
) -> PreTrainedTokenizerBase:
    """The tokenizer at ``tokenizer_path`` if given, else the one saved in the checkpoint.

    A saved tokenizer's files are written to ``files_dir``, which must exist as long as the tokenizer is used.
    """
    if tokenizer_path is not None:
        if not Path(tokenizer_path).exists():
            raise FileNotFoundError(f'tokenizer {tokenizer_path} does not exist')
        return AutoTokenizer.from_pretrained(tokenizer_path)
    saved_state = checkpoint['state'].get('integrations', {}).get('huggingface')
    tokenizer = None
    if saved_state:
        load = HuggingFaceModel.load_huggingface_tokenizer_from_saved_state
        tokenizer = load(saved_state, tokenizer_save_dir=str(files_dir))
    if tokenizer is None:
        raise ParameterError('tokenizer_path', 'is needed: the checkpoint holds no tokenizer')
    return tokenizer


def export(
    checkpoint_path: str | Path,
    output_dir: str | Path,
    dtype: str = DEFAULT_WEIGHT_DTYPE,
    overwrite: bool = False,
    tokenizer_path: str | Path | None = None,
) -> Path:
    """Write the pruned model (safetensors), its config and the tokenizer to ``output_dir``.

    The tokenizer is the one at ``tokenizer_path``, by default the one saved in the checkpoint.
    """
    if dtype not in DTYPES:
        raise ParameterError('dtype', f'must be one of {list(DTYPES)}, got {dtype!r}')
    output_dir = Path(output_dir)
    check_output_dir(output_dir, overwrite)
    path, checkpoint = load_checkpoint(checkpoint_path)
    with tempfile.TemporaryDirectory(prefix='tokenizer-') as tokenizer_files:
        tokenizer = _tokenizer(checkpoint, tokenizer_path, Path(tokenizer_files))
        if is_original_checkpoint(checkpoint):
            model, masks = model_and_masks_from_original_checkpoint(checkpoint, path)
            # The original L0 forward draws its masks after the embedding, which it leaves unscaled.
            return write_pruned_model(model, tokenizer, output_dir, dtype, masks, scale_embedding=False)
        return write_pruned_model(_masked_model(checkpoint, path), tokenizer, output_dir, dtype)


def write_pruned_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase | None,
    output_dir: str | Path,
    dtype: str = DEFAULT_WEIGHT_DTYPE,
    masks: StructureMasks | None = None,
    scale_embedding: bool = True,
) -> Path:
    """Prune a masked model (``prune_model``) and save it with its tokenizer as a Hugging Face folder."""
    pruned = prune_model(model, dtype=DTYPES[dtype], masks=masks, scale_embedding=scale_embedding)
    log.info('Pruned %s to %s', model.l0_module.source, model.l0_module.final_shape())
    pruned.save_pretrained(output_dir, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(output_dir)
    log.info('Wrote %s', output_dir)
    return Path(output_dir)
