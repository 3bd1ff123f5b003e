"""``llmshearing generate``: AlpacaEval's output format, responses equal to a plain greedy loop (batched or not, with
or without a pad token, stopping at EOS), the chat template's prompt, seeded sampling and every bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LlamaForCausalLM

from llmshearing import cli
from llmshearing.evaluation.generation import generate_responses, model_prompt
from llmshearing.toy import byte_level_tokenizer, save_toy_model
from tests.evaluation.test_evaluate import copy_without_tokenizer, write_jsonl

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}\n{% endfor %}"
    '{% if add_generation_prompt %}<|assistant|>{% endif %}'
)
PROMPT_ROWS = [
    {'instruction': 'Name a colour.'},
    {'instruction': 'Translate to English.', 'input': 'bonjour'},
    {'prompt': 'Write two words.', 'dataset': 'ifeval'},
    {'turns': ['Hello there, how are you today?', 'And tomorrow?']},
]
INSTRUCTIONS = ['Name a colour.', 'Translate to English.\n\nbonjour', 'Write two words.',
                'Hello there, how are you today?']


@pytest.fixture(scope='module')
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A random Llama with the byte-level tokenizer as it is (a pad token, no chat template), with a chat template,
    and without a pad token."""
    root = tmp_path_factory.mktemp('models')
    plain = save_toy_model(root / 'plain', seed=0, num_hidden_layers=2)
    folders = {'plain': plain}
    for name in ('templated', 'unpadded'):
        folder = save_toy_model(root / name, seed=0, num_hidden_layers=2)
        tokenizer = byte_level_tokenizer()
        if name == 'templated':
            tokenizer.chat_template = CHAT_TEMPLATE
        else:
            tokenizer.pad_token = None
        tokenizer.save_pretrained(folder)
        folders[name] = folder
    return folders


@pytest.fixture
def prompts_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / 'prompts.jsonl', PROMPT_ROWS)


