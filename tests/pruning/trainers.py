"""A real Composer Trainer around a tiny model for the pruning tests, and the random samples it trains on."""

from __future__ import annotations

import copy

import torch
from composer import Trainer
from composer.core import Algorithm
from composer.metrics.nlp import LanguageCrossEntropy
from composer.models import HuggingFaceModel
from torch.utils.data import DataLoader

from tests.tiny_models import VOCAB_SIZE


def samples(count: int = 8, seed: int = 3) -> list[dict[str, torch.Tensor]]:
    """``count`` samples of 16 random tokens of the tiny models' vocabulary, labelled with themselves."""
    generator = torch.Generator().manual_seed(seed)
    return [
        {'input_ids': ids, 'labels': ids.clone()}
        for ids in torch.randint(0, VOCAB_SIZE, (count, 16), generator=generator)
    ]


def trainer_with(
    algorithm: Algorithm, source: torch.nn.Module, data: list[dict], num_batches: int = 1, lr: float = 0.0, **kwargs,
) -> Trainer:
    """A Trainer of a copy of ``source`` (``source`` stays as it is) with ``algorithm``: ``num_batches`` batches of 4
    of ``data`` under plain SGD at ``lr``, evaluated by the language-model cross-entropy; ``kwargs`` go to the
    Trainer."""
    model = HuggingFaceModel(copy.deepcopy(source), use_logits=True, eval_metrics=[LanguageCrossEntropy()])
    return Trainer(
        model=model,
        train_dataloader=DataLoader(data, batch_size=4),
        optimizers=torch.optim.SGD(model.parameters(), lr=lr),
        max_duration=f'{num_batches}ba',
        algorithms=[algorithm],
        seed=0,
        progress_bar=False,
        log_to_console=False,
        **kwargs,
    )
