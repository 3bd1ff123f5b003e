"""The ``dynamic_loading`` callback: after each evaluation, give more training data to the domains whose
eval loss lags furthest behind a reference (Sheared-LLaMA's dynamic batch loading).

``domain_loss_sums`` and ``doremi_update`` hold the math; ``DynamicLoading`` decides when: it sums each
domain's token losses over the eval batches, reduces them over ranks after all evaluators ran, updates
the proportions and hands them to the training dataset. The token losses are those the evaluation computes
anyway: on its per-domain evaluators the callback puts ``DomainCrossEntropy`` (logged as
``LanguageCrossEntropy``, the same value) in place of llm-foundry's cross-entropy and perplexity metrics, so that
an eval batch computes the full-vocabulary cross-entropy once. ``final_domain_weights`` reads the proportions a
run ended with, so that continued pre-training can start from those pruning ended with.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Sequence
from numbers import Real
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from composer.core import Callback, DataSpec, Evaluator, State
from composer.loggers import Logger
from composer.metrics.nlp import LanguageCrossEntropy
from composer.utils import dist
from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys
from torch.utils.data import DataLoader, Dataset

from llmshearing.data.dynamic_dataset import DomainStreamingDataset, DynamicStreamingDataset, validate_proportions
from llmshearing.metrics import DomainCrossEntropy, SampleLosses
from llmshearing.pruning.export import is_sharded_checkpoint, resolve_checkpoint

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
EXCESS_LOSSES = ('clipped', 'raw')
UPDATES = ('doremi', 'constant')
INITIAL_PROPORTIONS_KEY = 'callbacks.dynamic_loading.initial_proportions'
EVAL_LOSS_KEY = (
    'LanguageCrossEntropy'  # the name under which Composer logs the eval loss: metrics/eval/LanguageCrossEntropy
)


def next_token_targets(labels: torch.Tensor) -> torch.Tensor:
    """``[batch, seq_len]``: the label each position predicts (``labels[:, t + 1]``), ``-100`` at the last one."""
    return F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)


def domain_loss_sums(sample_losses: Sequence[SampleLosses], num_domains: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per domain, the summed next-token cross-entropy and the number of predicted tokens (float64, on the CPU),
    from ``DomainCrossEntropy``'s per-sample losses."""
    loss_sums = torch.zeros(num_domains, dtype=torch.float64)
    token_counts = torch.zeros(num_domains, dtype=torch.float64)
    for losses in sample_losses:
        domains = losses.domains.cpu()
        loss_sums.index_add_(0, domains, losses.loss_sums.cpu())
        token_counts.index_add_(0, domains, losses.token_counts.cpu())
    return loss_sums, token_counts


def final_domain_weights(run: str | os.PathLike) -> dict[str, float]:
    """The training domain proportions a run with ``dynamic_text`` data ended with, by domain name.

    Args:
        run: the run's output folder or save folder (its latest checkpoint is read), or one of its checkpoints:
            a monolithic file, memory-mapped, or a sharded folder, of which only the data state is read.
    """
    run = Path(run)
    try:
        checkpoint = resolve_checkpoint(run / 'checkpoints' if (run / 'checkpoints').is_dir() else run)
    except FileNotFoundError as error:
        raise FileNotFoundError(f'{INITIAL_PROPORTIONS_KEY}: {error}') from error
    if is_sharded_checkpoint(checkpoint):
        with warnings.catch_warnings():
            warnings.filterwarnings('ignore', 'torch.distributed is unavailable or uninitialized')  # one process reads
            state = _load_state_dict_from_keys({'state.dataset_state'}, checkpoint_id=str(checkpoint)).get('state', {})
    else:
        state = torch.load(checkpoint, map_location='cpu', mmap=True, weights_only=False)['state']
    train_state = state.get('dataset_state', {}).get('train')
    if not isinstance(train_state, dict) or 'schedule' not in train_state:
        raise ValueError(
            f'{INITIAL_PROPORTIONS_KEY}: {checkpoint} has no domain proportions: its run did not train on a '
            f'dynamic_text train_loader',
        )
    _, proportions = train_state['schedule'][-1]
    return dict(zip(train_state['domains'], (float(value) for value in proportions)))


