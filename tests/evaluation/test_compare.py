"""``llmshearing compare``: the verdict rule and its statistics, a local judge's margins against a direct computation
(a file against itself: exactly 0.5; A and B swapped: 1 - the win rate), an endpoint judge against a stub server, and
every bad input."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from scipy.stats import binomtest
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmshearing import cli
from llmshearing.evaluation.local_judge import LocalJudge
from llmshearing.evaluation.pairwise import JUDGE_PROMPT, chat_completions_url, reply_position, wilson_interval
from llmshearing.toy import byte_level_tokenizer
from tests.evaluation.test_evaluate import copy_without_tokenizer
from tests.tiny_models import tiny_llama

RESPONSES = ['Blue.', 'The sky is blue on a clear day.', 'zzz', 'I do not know.', 'Paris', 'forty-two',
             'A long answer with many words in it, some of them relevant.', 'No.']


def outputs(responses: list[str], generator: str, extra: list[str] = ()) -> list[dict[str, str]]:
    """Rows of ``model_outputs.json``: question ``i`` answered with ``responses[i]``, then questions only this model
    answered."""
    rows = [{'instruction': f'Question {index}?', 'output': response} for index, response in enumerate(responses)]
    rows += [{'instruction': instruction, 'output': 'Only here.'} for instruction in extra]
    return [row | {'generator': generator, 'dataset': 'test'} for row in rows]


def write_json(path: Path, content) -> Path:
    path.write_text(json.dumps(content))
    return path


@pytest.fixture(scope='module')
def judge_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random Llama with large weights (initializer range 1), so that its preferences vary with the responses."""
    folder = tmp_path_factory.mktemp('judge')
    torch.manual_seed(0)
    tokenizer = byte_level_tokenizer()
    model = tiny_llama(
        vocab_size=len(tokenizer), num_hidden_layers=2, max_position_embeddings=1024, initializer_range=1.0,
    )
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    rotated = RESPONSES[3:] + RESPONSES[:3]
    return {
        'a': write_json(tmp_path / 'a.json', outputs(RESPONSES, 'model-a', ['Only A?'])),
        'b': write_json(tmp_path / 'b.json', outputs(rotated, 'model-b', ['Only B?', 'Only B too?'])),
    }


def run_cli(*args: str) -> int:
    return cli.main(['compare', *args])


def compare_files(a: Path, b: Path, judge: str, out: Path, *options: str) -> dict:
    assert run_cli(str(a), str(b), '--judge', judge, '--out', str(out), *options) == 0
    return json.loads(out.read_text())


# The statistics ----------------------------------------------------------------------------------------------


def test_wilson_interval_matches_scipy_and_a_hand_computed_one_with_half_counts():
    assert wilson_interval(8, 10) == pytest.approx(binomtest(8, 10).proportion_ci(method='wilson'), abs=1e-12)
    # the roots of (p - x)^2 = z^2 x (1 - x) / n for p = 2.5 / 4, z = 1.959964, solved by hand
    assert wilson_interval(2.5, 4) == pytest.approx((0.21942652006536287, 0.9081007708209878), abs=1e-12)
    low, high = wilson_interval(5, 10)
    assert low + high == pytest.approx(1.0, abs=1e-15)


def test_replies_and_addresses_of_an_endpoint():
    assert [reply_position(reply) for reply in ('1', 'Response 2 is better.', '12 words, so 2', 'Neither', '21')] == [
        1, 2, 2, None, None,
    ]
    assert chat_completions_url('http://host:8000') == 'http://host:8000/v1/chat/completions'
    assert chat_completions_url('http://host:8000/v1/') == 'http://host:8000/v1/chat/completions'
    assert chat_completions_url('https://host/api/chat/completions') == 'https://host/api/chat/completions'


# The local judge ---------------------------------------------------------------------------------------------


