"""Checks a training config before anything heavy is built, so that a wrong setting fails in seconds
with a message naming its key instead of after the model has loaded or mid-run."""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from llmfoundry.command_utils import TRAIN_CONFIG_KEYS, TrainConfig
from llmfoundry.utils.config_utils import make_dataclass_and_log_config
from omegaconf import DictConfig
from omegaconf import OmegaConf as om
from transformers import AutoConfig, AutoTokenizer, PretrainedConfig

from llmshearing.callbacks.dynamic_loading import DynamicLoading
from llmshearing.cpu_autocast import with_cpu_autocast
from llmshearing.data.dataloader import build_dynamic_text_dataloader
from llmshearing.data.dynamic_dataset import (
    DomainStreamingDataset,
    DynamicStreamingDataset,
    check_local_split,
    validate_domains,
    validate_proportions,
)
from llmshearing.distillation.algorithm import Distillation, check_teacher_matches
from llmshearing.pruning.algorithm import Shearing
from llmshearing.pruning.l0_module import L0Module
from llmshearing.pruning.shape import ModelShape

log = logging.getLogger(__name__)


def load_train_config(yaml_path: str | Path, overrides: list[str]) -> DictConfig:
    """The YAML with ``key=value`` overrides merged in, as llm-foundry's ``train_from_yaml`` reads it; on a machine
    without a GPU, ``precision: amp_bf16`` becomes fp32 with the ``cpu_autocast`` algorithm (``with_cpu_autocast``)."""
    yaml_path = Path(yaml_path)
    if not yaml_path.is_file():
        raise FileNotFoundError(f'config {yaml_path} does not exist')
    om.clear_resolver('oc.env')
    config = om.load(yaml_path)
    if overrides:
        config = om.merge(config, om.from_cli(overrides))
    return with_cpu_autocast(config)


def _looks_local(name: str) -> bool:
    return name.startswith(('/', './', '../', '~')) or Path(name).exists()


def _require_path(key: str, value: Any) -> None:
    if isinstance(value, str) and _looks_local(value) and not Path(value).expanduser().exists():
        raise FileNotFoundError(f'{key}: {value} does not exist')


def _check_model_and_tokenizer(train_config: TrainConfig) -> PretrainedConfig | None:
    """Check the model and tokenizer paths, their vocabularies, the pruning target and the distillation teacher
    against the model; return the model's config, or None when the model is not local (only the paths are checked)."""
    model_path = train_config.model.get('pretrained_model_name_or_path')
    tokenizer_name = train_config.tokenizer.get('name')
    _require_path('model.pretrained_model_name_or_path', model_path)
    _require_path('tokenizer.name', tokenizer_name)
    if not (isinstance(model_path, str) and _looks_local(model_path)):
        return None
    model_config = AutoConfig.from_pretrained(model_path)
    if not isinstance(tokenizer_name, str):
        return model_config
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_name, **train_config.tokenizer.get('kwargs', {}))
    if len(tokenizer) > model_config.vocab_size:
        raise ValueError(
            f'tokenizer.name: {tokenizer_name} has {len(tokenizer)} tokens, more than the vocabulary of '
            f'model.pretrained_model_name_or_path ({model_config.vocab_size})',
        )
    shearing = (train_config.algorithms or {}).get('shearing')
    if shearing is not None:
        try:
            L0Module(
                ModelShape.from_config(model_config),
                shearing.get('pruning_modules'),
                shearing.get('target'),
                shearing.get('target_sparsity'),
            )
        except ValueError as error:
            raise ValueError(f'algorithms.shearing: {error}') from error
    distillation = (train_config.algorithms or {}).get('distillation')
    if distillation is not None:
        check_teacher_matches(distillation['teacher'], model_config, tokenizer)
    return model_config


CHECKED_SETTINGS = {
    ('algorithms', 'shearing'): Shearing,
    ('algorithms', 'distillation'): Distillation,
    ('callbacks', 'dynamic_loading'): DynamicLoading,
}
"""This package's algorithms and callback, by their config section and key, built from their settings at preflight."""


