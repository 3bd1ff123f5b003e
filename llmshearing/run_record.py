"""The run record: what determines a training run's result, kept with its checkpoints, so that autoresume never
silently continues a run with other settings.

On its first start a run writes ``run.json`` into its save folder: its kind (pruning, distillation, continued
pre-training, instruction tuning) and its resolved config less ``RESUMABLE_KEYS``, the settings a resume may change.
A later start with autoresume compares its own record with the folder's before anything heavy is built:

- another kind of run, or checkpoints without a record: an error saying so;
- other settings: an error naming each changed key (old → new), unless ``llmshearing.accept_changed_run: true``
  (then the old record is kept as ``run.N.json`` and the new one written);
- a checkpoint at or past ``max_duration`` (``check_not_finished``): ``RunFinished``, nothing to train.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from composer.core import Time, Timestamp, TimeUnit
from llmfoundry.command_utils import TrainConfig
from omegaconf import DictConfig
from omegaconf import OmegaConf as om

from llmshearing.checkpoints import CALLBACK_NAME, repair_checkpoint_folder
from llmshearing.preflight import FINETUNING_LOADER, local_save_folder
from llmshearing.pruning.export import LATEST_MONOLITHIC, latest_checkpoints

log = logging.getLogger(__name__)

RECORD_NAME = 'run.json'
OPTIONS_KEY = 'llmshearing'
"""This package's own top-level section of a training config (llm-foundry refuses unknown top-level keys, so
``pop_run_options`` takes it out before llm-foundry reads the config)."""
ACCEPT_CHANGED_RUN = 'accept_changed_run'
"""``llmshearing.accept_changed_run: true`` continues checkpoints whose record differs from this run's."""
RUN_OPTIONS = (ACCEPT_CHANGED_RUN,)

RESUMABLE_KEYS = (
    # labels, lengths and intervals
    'variables', 'run_name', 'max_duration', 'eval_interval', 'eval_first', 'console_log_interval',
    # where the run writes and how it saves and resumes
    'save_folder', 'save_filename', 'save_latest_filename', 'save_interval', 'save_num_checkpoints_to_keep',
    'save_overwrite', 'save_weights_only', 'save_ignore_keys', 'autoresume', 'load_path',
    # logging and progress
    'loggers', 'progress_bar', 'log_to_console', 'python_log_level', 'log_config', 'metadata',
    'callbacks.speed_monitor', 'callbacks.lr_monitor', 'callbacks.memory_monitor', 'callbacks.runtime_estimator',
    f'callbacks.{CALLBACK_NAME}',
    # how the work is spread over devices
    'device_train_microbatch_size', 'device_eval_batch_size', 'fsdp_config', 'dist_timeout', 'code_paths',
    # downstream evaluation, which never feeds back into training
    'icl_tasks', 'icl_seq_len', 'icl_subset_num_batches', 'eval_gauntlet',
    # this package's run options
    OPTIONS_KEY,
)
"""Keys (dotted: a key and everything under it) left out of the record: a resume may change them. Everything else
in the resolved config is recorded, including the model, tokenizer and data paths (a moved folder needs
``llmshearing.accept_changed_run``)."""

_SHORT = 40


class RunFinished(Exception):
    """The save folder's newest checkpoint is at or past ``max_duration``: nothing is left to train."""


def pop_run_options(config: DictConfig) -> dict[str, Any]:
    """Take ``llmshearing:`` out of ``config`` (llm-foundry refuses unknown top-level keys) and return it; a key
    that is not a run option is an error naming it."""
    options = config.pop(OPTIONS_KEY, None) or {}
    for key in options:
        if key not in RUN_OPTIONS:
            raise ValueError(f'{OPTIONS_KEY}.{key} is not a run option; the options are {", ".join(RUN_OPTIONS)}')
    return dict(options)


def run_kind(config: dict[str, Any]) -> str:
    """Which kind of run a resolved config trains; checkpoints of one kind cannot continue another."""
    if (config.get('train_loader') or {}).get('name') == FINETUNING_LOADER:
        return 'instruction tuning'
    algorithms = config.get('algorithms') or {}
    pruning, distillation = 'shearing' in algorithms, 'distillation' in algorithms
    if pruning:
        return 'pruning with distillation' if distillation else 'pruning'
    return 'continued pre-training with distillation' if distillation else 'continued pre-training'


def _flatten(value: Any, prefix: str = '') -> dict[str, Any]:
    if isinstance(value, dict) and value:
        return {key: leaf for name, child in value.items() for key, leaf in _flatten(child, f'{prefix}{name}.').items()}
    return {prefix[:-1]: value}


def _resumable(key: str) -> bool:
    return any(key == prefix or key.startswith(f'{prefix}.') for prefix in RESUMABLE_KEYS)