def doremi_update(
    proportions: Sequence[float],
    losses: Sequence[float],
    references: Sequence[float],
    eta: float,
    smoothing: float,
    excess: str = 'clipped',
    max_step: float | None = None,
) -> np.ndarray:
    """α ← (1 − c)·softmax(log α + s) + c / k, with c = ``smoothing``, k domains, the log-weight step s = η·Δ and
    the excess loss Δ = max(ℓ − ℓ_ref, 0) (``excess='clipped'``) or ℓ − ℓ_ref (``excess='raw'``).

    ``max_step`` b bounds the step: s is centred and clipped before the softmax,
    α ← (1 − c)·softmax(log α + clip(s − mean(s), −b, b)) + c / k,
    so that one update multiplies any two domains' weight ratio (before the uniform mix) by a factor between
    e^(−2b) and e^(2b); centring alone changes nothing (softmax is shift-invariant). ``None`` leaves s as it is:
    the paper's update."""
    excess_loss = np.asarray(losses, np.float64) - np.asarray(references, np.float64)
    if excess == 'clipped':
        excess_loss = np.maximum(excess_loss, 0.0)
    step = eta * excess_loss
    if max_step is not None:
        step = np.clip(step - step.mean(), -max_step, max_step)
    with np.errstate(divide='ignore'):
        logits = np.log(np.asarray(proportions, np.float64)) + step
    weights = np.exp(logits - logits.max())
    weights /= weights.sum()
    return (1 - smoothing) * weights + smoothing / len(weights)


