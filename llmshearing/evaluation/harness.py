"""Downstream accuracy of Hugging Face models with lm-evaluation-harness, offline (``llmshearing evaluate``).

Each model is evaluated on the same rows of each task (a seeded subset with ``limit``); the result is a JSON
file, a markdown table beside it and every row's scores as jsonl (``write_outputs``). The log-likelihood tasks
(multiple choice, schema, language modelling) score given continuations of the raw text; IFEval
(``llmshearing.evaluation.ifeval``) generates greedily, through the model's chat template where it has one.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from llmshearing.checks import ParameterError, check_model_settings, check_positive
from llmshearing.choices import (
    DEFAULT_EVAL_BATCH_SIZE,
    DEFAULT_EVAL_DEVICE,
    DEFAULT_EVAL_DTYPE,
    DEFAULT_EVAL_SEED,
)
from llmshearing.evaluation import ifeval
from llmshearing.evaluation.tasks import CHANCE_KEYS, IFEVAL, Task, load_tasks, task_names
from llmshearing.tables import markdown_table

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)


def output_paths(out: Path) -> dict[str, Path]:
    """Every file ``llmshearing evaluate`` writes for ``out`` (``FILE.json``); the chart only with two or more
    models."""
    return {
        'json': out,
        'markdown': out.with_suffix('.md'),
        'chart': out.with_suffix('.png'),
        'samples': out.with_suffix('.samples.jsonl'),
    }


def _check_models(models: Sequence[str | Path]) -> list[Path]:
    if not models:
        raise ValueError('give at least one MODEL folder')
    folders = [Path(model) for model in models]
    for folder in folders:
        if not (folder / 'config.json').is_file():
            raise FileNotFoundError(f'model folder {folder} does not exist or has no config.json')
    if len({folder.resolve() for folder in folders}) != len(folders):
        raise ValueError(f'a MODEL folder is given twice: {[str(folder) for folder in folders]}')
    return folders


def _load_configs_and_tokenizers(folders: Sequence[Path]) -> dict[Path, PreTrainedTokenizerBase]:
    """Every model's config and tokenizer, before any model's weights load, so that the last model's missing
    tokenizer stops the command before the first model is evaluated; returns the tokenizers."""
    from transformers import AutoConfig

    from llmshearing.evaluation.generation import load_tokenizer

    tokenizers = {}
    for folder in folders:
        try:
            AutoConfig.from_pretrained(folder)
        except (OSError, ValueError, KeyError) as error:
            raise ValueError(f'model folder {folder}: config.json cannot be loaded: {error}') from None
        tokenizers[folder] = load_tokenizer(folder, 'evaluate')
    return tokenizers


def _task_result(task: Task, num_fewshot: int, metrics: dict[str, Any]) -> dict[str, Any]:
    acc = metrics['acc,none']
    acc_norm = metrics.get('acc_norm,none')
    reported = acc_norm if task.settings.metric == 'acc_norm' else acc
    stderr = metrics.get(f'{task.settings.metric}_stderr,none')
    return {
        'acc': acc,
        'acc_norm': acc_norm,
        'metric': task.settings.metric,
        'score': reported,
        'stderr': stderr if isinstance(stderr, float) else None,
        'n': len(task.rows),
        'num_fewshot': num_fewshot,
    }


def _row_records(model: str, task: Task, samples: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per evaluated row: the log-likelihood of each choice (or of the continuation) and the outcome;
    IFEval's: ``ifeval.row_records``."""
    if task.generates:
        return ifeval.row_records(model, task, samples)
    records = []
    for sample in sorted(samples, key=lambda sample: sample['doc_id']):
        loglikelihoods = [float(response[0]) for response in sample['filtered_resps']]
        record = {'model': model, 'task': task.name, 'row': sample['doc_id'], 'loglikelihoods': loglikelihoods}
        if task.kind in CHANCE_KEYS:
            record |= {'prediction': max(range(len(loglikelihoods)), key=loglikelihoods.__getitem__)}
            record |= {'gold': sample['doc']['gold'], 'acc': sample['acc']}
            if 'acc_norm' in sample:
                record['acc_norm'] = sample['acc_norm']
        else:
            record |= {'greedy': bool(sample['filtered_resps'][0][1]), 'acc': sample['acc']}
        records.append(record)
    return records