def _check_algorithm_and_callback_settings(train_config: TrainConfig) -> None:
    """Build each of this package's algorithms and its callback from its settings (``CHECKED_SETTINGS``): their own
    checks, before the model loads; a key that is not a setting is named."""
    for (section, name), component in CHECKED_SETTINGS.items():
        settings = (getattr(train_config, section) or {}).get(name)
        if settings is None:
            continue
        _check_keys(f'{section}.{name}', settings, component)
        if name == 'distillation' and settings.get('teacher') is None:
            raise ValueError('algorithms.distillation.teacher is required: the folder of the teacher HF model')
        component(**settings)


def _check_keys(key: str, settings: Mapping[str, Any], function: Callable, given: tuple[str, ...] = ()) -> None:
    """Raise ``ValueError`` naming the first key of ``settings`` that is not a parameter of ``function`` (less the
    ``given`` ones, which the caller passes itself), with the valid ones."""
    parameters = [name for name in inspect.signature(function).parameters if name not in given]
    for name in settings:
        if name not in parameters:
            raise ValueError(f'{key}.{name} is not a setting; the settings are {", ".join(parameters)}')


DYNAMIC_TEXT_LOADER = 'dynamic_text'
"""This package's loader of multi-domain token data (``llmshearing.data.dataloader``)."""
LOADER_GIVEN = ('tokenizer', 'device_batch_size')
"""The parameters of ``build_dynamic_text_dataloader`` that llm-foundry passes, not the loader's settings."""
DATASET_GIVEN = ('batch_size', 'lookahead_batches')
"""The parameters of the datasets that the loader passes, not the ``dataset`` settings."""


def _loaders(train_config: TrainConfig) -> dict[str, Mapping[str, Any]]:
    """The run's data loaders by key: ``train_loader``, and ``eval_loader`` when it is set."""
    loaders = {'train_loader': train_config.train_loader, 'eval_loader': train_config.eval_loader}
    return {key: loader for key, loader in loaders.items() if loader is not None}


def _dynamic_text_loaders(train_config: TrainConfig) -> dict[str, Mapping[str, Any]]:
    return {key: loader for key, loader in _loaders(train_config).items() if loader.get('name') == DYNAMIC_TEXT_LOADER}


def _check_dynamic_text_loaders(train_config: TrainConfig) -> None:
    """Each ``dynamic_text`` loader's settings and dataset keys, its domains and proportions, and that its local data
    holds samples of every domain."""
    for key, loader in _dynamic_text_loaders(train_config).items():
        _check_keys(key, {name: value for name, value in loader.items() if name != 'name'},
                    build_dynamic_text_dataloader, LOADER_GIVEN)
        dataset = loader.get('dataset') or {}
        dataset_class = DynamicStreamingDataset if 'proportions' in dataset else DomainStreamingDataset
        _check_keys(f'{key}.dataset', dataset, dataset_class, DATASET_GIVEN)
        try:
            domains = validate_domains(dataset.get('domains'))
            if 'proportions' in dataset:
                validate_proportions(dataset['proportions'], len(domains))
            if dataset.get('remote') is None and dataset.get('local') is not None:
                split = dataset.get('split', inspect.signature(dataset_class).parameters['split'].default)
                check_local_split(dataset['local'], split, domains, bool(dataset.get('merged')))
        except ValueError as error:
            raise ValueError(f'{key}.dataset.{error}') from None


MANIFEST = 'manifest.json'
"""The file ``prepare-data`` writes beside the splits, recording the tokenizer's ``vocab_size``."""


def _check_data_vocabulary(train_config: TrainConfig, model_config: PretrainedConfig | None) -> None:
    """The vocabulary that each ``dynamic_text`` loader's data was tokenized with, read from its manifest, must fit
    the model's ``vocab_size`` (``model_config``, None when the model is not local: not checked); without a manifest
    that records it, the check is skipped (and the log says so)."""
    if model_config is None:
        return
    for key, loader in _dynamic_text_loaders(train_config).items():
        local = (loader.get('dataset') or {}).get('local')
        if local is None:
            continue
        manifest_path = Path(local).expanduser() / MANIFEST
        try:
            data_vocab_size = json.loads(manifest_path.read_text())['tokenizer']['vocab_size']
        except (OSError, ValueError, KeyError, TypeError):
            log.warning('%s.dataset.local: %s records no vocabulary size: the data\'s token ids are not checked '
                        'against the model\'s vocab_size', key, manifest_path)
            continue
        if data_vocab_size > model_config.vocab_size:
            raise ValueError(
                f'{key}.dataset.local: {local} was tokenized with a vocabulary of {data_vocab_size} tokens '
                f'({manifest_path}), more than the vocab_size of model.pretrained_model_name_or_path '
                f'({model_config.vocab_size}): prepare the data with the model\'s tokenizer',
            )