class DynamicLoading(Callback):
    """Re-weight the training domains after every evaluation from the per-domain eval losses.

    Needs a ``dynamic_text`` train loader with ``proportions`` and at least one ``dynamic_text`` eval loader
    over the same ``domains``; checks them as soon as the Trainer has them. Every evaluation (periodic, or
    ``eval_first``) updates the proportions, which apply to the training samples the DataLoaders have not
    prepared yet, on every rank.

    The per-domain losses come from the evaluation's own loss: on those evaluators the callback replaces
    ``LanguageCrossEntropy`` and ``LanguagePerplexity`` by one ``DomainCrossEntropy`` logged as
    ``metrics/<label>/LanguageCrossEntropy`` (perplexity is its ``exp`` and is not logged there).

    Args:
        reference: each domain's reference loss, in the order of the data's ``domains``, or ``'initial'``:
            the model's own per-domain eval losses at the first evaluation (set ``eval_first: true`` to take
            them before any training step).
        update: ``'doremi'`` (α ← (1 − c)·softmax(log α + η·Δ) + c / k, Δ the ``excess`` loss, the step bounded by
            ``max_step`` if set) or ``'constant'`` (keep the initial proportions; the losses are still logged).
        eta: the step size η of the ``doremi`` update.
        excess: the excess loss of the ``doremi`` update: ``'clipped'`` (max(ℓ − ℓ_ref, 0), the paper's Algorithm 1:
            a domain below its reference keeps its weight relative to the others that are) or ``'raw'`` (ℓ − ℓ_ref,
            as the original LLM-Shearing code computes it: a domain below its reference loses weight).
        smoothing: the weight c of the uniform distribution mixed into the ``doremi`` update.
        max_step: a bound b > 0 on each ``doremi`` update, or ``None``: the paper's update. With b, the log-weight
            step s = η·Δ is centred and clipped before the softmax,
            α ← (1 − c)·softmax(log α + clip(s − mean(s), −b, b)) + c / k,
            so that one update multiplies any two domains' weight ratio (before the uniform mix) by a factor between
            e^(−2b) and e^(2b). For a model far above its references on every domain, as a heavily pruned small
            model is, whose unbounded update gives nearly all the data to one domain within a few evaluations.
        domains: the domain names this configuration expects, checked against the training data's.
        initial_proportions: the proportions to start from instead of the train loader's: one per domain, or a
            run to take them from, the proportions it ended with (``final_domain_weights``: its output folder, save
            folder or one of its checkpoints, monolithic or sharded), matched to this run's domains by name.
            Continued pre-training uses it to start from the domain weights pruning ended with. A resumed run keeps
            its checkpoint's proportions.
    """

    def __init__(
        self,
        reference: Sequence[float] | str = 'initial',
        update: str = 'doremi',
        eta: float = 1.0,
        smoothing: float = 1e-4,
        excess: str = 'clipped',
        max_step: float | None = None,
        domains: Sequence[str] | None = None,
        initial_proportions: Sequence[float] | str | os.PathLike | None = None,
    ):
        if update not in UPDATES:
            raise ValueError(f'callbacks.dynamic_loading.update must be one of {list(UPDATES)}, got {update!r}')
        if not eta >= 0:
            raise ValueError(f'callbacks.dynamic_loading.eta must be non-negative, got {eta}')
        if excess not in EXCESS_LOSSES:
            raise ValueError(f'callbacks.dynamic_loading.excess must be one of {list(EXCESS_LOSSES)}, got {excess!r}')
        if not 0 <= smoothing <= 1:
            raise ValueError(f'callbacks.dynamic_loading.smoothing must be in [0, 1], got {smoothing}')
        if max_step is not None and not (
            isinstance(max_step, Real) and not isinstance(max_step, bool) and 0 < max_step < math.inf
        ):
            raise ValueError(
                f'callbacks.dynamic_loading.max_step must be a positive finite number or null, got {max_step!r}',
            )
        if isinstance(reference, str):
            if reference != 'initial':
                raise ValueError(
                    f"callbacks.dynamic_loading.reference must be 'initial' or a list of losses, got {reference!r}",
                )
            self.references: tuple[float, ...] | None = None
        else:
            self.references = tuple(float(loss) for loss in reference)
            if not all(np.isfinite(self.references)):
                raise ValueError(f'callbacks.dynamic_loading.reference must be finite losses, got {list(reference)}')
        self.update = update
        self.eta = eta
        self.smoothing = smoothing
        self.excess = excess
        self.max_step = None if max_step is None else float(max_step)
        self.expected_domains = None if domains is None else tuple(domains)
        self.initial_proportions: dict[str, float] | tuple[float, ...] | None = None
        self._initial_run: str | None = None
        if isinstance(initial_proportions, (str, os.PathLike)):
            self.initial_proportions = final_domain_weights(initial_proportions)
            self._initial_run = str(initial_proportions)
        elif initial_proportions is not None:
            self.initial_proportions = _checked_proportions(initial_proportions, len(initial_proportions))
        self.proportions: tuple[float, ...] | None = None
        self._dataset: DynamicStreamingDataset | None = None
        self._eval_labels: set[str] = set()
        self._loss_sums: torch.Tensor | None = None
        self._token_counts: torch.Tensor | None = None

    def after_load(self, state: State, logger: Logger) -> None:
        """Attach as soon as the Trainer has its loaders, before an ``eval_first`` evaluation."""
        if state.train_dataloader is not None:
            self._attach(state)

    def fit_start(self, state: State, logger: Logger) -> None:
        self._attach(state)

    def eval_before_all(self, state: State, logger: Logger) -> None:
        self._start_evaluation()

    def eval_standalone_start(self, state: State, logger: Logger) -> None:
        self._start_evaluation()

    def eval_start(self, state: State, logger: Logger) -> None:
        # Before the eval loop moves its metrics to the device and resets them; evaluators passed to
        # Trainer.eval get theirs here too.
        if state.dataloader_label in self._eval_labels:
            _compute_loss_once(state.eval_metrics[state.dataloader_label])

    def eval_batch_end(self, state: State, logger: Logger) -> None:
        if self._loss_sums is None or state.dataloader_label not in self._eval_labels:
            return
        metric = state.eval_metrics[state.dataloader_label][EVAL_LOSS_KEY]
        loss_sums, token_counts = domain_loss_sums(metric.take_sample_losses(), len(self._dataset.domains))
        self._loss_sums += loss_sums
        self._token_counts += token_counts

    def eval_after_all(self, state: State, logger: Logger) -> None:
        self._finish_evaluation(state, logger)

    def eval_standalone_end(self, state: State, logger: Logger) -> None:
        self._finish_evaluation(state, logger)

    def state_dict(self) -> dict[str, Any]:
        return {
            'references': None if self.references is None else list(self.references),
            'proportions': None if self.proportions is None else list(self.proportions),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.references = None if state['references'] is None else tuple(state['references'])
        self.proportions = None if state['proportions'] is None else tuple(state['proportions'])

    def _attach(self, state: State) -> None:
        """Find the training dataset and the per-domain evaluators; check them against the configuration."""
        dataset = _dataset_of(state.train_dataloader)
        if not isinstance(dataset, DynamicStreamingDataset):
            raise ValueError(
                'callbacks.dynamic_loading needs a train_loader of name dynamic_text with dataset.proportions',
            )
        domains = dataset.domains
        if self.expected_domains is not None and self.expected_domains != domains:
            raise ValueError(
                f'callbacks.dynamic_loading.domains: {list(self.expected_domains)} do not match the training '
                f'data\'s domains {list(domains)}',
            )
        if self.references is not None and len(self.references) != len(domains):
            raise ValueError(
                f'callbacks.dynamic_loading.reference: expected {len(domains)} losses, one per domain '
                f'{list(domains)}, got {len(self.references)}',
            )
        self._eval_labels = set()
        for evaluator in state.evaluators:
            eval_dataset = _dataset_of(evaluator.dataloader)
            if isinstance(eval_dataset, DomainStreamingDataset):
                if eval_dataset.domains != domains:
                    raise ValueError(
                        f'eval_loader.dataset.domains: {list(eval_dataset.domains)} do not match the training '
                        f'data\'s domains {list(domains)}',
                    )
                self._eval_labels.add(evaluator.label)
        if not self._eval_labels:
            raise ValueError(
                'callbacks.dynamic_loading needs an eval_loader of name dynamic_text, for the per-domain losses',
            )
        self._dataset = dataset
        if self.proportions is None:
            if self.initial_proportions is not None:
                dataset.set_initial_proportions(self._initial_proportions_of(domains))
                if self._initial_run is not None:
                    log.info('dynamic_loading starts from the domain proportions %s ended with', self._initial_run)
            self.proportions = dataset.proportions

    def _initial_proportions_of(self, domains: tuple[str, ...]) -> tuple[float, ...]:
        """``initial_proportions`` in the order of ``domains``."""
        if isinstance(self.initial_proportions, dict):
            if set(self.initial_proportions) != set(domains):
                raise ValueError(
                    f'{INITIAL_PROPORTIONS_KEY}: {self._initial_run} has the domains '
                    f'{list(self.initial_proportions)}, the training data {list(domains)}',
                )
            return tuple(self.initial_proportions[name] for name in domains)
        return _checked_proportions(self.initial_proportions, len(domains))

    def _start_evaluation(self) -> None:
        if self._dataset is None:
            return
        num_domains = len(self._dataset.domains)
        self._loss_sums = torch.zeros(num_domains, dtype=torch.float64)
        self._token_counts = torch.zeros(num_domains, dtype=torch.float64)

    def _finish_evaluation(self, state: State, logger: Logger) -> None:
        """Reduce the losses over ranks, update the proportions, hand them to the training data, log."""
        if self._loss_sums is None:
            return
        totals = state.device.tensor_to_device(torch.stack([self._loss_sums, self._token_counts]))
        self._loss_sums = self._token_counts = None
        dist.all_reduce(totals, reduce_operation='SUM')
        loss_sums, token_counts = totals.cpu().numpy()
        if not token_counts.any():
            return
        domains = self._dataset.domains
        missing = [name for name, count in zip(domains, token_counts) if not count]
        if missing:
            raise RuntimeError(
                f'dynamic_loading: this evaluation has no tokens of the domains {missing}, so their loss is '
                f'undefined: evaluate more batches (eval_subset_num_batches) so that every domain is in them',
            )
        losses = loss_sums / token_counts
        if self.references is None:
            self.references = tuple(losses.tolist())
            log.info('Reference losses (initial): %s', dict(zip(domains, self.references)))
        if self.update == 'doremi':
            proportions = torch.from_numpy(
                doremi_update(
                    self.proportions, losses, self.references, self.eta, self.smoothing, self.excess,
                    max_step=self.max_step,
                ),
            )
            proportions = state.device.tensor_to_device(proportions)
            dist.broadcast(proportions, src=0)
            self.proportions = tuple(proportions.cpu().tolist())
            self._dataset.set_proportions(self.proportions, samples_seen=int(state.timestamp.sample))
        metrics = {}
        for name, loss, reference, proportion in zip(domains, losses, self.references, self.proportions):
            metrics[f'dynamic_loading/loss/{name}'] = float(loss)
            metrics[f'dynamic_loading/reference/{name}'] = reference
            metrics[f'dynamic_loading/proportion/{name}'] = proportion
        logger.log_metrics(metrics)


def _compute_loss_once(metrics: dict[str, Any]) -> None:
    """Replace an evaluator's cross-entropy metrics (llm-foundry's ``LanguageCrossEntropy`` and
    ``LanguagePerplexity``) by one ``DomainCrossEntropy``, logged as ``LanguageCrossEntropy``."""
    if isinstance(metrics.get(EVAL_LOSS_KEY), DomainCrossEntropy):
        return
    for name in [name for name, metric in metrics.items() if isinstance(metric, LanguageCrossEntropy)]:
        del metrics[name]
    metrics[EVAL_LOSS_KEY] = DomainCrossEntropy()


def _checked_proportions(proportions: Sequence[float], num_domains: int) -> tuple[float, ...]:
    try:
        return validate_proportions(proportions, num_domains)
    except ValueError as error:
        raise ValueError(f'{INITIAL_PROPORTIONS_KEY}: {str(error).removeprefix("proportions: ")}') from error


def _dataset_of(loader: Evaluator | DataSpec | DataLoader | None) -> Dataset | None:
    """The dataset behind an Evaluator, a DataSpec or a DataLoader (``None`` for other iterables)."""
    if isinstance(loader, Evaluator):
        loader = loader.dataloader
    if isinstance(loader, DataSpec):
        loader = loader.dataloader
    return loader.dataset if isinstance(loader, DataLoader) else None
