"""The ``dynamic_text`` dataloader of llm-foundry's ``dataloaders`` registry: batches of pre-tokenised
multi-domain MDS data with ``input_ids``, ``labels`` and each sample's ``domain`` index.

With ``dataset.proportions`` it reads a ``DynamicStreamingDataset`` (training, an endless domain mix);
without, a ``DomainStreamingDataset`` (evaluation, every sample once).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from composer.core import DataSpec
from llmfoundry.data.utils import get_tokens_per_batch_func
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from llmshearing.data.dynamic_dataset import DomainStreamingDataset, DynamicStreamingDataset

DEFAULT_PREFETCH_FACTOR = 2  # torch's, when a DataLoader with workers is given none


def collate_domain_batch(examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack ``token_example``s: ``input_ids`` and ``labels`` ``[batch, seq_len]``, ``domain`` ``[batch]``."""
    input_ids = torch.stack([example['input_ids'] for example in examples])
    return {
        'input_ids': input_ids,
        'labels': input_ids.clone(),
        'domain': torch.tensor([example['domain'] for example in examples], dtype=torch.long),
    }


def build_dynamic_text_dataloader(
    tokenizer: PreTrainedTokenizerBase | None,
    device_batch_size: int | float,
    dataset: dict[str, Any],
    drop_last: bool,
    num_workers: int,
    pin_memory: bool = True,
    prefetch_factor: int | None = 2,
    persistent_workers: bool = True,
    timeout: float = 0,
) -> DataSpec:
    """Build the loader from a ``train_loader`` / ``eval_loader`` config (called by llm-foundry's registry).

    Args:
        tokenizer: unused: the shards hold token ids already.
        device_batch_size: samples per batch on each device.
        dataset: keyword arguments of ``DynamicStreamingDataset`` (with ``proportions``) or of
            ``DomainStreamingDataset`` (without), less ``batch_size`` and ``lookahead_batches``, which come
            from the loader settings.
        drop_last, num_workers, pin_memory, prefetch_factor, persistent_workers, timeout: as in ``DataLoader``
            (``prefetch_factor`` and ``persistent_workers`` only apply with workers).
    """
    del tokenizer
    if not isinstance(device_batch_size, int):
        raise ValueError(
            f'device_train_batch_size / device_eval_batch_size: dynamic_text needs a whole number of samples per '
            f'device, got {device_batch_size}',
        )
    dataset_config = dict(dataset)
    if 'proportions' in dataset_config:
        lookahead_batches = num_workers * (prefetch_factor or DEFAULT_PREFETCH_FACTOR) if num_workers else 0
        data = DynamicStreamingDataset(
            batch_size=device_batch_size, lookahead_batches=lookahead_batches, **dataset_config,
        )
    else:
        data = DomainStreamingDataset(batch_size=device_batch_size, **dataset_config)
    loader = DataLoader(
        data,
        batch_size=device_batch_size,
        collate_fn=collate_domain_batch,
        drop_last=drop_last,
        num_workers=num_workers,
        pin_memory=pin_memory,
        prefetch_factor=prefetch_factor if num_workers else None,
        persistent_workers=persistent_workers and num_workers > 0,
        timeout=timeout,
    )
    return DataSpec(dataloader=loader, get_num_tokens_in_batch=get_tokens_per_batch_func())
