"""The ``shearing`` Composer algorithm: targeted structured pruning during training.

``apply_shearing`` is the functional form (masks in, parameter groups added); ``Shearing`` only decides
*when*: attach at INIT, add the Lagrangian to every microbatch loss, clamp and log after each batch.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from composer.core import Algorithm, Event, State, Time, TimeUnit
from composer.loggers import Logger
from composer.utils import dist
from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel
from transformers import PreTrainedModel

from llmshearing.choices import DEFAULT_IMPORTANCE, DEFAULT_WEIGHT_DTYPE, IMPORTANCE_METHODS, WEIGHT_DTYPES
from llmshearing.pruning.export import write_pruned_model
from llmshearing.pruning.importance import importance_scores, mask_kind_scores
from llmshearing.pruning.l0_module import L0Module
from llmshearing.pruning.llama_layout import attach_masks

log = logging.getLogger(__name__)

INITS = ('all_kept', 'uniform', 'importance')
DEFAULT_INIT_SCALE = 16.0


def _add_param_group(optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter], lr: float) -> None:
    group: dict[str, Any] = {'params': params, 'lr': lr, 'weight_decay': 0.0}
    if any('initial_lr' in existing for existing in optimizer.param_groups):
        group['initial_lr'] = lr  # Composer's decoupled optimizers scale weight decay by lr / initial_lr.
    optimizer.add_param_group(group)


def calibration_samples(dataset: Any, num_batches: int, batch_size: int = 4) -> list[torch.Tensor]:
    """``num_batches`` batches of token ids spread evenly over a dataset whose items carry ``input_ids``."""
    count = num_batches * batch_size
    indices = [round(position * (len(dataset) - 1) / max(count - 1, 1)) for position in range(count)]
    samples = torch.stack([torch.as_tensor(dataset[index]['input_ids']) for index in indices])
    return list(samples.split(batch_size))


def read_importance_file(path: Path, l0_module: L0Module) -> dict[str, torch.Tensor]:
    """The per-kind scores of an ``importance.json`` (``llmshearing prune-oneshot``), checked against the masks."""
    written = json.loads(path.read_text())
    shape = vars(l0_module.final_shape())
    if written.get('pruning_modules') != list(l0_module.pruning_modules) or written.get('final_shape') != shape:
        raise ValueError(
            f'algorithms.shearing.importance_file: {path} was written for pruning modules '
            f'{written.get("pruning_modules")} and shape {written.get("final_shape")}; this run prunes '
            f'{list(l0_module.pruning_modules)} to {shape}',
        )
    return {kind: torch.tensor(scores) for kind, scores in written['scores'].items()}


def apply_shearing(
    model: PreTrainedModel,
    optimizers: torch.optim.Optimizer | Sequence[torch.optim.Optimizer] | None = None,
    target: Mapping[str, int] | None = None,
    pruning_modules: Sequence[str] | None = None,
    target_sparsity: float | None = None,
    lag_lr: float = 1.0,
    droprate_init: float = 0.5,
    eval_target_shape: bool = True,
) -> L0Module:
    """Attach L0 masks to ``model`` and give the optimizer their logits and multipliers at ``lag_lr``; ``None``
    pruning modules are the source's ``default_pruning_modules``.

    The multipliers enter the Lagrangian through a gradient reversal, so the same descent step that
    shrinks the masks' Lagrangian grows it in the multipliers (gradient ascent).
    """
    l0_module = attach_masks(model, target, pruning_modules, target_sparsity, droprate_init, eval_target_shape)
    if optimizers is not None:
        optimizer = optimizers if isinstance(optimizers, torch.optim.Optimizer) else optimizers[0]
        _add_param_group(optimizer, list(l0_module.masks.parameters()), lag_lr)
        _add_param_group(optimizer, list(l0_module.lambdas.parameters()), lag_lr)
    return l0_module


@contextlib.contextmanager
def _unsharded(modules: Sequence[FSDPModule]) -> Iterator[None]:
    """Inside the block, the FSDP2 ``modules`` hold their whole parameters (gathered on every rank)."""
    for module in modules:
        module.unshard()
    try:
        yield
    finally:
        for module in modules:
            module.reshard()


class Shearing(Algorithm):
    """Learn which layers, heads, MLP channels and hidden dimensions to keep, jointly with the weights.

    Args:
        target: the target shape in HF config names (missing fields keep the source's size).
        pruning_modules: mask kinds among ``layer``, ``head``, ``kv_head``, ``intermediate``, ``hidden`` (default:
            every kind the source has, ``kv_head`` only with grouped-query attention).
        target_sparsity: instead of ``target``, the fraction of non-embedding parameters to remove.
        lagrangian_warmup: time over which the target sparsity rises linearly from 0 (e.g. ``'640ba'``).
        lag_lr: learning rate of the mask logits and the Lagrange multipliers.
        droprate_init: initial drop probability of every gate with ``init: uniform``.
        init: how the mask logits start: ``all_kept`` (every gate at log-alpha 5, clamped to ln 100, so kept in
            practically every sample: the start of the original LLM-Shearing code and of the released
            Sheared-LLaMA runs), ``uniform`` (every gate at ``droprate_init``; 0.5 is CoFiPruning's start and the
            value the original code computes before overriding it) or ``importance`` (ranked by one-shot
            importance of the source, so that the deterministic masks start as the one-shot selection; computed
            on the first training batches of a fresh run, or read from ``importance_file``).
        importance_method: ``activation``, ``taylor`` or ``magnitude`` (see ``llmshearing.pruning.importance``).
        importance_file: an ``importance.json`` written by ``llmshearing prune-oneshot`` for the same source,
            target and pruning modules (needed with FSDP).
        calibration_batches: training batches the importance is computed on.
        init_scale: log-alpha spread of ``importance``: rank ``k`` of ``n`` with ``m`` kept starts at
            ``init_scale * (m - 0.5 - k) / n`` (clamped to the log-alpha range).
        eval_target_shape: evaluate with the deterministic masks of the target shape (else of the shape the
            masks keep in expectation at that point).
        export_dir: when training ends, write the pruned Hugging Face model (and the tokenizer) here.
        export_dtype: weight dtype of that model: ``bf16``, ``fp16`` or ``fp32``.
    """

    def __init__(
        self,
        target: Mapping[str, int] | None = None,
        pruning_modules: Sequence[str] | None = None,
        target_sparsity: float | None = None,
        lagrangian_warmup: str | Time = '0ba',
        lag_lr: float = 1.0,
        droprate_init: float = 0.5,
        eval_target_shape: bool = True,
        export_dir: str | None = None,
        export_dtype: str = DEFAULT_WEIGHT_DTYPE,
        init: str = 'all_kept',
        importance_method: str = DEFAULT_IMPORTANCE,
        importance_file: str | None = None,
        calibration_batches: int = 4,
        init_scale: float = DEFAULT_INIT_SCALE,
    ):
        if export_dtype not in WEIGHT_DTYPES:
            raise ValueError(
                f'algorithms.shearing.export_dtype must be one of {sorted(WEIGHT_DTYPES)}, got {export_dtype!r}',
            )
        self.target = dict(target) if target is not None else None
        self.pruning_modules = None if pruning_modules is None else list(pruning_modules)
        self.target_sparsity = target_sparsity
        try:
            self.lagrangian_warmup = Time.from_input(lagrangian_warmup, TimeUnit.BATCH)
        except (ValueError, TypeError) as error:
            raise ValueError(f'algorithms.shearing.lagrangian_warmup: {error}') from error
        if lag_lr <= 0:
            raise ValueError(f'algorithms.shearing.lag_lr must be positive, got {lag_lr}')
        self.lag_lr = lag_lr
        self.droprate_init = droprate_init
        self.eval_target_shape = eval_target_shape
        self.export_dir = None if export_dir is None else Path(export_dir)
        self.export_dtype = export_dtype
        if init not in INITS:
            raise ValueError(f'algorithms.shearing.init must be one of {list(INITS)}, got {init!r}')
        if importance_method not in IMPORTANCE_METHODS:
            raise ValueError(
                f'algorithms.shearing.importance_method must be one of {list(IMPORTANCE_METHODS)}, '
                f'got {importance_method!r}',
            )
        if init == 'importance' and target is None:
            raise ValueError(
                'algorithms.shearing.init: importance needs algorithms.shearing.target (not target_sparsity)'
            )
        if importance_file is not None and not Path(importance_file).is_file():
            raise FileNotFoundError(f'algorithms.shearing.importance_file: {importance_file} does not exist')
        if calibration_batches < 1:
            raise ValueError(f'algorithms.shearing.calibration_batches must be at least 1, got {calibration_batches}')
        if init_scale <= 0:
            raise ValueError(f'algorithms.shearing.init_scale must be positive, got {init_scale}')
        self.init = init
        self.importance_method = importance_method
        self.importance_file = None if importance_file is None else Path(importance_file)
        self.calibration_batches = calibration_batches
        self.init_scale = init_scale
        self.l0_module: L0Module | None = None
        self.hf_model: PreTrainedModel | None = None
        self._microbatch_index = 0
        self._batch_metric_names: tuple[str, ...] = ()
        self._batch_metric_values: torch.Tensor | None = None

    def mask_config(self) -> dict[str, Any]:
        """What shapes the masks: saved in checkpoints, where ``llmshearing export`` reads it back."""
        return {
            'target': self.target,
            'pruning_modules': self.pruning_modules,
            'target_sparsity': self.target_sparsity,
            'droprate_init': self.droprate_init,
            'eval_target_shape': self.eval_target_shape,
        }

    def __repr__(self) -> str:
        settings = self.mask_config() | {'lagrangian_warmup': str(self.lagrangian_warmup), 'lag_lr': self.lag_lr}
        return f'{type(self).__name__}(' + ', '.join(f'{key}={value!r}' for key, value in settings.items()) + ')'

    def state_dict(self) -> dict[str, Any]:
        return super().state_dict() | {'mask_config': self.mask_config()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get('mask_config', {})
        for key in ('target', 'pruning_modules', 'target_sparsity'):
            if key in saved and saved[key] != self.mask_config()[key]:
                raise ValueError(
                    f'algorithms.shearing.{key}={self.mask_config()[key]!r} '
                    f"differs from the checkpoint's {saved[key]!r}",
                )

    def match(self, event: Event, state: State) -> bool:
        return event in (Event.INIT, Event.BATCH_START, Event.BEFORE_FORWARD, Event.AFTER_LOSS, Event.BATCH_END) or (
            event == Event.FIT_END and self.export_dir is not None
        ) or (event == Event.AFTER_LOAD and self.init == 'importance')

    def apply(self, event: Event, state: State, logger: Logger) -> None:
        if event == Event.INIT:
            self._check_parallelism(state)
            self._check_export_dir()
            self.hf_model = state.model.model
            self.l0_module = apply_shearing(
                self.hf_model,
                state.optimizers,
                self.target,
                self.pruning_modules,
                self.target_sparsity,
                self.lag_lr,
                self.droprate_init,
                self.eval_target_shape,
            )
            self.l0_module.generator = torch.Generator(self.l0_module.device)
            self.pruning_modules = self.l0_module.pruning_modules
            log.info('Pruning %s to %s', self.l0_module.source, self.l0_module.final_shape())
            if self.init == 'all_kept':
                self.l0_module.init_all_kept()
            elif self.init == 'importance' and self.importance_file is not None:
                self.l0_module.init_from_scores(
                    read_importance_file(self.importance_file, self.l0_module), self.init_scale
                )
        elif event == Event.AFTER_LOAD:
            if int(state.timestamp.batch) == 0 and self.importance_file is None:
                self._init_from_training_batches(state)
        elif event == Event.BATCH_START:
            self._microbatch_index = 0
        elif event == Event.BEFORE_FORWARD:
            self.l0_module.generator.manual_seed(self.mask_seed(state))
            self._microbatch_index += 1
        elif event == Event.AFTER_LOSS:
            progress = self.warmup_progress(state)
            lagrangian = self.l0_module.lagrangian(progress)
            language_model_loss = state.loss['total'] if isinstance(state.loss, dict) else state.loss
            state.loss = {
                'total': language_model_loss + lagrangian,
                'lm': language_model_loss,
                'lagrangian': lagrangian,
            }
            # Here, right after the forward, FSDP still holds the masks unsharded.
            metrics = self.metrics(progress)
            self._batch_metric_names, self._batch_metric_values = tuple(metrics), torch.stack(list(metrics.values()))
        elif event == Event.BATCH_END:
            self.l0_module.constrain_parameters()
            logger.log_metrics(dict(zip(self._batch_metric_names, self._batch_metric_values.tolist())))
        elif event == Event.FIT_END:
            self.export(state)

    def export(self, state: State) -> None:
        """Write the pruned model to ``export_dir`` (rank 0, with FSDP-sharded weights gathered: every rank takes
        part in FSDP1's ``summon_full_params`` or FSDP2's ``unshard``)."""
        if any(isinstance(module, FullyShardedDataParallel) for module in state.model.modules()):
            gathered = FullyShardedDataParallel.summon_full_params(
                state.model, writeback=False, rank0_only=True, offload_to_cpu=True
            )
        else:
            gathered = _unsharded([module for module in state.model.modules() if isinstance(module, FSDPModule)])
        with gathered:
            if dist.get_global_rank() == 0:
                write_pruned_model(self.hf_model, state.model.tokenizer, self.export_dir, self.export_dtype)
        dist.barrier()

    def _init_from_training_batches(self, state: State) -> None:
        """Importance-initialise the masks of a fresh run from its first training samples (rank 0, broadcast).
        A resumed run keeps the log-alphas its checkpoint holds."""
        if dist.get_global_rank() == 0:
            batches = calibration_samples(state.train_dataloader.dataset, self.calibration_batches)
            with self.l0_module.bypass():
                scores = importance_scores(self.hf_model, self.importance_method, batches)
            kind_scores = [mask_kind_scores(self.l0_module, scores)]
        else:
            kind_scores = [None]
        dist.broadcast_object_list(kind_scores, src=0)
        self.l0_module.init_from_scores(kind_scores[0], self.init_scale)
        self.hf_model.zero_grad(set_to_none=True)
        log.info(
            'Mask logits initialised from %s importance on %d batches', self.importance_method, self.calibration_batches
        )

    def _check_export_dir(self) -> None:
        if self.export_dir is not None and self.export_dir.is_dir() and any(self.export_dir.iterdir()):
            raise FileExistsError(f'algorithms.shearing.export_dir: {self.export_dir} already holds files')

    def mask_seed(self, state: State) -> int:
        """Seed of the mask sample of the coming microbatch: a function of the run's seed, the rank, the batch and
        the microbatch, so that a resumed run draws exactly what the uninterrupted run draws."""
        key = (state.rank_zero_seed, dist.get_global_rank(), int(state.timestamp.batch), self._microbatch_index)
        return hash(key) & ((1 << 63) - 1)

    def warmup_progress(self, state: State) -> float:
        """How far the target sparsity has warmed up, from 0 to 1."""
        if self.lagrangian_warmup.value == 0:
            return 1.0
        if self.lagrangian_warmup.unit == TimeUnit.DURATION:
            elapsed = state.get_elapsed_duration()
            return 1.0 if elapsed is None else elapsed.value / self.lagrangian_warmup.value
        return state.timestamp.get(self.lagrangian_warmup.unit).value / self.lagrangian_warmup.value

    @torch.no_grad()
    def metrics(self, progress: float) -> dict[str, torch.Tensor]:
        """Expected and target sparsity per constraint, expected parameters, multipliers and the Lagrangian."""
        l0_module = self.l0_module
        metrics = {
            'shearing/expected_num_params': l0_module.expected_num_params(),
            'shearing/lagrangian': l0_module.lagrangian(progress),
        }
        for name, sparsity in l0_module.expected_sparsities().items():
            metrics[f'shearing/expected_sparsity/{name}'] = sparsity.mean()
        for name, sparsity in l0_module.target_sparsities(progress).items():
            metrics[f'shearing/target_sparsity/{name}'] = torch.tensor(sparsity, device=l0_module.device)
        for name, lambdas in l0_module.lambdas.items():
            metrics[f'shearing/lambda_1/{name}'] = lambdas[0]
            metrics[f'shearing/lambda_2/{name}'] = lambdas[1]
        return {name: value.float() for name, value in metrics.items()}

    def _check_parallelism(self, state: State) -> None:
        fsdp = state.fsdp_config
        if fsdp is None:
            return
        if self.init == 'importance' and self.importance_file is None:
            raise ValueError(
                'algorithms.shearing.importance_file is needed with FSDP and init: importance (the model is sharded '
                'before the first batch): write one with llmshearing prune-oneshot',
            )
        if not getattr(fsdp, 'use_orig_params', True):
            raise ValueError('fsdp_config.use_orig_params must be true: the masks are a separate parameter group')
        if getattr(fsdp, 'activation_checkpointing', False) and getattr(
            fsdp, 'activation_checkpointing_reentrant', False
        ):
            raise ValueError(
                'fsdp_config.activation_checkpointing_reentrant must be false: reentrant checkpointing drops the '
                'gradients of the masks, which enter each layer from outside',
            )
