"""A callback for multi-process tests, loaded through llm-foundry's ``code_paths``: each rank writes what it
read and its pruning and data-mixing state to ``folder/rank{N}.json`` when training ends."""

from __future__ import annotations

import json
from pathlib import Path

from composer.core import Callback, State
from composer.loggers import Logger
from composer.utils import dist
from llmfoundry.registry import callbacks

from llmshearing.callbacks.dynamic_loading import DynamicLoading
from llmshearing.pruning import Shearing


class RecordRankState(Callback):
    def __init__(self, folder: str):
        self.folder = Path(folder)
        self.rows: list[list[int]] = []

    def before_forward(self, state: State, logger: Logger) -> None:
        self.rows.extend(state.batch['input_ids'].tolist())

    def fit_end(self, state: State, logger: Logger) -> None:
        shearing = next(a for a in state.algorithms if isinstance(a, Shearing))
        loading = next(c for c in state.callbacks if isinstance(c, DynamicLoading))
        record = {
            'rows': self.rows,
            'log_alpha': {name: mask.log_alpha.tolist() for name, mask in shearing.l0_module.masks.items()},
            'lambdas': {name: value.tolist() for name, value in shearing.l0_module.lambdas.items()},
            'proportions': list(loading.proportions),
        }
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / f'rank{dist.get_global_rank()}.json').write_text(json.dumps(record))


callbacks.register('record_rank_state', func=RecordRankState)
