"""Downstream tasks in llm-foundry's ICL jsonl format: the paper's settings, row checks, the seeded subset, and
the lm-evaluation-harness task config of each.

A task ``X`` is the file ``TASK_DIR/X.jsonl``. Four row formats exist: multiple choice
``{"query", "choices", "gold"}``, schema ``{"context_options", "continuation", "gold"}`` (WinoGrande: the options
differ in the context, the continuation is scored), language modelling ``{"context", "continuation"}``
(LAMBADA: correct when the continuation is the greedy one) and IFEval ``{"key", "prompt", "instruction_id_list",
"kwargs"}`` (instruction following: a generated response checked by lm-evaluation-harness's ``ifeval`` task, see
``llmshearing.evaluation.ifeval``).
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from llmshearing.checks import ParameterError

MULTIPLE_CHOICE = 'multiple_choice'
SCHEMA = 'schema'
LANGUAGE_MODELING = 'language_modeling'
IFEVAL = 'ifeval'
ROW_KEYS = {
    MULTIPLE_CHOICE: ('query', 'choices', 'gold'),
    SCHEMA: ('context_options', 'continuation', 'gold'),
    LANGUAGE_MODELING: ('context', 'continuation'),
    IFEVAL: ('key', 'prompt', 'instruction_id_list', 'kwargs'),
}
CHANCE_KEYS = {MULTIPLE_CHOICE: 'choices', SCHEMA: 'context_options'}
HARNESS_PREFIX = 'llmshearing_'


@dataclasses.dataclass(frozen=True)
class TaskSettings:
    """How a task is evaluated: shots, the reported metric, and the text between a question and its answer."""

    title: str
    num_fewshot: int
    metric: str  # 'acc' or 'acc_norm'; IFEval: 'prompt_level_strict_acc'
    answer_prompt: str = ''  # appended to a multiple-choice query, e.g. '\nAnswer:'


# The Sheared-LLaMA paper's downstream suite (Table 1 and its appendix), as far as llm-foundry ships the data.
PAPER_TASKS = {
    'sciq': TaskSettings('SciQ', 0, 'acc', '\nAnswer:'),
    'piqa': TaskSettings('PIQA', 0, 'acc', '\nAnswer:'),
    'winogrande': TaskSettings('WinoGrande', 0, 'acc'),
    'arc_easy': TaskSettings('ARC-E', 0, 'acc', '\nAnswer:'),
    'arc_challenge': TaskSettings('ARC-C', 25, 'acc_norm', '\nAnswer:'),
    'hellaswag': TaskSettings('HellaSwag', 10, 'acc_norm'),
    'logi_qa': TaskSettings('LogiQA', 0, 'acc_norm', '\nAnswer:'),
    'boolq': TaskSettings('BoolQ', 32, 'acc', '\nAnswer:'),
    'lambada_openai': TaskSettings('LAMBADA', 0, 'acc'),
}
IFEVAL_TASK = 'ifeval'
"""The file name of IFEval's prompts (``TASK_DIR/ifeval.jsonl``, the rows of the Hugging Face dataset
``google/IFEval``)."""


@dataclasses.dataclass(frozen=True)
class Task:
    """One task file, checked, with its settings and the rows to evaluate."""

    name: str
    path: Path
    kind: str
    settings: TaskSettings
    num_rows: int
    rows: tuple[int, ...]  # indices into the file, ascending
    num_choices: int | None  # the fewest choices of a row (chance = 1 / choices); None for the others

    @property
    def harness_name(self) -> str:
        return HARNESS_PREFIX + self.name

    @property
    def generates(self) -> bool:
        """Whether the model generates text (IFEval) rather than scoring given continuations."""
        return self.kind == IFEVAL

    def local_dataset(self) -> dict[str, Any]:
        """The task config keys that make the local jsonl the harness task's only (test) split."""
        return {
            'task': self.harness_name,
            'dataset_path': 'json',
            'dataset_name': None,
            'dataset_kwargs': {'data_files': {'test': str(self.path.resolve())}},
            'test_split': 'test',
        }

    def harness_config(self, num_fewshot: int, max_new_tokens: int | None = None) -> dict[str, Any]:
        """The lm-evaluation-harness task config over the local jsonl. ``max_new_tokens`` caps a generation task's
        responses (default: the task's own); IFEval is zero-shot whatever ``num_fewshot`` says."""
        if self.generates:
            from llmshearing.evaluation.ifeval import harness_config

            return harness_config(self, max_new_tokens)
        config: dict[str, Any] = self.local_dataset() | {
            'fewshot_split': 'test',  # the sampler leaves the evaluated row out of its own context
            'num_fewshot': num_fewshot,
            'metric_list': [{'metric': 'acc', 'aggregation': 'mean', 'higher_is_better': True}],
        }
        if self.kind == MULTIPLE_CHOICE:
            query = '{{query|trim}}' if self.settings.answer_prompt else '{{query}}'
            config |= {
                'output_type': 'multiple_choice',
                'doc_to_text': query + self.settings.answer_prompt,
                'doc_to_choice': '{{choices}}',
                'doc_to_target': '{{gold}}',
            }
            config['metric_list'].append({'metric': 'acc_norm', 'aggregation': 'mean', 'higher_is_better': True})
        elif self.kind == SCHEMA:
            # A number from doc_to_text makes the choices the contexts and doc_to_target the scored continuation.
            config |= {
                'output_type': 'multiple_choice',
                'doc_to_text': '{{gold}}',
                'doc_to_choice': '{{context_options}}',
                'doc_to_target': '{{continuation}}',
            }
        else:
            config |= {
                'output_type': 'loglikelihood',
                'doc_to_text': '{{context}}',
                'doc_to_target': ' {{continuation|trim}}',
            }
        return config