def evaluate_models(
    models: Sequence[str | Path],
    tasks: str,
    task_dir: str | Path,
    limit: int | None = None,
    seed: int = DEFAULT_EVAL_SEED,
    num_fewshot: int | None = None,
    batch_size: int = DEFAULT_EVAL_BATCH_SIZE,
    device: str = DEFAULT_EVAL_DEVICE,
    dtype: str = DEFAULT_EVAL_DTYPE,
    max_new_tokens: int | None = None,
    chat_template: bool = True,
    on_model_done: Callable[[dict[str, Any], list[dict[str, Any]]], object] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Evaluate each model on the tasks; returns the result (the JSON ``write_outputs`` writes) and one record per
    row and model. Every model's config and tokenizer are loaded before the first model's weights.

    Args:
        models: Hugging Face causal LM folders.
        tasks: ``paper`` or a comma-separated list of task names (``task_dir/NAME.jsonl``).
        task_dir: the folder of task files in llm-foundry's ICL format (and of IFEval's ``ifeval.jsonl``).
        limit: evaluate this many rows per task, drawn with ``seed``, the same rows for every model.
        seed: the subset's seed, also the seed of the few-shot examples' choice.
        num_fewshot: shots for every log-likelihood task (default: each known task's own, 0 for others); IFEval is
            zero-shot.
        batch_size: requests per forward pass.
        device: ``cpu`` or ``cuda``.
        dtype: ``float32`` or ``bfloat16`` weights, or ``amp_bf16``: float32 weights and the forward under bfloat16
            autocast (as ``precision: amp_bf16`` trains; AMX or AVX-512 BF16 on a CPU that has them).
        max_new_tokens: cap on the tokens of an IFEval response (default: the task's own, 1280).
        chat_template: give IFEval's prompts to a model through its tokenizer's chat template where it has one
            (lm-eval's ``apply_chat_template``); the log-likelihood tasks always score the raw text.
        on_model_done: called with the result and the records so far after each model, e.g. to write them, so that
            a later model's failure keeps the earlier models' results.
    """
    folders = _check_models(models)
    if limit is not None and limit <= 0:
        raise ParameterError('limit', f'must be a positive number of rows, got {limit}')
    if num_fewshot is not None and num_fewshot < 0:
        raise ParameterError('num_fewshot', f'must be 0 or more, got {num_fewshot}')
    check_positive(batch_size=batch_size, max_new_tokens=max_new_tokens)
    check_model_settings(dtype, device)
    task_dir = Path(task_dir)
    checked = load_tasks(task_names(tasks, task_dir), task_dir, limit, seed)
    # Before lm-eval first imports datasets (checking IFEval's instructions does), which reads it once.
    os.environ.setdefault('HF_DATASETS_OFFLINE', '1')
    for task in checked:
        if task.generates:
            ifeval.check_instructions(task)
    tokenizers = _load_configs_and_tokenizers(folders)

    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from llmshearing.evaluation.generation import load_weights

    shots = {
        task.name: task.settings.num_fewshot if num_fewshot is None or task.generates else num_fewshot
        for task in checked
    }
    configs = {task.name: task.harness_config(shots[task.name], max_new_tokens) for task in checked}
    response_tokens = {
        task.name: configs[task.name]['generation_kwargs']['max_gen_toks'] for task in checked if task.generates
    }
    result: dict[str, Any] = {
        'models': {},
        'settings': {
            'task_dir': str(task_dir.resolve()),
            'limit': limit,
            'seed': seed,
            'subset_rule': 'all rows' if limit is None else
            f'{limit} rows per task drawn with random.Random({seed}).sample(range(rows), {limit}), the same for '
            'every model',
            'batch_size': batch_size,
            'device': device,
            'dtype': dtype,
            'harness': 'lm-evaluation-harness ' + _harness_version(),
            'tasks': {
                task.name: {
                    'file': task.path.name, 'kind': task.kind, 'title': task.settings.title,
                    'metric': task.settings.metric, 'num_fewshot': shots[task.name],
                    'rows_in_file': task.num_rows, 'rows': list(task.rows) if limit is not None else 'all',
                    'chance': None if task.num_choices is None else 1 / task.num_choices,
                } | (_generation_settings(response_tokens[task.name], chat_template) if task.generates else {})
                for task in checked
            },
        },
    }
    # Every task is an inline config: a task manager without lm-eval's own ~200 task folders, which it would
    # otherwise index on every harness call (seconds each).
    task_manager = TaskManager(include_defaults=False)
    records = []
    for folder in folders:
        started = time.perf_counter()
        log.info('Evaluating %s on %s', folder, ', '.join(task.name for task in checked))
        model = load_weights(folder, dtype, device)
        tokenizer = tokenizers[folder]
        harness_model = HFLM(
            pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device,
            mixed_precision_dtype=torch.bfloat16 if dtype == 'amp_bf16' else None,
        )
        templated = chat_template and tokenizer.chat_template is not None
        output: dict[str, dict[str, Any]] = {'results': {}, 'samples': {}}
        # The chat template applies to a whole harness call: one call scores the raw text, one generates.
        for generates in (False, True):
            group = [task for task in checked if task.generates == generates]
            if not group:
                continue
            part = simple_evaluate(
                model=harness_model,
                tasks=[configs[task.name] for task in group],
                samples={task.harness_name: list(task.rows) for task in group},
                log_samples=True,
                task_manager=task_manager,
                apply_chat_template=generates and templated,
                random_seed=seed,
                numpy_random_seed=seed,
                torch_random_seed=seed,
                fewshot_random_seed=seed,
            )
            for key in output:
                output[key] |= part[key]
        task_results = {}
        for task in checked:
            metrics = output['results'][task.harness_name]
            task_results[task.name] = (
                ifeval.task_result(task, metrics, response_tokens[task.name], templated) if task.generates
                else _task_result(task, shots[task.name], metrics)
            )
        scores = [task_results[task.name]['score'] for task in checked if not task.generates]
        result['models'][str(folder)] = {
            'parameters': sum(parameter.numel() for parameter in model.parameters()),
            'tasks': task_results,
            'average': sum(scores) / len(scores) if scores else None,
            'seconds': time.perf_counter() - started,
        }
        for task in checked:
            records += _row_records(str(folder), task, output['samples'][task.harness_name])
        del harness_model, model
        if on_model_done is not None:
            on_model_done(result, records)
    return result, records


def _generation_settings(max_new_tokens: int, chat_template: bool) -> dict[str, Any]:
    return {
        'metrics': list(ifeval.IFEVAL_METRICS),
        'decoding': 'greedy',
        'max_new_tokens': max_new_tokens,
        'chat_template': "the model tokenizer's, where it has one" if chat_template else 'none',
    }


def _harness_version() -> str:
    from importlib.metadata import version

    return version('lm_eval')


def _format_score(score: float, stderr: float | None) -> str:
    text = f'{100 * score:.1f}'
    if stderr is not None and math.isfinite(stderr):
        text += f' ± {100 * stderr:.1f}'
    return text


def model_labels(models: Sequence[str]) -> dict[str, str]:
    """Short labels for tables and charts: each folder's name, or its whole path where names repeat."""
    names = [Path(model).name for model in models]
    return {model: name if names.count(name) == 1 else model for model, name in zip(models, names)}


def _table_columns(settings: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(header, task, metric) of each score column: a log-likelihood task's reported metric, IFEval's four."""
    columns = []
    for name, task in settings.items():
        if task['kind'] == IFEVAL:
            columns += [(f'{task["title"]} ({metric})', name, metric) for metric in task['metrics']]
        else:
            columns.append((f'{task["title"]} ({task["metric"]}, {task["num_fewshot"]}-shot)', name, 'score'))
    return columns


def results_table(result: dict[str, Any]) -> list[str]:
    """Markdown lines: models as rows, tasks as columns (score ± stderr, in %; IFEval's four metrics), the average
    of the log-likelihood tasks and the parameters."""
    columns = _table_columns(result['settings']['tasks'])
    headers = ['model', 'parameters', *(header for header, _, _ in columns), 'average']
    labels = model_labels(list(result['models']))
    rows = []
    for model, model_result in result['models'].items():
        cells = [labels[model], f'{model_result["parameters"] / 1e6:.1f}M']
        for _, name, metric in columns:
            task = model_result['tasks'][name]
            cells.append(_format_score(task[metric], task['stderr' if metric == 'score' else f'{metric}_stderr']))
        average = model_result['average']
        cells.append('—' if average is None else f'{100 * average:.1f}')
        rows.append(cells)
    return markdown_table(headers, rows)


def task_scores(result: dict[str, Any]) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """What the bar chart shows: per model label, the score of each task (by title; IFEval's prompt-level strict
    accuracy) and the average of the log-likelihood tasks; and each multiple-choice task's chance accuracy."""
    settings = result['settings']
    labels = model_labels(list(result['models']))
    scores = {
        labels[model]: {settings['tasks'][name]['title']: task['score'] for name, task in model_result['tasks'].items()}
        | ({} if model_result['average'] is None else {'average': model_result['average']})
        for model, model_result in result['models'].items()
    }
    chance = {task['title']: task['chance'] for task in settings['tasks'].values() if task['chance'] is not None}
    return scores, chance


def write_outputs(result: dict[str, Any], records: Sequence[dict[str, Any]], out: Path) -> dict[str, Path]:
    """Write the JSON, the markdown table and the per-row jsonl; return their paths."""
    paths = output_paths(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths['json'].write_text(json.dumps(result, indent=2) + '\n')
    settings = result['settings']
    subset = 'all rows' if settings['limit'] is None else f'{settings["limit"]} rows per task, seed {settings["seed"]}'
    table = results_table(result)
    caption = f'Accuracy in % (± standard error) on {subset}; {settings["harness"]}.'
    generation = [task for task in settings['tasks'].values() if task['kind'] == IFEVAL]
    if generation:
        caption += (
            f' {", ".join(task["title"] for task in generation)}: greedy responses of at most '
            f'{generation[0]["max_new_tokens"]} tokens, not in the average.'
        )
    paths['markdown'].write_text('\n'.join([caption, '', *table]) + '\n')
    with paths['samples'].open('w') as samples_file:
        for record in records:
            samples_file.write(json.dumps(record) + '\n')
    return {name: path for name, path in paths.items() if name != 'chart'}
