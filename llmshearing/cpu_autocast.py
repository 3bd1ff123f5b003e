"""``precision: amp_bf16`` on a CPU, where Composer trains only in fp32.

Composer refuses mixed precision on a CPU device ("not supported for CPU training"). On a machine without a GPU,
``with_cpu_autocast`` hands Composer ``precision: fp32`` and adds the ``cpu_autocast`` algorithm, which runs the
regions that Composer's own ``amp_bf16`` runs in bfloat16 on a GPU under ``torch.autocast('cpu', torch.bfloat16)``
(AMX or AVX-512 BF16 where the CPU has them): the training forward, the loss, the eval forward. Masks, the
Lagrangian, the distillation loss, the optimizer step and the weights stay in fp32, as on a GPU. So a recipe that
says ``amp_bf16`` computes the same on both.
"""

from __future__ import annotations

import contextlib
import logging

import torch
from composer.core import Algorithm, Event, Precision, State
from composer.core.precision import get_precision_context
from composer.loggers import Logger
from omegaconf import DictConfig

log = logging.getLogger(__name__)

NAME = 'cpu_autocast'
"""The algorithm's name in ``algorithms:`` (its llm-foundry registry entry)."""
ENTER_EVENTS = (Event.BEFORE_FORWARD, Event.BEFORE_LOSS, Event.EVAL_BEFORE_FORWARD)
EXIT_EVENTS = (Event.AFTER_FORWARD, Event.AFTER_LOSS, Event.EVAL_AFTER_FORWARD)


class CPUAutocast(Algorithm):
    """Autocast the forward, the loss and the eval forward to bfloat16 on the CPU (Composer's ``amp_bf16`` regions)."""

    def __init__(self) -> None:
        self._autocast: torch.autocast | None = None

    def __repr__(self) -> str:
        return f'{type(self).__name__}()'

    def match(self, event: Event, state: State) -> bool:
        return event in ENTER_EVENTS or event in EXIT_EVENTS

    def apply(self, event: Event, state: State, logger: Logger) -> None:
        if event in ENTER_EVENTS:
            self._autocast = torch.autocast('cpu', dtype=torch.bfloat16)
            self._autocast.__enter__()
        elif self._autocast is not None:
            self._autocast.__exit__(None, None, None)
            self._autocast = None


def with_cpu_autocast(config: DictConfig) -> DictConfig:
    """On a machine without a GPU, a config with ``precision: amp_bf16`` as Composer can run it: ``precision: fp32``
    and the ``cpu_autocast`` algorithm. Any other config, or any config on a GPU machine, is returned unchanged."""
    if config.get('precision') != Precision.AMP_BF16.value or torch.cuda.is_available():
        return config
    config.precision = Precision.FP32.value
    if config.get('algorithms') is None:
        config.algorithms = {}
    config.algorithms[NAME] = {}
    log.info('precision amp_bf16 on a CPU: Composer runs in fp32 and %s autocasts the forward and loss to bf16', NAME)
    return config


def _autocasts_on_cpu(state: State) -> bool:
    return any(isinstance(algorithm, CPUAutocast) for algorithm in state.algorithms)


def forward_precision(state: State) -> Precision:
    """The precision the run's forward passes compute in: ``amp_bf16`` under ``cpu_autocast``, else the run's."""
    return Precision.AMP_BF16 if _autocasts_on_cpu(state) else Precision(state.precision)


def forward_precision_context(state: State) -> contextlib.AbstractContextManager:
    """The context for a forward pass outside Composer's own (a teacher's): the one Composer's forward runs in."""
    if _autocasts_on_cpu(state):
        return torch.autocast('cpu', dtype=torch.bfloat16)
    return get_precision_context(state.precision, state.precision_config)
