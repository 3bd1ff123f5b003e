"""``llmshearing evaluate``: downstream accuracy of Hugging Face models with lm-evaluation-harness, offline.

Each model is evaluated on the same rows of each task (a seeded subset with ``--limit``); the result is a JSON
file, a markdown table beside it, a PNG bar chart with two or more models, and every row's scores as jsonl.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from llmshearing.evaluation.tasks import (
    CHANCE_KEYS,
    PAPER_TASKS,
    Task,
    load_tasks,
    task_names,
)
from llmshearing.report import markdown_table, plot_task_accuracies

log = logging.getLogger(__name__)

DTYPES = ('float32', 'bfloat16')


def output_paths(out: Path) -> dict[str, Path]:
    """Every file ``evaluate`` writes for ``--out FILE.json``."""
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


def _check_device(device: str) -> None:
    if device.startswith('cuda') and not torch.cuda.is_available():
        raise ValueError(f'--device {device}: this machine has no CUDA device')
    if device != 'cpu' and not device.startswith('cuda'):
        raise ValueError(f'--device must be cpu or cuda, got {device!r}')


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
    """One record per evaluated row: the log-likelihood of each choice (or of the continuation) and the outcome."""
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
    seed: int = 1234,
    num_fewshot: int | None = None,
    batch_size: int = 8,
    device: str = 'cpu',
    dtype: str = 'float32',
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Evaluate each model on the tasks; returns the result (the ``--out`` JSON) and one record per row and model.

    Args:
        models: Hugging Face causal LM folders.
        tasks: ``paper`` or a comma-separated list of task names (``task_dir/NAME.jsonl``).
        task_dir: the folder of task files in llm-foundry's ICL format.
        limit: evaluate this many rows per task, drawn with ``seed``, the same rows for every model.
        seed: the subset's seed, also the seed of the few-shot examples' choice.
        num_fewshot: shots for every task (default: each known task's own, 0 for others).
        batch_size: requests per forward pass.
        device: ``cpu`` or ``cuda``.
        dtype: ``float32`` or ``bfloat16`` weights.
    """
    folders = _check_models(models)
    if limit is not None and limit <= 0:
        raise ValueError(f'--limit must be a positive number of rows, got {limit}')
    if num_fewshot is not None and num_fewshot < 0:
        raise ValueError(f'--num-fewshot must be 0 or more, got {num_fewshot}')
    if batch_size <= 0:
        raise ValueError(f'--batch-size must be positive, got {batch_size}')
    if dtype not in DTYPES:
        raise ValueError(f'--dtype must be one of {list(DTYPES)}, got {dtype!r}')
    _check_device(device)
    task_dir = Path(task_dir)
    checked = load_tasks(task_names(tasks, task_dir), task_dir, limit, seed)

    os.environ.setdefault('HF_DATASETS_OFFLINE', '1')
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    shots = {task.name: task.settings.num_fewshot if num_fewshot is None else num_fewshot for task in checked}
    configs = [task.harness_config(shots[task.name]) for task in checked]
    rows = {task.harness_name: list(task.rows) for task in checked}
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
                }
                for task in checked
            },
        },
    }
    records = []
    for folder in folders:
        started = time.perf_counter()
        log.info('Evaluating %s on %s', folder, ', '.join(task.name for task in checked))
        model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=getattr(torch, dtype)).to(device).eval()
        tokenizer = AutoTokenizer.from_pretrained(folder)
        harness_model = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device)
        output = simple_evaluate(
            model=harness_model,
            tasks=configs,
            samples=rows,
            log_samples=True,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
        )
        task_results = {
            task.name: _task_result(task, shots[task.name], output['results'][task.harness_name]) for task in checked
        }
        scores = [task_result['score'] for task_result in task_results.values()]
        result['models'][str(folder)] = {
            'parameters': sum(parameter.numel() for parameter in model.parameters()),
            'tasks': task_results,
            'average': sum(scores) / len(scores),
            'seconds': time.perf_counter() - started,
        }
        for task in checked:
            records += _row_records(str(folder), task, output['samples'][task.harness_name])
        del harness_model, model
    return result, records


def _harness_version() -> str:
    from importlib.metadata import version

    return version('lm_eval')


def _format_score(task_result: dict[str, Any]) -> str:
    score = f'{100 * task_result["score"]:.1f}'
    if task_result['stderr'] is not None and math.isfinite(task_result['stderr']):
        score += f' ± {100 * task_result["stderr"]:.1f}'
    return score