FINETUNING_LOADER = 'finetuning'
"""llm-foundry's loader of prompt/response and chat examples, which the instruction-tuning recipes train on."""


def _check_instruction_tuning(train_config: TrainConfig) -> None:
    """Refuse pruning and dynamic batch loading in a run on instruction data."""
    if train_config.train_loader.get('name') != FINETUNING_LOADER:
        return
    if 'shearing' in (train_config.algorithms or {}):
        raise ValueError(
            f'algorithms.shearing: pruning does not run on instruction data (train_loader.name: {FINETUNING_LOADER}): '
            'prune and continue pre-training on the pre-training domains, export, then instruction-tune the pruned '
            'model; remove algorithms.shearing',
        )
    if 'dynamic_loading' in (train_config.callbacks or {}):
        raise ValueError(
            'callbacks.dynamic_loading: dynamic batch loading re-weights the pre-training domains of a dynamic_text '
            f'loader, and instruction data (train_loader.name: {FINETUNING_LOADER}) has no domains; remove the '
            'callback',
        )


def _local_files(data_files: Any) -> list[str]:
    """The local paths among ``hf_kwargs.data_files`` (a path, a list of paths, or a dict of split to either)."""
    if isinstance(data_files, str):
        return [] if '://' in data_files else [data_files]
    values = data_files.values() if isinstance(data_files, Mapping) else data_files or []
    return [path for value in values for path in _local_files(value)]


def _check_data(train_config: TrainConfig) -> None:
    for key, loader in _loaders(train_config).items():
        dataset = loader.get('dataset', {})
        if dataset.get('hf_name') is not None:  # a finetuning loader on a Hugging Face dataset or local files
            _require_path(f'{key}.dataset.hf_name', dataset['hf_name'])
            for path in _local_files((dataset.get('hf_kwargs') or {}).get('data_files')):
                if not Path(path).expanduser().exists():
                    raise FileNotFoundError(f'{key}.dataset.hf_kwargs.data_files: {path} does not exist')
        elif dataset.get('remote') is None:
            _require_path(f'{key}.dataset.local', dataset.get('local') or './missing-dataset-local')


def local_save_folder(train_config: TrainConfig) -> Path | None:
    """The run's save folder when it is on this machine; None when the run saves nowhere or to remote storage."""
    save_folder = train_config.save_folder
    return None if save_folder is None or '://' in save_folder else Path(save_folder)


def _check_checkpoints(train_config: TrainConfig) -> None:
    if train_config.load_path is not None:
        _require_path('load_path', train_config.load_path)
    folder = local_save_folder(train_config)
    if folder is None:
        return
    # Without autoresume Composer would only find the clash with the folder's checkpoints when it starts
    # fitting, after the model has loaded.
    if folder.is_dir() and any(folder.iterdir()) and not (train_config.save_overwrite or train_config.autoresume):
        raise FileExistsError(
            f'save_folder: {folder} already holds files; set autoresume=true to continue that run '
            'or save_overwrite=true to replace it',
        )


def check_train_config(config: DictConfig) -> TrainConfig:
    """Validate keys (llm-foundry's own check), that an instruction-tuning run neither prunes nor re-weights domains,
    the settings of this package's algorithms and callback, paths, the model/tokenizer pair, the pruning target, the
    distillation teacher, the ``dynamic_text`` loaders' settings, domains and proportions against their data, and
    the data's vocabulary against the model's."""
    _, train_config = make_dataclass_and_log_config(config, TrainConfig, TRAIN_CONFIG_KEYS, transforms='all')
    _check_instruction_tuning(train_config)
    _check_algorithm_and_callback_settings(train_config)
    model_config = _check_model_and_tokenizer(train_config)
    _check_data(train_config)
    _check_dynamic_text_loaders(train_config)
    _check_data_vocabulary(train_config, model_config)
    _check_checkpoints(train_config)
    return train_config