def direct_margin(judge_dir: Path, instruction: str, first: str, second: str) -> float:
    """log p(' 1') - log p(' 2') after the judging prompt and ``Answer:``, straight from the model: the space is one
    byte token both answers share, then the digit."""
    model = AutoModelForCausalLM.from_pretrained(judge_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(judge_dir)
    text = JUDGE_PROMPT.format(instruction=instruction, first=first, second=second) + '\nAnswer: '
    with torch.no_grad():
        log_probs = model(torch.tensor([tokenizer(text).input_ids])).logits[0, -1].log_softmax(-1)
    one, two = tokenizer.convert_tokens_to_ids(['1', '2'])
    return (log_probs[one] - log_probs[two]).item()


def test_local_judge_margins_verdicts_and_counts(judge_dir: Path, files: dict[str, Path], tmp_path: Path):
    result = compare_files(files['a'], files['b'], str(judge_dir), tmp_path / 'result.json', '--batch-size', '3')
    assert result['instructions'] == {'shared': 8, 'only_in_a': 1, 'only_in_b': 2}
    assert (result['a']['generator'], result['b']['generator']) == ('model-a', 'model-b')
    assert result['judge']['kind'] == 'local' and result['judge']['prompt'] == JUDGE_PROMPT
    rows = result['rows']
    assert [row['instruction'] for row in rows] == [f'Question {index}?' for index in range(8)]
    for row in rows[:2]:
        assert row['a_first']['margin'] == pytest.approx(
            direct_margin(judge_dir, row['instruction'], row['output_a'], row['output_b']), abs=1e-4,
        )
        assert row['b_first']['margin'] == pytest.approx(
            direct_margin(judge_dir, row['instruction'], row['output_b'], row['output_a']), abs=1e-4,
        )
    for row in rows:
        # a positive margin prefers response 1: A when A came first, B when B did
        a_first = 'A' if row['a_first']['margin'] > 0 else 'B'
        b_first = 'B' if row['b_first']['margin'] > 0 else 'A'
        assert (row['a_first']['prefers'], row['b_first']['prefers']) == (a_first, b_first)
        assert row['verdict'] == (a_first if a_first == b_first else 'tie')
        assert row['consistent'] == (a_first == b_first)
    verdicts = [row['verdict'] for row in rows]
    wins, ties, losses = verdicts.count('A'), verdicts.count('tie'), verdicts.count('B')
    assert (result['wins'], result['ties'], result['losses']) == (wins, ties, losses)
    assert wins + losses > 0, 'the judge should prefer one model on some rows for the rule to be tested'
    assert result['win_rate'] == pytest.approx((wins + ties / 2) / 8)
    assert result['position_consistency'] == pytest.approx((wins + losses) / 8)
    assert result['interval'] == pytest.approx(list(wilson_interval(wins + ties / 2, 8)))
    # the second verdict: A's log-probability advantage summed over both orders, the position bias cancelled
    advantages = [row['a_first']['margin'] - row['b_first']['margin'] for row in rows]
    summed = result['summed_margins']
    assert [row['margin_of_a'] for row in rows] == pytest.approx(advantages)
    ahead = sum(advantage > 0 for advantage in advantages)
    behind = sum(advantage < 0 for advantage in advantages)
    assert (summed['wins'], summed['ties'], summed['losses']) == (ahead, 8 - ahead - behind, behind)
    assert summed['win_rate'] == pytest.approx((ahead + summed['ties'] / 2) / 8)


def test_a_file_against_itself_is_exactly_one_half(judge_dir: Path, files: dict[str, Path], tmp_path: Path):
    result = compare_files(files['a'], files['a'], str(judge_dir), tmp_path / 'result.json')
    assert result['win_rate'] == 0.5
    assert (result['wins'], result['ties'], result['losses'], result['identical_outputs']) == (0, 9, 0, 9)
    assert result['interval'][0] + result['interval'][1] == pytest.approx(1.0, abs=1e-15)
    assert result['summed_margins']['win_rate'] == 0.5 and result['summed_margins']['ties'] == 9
    assert {row['margin_of_a'] for row in result['rows']} == {0.0}


def test_swapping_a_and_b_gives_one_minus_the_win_rate(judge_dir: Path, files: dict[str, Path], tmp_path: Path):
    forward = compare_files(files['a'], files['b'], str(judge_dir), tmp_path / 'ab.json')
    backward = compare_files(files['b'], files['a'], str(judge_dir), tmp_path / 'ba.json')
    assert backward['win_rate'] == pytest.approx(1 - forward['win_rate'], abs=1e-12)
    assert (backward['wins'], backward['ties'], backward['losses']) == (
        forward['losses'], forward['ties'], forward['wins'],
    )
    assert forward['wins'] != forward['losses']
    summed_forward, summed_backward = forward['summed_margins'], backward['summed_margins']
    assert summed_backward['win_rate'] == pytest.approx(1 - summed_forward['win_rate'], abs=1e-12)
    assert (summed_backward['wins'], summed_backward['losses']) == (summed_forward['losses'], summed_forward['wins'])
    assert backward['instructions'] == {'shared': 8, 'only_in_a': 2, 'only_in_b': 1}


def test_the_judge_reads_the_chat_template_of_its_tokenizer(judge_dir: Path, tmp_path: Path):
    folder = tmp_path / 'templated'
    AutoModelForCausalLM.from_pretrained(judge_dir).save_pretrained(folder)
    tokenizer = byte_level_tokenizer()
    tokenizer.chat_template = (
        "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}{% endfor %}"
        '{% if add_generation_prompt %}<|assistant|>{% endif %}'
    )
    tokenizer.save_pretrained(folder)
    ids, answers = LocalJudge(folder, 1, 'float32', 'cpu').encode('Which?')
    assert tokenizer.decode(ids) == '<|user|>Which?<|assistant|>'
    assert answers == tuple(tokenizer.convert_tokens_to_ids(['1', '2']))


# The endpoint judge ------------------------------------------------------------------------------------------


def stub_reply(prompt: str) -> str:
    """Prefer the response that says ``good`` when only one does; no preference otherwise."""
    first = prompt.split('### Response 1:\n')[1].split('\n\n### Response 2:')[0]
    second = prompt.split('### Response 2:\n')[1].split('\n\nAnswer with')[0]
    if ('good' in first) != ('good' in second):
        return '1' if 'good' in first else 'Response 2 is better.'
    return 'Neither is better.'


@pytest.fixture
def endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict]:
    """A local OpenAI-compatible stub: ``stub_reply`` to each chat completion, the requests recorded; a request
    without the key ``sekrit`` is refused with HTTP 401."""
    monkeypatch.setenv('no_proxy', '127.0.0.1')
    monkeypatch.setenv('JUDGE_KEY', 'sekrit')
    requests = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers['Content-Length'])))
            requests.append({'path': self.path, 'authorization': self.headers['Authorization'], 'body': body})
            if self.headers['Authorization'] != 'Bearer sekrit':
                self.send_error(401, 'Unauthorized')
                return
            reply = stub_reply(body['messages'][-1]['content'])
            answer = json.dumps({'choices': [{'message': {'role': 'assistant', 'content': reply}}]}).encode()
            self.send_response(200)
            self.send_header('Content-Type', 'application/json')
            self.send_header('Content-Length', str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield {'url': f'http://127.0.0.1:{server.server_address[1]}', 'requests': requests}
    server.shutdown()
    server.server_close()


def test_endpoint_judge_against_a_stub_server(endpoint: dict, tmp_path: Path):
    a = write_json(tmp_path / 'a.json', outputs(['good answer', 'bad answer', 'good one', 'good', 'x'], 'a'))
    b = write_json(tmp_path / 'b.json', outputs(['bad answer', 'good answer', 'good two', 'bad'], 'b', ['Only B?']))
    result = compare_files(a, b, endpoint['url'], tmp_path / 'result.json', '--judge-model', 'judge-7b',
                           '--api-key-env', 'JUDGE_KEY')
    assert result['instructions'] == {'shared': 4, 'only_in_a': 1, 'only_in_b': 1}
    assert [row['verdict'] for row in result['rows']] == ['A', 'B', 'tie', 'A']
    assert (result['wins'], result['ties'], result['losses']) == (2, 1, 1)
    assert result['win_rate'] == 0.625 and result['position_consistency'] == 0.75
    # Wilson for 2.5 of 4, solved by hand (see the statistics test)
    assert result['interval'] == pytest.approx([0.21942652006536287, 0.9081007708209878], abs=1e-12)
    second_row = result['rows'][1]
    assert second_row['a_first'] == {'prefers': 'B', 'position': 2, 'reply': 'Response 2 is better.'}
    assert second_row['b_first'] == {'prefers': 'B', 'position': 1, 'reply': '1'}
    assert result['rows'][2]['a_first'] == {'prefers': None, 'position': None, 'reply': 'Neither is better.'}
    requests = endpoint['requests']
    assert len(requests) == 8
    assert {request['path'] for request in requests} == {'/v1/chat/completions'}
    assert {request['authorization'] for request in requests} == {'Bearer sekrit'}
    assert {(request['body']['model'], request['body']['temperature']) for request in requests} == {('judge-7b', 0)}
    assert 'summed_margins' not in result and 'margin_of_a' not in result['rows'][0]
    assert result['judge'] | {'prompt': None} == {
        'kind': 'endpoint', 'url': endpoint['url'] + '/v1/chat/completions', 'model': 'judge-7b', 'prompt': None,
        'verdict': "the reply's first 1 or 2 that is not part of a longer number; neither: no preference",
    }


def test_endpoint_judge_of_a_file_against_itself_asks_once_per_row(endpoint: dict, tmp_path: Path):
    a = write_json(tmp_path / 'a.json', outputs(['good answer', 'bad answer', 'meh'], 'a'))
    result = compare_files(a, a, endpoint['url'] + '/v1', tmp_path / 'result.json', '--judge-model', 'judge',
                           '--api-key-env', 'JUDGE_KEY')
    assert result['win_rate'] == 0.5 and result['ties'] == 3
    assert len(endpoint['requests']) == 3


def test_an_endpoint_refusal_is_one_line(endpoint: dict, files: dict[str, Path], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch, capsys):
    monkeypatch.setenv('JUDGE_KEY', 'wrong')
    out = tmp_path / 'result.json'
    assert run_cli(str(files['a']), str(files['b']), '--judge', endpoint['url'], '--judge-model', 'judge',
                   '--api-key-env', 'JUDGE_KEY', '--out', str(out)) == 2
    error = capsys.readouterr().err
    assert error == (
        f'llmshearing compare: error: judge endpoint {endpoint["url"]}/v1/chat/completions: HTTP 401 Unauthorized\n'
    )
    assert len(endpoint['requests']) == 1 and not out.exists()


# Bad input ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ('a_content', 'arguments', 'message'),
    [
        ({'instruction': 'Q', 'output': 'R'}, [], 'A.json a.json: not a model outputs file (a JSON list of rows with '
         'instruction and output)'),
        ('not json', [], 'A.json a.json: not a model outputs file'),
        ([{'instruction': 'Q'}], [], 'A.json a.json item 1: needs instruction and output strings'),
        ([{'instruction': 'Q', 'output': 'R'}, {'instruction': 'Q', 'output': 'S'}], [],
         'A.json a.json item 2: repeats the instruction of item 1'),
        ([{'instruction': 'Elsewhere?', 'output': 'R'}], [], 'a.json and b.json share no instruction'),
        (None, ['--judge', 'nowhere'], '--judge nowhere: neither an http:// or https:// address nor a model folder'),
        (None, ['--judge', 'http://127.0.0.1:9'], '--judge-model is needed with an endpoint judge'),
        (None, ['--judge', 'http://127.0.0.1:9', '--judge-model', 'm', '--api-key-env', 'NO_SUCH_KEY_VARIABLE'],
         '--api-key-env names NO_SUCH_KEY_VARIABLE, which is not set'),
        (None, ['--judge-model', 'm'], '--judge-model applies only to an endpoint judge'),
        (None, ['--batch-size', '0'], '--batch-size must be positive, got 0'),
        (None, ['--out', 'result.txt'], '--out must name a .json file, got result.txt'),
    ],
)
def test_bad_input_fails_with_one_line_naming_it(
    judge_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, a_content, arguments: list[str],
    message: str,
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv('NO_SUCH_KEY_VARIABLE', raising=False)
    write_json(tmp_path / 'b.json', outputs(['R'], 'b'))
    if a_content is None:
        write_json(tmp_path / 'a.json', outputs(['S'], 'a'))
    elif isinstance(a_content, str):
        (tmp_path / 'a.json').write_text(a_content)
    else:
        write_json(tmp_path / 'a.json', a_content)
    defaults = {'--judge': str(judge_dir), '--out': 'result.json'}
    for flag, value in defaults.items():
        if flag not in arguments:
            arguments = [*arguments, flag, value]
    assert run_cli('a.json', 'b.json', *arguments) == 2
    error = capsys.readouterr().err
    assert error.startswith('llmshearing compare: error: ') and error.count('\n') == 1
    assert message in error
    assert not (tmp_path / 'result.json').exists()


def test_a_judge_folder_without_tokenizer_files_fails_with_one_line(
    judge_dir: Path, files: dict[str, Path], tmp_path: Path, capsys,
):
    judge = copy_without_tokenizer(judge_dir, tmp_path / 'judge-without-tokenizer')
    out = tmp_path / 'result.json'
    assert run_cli(str(files['a']), str(files['b']), '--judge', str(judge), '--out', str(out)) == 2
    assert capsys.readouterr().err == (
        f'llmshearing compare: error: model folder {judge}: its tokenizer cannot be loaded (OSError); compare needs '
        "the model's tokenizer files (tokenizer_config.json and tokenizer.json or tokenizer.model) in the folder\n"
    )
    assert not out.exists()


def test_missing_files_and_an_existing_result_are_refused(judge_dir: Path, files: dict[str, Path], tmp_path: Path,
                                                          capsys):
    out = tmp_path / 'result.json'
    assert run_cli(str(files['a']), str(tmp_path / 'missing.json'), '--judge', str(judge_dir), '--out', str(out)) == 2
    assert f'{tmp_path / "missing.json"} does not exist' in capsys.readouterr().err
    out.write_text('keep')
    assert run_cli(str(files['a']), str(files['b']), '--judge', str(judge_dir), '--out', str(out)) == 2
    assert f'{out} exists; give a new file (it is never overwritten)' in capsys.readouterr().err
    assert out.read_text() == 'keep'