def model_labels(models: Sequence[str]) -> dict[str, str]:
    """Short labels for tables and charts: each folder's name, or its whole path where names repeat."""
    names = [Path(model).name for model in models]
    return {model: name if names.count(name) == 1 else model for model, name in zip(models, names)}


def results_table(result: dict[str, Any]) -> list[str]:
    """Markdown lines: models as rows, tasks as columns (score ± stderr, in %), the average and the parameters."""
    settings = result['settings']['tasks']
    headers = ['model', 'parameters']
    headers += [f'{task["title"]} ({task["metric"]}, {task["num_fewshot"]}-shot)' for task in settings.values()]
    headers.append('average')
    labels = model_labels(list(result['models']))
    rows = []
    for model, model_result in result['models'].items():
        cells = [labels[model], f'{model_result["parameters"] / 1e6:.1f}M']
        cells += [_format_score(model_result['tasks'][name]) for name in settings]
        cells.append(f'{100 * model_result["average"]:.1f}')
        rows.append(cells)
    return markdown_table(headers, rows)


def write_outputs(result: dict[str, Any], records: Sequence[dict[str, Any]], out: Path) -> dict[str, Path]:
    """Write the JSON, the markdown table, the per-row jsonl and (two or more models) the bar chart."""
    paths = output_paths(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths['json'].write_text(json.dumps(result, indent=2) + '\n')
    settings = result['settings']
    subset = 'all rows' if settings['limit'] is None else f'{settings["limit"]} rows per task, seed {settings["seed"]}'
    table = results_table(result)
    paths['markdown'].write_text(
        '\n'.join([f'Accuracy in % (± standard error) on {subset}; {settings["harness"]}.', '', *table]) + '\n',
    )
    with paths['samples'].open('w') as samples_file:
        for record in records:
            samples_file.write(json.dumps(record) + '\n')
    written = dict(paths)
    if len(result['models']) >= 2:
        labels = model_labels(list(result['models']))
        scores = {
            labels[model]: {settings['tasks'][name]['title']: task['score'] for name, task in model_result['tasks'].items()}
            | {'average': model_result['average']}
            for model, model_result in result['models'].items()
        }
        chance = {task['title']: task['chance'] for task in settings['tasks'].values() if task['chance'] is not None}
        figure = plot_task_accuracies(scores, chance)
        figure.savefig(paths['chart'], dpi=110)
    else:
        written.pop('chart')
    return written


def add_command(subparsers: argparse._SubParsersAction) -> None:
    """Register ``llmshearing evaluate``."""
    parser = subparsers.add_parser(
        'evaluate',
        help='downstream task accuracy of Hugging Face models (lm-evaluation-harness, offline)',
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument('models', metavar='MODEL', nargs='+', help='Hugging Face causal LM folders')
    parser.add_argument(
        '--tasks', required=True,
        help=f'paper (each of {", ".join(PAPER_TASKS)} that --task-dir holds, with the paper\'s shots and metric) '
        'or a comma-separated list of names; NAME is TASK_DIR/NAME.jsonl',
    )
    parser.add_argument('--task-dir', required=True, type=Path, help='folder of task files in llm-foundry ICL format')
    parser.add_argument('--limit', type=int, help='evaluate this many rows per task, drawn with --seed (default: all)')
    parser.add_argument('--seed', type=int, default=1234, help='seed of the row subset and the few-shot examples')
    parser.add_argument('--num-fewshot', type=int, help='shots for every task (default: each task\'s own)')
    parser.add_argument('--batch-size', type=int, default=8, help='requests per forward pass (default: 8)')
    parser.add_argument('--device', default='cpu', help='cpu or cuda (default: cpu)')
    parser.add_argument('--dtype', default='float32', choices=DTYPES)
    parser.add_argument('--out', required=True, type=Path, help='FILE.json; FILE.md, FILE.png, FILE.samples.jsonl beside it')
    parser.add_argument('--overwrite', action='store_true', help='replace existing output files')
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> None:
    if args.out.suffix != '.json':
        raise ValueError(f'--out must name a .json file, got {args.out}')
    existing = [str(path) for path in output_paths(args.out).values() if path.exists()]
    if existing and not args.overwrite:
        raise FileExistsError(f'{", ".join(existing)} exist(s); pass --overwrite to replace')
    result, records = evaluate_models(
        args.models, args.tasks, args.task_dir, limit=args.limit, seed=args.seed, num_fewshot=args.num_fewshot,
        batch_size=args.batch_size, device=args.device, dtype=args.dtype,
    )
    written = write_outputs(result, records, args.out)
    log.info('Results:\n%s', '\n'.join(results_table(result)))
    log.info('Wrote %s', ', '.join(str(path) for path in written.values()))