def greedy_response(model_dir: Path, text: str, max_new_tokens: int, add_special_tokens: bool = True) -> str:
    """A plain greedy loop, one token at a time on the unpadded prompt, up to an EOS token of the generation config."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos]) | {tokenizer.eos_token_id}
    ids = tokenizer(text, add_special_tokens=add_special_tokens).input_ids
    new = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            token = model(torch.tensor([ids + new])).logits[0, -1].argmax().item()
            if token in eos:
                break
            new.append(token)
    return tokenizer.decode(new, skip_special_tokens=True).strip()


def run_cli(*args: str) -> int:
    return cli.main(['generate', *args])


def test_outputs_are_alpaca_eval_rows_of_greedy_responses(models: dict[str, Path], prompts_file: Path, tmp_path: Path):
    out = tmp_path / 'outputs' / 'plain.json'
    assert run_cli(str(models['plain']), '--prompts', str(prompts_file), '--max-new-tokens', '6', '--batch-size', '3',
                   '--out', str(out)) == 0
    rows = json.loads(out.read_text())
    assert [list(row) for row in rows] == [['instruction', 'output', 'generator', 'dataset']] * 4
    assert [row['instruction'] for row in rows] == INSTRUCTIONS
    assert [row['generator'] for row in rows] == ['plain'] * 4
    assert [row['dataset'] for row in rows] == ['prompts', 'prompts', 'ifeval', 'prompts']
    assert [row['output'] for row in rows] == [
        greedy_response(models['plain'], instruction, 6) for instruction in INSTRUCTIONS
    ]


def test_a_json_list_with_a_limit_and_a_generator_name(models: dict[str, Path], tmp_path: Path):
    prompts = tmp_path / 'alpaca_eval.json'
    prompts.write_text(json.dumps(PROMPT_ROWS, indent=2))
    out = tmp_path / 'outputs.json'
    assert run_cli(str(models['plain']), '--prompts', str(prompts), '--limit', '2', '--max-new-tokens', '3',
                   '--generator', 'tiny-llama', '--out', str(out)) == 0
    rows = json.loads(out.read_text())
    assert [(row['instruction'], row['generator'], row['dataset']) for row in rows] == [
        (INSTRUCTIONS[0], 'tiny-llama', 'alpaca_eval'), (INSTRUCTIONS[1], 'tiny-llama', 'alpaca_eval'),
    ]


@pytest.mark.parametrize('name', ['plain', 'unpadded'])
def test_batched_left_padded_generation_equals_one_by_one(models: dict[str, Path], name: str):
    """Prompts of different lengths in one batch: left padding changes no greedy response, pad token or not."""
    assert AutoTokenizer.from_pretrained(models[name]).pad_token == (None if name == 'unpadded' else '</s>')
    batched = generate_responses(models[name], INSTRUCTIONS, max_new_tokens=10, batch_size=4)
    one_by_one = [generate_responses(models[name], [text], max_new_tokens=10, batch_size=1)[0] for text in INSTRUCTIONS]
    assert batched == one_by_one
    assert batched == [greedy_response(models[name], text, 10) for text in INSTRUCTIONS]


def test_generation_stops_at_an_eos_token_of_the_generation_config(models: dict[str, Path], tmp_path: Path):
    """The token the model writes third becomes an EOS token: the response ends before it."""
    folder = tmp_path / 'eos'
    model = LlamaForCausalLM.from_pretrained(models['plain'])
    tokenizer = AutoTokenizer.from_pretrained(models['plain'])
    ids = tokenizer(INSTRUCTIONS[0]).input_ids
    with torch.no_grad():
        for _ in range(3):
            ids.append(model(torch.tensor([ids])).logits[0, -1].argmax().item())
    stop = ids[-1]
    model.generation_config = GenerationConfig(eos_token_id=[tokenizer.eos_token_id, stop])
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    response = generate_responses(folder, INSTRUCTIONS[:1], max_new_tokens=10)[0]
    assert response == greedy_response(folder, INSTRUCTIONS[0], 10)
    written = ids[-3:]
    assert response == tokenizer.decode(written[:written.index(stop)]).strip()


def test_the_chat_template_writes_the_prompt_handed_to_the_model(
    models: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
):
    handed = []
    generate = LlamaForCausalLM.generate

    def recording_generate(self, input_ids, attention_mask, **kwargs):
        handed.extend(ids[mask.bool()].tolist() for ids, mask in zip(input_ids, attention_mask))
        return generate(self, input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    monkeypatch.setattr(LlamaForCausalLM, 'generate', recording_generate)
    tokenizer = AutoTokenizer.from_pretrained(models['templated'])
    expected = '<|user|>Name a colour.\n<|assistant|>'
    assert model_prompt(tokenizer, 'Name a colour.') == expected
    response = generate_responses(models['templated'], ['Name a colour.'], max_new_tokens=5)[0]
    assert [tokenizer.decode(ids) for ids in handed] == [expected]
    assert response == greedy_response(models['templated'], expected, 5, add_special_tokens=False)
    assert model_prompt(AutoTokenizer.from_pretrained(models['plain']), 'Name a colour.') == 'Name a colour.'


def test_seeded_sampling_is_reproducible(models: dict[str, Path], prompts_file: Path, tmp_path: Path):
    outputs = {}
    for name, seed in (('first', '3'), ('again', '3'), ('other', '4')):
        out = tmp_path / f'{name}.json'
        assert run_cli(str(models['plain']), '--prompts', str(prompts_file), '--sample', '--temperature', '0.9',
                       '--top-p', '0.95', '--seed', seed, '--max-new-tokens', '8', '--out', str(out)) == 0
        outputs[name] = [row['output'] for row in json.loads(out.read_text())]
    assert outputs['first'] == outputs['again']
    assert outputs['first'] != outputs['other']
    assert outputs['first'] != [greedy_response(models['plain'], text, 8) for text in INSTRUCTIONS]


@pytest.mark.parametrize(
    ('arguments', 'rows', 'message'),
    [
        (['MISSING_MODEL'], PROMPT_ROWS, 'model folder MISSING_MODEL does not exist or has no config.json'),
        (['MODEL', '--prompts', 'nowhere.jsonl'], None, 'prompt file nowhere.jsonl does not exist'),
        (['MODEL'], [PROMPT_ROWS[0], {'text': 'no prompt'}], 'prompts.jsonl line 2: a row needs a non-empty '
         'instruction, prompt or turns field'),
        (['MODEL'], [PROMPT_ROWS[0], {'turns': []}], 'prompts.jsonl line 2: a row needs'),
        (['MODEL'], '{"instruction": "a"}\n{"instruction": \n', 'prompts.jsonl line 2: not valid JSON'),
        (['MODEL'], '[{"instruction": "a"}, {"prompt": ""}]', 'prompts.jsonl item 2: a row needs'),
        (['MODEL'], '\n', 'prompts.jsonl holds no prompts'),
        (['MODEL', '--limit', '0'], PROMPT_ROWS, '--limit must be positive, got 0'),
        (['MODEL', '--max-new-tokens', '-1'], PROMPT_ROWS, '--max-new-tokens must be positive, got -1'),
        (['MODEL', '--batch-size', '0'], PROMPT_ROWS, '--batch-size must be positive, got 0'),
        (['MODEL', '--temperature', '0.5'], PROMPT_ROWS, '--temperature applies only when sampling'),
        (['MODEL', '--sample', '--temperature', '0'], PROMPT_ROWS, '--temperature must be positive, got 0.0'),
        (['MODEL', '--sample', '--top-p', '1.5'], PROMPT_ROWS, '--top-p must be in (0, 1], got 1.5'),
        (['MODEL', '--out', 'outputs.jsonl'], PROMPT_ROWS, '--out must name a .json file, got outputs.jsonl'),
    ],
)
def test_bad_input_fails_with_one_line_naming_it(
    models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys,
    arguments: list[str], rows: list | str | None, message: str,
):
    monkeypatch.chdir(tmp_path)
    if isinstance(rows, list):
        write_jsonl(tmp_path / 'prompts.jsonl', rows)
    elif rows is not None:
        (tmp_path / 'prompts.jsonl').write_text(rows)
    arguments = [str(models['plain']) if argument == 'MODEL' else argument for argument in arguments]
    defaults = {'--prompts': 'prompts.jsonl', '--out': 'outputs.json'}
    for flag, value in defaults.items():
        if flag not in arguments:
            arguments += [flag, value]
    assert run_cli(*arguments) == 2
    error = capsys.readouterr().err
    assert error.startswith('llmshearing generate: error: ') and error.count('\n') == 1
    assert message in error
    assert not (tmp_path / 'outputs.json').exists()


def test_a_model_folder_without_tokenizer_files_fails_with_one_line(
    models: dict[str, Path], prompts_file: Path, tmp_path: Path, capsys,
):
    without_tokenizer = copy_without_tokenizer(models['plain'], tmp_path / 'no-tokenizer')
    out = tmp_path / 'outputs.json'
    assert run_cli(str(without_tokenizer), '--prompts', str(prompts_file), '--out', str(out)) == 2
    assert capsys.readouterr().err == (
        f'llmshearing generate: error: model folder {without_tokenizer}: its tokenizer cannot be loaded (OSError); '
        "generate needs the model's tokenizer files (tokenizer_config.json and tokenizer.json or tokenizer.model) in "
        'the folder\n'
    )
    assert not out.exists()


def test_an_existing_output_file_is_never_overwritten(models: dict[str, Path], prompts_file: Path, tmp_path: Path,
                                                      capsys):
    out = tmp_path / 'outputs.json'
    out.write_text('keep')
    assert run_cli(str(models['plain']), '--prompts', str(prompts_file), '--out', str(out)) == 2
    assert f'{out} exists; give a new file (it is never overwritten)' in capsys.readouterr().err
    assert out.read_text() == 'keep'