def _row_kind(row: dict[str, Any]) -> str | None:
    for kind, keys in ROW_KEYS.items():
        if all(key in row for key in keys):
            return kind
    return None


def _check_row(row: Any, kind: str, where: str) -> int | None:
    """The row's number of choices; raises ``ValueError`` naming ``where`` if the row is malformed."""
    if not isinstance(row, dict) or _row_kind(row) != kind:
        raise ValueError(f'{where}: expected a {kind} row with keys {list(ROW_KEYS[kind])}')
    if kind == IFEVAL:
        _check_ifeval_row(row, where)
        return None
    if kind == LANGUAGE_MODELING:
        if not (
            isinstance(row['context'], str) and isinstance(row['continuation'], str) and row['continuation'].strip()
        ):
            raise ValueError(f'{where}: context and continuation must be strings, the continuation not empty')
        return None
    options = row[CHANCE_KEYS[kind]]
    if not (isinstance(options, list) and len(options) >= 2 and all(isinstance(option, str) for option in options)):
        raise ValueError(f'{where}: {CHANCE_KEYS[kind]} must be a list of two or more strings')
    gold = row['gold']
    if not isinstance(gold, int) or isinstance(gold, bool) or not 0 <= gold < len(options):
        raise ValueError(f'{where}: gold must be an index into its {len(options)} {CHANCE_KEYS[kind]}, got {gold!r}')
    return len(options)


def _check_ifeval_row(row: dict[str, Any], where: str) -> None:
    if not (isinstance(row['prompt'], str) and row['prompt'].strip()):
        raise ValueError(f'{where}: prompt must be a non-empty string')
    ids, kwargs = row['instruction_id_list'], row['kwargs']
    if not (isinstance(ids, list) and ids and all(isinstance(instruction, str) for instruction in ids)):
        raise ValueError(f'{where}: instruction_id_list must be a non-empty list of instruction names')
    if not (isinstance(kwargs, list) and len(kwargs) == len(ids) and all(isinstance(item, dict) for item in kwargs)):
        raise ValueError(f'{where}: kwargs must be a list of {len(ids)} objects, one per instruction')


def task_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of each non-blank line of a task file; a line that is not UTF-8 is a ``ValueError``
    naming the file and line."""
    with path.open('rb') as lines:
        for line_number, line in enumerate(lines, start=1):
            try:
                text = line.decode('utf-8')
            except UnicodeDecodeError as error:
                raise ValueError(
                    f'{path} line {line_number}: not UTF-8 text (byte {error.start + 1} of the line: {error.reason})',
                ) from None
            if text.strip():
                yield line_number, text


def read_task_file(path: Path) -> tuple[str, int, int | None]:
    """Check every row of a task file; return its kind (read from the first row), its row count and the fewest
    choices of a row."""
    kind, num_rows, num_choices = None, 0, None
    for line_number, line in task_lines(path):
        where = f'{path} line {line_number}'
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f'{where}: not valid JSON ({error.msg})') from None
        if kind is None:
            kind = _row_kind(row) if isinstance(row, dict) else None
            if kind is None:
                raise ValueError(
                    f'{where}: unknown row format; expected the keys of one of '
                    + ', '.join(f'{name} {list(keys)}' for name, keys in ROW_KEYS.items()),
                )
        choices = _check_row(row, kind, where)
        if choices is not None:
            num_choices = choices if num_choices is None else min(num_choices, choices)
        num_rows += 1
    if kind is None:
        raise ValueError(f'task file {path} has no rows')
    return kind, num_rows, num_choices


def subset_rows(num_rows: int, limit: int | None, seed: int) -> tuple[int, ...]:
    """The rows evaluated: all, or ``limit`` of them drawn with ``seed`` (the same for every model), ascending."""
    if limit is None or limit >= num_rows:
        return tuple(range(num_rows))
    return tuple(sorted(random.Random(seed).sample(range(num_rows), limit)))


def task_names(tasks: str, task_dir: Path) -> list[str]:
    """``paper`` (the paper's tasks that ``task_dir`` holds, in the paper's order) or a comma-separated list."""
    if tasks == 'paper':
        names = [name for name in PAPER_TASKS if (task_dir / f'{name}.jsonl').is_file()]
        if not names:
            raise FileNotFoundError(f'task folder {task_dir} holds none of the paper\'s tasks {list(PAPER_TASKS)}')
        return names
    names = [name.strip() for name in tasks.split(',') if name.strip()]
    if not names:
        raise ParameterError('tasks', 'is empty: give paper or a comma-separated list of task names')
    if len(set(names)) != len(names):
        raise ParameterError('tasks', f'names a task twice: {names}')
    return names


def load_tasks(names: Sequence[str], task_dir: Path, limit: int | None, seed: int) -> list[Task]:
    """Check the task files (every row) and choose the rows to evaluate."""
    if not task_dir.is_dir():
        raise FileNotFoundError(f'task folder {task_dir} does not exist')
    tasks = []
    for name in names:
        path = task_dir / f'{name}.jsonl'
        if not path.is_file():
            known = ' (a task of the paper)' if name in PAPER_TASKS else ''
            if name == IFEVAL_TASK:
                known = " (IFEval's prompts: the rows of google/IFEval as jsonl)"
            raise FileNotFoundError(f'task {name!r}{known}: no file {path}')
        kind, num_rows, num_choices = read_task_file(path)
        if kind == IFEVAL:
            settings = TaskSettings('IFEval' if name == IFEVAL_TASK else name, 0, 'prompt_level_strict_acc')
        else:
            settings = PAPER_TASKS.get(name, TaskSettings(name, 0, 'acc'))
        tasks.append(Task(name, path, kind, settings, num_rows, subset_rows(num_rows, limit, seed), num_choices))
    return tasks