def run_record(config: DictConfig) -> dict[str, Any]:
    """The record of a training config: its kind and its resolved settings, as dotted keys, less ``RESUMABLE_KEYS``."""
    resolved = om.to_container(config, resolve=True)
    settings = {key: value for key, value in _flatten(resolved).items() if not _resumable(key)}
    return {'kind': run_kind(resolved), 'settings': dict(sorted(settings.items()))}


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= _SHORT else text[: _SHORT - 1] + '…'


def record_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Each setting that differs between two records, as ``key: old → new`` (long values shortened)."""
    absent = object()
    changes = []
    for key in sorted(old['settings'].keys() | new['settings'].keys()):
        before, after = old['settings'].get(key, absent), new['settings'].get(key, absent)
        if before != after:
            changes.append(
                f'{key}: {"(absent)" if before is absent else _short(before)} → '
                f'{"(absent)" if after is absent else _short(after)}',
            )
    return changes


def _write_record(folder: Path, record: dict[str, Any]) -> None:
    """Write ``record`` as the folder's record, unless the folder already holds this very record."""
    path = folder / RECORD_NAME
    if path.is_file() and json.loads(path.read_text()) == record:
        return
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + '\n')


def _keep_old_record(folder: Path) -> Path:
    number = 1
    while (folder / f'run.{number}.json').exists():
        number += 1
    kept = folder / f'run.{number}.json'
    (folder / RECORD_NAME).rename(kept)
    return kept


def _check_record(folder: Path, record: dict[str, Any], accept_changed_run: bool) -> None:
    path = folder / RECORD_NAME
    fresh = f'to start a new run use a new save_folder (or move {folder} away)'
    if not path.is_file():
        if not accept_changed_run:
            raise ValueError(
                f'save_folder: {folder} holds checkpoints without a run record ({RECORD_NAME}): another program, or '
                f'a version of this package before records, wrote them, so what they trained is unknown; {fresh}, or '
                f'set {OPTIONS_KEY}.{ACCEPT_CHANGED_RUN}=true to continue them as this {record["kind"]} run',
            )
        log.warning('save_folder: %s has checkpoints without a run record; continuing them as asked', folder)
        _write_record(folder, record)
        return
    old = json.loads(path.read_text())
    if old['kind'] != record['kind']:
        raise ValueError(
            f'save_folder: {folder} holds the checkpoints of a {old["kind"]} run and this config is a '
            f'{record["kind"]} run, which cannot continue them; {fresh}',
        )
    changes = record_changes(old, record)
    if not changes:
        return
    if not accept_changed_run:
        raise ValueError(
            f'save_folder: {folder} holds checkpoints of a run with other settings ({"; ".join(changes)}); {fresh}, '
            f'or set {OPTIONS_KEY}.{ACCEPT_CHANGED_RUN}=true to continue them with the new settings',
        )
    kept = _keep_old_record(folder)
    log.warning('continuing %s with changed settings (%s); the old record is %s', folder, '; '.join(changes), kept)
    _write_record(folder, record)


def _elapsed(checkpoint: Path) -> Timestamp:
    """The training time a checkpoint was saved at (Composer keeps state objects under their class name)."""
    state = torch.load(checkpoint, map_location='cpu', mmap=True, weights_only=False)['state']
    timestamp = Timestamp()
    timestamp.load_state_dict(state['timestamp'][Timestamp.__name__])
    return timestamp


def check_not_finished(train_config: TrainConfig) -> None:
    """Raise ``RunFinished`` when autoresume would load a checkpoint at or past ``max_duration`` (Composer would
    stop with "max_duration is less than elapsed"). Read-only, so every rank can run it."""
    folder, max_duration = local_save_folder(train_config), train_config.max_duration
    if not train_config.autoresume or folder is None or not isinstance(max_duration, str):
        return
    latest = folder / LATEST_MONOLITHIC
    duration = Time.from_timestring(max_duration)
    if duration.unit == TimeUnit.DURATION or not latest.is_file():
        return
    checkpoint = latest.resolve()
    elapsed = _elapsed(checkpoint).get(duration.unit)
    if elapsed >= duration:
        raise RunFinished(
            f'the run in {train_config.save_folder} is finished: its newest checkpoint {checkpoint.name} is at '
            f'{elapsed.to_timestring()} of max_duration {max_duration}; nothing to train. Raise max_duration to '
            'train further, or use a new save_folder to start over',
        )


def prepare_save_folder(config: DictConfig, train_config: TrainConfig, accept_changed_run: bool = False) -> None:
    """Before a run, on global rank 0: make the save folder safe to resume (``repair_checkpoint_folder``), then,
    when autoresume has a latest checkpoint to continue (monolithic or sharded, ``latest_checkpoints``), check its
    run record against ``config``'s, or else write it. Errors are ``ValueError`` naming the folder and what differs.
    Remote save folders are left to Composer."""
    folder = local_save_folder(train_config)
    if folder is None:
        return
    record = run_record(config)
    if train_config.autoresume:
        repair_checkpoint_folder(folder)
    if train_config.autoresume and latest_checkpoints(folder):
        _check_record(folder, record, accept_changed_run)
    else:
        _write_record(folder, record)
