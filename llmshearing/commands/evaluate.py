"""``llmshearing evaluate``: downstream accuracy of Hugging Face models, written as JSON, markdown, per-row jsonl and,
with two or more models, a bar chart."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llmshearing.checks import OutputExistsError, ParameterError
from llmshearing.choices import DEFAULT_EVAL_BATCH_SIZE, DEFAULT_EVAL_DEVICE, DEFAULT_EVAL_DTYPE, DEFAULT_EVAL_SEED
from llmshearing.evaluation.harness import evaluate_models, output_paths, results_table, task_scores, write_outputs
from llmshearing.report import plot_task_accuracies

log = logging.getLogger(__name__)


def evaluate(
    models: Sequence[str | Path],
    tasks: str,
    task_dir: str | Path,
    out: str | Path,
    *,
    limit: int | None = None,
    seed: int = DEFAULT_EVAL_SEED,
    num_fewshot: int | None = None,
    batch_size: int = DEFAULT_EVAL_BATCH_SIZE,
    device: str = DEFAULT_EVAL_DEVICE,
    dtype: str = DEFAULT_EVAL_DTYPE,
    max_new_tokens: int | None = None,
    chat_template: bool = True,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Evaluate ``models`` (``evaluate_models``) and write the results beside ``out`` (``FILE.json``), rewritten as
    each model finishes; return the paths written."""
    out = Path(out)
    if out.suffix != '.json':
        raise ParameterError('out', f'must name a .json file, got {out}')
    existing = [str(path) for path in output_paths(out).values() if path.exists()]
    if existing and not overwrite:
        raise OutputExistsError(f'{", ".join(existing)} exist(s)', 'them')
    written: dict[str, Path] = {}

    def write_finished(result: dict[str, Any], records: list[dict[str, Any]]) -> None:
        """Write the models evaluated so far, so that a failure later keeps their results on disk."""
        written.update(write_outputs(result, records, out))
        log.info('Wrote the results of %d of %d models to %s', len(result['models']), len(models), out)

    result, _ = evaluate_models(
        models, tasks, task_dir, limit=limit, seed=seed, num_fewshot=num_fewshot, batch_size=batch_size,
        device=device, dtype=dtype, max_new_tokens=max_new_tokens, chat_template=chat_template,
        on_model_done=write_finished,
    )
    if len(result['models']) >= 2:
        written['chart'] = output_paths(out)['chart']
        plot_task_accuracies(*task_scores(result)).savefig(written['chart'], dpi=110)
    log.info('Results:\n%s', '\n'.join(results_table(result)))
    log.info('Wrote %s', ', '.join(str(path) for path in written.values()))
    return written
