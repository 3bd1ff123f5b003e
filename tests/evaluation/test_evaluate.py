"""``llmshearing evaluate``: task checks and subsets, the outputs, a row-for-row check against an independent
log-likelihood computation, and SmolLM2 above chance where a random model of its shape is not."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from llmshearing import cli
from llmshearing.evaluation import PAPER_TASKS, evaluate_models, load_tasks
from llmshearing.evaluation.tasks import subset_rows
from llmshearing.toy import save_toy_model
from tests.paths import SHARED

SHARED_TASKS = SHARED / 'data' / 'eval-tasks'
needs_shared_tasks = pytest.mark.skipif(
    not SHARED_TASKS.is_dir(), reason='needs ../shared/data/eval-tasks (the paper\'s downstream tasks)',
)

MULTIPLE_CHOICE_ROWS = [
    {'query': 'Question: What colour is the sky?', 'choices': ['blue', 'green', 'loud'], 'gold': 0},
    {'query': 'Question: How many legs has a cat?', 'choices': ['four', 'seven'], 'gold': 0},
    {'query': 'Question: Which is a fruit?', 'choices': ['stone', 'apple', 'chair'], 'gold': 1},
    {'query': 'Question: What melts in the sun?', 'choices': ['ice', 'iron'], 'gold': 0},
]
SCHEMA_ROWS = [
    {'context_options': ['The ball broke the window because the ball', 'The ball broke the window because the window'],
     'continuation': 'was fragile.', 'gold': 1},
    {'context_options': ['Anna lent Maria a pen because Anna', 'Anna lent Maria a pen because Maria'],
     'continuation': 'had none.', 'gold': 1},
]
LANGUAGE_MODELING_ROWS = [
    {'context': 'She opened the door and saw her old', 'continuation': 'friend'},
    {'context': 'The train left the', 'continuation': 'station'},
    {'context': 'He drank a cup of', 'continuation': 'tea'},
]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text(''.join(json.dumps(row) + '\n' for row in rows))
    return path


def copy_without_tokenizer(model_dir: Path, folder: Path) -> Path:
    """A new folder with the config and weights of the saved model ``model_dir`` and no tokenizer files."""
    folder.mkdir()
    for name in ('config.json', 'model.safetensors'):
        (folder / name).write_bytes((model_dir / name).read_bytes())
    return folder


@pytest.fixture
def task_dir(tmp_path: Path) -> Path:
    folder = tmp_path / 'tasks'
    folder.mkdir()
    write_jsonl(folder / 'quiz.jsonl', MULTIPLE_CHOICE_ROWS)
    write_jsonl(folder / 'pronouns.jsonl', SCHEMA_ROWS)
    write_jsonl(folder / 'last_word.jsonl', LANGUAGE_MODELING_ROWS)
    return folder


@pytest.fixture(scope='module')
def toy_models(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp('models')
    return [save_toy_model(root / f'toy{seed}', seed=seed) for seed in (0, 1)]


# Task files and subsets -------------------------------------------------------------------------------------


def test_kinds_are_read_from_the_rows_and_unknown_names_run_zero_shot(task_dir: Path):
    tasks = {task.name: task for task in load_tasks(['quiz', 'pronouns', 'last_word'], task_dir, None, 0)}
    assert [tasks[name].kind for name in ('quiz', 'pronouns', 'last_word')] == [
        'multiple_choice', 'schema', 'language_modeling',
    ]
    assert all(task.settings.num_fewshot == 0 and task.settings.metric == 'acc' for task in tasks.values())
    assert tasks['quiz'].num_choices == 2 and tasks['pronouns'].num_choices == 2
    assert tasks['quiz'].rows == (0, 1, 2, 3)


def test_subset_is_seeded_sorted_and_the_same_for_every_call():
    rows = subset_rows(1000, 10, seed=7)
    assert rows == subset_rows(1000, 10, seed=7) and rows == tuple(sorted(rows)) and len(set(rows)) == 10
    assert rows != subset_rows(1000, 10, seed=8)
    assert subset_rows(5, 10, seed=7) == (0, 1, 2, 3, 4)


@needs_shared_tasks
def test_paper_tasks_carry_the_paper_settings():
    tasks = {task.name: task for task in load_tasks(
        ['arc_easy', 'arc_challenge', 'boolq', 'logi_qa', 'lambada_openai'], SHARED_TASKS, 50, 0,
    )}
    assert (tasks['arc_challenge'].settings.num_fewshot, tasks['arc_challenge'].settings.metric) == (25, 'acc_norm')
    assert (tasks['boolq'].settings.num_fewshot, tasks['logi_qa'].settings.metric) == (32, 'acc_norm')
    assert tasks['arc_easy'].num_rows == 2376 and len(tasks['arc_easy'].rows) == 50
    assert tasks['lambada_openai'].kind == 'language_modeling'


@pytest.mark.parametrize(
    ('line', 'message'),
    [
        ('{"query": "Q", "choices": ["a", "b"], "gold": 2}', 'line 2: gold must be an index into its 2 choices'),
        ('{"query": "Q", "choices": ["a"], "gold": 0}', 'line 2: choices must be a list of two or more strings'),
        ('{"query": "Q", "gold": 0}', "line 2: expected a multiple_choice row with keys ['query', 'choices', 'gold']"),
        ('{"query": "Q", "choices": ["a", "b"], "gold": 0', 'line 2: not valid JSON'),
    ],
)
def test_a_malformed_row_is_named_by_file_and_line(tmp_path: Path, line: str, message: str):
    path = tmp_path / 'bad.jsonl'
    path.write_text(json.dumps(MULTIPLE_CHOICE_ROWS[0]) + '\n' + line + '\n')
    with pytest.raises(ValueError, match=f'{path} {message}'.replace('[', r'\[').replace(']', r'\]')):
        load_tasks(['bad'], tmp_path, None, 0)


def test_unknown_row_format_is_an_error(tmp_path: Path):
    write_jsonl(tmp_path / 'odd.jsonl', [{'text': 'no task here'}])
    with pytest.raises(ValueError, match='odd.jsonl line 1: unknown row format'):
        load_tasks(['odd'], tmp_path, None, 0)

def test_a_line_that_is_not_utf8_is_named_by_file_and_line(tmp_path: Path):
    path = tmp_path / 'latin.jsonl'
    path.write_bytes(json.dumps(MULTIPLE_CHOICE_ROWS[0]).encode() + b'\n{"query": "Caf\xe9", "choices": ["a", "b"]}\n')
    # '{"query": "Caf' is 14 bytes: the Latin-1 e-acute is the 15th byte of line 2.
    with pytest.raises(ValueError) as raised:
        load_tasks(['latin'], tmp_path, None, 0)
    assert str(raised.value) == f'{path} line 2: not UTF-8 text (byte 15 of the line: invalid continuation byte)'


# Bad input of the command: errors before any model is loaded ------------------------------------------------


def run_cli(*args: str) -> int:
    return cli.main(['evaluate', *args])


@pytest.mark.parametrize(
    ('arguments', 'message'),
    [
        (['MISSING_MODEL', '--tasks', 'quiz'], 'model folder MISSING_MODEL does not exist or has no config.json'),
        (['MODEL', '--tasks', 'nowhere'], "task 'nowhere': no file"),
        (['MODEL', '--tasks', 'quiz', '--limit', '0'], '--limit must be a positive number of rows, got 0'),
        (['MODEL', '--tasks', 'quiz', '--device', 'cuda'], '--device cuda: this machine has no CUDA device'),
        (['MODEL', '--tasks', 'quiz,quiz'], '--tasks names a task twice'),
        (['MODEL', '--tasks', 'paper'], "holds none of the paper's tasks"),
    ],
)
def test_bad_input_fails_with_a_message_naming_it(
    task_dir: Path, toy_models: list[Path], tmp_path: Path, capsys, arguments: list[str], message: str,
):
    if torch.cuda.is_available() and '--device' in arguments:
        pytest.skip('this machine has CUDA')
    arguments = [str(toy_models[0]) if argument == 'MODEL' else argument for argument in arguments]
    out = tmp_path / 'result.json'
    assert run_cli(*arguments, '--task-dir', str(task_dir), '--out', str(out)) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_existing_output_is_not_overwritten(task_dir: Path, toy_models: list[Path], tmp_path: Path, capsys):
    out = tmp_path / 'result.json'
    out.write_text('keep')
    assert run_cli(str(toy_models[0]), '--tasks', 'quiz', '--task-dir', str(task_dir), '--out', str(out)) == 2
    assert 'pass --overwrite to replace' in capsys.readouterr().err
    assert out.read_text() == 'keep'

def test_every_model_is_checked_before_any_is_loaded(
    task_dir: Path, toy_models: list[Path], tmp_path: Path, capsys, monkeypatch,
):
    without_tokenizer = copy_without_tokenizer(toy_models[1], tmp_path / 'no-tokenizer')
    loaded = []
    monkeypatch.setattr(AutoModelForCausalLM, 'from_pretrained', lambda folder, **kwargs: loaded.append(folder))
    out = tmp_path / 'result.json'
    arguments = [str(toy_models[0]), str(without_tokenizer), '--tasks', 'quiz', '--task-dir', str(task_dir)]
    assert run_cli(*arguments, '--out', str(out)) == 2
    assert capsys.readouterr().err == (
        f'llmshearing evaluate: error: model folder {without_tokenizer}: its tokenizer cannot be loaded (OSError); '
        "evaluate needs the model's tokenizer files (tokenizer_config.json and tokenizer.json or tokenizer.model) in "
        'the folder\n'
    )
    assert loaded == [] and not out.exists()


def test_the_results_of_the_models_before_a_failure_are_kept(
    task_dir: Path, toy_models: list[Path], tmp_path: Path, capsys,
):
    broken = tmp_path / 'broken-weights'
    broken.mkdir()
    for path in toy_models[1].iterdir():
        (broken / path.name).write_bytes(path.read_bytes())
    (broken / 'model.safetensors').write_bytes(b'not safetensors')
    out = tmp_path / 'result.json'
    arguments = [str(toy_models[0]), str(broken), '--tasks', 'quiz', '--task-dir', str(task_dir)]
    assert run_cli(*arguments, '--out', str(out)) == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith(  # after the first model's progress bars
        f'llmshearing evaluate: error: model folder {broken}: its weights cannot be loaded: ',
    )
    result = json.loads(out.read_text())
    assert list(result['models']) == [str(toy_models[0])]
    assert result['models'][str(toy_models[0])]['tasks']['quiz']['n'] == len(MULTIPLE_CHOICE_ROWS)
    rows = [json.loads(line) for line in out.with_suffix('.samples.jsonl').read_text().splitlines()]
    assert [(row['model'], row['row']) for row in rows] == [(str(toy_models[0]), row) for row in range(4)]


# Outputs and the independent check --------------------------------------------------------------------------


def continuation_loglikelihood(model, tokenizer, context: str, continuation: str) -> tuple[float, bool]:
    """Sum of log-probabilities of the continuation's tokens after the context, and whether each is the argmax."""
    whole = tokenizer(context + continuation).input_ids
    context_length = len(tokenizer(context).input_ids)
    with torch.no_grad():
        log_probs = model(torch.tensor([whole])).logits[0].float().log_softmax(-1)
    targets = torch.tensor(whole[context_length:])
    predicted = log_probs[context_length - 1:-1]
    loglikelihood = predicted.gather(-1, targets[:, None]).sum().item()
    return loglikelihood, bool((predicted.argmax(-1) == targets).all())


