"""The instruction-tuning recipes: the paper's prompt as the tokenizer's chat template, the loss on responses only
(prompt tokens are -100 in the labels), and a tiny run through ``train.py`` whose exported tokenizer keeps the
template."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from llmfoundry.data.dataloader import build_dataloader
from llmfoundry.utils.builders import build_tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmshearing.data.instructions import prepare_instructions
from llmshearing.loggers import read_metrics
from llmshearing.preflight import check_train_config, load_train_config
from llmshearing.toy import byte_level_tokenizer, save_toy_model
from tests.paths import REPO

TINY = REPO / 'yamls' / 'tiny' / 'instruction_tuning.yaml'
RECIPES = [TINY, *sorted((REPO / 'yamls' / 'instruction_tuning').glob('*.yaml'))]
PREAMBLE = 'You are a helpful assistant. Write a response that appropriately completes the request.'
IGNORED = -100


def chat_template(recipe: Path) -> str:
    return load_train_config(recipe, []).tokenizer.kwargs.chat_template


def test_every_recipe_renders_the_papers_prompt():
    """The model card's prompt, ``{preamble}\\n\\n### Input:\\n{input}\\n\\n### Response:``, then the response and EOS;
    a system message replaces the preamble; later turns repeat the two headers."""
    templates = {chat_template(recipe) for recipe in RECIPES}
    assert len(templates) == 1
    tokenizer = byte_level_tokenizer()
    tokenizer.chat_template = templates.pop()
    question, answer = {'role': 'user', 'content': 'Name a colour.'}, {'role': 'assistant', 'content': 'Blue.'}
    render = tokenizer.apply_chat_template
    assert render([question, answer], tokenize=False) == (
        f'<s>{PREAMBLE}\n\n### Input:\nName a colour.\n\n### Response:Blue.</s>')
    assert render([question], tokenize=False, add_generation_prompt=True) == (
        f'<s>{PREAMBLE}\n\n### Input:\nName a colour.\n\n### Response:')
    system = {'role': 'system', 'content': 'Be brief.'}
    again = {'role': 'user', 'content': 'Another?'}
    assert render([system, question, answer, again], tokenize=False, add_generation_prompt=True) == (
        '<s>Be brief.\n\n### Input:\nName a colour.\n\n### Response:Blue.</s>\n\n### Input:\nAnother?\n\n### Response:')


def write_chat_files(folder: Path, conversations: list[list[dict]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split in ('train', 'eval'):
        (folder / f'{split}.jsonl').write_text(''.join(json.dumps({'messages': m}) + '\n' for m in conversations))
    return folder


def test_prompt_tokens_are_masked_out_of_the_labels(tmp_path):
    """A batch of the tiny recipe's train loader: with the byte-level tokenizer a character is a token, so each
    response's positions are counted by hand; every other position is -100 and each response is its own target."""
    save_toy_model(tmp_path / 'model')
    one_turn = [{'role': 'user', 'content': 'Hi'}, {'role': 'assistant', 'content': 'Hello'}]
    two_turns = [{'role': 'user', 'content': 'A?'}, {'role': 'assistant', 'content': 'B'},
                 {'role': 'user', 'content': 'C?'}, {'role': 'assistant', 'content': 'D'}]
    data = write_chat_files(tmp_path / 'data', [one_turn, two_turns])
    config = check_train_config(load_train_config(TINY, [
        f'variables.model_path={tmp_path / "model"}', f'variables.data_local={data}',
        f'variables.output_dir={tmp_path / "run"}', 'train_loader.dataset.shuffle=false', 'max_seq_len=160',
    ]))
    tokenizer = build_tokenizer(config.tokenizer['name'], config.tokenizer['kwargs'])
    batch = next(iter(build_dataloader(config.train_loader, tokenizer, 2).dataloader))

    def tokens(text: str) -> int:  # the byte-level tokenizer: <s> and </s> are a token each, every other byte one
        return len(text.replace('<s>', '^').replace('</s>', '$'))

    prompt = f'<s>{PREAMBLE}\n\n### Input:\n'
    target_spans = [
        [(tokens(f'{prompt}Hi\n\n### Response:'), 'Hello</s>')],
        [(tokens(f'{prompt}A?\n\n### Response:'), 'B</s>'),
         (tokens(f'{prompt}A?\n\n### Response:B</s>\n\n### Input:\nC?\n\n### Response:'), 'D</s>')],
    ]
    for row, spans in enumerate(target_spans):
        expected = torch.full((160,), IGNORED)
        for start, text in spans:
            end = start + tokens(text)
            assert tokenizer.decode(batch['input_ids'][row, start:end]) == text
            expected[start:end] = batch['input_ids'][row, start:end]
        assert torch.equal(batch['labels'][row], expected)
    assert tokenizer.decode(batch['input_ids'][1][batch['attention_mask'][1].bool()]) == (
        f'{prompt}A?\n\n### Response:B</s>\n\n### Input:\nC?\n\n### Response:D</s>')


@pytest.mark.slow
def test_a_tiny_run_through_train_py_exports_a_model_whose_tokenizer_has_the_template(tmp_path):
    """A real ``train.py`` run of the tiny recipe (about 40 s: Composer's start and 6 batches) on data made by
    ``prepare_instructions``: the training loss falls, and the exported tokenizer renders the paper's prompt."""
    save_toy_model(tmp_path / 'model')
    rows = [{'instruction': f'Repeat the word {word}.', 'output': f'{word} {word}'}
            for word in ('apple', 'pear', 'plum', 'fig', 'kiwi', 'lime', 'date', 'melon') * 4]
    (tmp_path / 'rows.json').write_text(json.dumps(rows))
    prepare_instructions(tmp_path / 'rows.json', tmp_path / 'data', 'alpaca', eval_examples=4)
    output_dir = tmp_path / 'run'
    command = [
        sys.executable, str(REPO / 'train.py'), str(TINY), f'variables.model_path={tmp_path / "model"}',
        f'variables.data_local={tmp_path / "data"}', f'variables.output_dir={output_dir}', 'max_duration=6ba',
        'eval_interval=6ba', 'save_interval=6ba', 'max_seq_len=160',
    ]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    losses = dict(read_metrics(output_dir / 'metrics.jsonl')['loss/train/total'])
    assert sorted(losses) == list(range(6))
    assert losses[5] < losses[0]
    exported = output_dir / 'huggingface' / 'final'
    tokenizer = AutoTokenizer.from_pretrained(exported)
    assert tokenizer.chat_template == chat_template(TINY)
    question = [{'role': 'user', 'content': 'Repeat the word fig.'}]
    assert tokenizer.apply_chat_template(question, tokenize=False, add_generation_prompt=True) == (
        f'<s>{PREAMBLE}\n\n### Input:\nRepeat the word fig.\n\n### Response:')
    assert AutoModelForCausalLM.from_pretrained(exported).config.vocab_size == len(tokenizer)
