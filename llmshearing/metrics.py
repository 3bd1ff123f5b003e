"""``DomainCrossEntropy``: the eval loss, computed once per batch, with each sample's share kept for the domains.

The ``dynamic_loading`` callback puts it on its per-domain evaluators in place of llm-foundry's
``LanguageCrossEntropy`` and ``LanguagePerplexity`` (which each compute the full-vocabulary cross-entropy again),
and turns the per-sample loss sums into per-domain sums after every eval batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from composer.metrics.nlp import LanguageCrossEntropy


class SampleLosses(NamedTuple):
    """One microbatch's next-token cross-entropy per sample: ``loss_sums`` and ``token_counts`` (float64,
    ``[batch]``) and each sample's ``domains`` index."""

    loss_sums: torch.Tensor
    token_counts: torch.Tensor
    domains: torch.Tensor


class DomainCrossEntropy(LanguageCrossEntropy):
    """``LanguageCrossEntropy`` (the mean next-token cross-entropy of the eval tokens, the same value; perplexity
    is its ``exp``) that also keeps each sample's loss sum and token count, for batches that carry a ``domain``.

    The per-sample losses collect in ``sample_losses`` until a reader takes them (``take_sample_losses``).
    """

    needs_batch = True

    def __init__(self, dist_sync_on_step: bool = False, ignore_index: int = -100):
        super().__init__(dist_sync_on_step=dist_sync_on_step, ignore_index=ignore_index)
        self.sample_losses: list[SampleLosses] = []

    def update(self, batch: Mapping[str, Any], outputs: Mapping | torch.Tensor, labels: torch.Tensor) -> None:
        """Add one batch: ``outputs`` (or ``outputs['logits']``) ``[batch, seq_len, vocab]``; ``labels`` the
        next-token targets ``[batch, seq_len]`` (the model's shifted labels), ``ignore_index`` where no loss is
        taken."""
        logits = outputs['logits'] if isinstance(outputs, Mapping) else outputs
        token_losses = F.cross_entropy(
            logits.flatten(0, 1).float(), labels.flatten(), ignore_index=self.ignore_index, reduction='none',
        ).view(labels.shape)
        token_counts = (labels != self.ignore_index).sum(dim=1)
        self.sum_loss += token_losses.sum()
        self.total_items += token_counts.sum()
        if 'domain' in batch:
            self.sample_losses.append(
                SampleLosses(token_losses.sum(dim=1).double(), token_counts.double(), batch['domain']),
            )

    def take_sample_losses(self) -> list[SampleLosses]:
        """The per-sample losses added since the last call, removed from the metric."""
        taken, self.sample_losses = self.sample_losses, []
        return taken

    def reset(self) -> None:
        super().reset()
        self.sample_losses = []