def independent_records(model_dir: Path, task_dir: Path, rows_of_task: dict[str, list[int]]) -> dict:
    """Each row's log-likelihoods, computed directly with transformers from the task files."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    records = {}
    for task, rows in rows_of_task.items():
        lines = (task_dir / f'{task}.jsonl').read_text().splitlines()
        for index in rows:
            row = json.loads(lines[index])
            if 'choices' in row:
                query = row['query'].strip() + '\nAnswer:' if task in PAPER_TASKS else row['query']
                pairs = [(query, ' ' + choice) for choice in row['choices']]
            elif 'context_options' in row:
                pairs = [(option, ' ' + row['continuation']) for option in row['context_options']]
            else:
                pairs = [(row['context'], ' ' + row['continuation'].strip())]
            scored = [continuation_loglikelihood(model, tokenizer, context, text) for context, text in pairs]
            records[(task, index)] = scored
    return records


def assert_rows_match(records: list[dict], independent: dict, tolerance: float) -> None:
    assert {(record['task'], record['row']) for record in records} == set(independent)
    for record in records:
        expected = independent[(record['task'], record['row'])]
        assert record['loglikelihoods'] == pytest.approx([ll for ll, _ in expected], abs=tolerance)
        if 'prediction' in record:
            expected_lls = [ll for ll, _ in expected]
            assert record['prediction'] == max(range(len(expected_lls)), key=expected_lls.__getitem__)
            assert record['acc'] == float(record['prediction'] == record['gold'])
        else:
            assert record['greedy'] == expected[0][1] and record['acc'] == int(expected[0][1])


def test_outputs_and_rows_match_an_independent_computation(task_dir: Path, toy_models: list[Path], tmp_path: Path):
    out = tmp_path / 'eval' / 'result.json'
    models = [str(model) for model in toy_models]
    assert run_cli(*models, '--tasks', 'quiz,pronouns,last_word', '--task-dir', str(task_dir), '--limit', '3',
                   '--seed', '5', '--out', str(out)) == 0
    result = json.loads(out.read_text())
    rows = {name: task['rows'] for name, task in result['settings']['tasks'].items()}
    assert rows == {'quiz': list(subset_rows(4, 3, 5)), 'pronouns': [0, 1], 'last_word': [0, 1, 2]}
    assert result['settings']['limit'] == 3 and result['settings']['seed'] == 5
    for model in models:
        model_result = result['models'][model]
        assert model_result['parameters'] == sum(
            parameter.numel() for parameter in AutoModelForCausalLM.from_pretrained(model).parameters()
        )
        assert set(model_result['tasks']) == {'quiz', 'pronouns', 'last_word'}
        quiz = model_result['tasks']['quiz']
        assert quiz['n'] == 3 and quiz['num_fewshot'] == 0 and quiz['acc_norm'] is not None
        assert model_result['tasks']['last_word']['acc_norm'] is None
        assert all(math.isfinite(task['stderr']) for task in model_result['tasks'].values())
        assert model_result['average'] == pytest.approx(
            sum(task['acc'] for task in model_result['tasks'].values()) / 3,
        )
    records = [json.loads(line) for line in out.with_suffix('.samples.jsonl').read_text().splitlines()]
    for model in models:
        model_records = [record for record in records if record['model'] == model]
        assert_rows_match(model_records, independent_records(Path(model), task_dir, rows), tolerance=1e-4)
    table = out.with_suffix('.md').read_text()
    assert (
        '| model | parameters | quiz (acc, 0-shot) | pronouns (acc, 0-shot) | last_word (acc, 0-shot) | average |'
        in table
    )
    assert table.count('| toy') == 2
    assert out.with_suffix('.png').read_bytes()[:4] == b'\x89PNG'


LENGTH_ROWS = [  # gold answers of very different lengths, so that acc and acc_norm part ways
    {'query': 'Question: Which one?', 'choices': ['no', 'a very long and winding answer'], 'gold': 1},
    {'query': 'Question: And this?', 'choices': ['it is the longest answer of them all', 'ok', 'sure'], 'gold': 0},
    {'query': 'Question: Pick one.', 'choices': ['x', 'a middling reply', 'yz'], 'gold': 1},
    {'query': 'Question: Now?', 'choices': ['later, when the sun has set', 'now'], 'gold': 0},
    {'query': 'Question: Colour?', 'choices': ['red', 'a deep shade of blue'], 'gold': 1},
    {'query': 'Question: Size?', 'choices': ['small', 'enormous beyond words'], 'gold': 1},
]


def test_acc_and_acc_norm_are_those_of_direct_log_likelihoods(tmp_path: Path, toy_models: list[Path]):
    """A task of the paper scored by acc_norm (LogiQA), on rows written here: each choice's log-likelihood computed
    with transformers; acc takes the highest, acc_norm the highest per character of the choice (lm-eval's
    length normalisation), both averaged over the rows."""
    write_jsonl(tmp_path / 'logi_qa.jsonl', LENGTH_ROWS)
    model_dir = toy_models[0]
    independent = independent_records(model_dir, tmp_path, {'logi_qa': list(range(len(LENGTH_ROWS)))})
    correct, correct_normalised = [], []
    for index, row in enumerate(LENGTH_ROWS):
        lls = [ll for ll, _ in independent['logi_qa', index]]
        per_character = [ll / len(choice) for ll, choice in zip(lls, row['choices'])]
        correct.append(max(range(len(lls)), key=lls.__getitem__) == row['gold'])
        correct_normalised.append(max(range(len(lls)), key=per_character.__getitem__) == row['gold'])
    expected_acc, expected_acc_norm = sum(correct) / 6, sum(correct_normalised) / 6
    assert expected_acc != expected_acc_norm  # the rows tell the two metrics apart

    result, records = evaluate_models([model_dir], 'logi_qa', tmp_path)
    scored = result['models'][str(model_dir)]['tasks']['logi_qa']
    assert (scored['acc'], scored['acc_norm']) == (pytest.approx(expected_acc), pytest.approx(expected_acc_norm))
    assert (scored['metric'], scored['score']) == ('acc_norm', scored['acc_norm'])
    assert [record['acc_norm'] for record in records] == [float(outcome) for outcome in correct_normalised]
    assert [record['acc'] for record in records] == [float(outcome) for outcome in correct]


def test_a_few_shot_prompt_is_the_other_rows_question_and_gold_answer_before_the_question(
    tmp_path: Path, toy_models: list[Path],
):
    """One shot on a file of two rows: the shot of each row can only be the other row, so the whole prompt is
    known: its question, the answer prompt, a space and its gold choice, a blank line, then the row's question.
    The log-likelihoods of every choice after that prompt, computed with transformers, are those evaluated."""
    rows = MULTIPLE_CHOICE_ROWS[:2]
    write_jsonl(tmp_path / 'arc_challenge.jsonl', rows)
    model_dir = toy_models[1]
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompts = [
        'Question: How many legs has a cat?\nAnswer: four\n\nQuestion: What colour is the sky?\nAnswer:',
        'Question: What colour is the sky?\nAnswer: blue\n\nQuestion: How many legs has a cat?\nAnswer:',
    ]
    result, records = evaluate_models([model_dir], 'arc_challenge', tmp_path, num_fewshot=1)
    assert result['settings']['tasks']['arc_challenge']['num_fewshot'] == 1
    assert result['models'][str(model_dir)]['tasks']['arc_challenge']['num_fewshot'] == 1
    for record, row, prompt in zip(records, rows, prompts):
        expected = [continuation_loglikelihood(model, tokenizer, prompt, ' ' + choice)[0] for choice in row['choices']]
        assert record['loglikelihoods'] == pytest.approx(expected, abs=1e-4)
    zero_shot = continuation_loglikelihood(model, tokenizer, rows[0]['query'] + '\nAnswer:', ' blue')[0]
    assert abs(records[0]['loglikelihoods'][0] - zero_shot) > 1e-2  # the shot changes what is scored


def test_the_paper_tasks_record_the_papers_shots_and_metrics(tmp_path: Path):
    """Table 1 of the paper: 25-shot ARC-C, 10-shot HellaSwag and 32-shot BoolQ, every other task 0-shot; the
    harness config of each task carries its shots."""
    for name in PAPER_TASKS:
        write_jsonl(tmp_path / f'{name}.jsonl', MULTIPLE_CHOICE_ROWS)
    tasks = {task.name: task for task in load_tasks(list(PAPER_TASKS), tmp_path, None, 0)}
    shots = {name: task.settings.num_fewshot for name, task in tasks.items()}
    assert shots == {
        'sciq': 0, 'piqa': 0, 'winogrande': 0, 'arc_easy': 0, 'arc_challenge': 25, 'hellaswag': 10, 'logi_qa': 0,
        'boolq': 32, 'lambada_openai': 0,
    }
    assert {name for name, task in tasks.items() if task.settings.metric == 'acc_norm'} == {
        'arc_challenge', 'hellaswag', 'logi_qa',
    }
    for name, task in tasks.items():
        assert task.harness_config(task.settings.num_fewshot)['num_fewshot'] == shots[name]


def test_amp_bf16_autocasts_the_forward_of_float32_weights(task_dir: Path, toy_models: list[Path]):
    model = str(toy_models[0])
    tasks = 'quiz,last_word'
    result, records = evaluate_models([model], tasks, task_dir, dtype='amp_bf16')
    assert result['settings']['dtype'] == 'amp_bf16'
    assert result['models'][model]['parameters'] == sum(
        parameter.numel() for parameter in AutoModelForCausalLM.from_pretrained(model).parameters()
    )
    fp32 = independent_records(Path(model), task_dir, {'quiz': [0, 1, 2, 3], 'last_word': [0, 1, 2]})
    differences = [
        abs(loglikelihood - expected)
        for record in records
        for loglikelihood, (expected, _) in zip(record['loglikelihoods'], fp32[(record['task'], record['row'])])
    ]
    assert len(differences) == sum(len(choices) for choices in fp32.values())
    # float32 through the harness matches this computation within 1e-4 (test above); bfloat16 matmuls do not.
    assert max(differences) < 0.5, differences
    assert max(differences) > 1e-3, f'amp_bf16 gave the float32 log-likelihoods: no autocast ({max(differences)})'


# The real model ----------------------------------------------------------------------------------------------


@needs_shared_tasks
def test_smollm2_rows_match_an_independent_computation(smollm2: Path):
    result, records = evaluate_models([smollm2], 'arc_easy,winogrande,lambada_openai', SHARED_TASKS, limit=3, seed=0)
    rows = {name: task['rows'] for name, task in result['settings']['tasks'].items()}
    assert_rows_match(records, independent_records(smollm2, SHARED_TASKS, rows), tolerance=2e-4)
    assert result['models'][str(smollm2)]['parameters'] == 134_515_008


@pytest.fixture(scope='module')
def random_smollm2_shape(smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised model of SmolLM2's shape, with its tokenizer."""
    folder = tmp_path_factory.mktemp('random') / 'random-135M'
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(smollm2)).save_pretrained(folder)
    AutoTokenizer.from_pretrained(smollm2).save_pretrained(folder)
    return folder


@needs_shared_tasks
def test_smollm2_is_above_chance_where_a_random_model_is_not(smollm2: Path, random_smollm2_shape: Path):
    result, _ = evaluate_models(
        [smollm2, random_smollm2_shape], 'arc_easy,piqa', SHARED_TASKS, limit=100, seed=0, dtype='amp_bf16'
    )
    for task in ('arc_easy', 'piqa'):
        chance = result['settings']['tasks'][task]['chance']
        trained = result['models'][str(smollm2)]['tasks'][task]
        untrained = result['models'][str(random_smollm2_shape)]['tasks'][task]
        assert trained['acc'] - chance > 2 * trained['stderr'], (task, trained)
        assert untrained['acc'] - chance < 2 * untrained['stderr'], (task, untrained)
