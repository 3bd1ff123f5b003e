"""Instruction prompts and model responses as files, with the standard library only.

Prompt files are a JSON list or JSON lines of rows holding an ``instruction`` (AlpacaEval; an Alpaca ``input``, when
not empty, follows it after a blank line), a ``prompt`` (IFEval) or ``turns`` (MT-bench style: the first turn is the
prompt). Responses are written and read in AlpacaEval's ``model_outputs.json`` format: a JSON list of
``{"instruction", "output", "generator", "dataset"}``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmshearing.checks import ParameterError
from llmshearing.instruction_text import alpaca_prompt

PROMPT_FIELDS = ('instruction', 'prompt', 'turns')
"""The fields a prompt row is read from, the first present one winning."""

OUTPUT_FIELDS = ('instruction', 'output', 'generator', 'dataset')
"""The fields of each row of AlpacaEval's ``model_outputs.json``."""


@dataclass(frozen=True)
class Prompt:
    """One prompt: its text and the data set it belongs to."""

    instruction: str
    dataset: str


def _rows(path: Path) -> Iterator[tuple[str, Any]]:
    """The rows of a JSON list (``item N``) or of JSON lines (``line N``), each with where it is, counted from 1."""
    text = path.read_text(encoding='utf-8')
    if text.lstrip().startswith('['):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f'{path}: not valid JSON ({error})') from None
        yield from ((f'item {number}', row) for number, row in enumerate(rows, 1))
        return
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield f'line {number}', json.loads(line)
        except json.JSONDecodeError:
            raise ValueError(f'{path} line {number}: not valid JSON') from None


def _prompt_text(row: Any) -> str | None:
    if not isinstance(row, dict):
        return None
    if isinstance(row.get('instruction'), str) and row['instruction'].strip():
        given = row.get('input')
        return alpaca_prompt(row['instruction'], given if isinstance(given, str) else '')
    if isinstance(row.get('prompt'), str) and row['prompt'].strip():
        return row['prompt']
    turns = row.get('turns')
    if isinstance(turns, list) and turns and isinstance(turns[0], str) and turns[0].strip():
        return turns[0]
    return None


def read_prompts(path: str | Path, limit: int | None = None) -> list[Prompt]:
    """The first ``limit`` prompts (default: all) of the prompt file ``path``; a row's ``dataset`` field names its data
    set, else the file's name without its suffix does."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'prompt file {path} does not exist')
    prompts = []
    for where, row in _rows(path):
        if limit is not None and len(prompts) == limit:
            break
        text = _prompt_text(row)
        if text is None:
            raise ValueError(f'{path} {where}: a row needs a non-empty {", ".join(PROMPT_FIELDS[:-1])} or '
                             f'{PROMPT_FIELDS[-1]} field')
        dataset = row.get('dataset')
        prompts.append(Prompt(text, dataset if isinstance(dataset, str) else path.stem))
    if not prompts:
        raise ValueError(f'{path} holds no prompts')
    return prompts


def read_model_outputs(path: str | Path, parameter: str) -> list[dict[str, str]]:
    """The rows of a ``model_outputs.json`` file (at least ``instruction`` and ``output`` strings, instructions
    unique); ``parameter`` names the argument that gave the file in errors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'{path} does not exist')
    text = path.read_text(encoding='utf-8')
    try:
        rows = json.loads(text)
    except json.JSONDecodeError:
        rows = None
    if not isinstance(rows, list) or not rows:
        raise ParameterError(parameter, f'{path}: not a model outputs file (a JSON list of rows with instruction and '
                             'output)')
    seen: dict[str, int] = {}
    for number, row in enumerate(rows, 1):
        if not (isinstance(row, dict) and all(isinstance(row.get(key), str) for key in ('instruction', 'output'))):
            raise ParameterError(parameter, f'{path} item {number}: needs instruction and output strings')
        if row['instruction'] in seen:
            raise ParameterError(parameter, f'{path} item {number}: repeats the instruction of item '
                                 f'{seen[row["instruction"]]}')
        seen[row['instruction']] = number
    return rows


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented UTF-8 JSON, creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + '\n', encoding='utf-8')
