"""``llmshearing reference-loss``: per-domain eval losses and scaling-law predictions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import LlamaForCausalLM

from llmshearing.cli import main
from llmshearing.data.reference_loss import evaluate_domain_losses, fit_scaling_law, predict_reference_losses
from llmshearing.toy import random_token_samples, save_toy_model, write_token_shards

SEQ_LEN = 24
VOCAB_SIZE = 259
SAMPLES_PER_DOMAIN = {'books': 3, 'code': 5}
LAWS = {'books': (1.8, 406.4, 0.34), 'code': (0.9, 80.0, 0.22)}  # (E, A, alpha) per domain
SIZES = (1.3e8, 4.1e8, 1.4e9, 2.7e9, 7.0e9)


@pytest.fixture(scope='module')
def model_dir(tmp_path_factory) -> Path:
    return save_toy_model(tmp_path_factory.mktemp('toy') / 'model', hidden_size=32, num_hidden_layers=2)


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory) -> Path:
    """``eval/<domain>`` for two domains of random tokens, plus an ``eval_merge`` that must be left out."""
    root = tmp_path_factory.mktemp('data')
    for seed, (domain, count) in enumerate(SAMPLES_PER_DOMAIN.items()):
        write_token_shards(root / 'eval' / domain, random_token_samples(count, SEQ_LEN, VOCAB_SIZE, seed=seed))
    write_token_shards(root / 'eval' / 'eval_merge', random_token_samples(2, SEQ_LEN, VOCAB_SIZE, seed=9))
    return root


def hand_computed_loss(model: LlamaForCausalLM, samples: list[np.ndarray]) -> float:
    """Mean over all predicted tokens of −log p(next token), one sample at a time."""
    negative_log_likelihoods = []
    with torch.no_grad():
        for sample in samples:
            ids = torch.tensor(sample, dtype=torch.int64)
            log_probabilities = torch.log_softmax(model(input_ids=ids[None]).logits[0, :-1], dim=-1)
            negative_log_likelihoods.append(-log_probabilities[torch.arange(len(ids) - 1), ids[1:]])
    return torch.cat(negative_log_likelihoods).mean().item()


def law_losses(size: float) -> dict[str, float]:
    """Each domain's loss at ``size`` parameters under ``LAWS``."""
    losses = {}
    for domain, (irreducible, coefficient, exponent) in LAWS.items():
        losses[domain] = irreducible + coefficient * size**-exponent
    return losses


def write_points(folder: Path) -> list[Path]:
    """One losses file per size in ``SIZES``, as ``reference-loss eval`` writes them."""
    paths = []
    for size in SIZES:
        path = folder / f'model-{size:.0e}.json'
        path.write_text(json.dumps({'model': str(path), 'parameters': size, 'losses': law_losses(size)}))
        paths.append(path)
    return paths


def test_eval_matches_a_hand_computation(model_dir, data_dir):
    result = evaluate_domain_losses(model_dir, data_dir, batch_size=2, device='cpu')
    model = LlamaForCausalLM.from_pretrained(model_dir).eval()
    assert list(result['losses']) == ['books', 'code']
    for seed, (domain, count) in enumerate(SAMPLES_PER_DOMAIN.items()):
        expected = hand_computed_loss(model, random_token_samples(count, SEQ_LEN, VOCAB_SIZE, seed=seed))
        assert result['losses'][domain] == pytest.approx(expected, rel=1e-5)
    assert result['tokens'] == {'books': 3 * (SEQ_LEN - 1), 'code': 5 * (SEQ_LEN - 1)}
    assert result['parameters'] == sum(parameter.numel() for parameter in model.parameters())
    assert result['model'] == str(model_dir.resolve())


def test_eval_command_writes_the_losses(model_dir, data_dir, tmp_path):
    out = tmp_path / 'losses.json'
    command = ['reference-loss', 'eval', str(model_dir), str(data_dir), '--out', str(out), '--device', 'cpu']
    assert main(command + ['--domains', 'code', '--max-samples', '2']) == 0
    written = json.loads(out.read_text())
    model = LlamaForCausalLM.from_pretrained(model_dir).eval()
    expected = hand_computed_loss(model, random_token_samples(5, SEQ_LEN, VOCAB_SIZE, seed=1)[:2])
    assert list(written['losses']) == ['code']
    assert written['losses']['code'] == pytest.approx(expected, rel=1e-5)
    assert written['tokens'] == {'code': 2 * (SEQ_LEN - 1)}


@pytest.mark.parametrize(
    ('model', 'data', 'domains', 'message'),
    [
        ('absent', 'data', None, 'model folder {tmp}/absent does not exist'),
        ('model', 'absent', None, 'eval folder {tmp}/absent/eval does not exist'),
        ('model', 'data', ['books', 'web'], 'eval split {data}/eval/web does not exist (no index.json)'),
    ],
)
def test_eval_errors_name_the_path(model_dir, data_dir, tmp_path, model, data, domains, message):
    with pytest.raises(FileNotFoundError) as raised:
        evaluate_domain_losses(
            model_dir if model == 'model' else tmp_path / model, data_dir if data == 'data' else tmp_path / data,
            domains=domains,
        )
    assert str(raised.value) == message.format(tmp=tmp_path, data=data_dir)


def test_eval_refuses_tokens_outside_the_vocabulary(tmp_path):
    model_dir = save_toy_model(tmp_path / 'model', hidden_size=32, num_hidden_layers=1)
    write_token_shards(tmp_path / 'data' / 'eval' / 'web', [np.array([5, 300, 7, 8], dtype=np.uint16)])
    with pytest.raises(ValueError) as raised:
        evaluate_domain_losses(model_dir, tmp_path / 'data', device='cpu')
    assert str(raised.value) == (
        f"eval split {tmp_path}/data/eval/web has token id 300, outside the vocabulary of the model (259 tokens):"
        " prepare the data with the model's tokenizer"
    )


def test_fit_recovers_the_scaling_law():
    for irreducible, coefficient, exponent in LAWS.values():
        losses = [irreducible + coefficient * size**-exponent for size in SIZES]
        law = fit_scaling_law(SIZES, losses)
        assert law.E == pytest.approx(irreducible, rel=1e-6)
        assert law.A == pytest.approx(coefficient, rel=1e-6)
        assert law.alpha == pytest.approx(exponent, rel=1e-6)


def test_fit_through_three_points_interpolates_them():
    sizes = SIZES[:3]
    losses = [3.1, 2.7, 2.5]
    law = fit_scaling_law(sizes, losses)
    assert [law(size) for size in sizes] == pytest.approx(losses, rel=1e-9)


def test_fit_command_predicts_losses_at_the_target(tmp_path):
    paths = write_points(tmp_path)
    out = tmp_path / 'reference.json'
    target = 1.3e9
    assert main(['reference-loss', 'fit', *map(str, paths), '--target-params', str(target), '--out', str(out)]) == 0
    written = json.loads(out.read_text())
    expected = law_losses(target)
    assert written['parameters'] == target
    assert written['losses'] == pytest.approx(expected, rel=1e-9)
    assert written['reference'] == pytest.approx([expected['books'], expected['code']], rel=1e-9)
    assert written['scaling_laws']['code'] == pytest.approx({'E': 0.9, 'A': 80.0, 'alpha': 0.22}, rel=1e-6)
    assert written['points'] == [str(path) for path in paths]


def test_fit_errors_name_the_file_and_key(tmp_path, capsys):
    paths = write_points(tmp_path)
    with pytest.raises(FileNotFoundError, match=f'losses file {tmp_path}/absent.json does not exist'):
        predict_reference_losses([*paths, tmp_path / 'absent.json'], 1e9)

    with pytest.raises(ValueError, match='a scaling law fit needs at least 3 losses files, got 2'):
        predict_reference_losses(paths[:2], 1e9)

    paths[1].write_text(json.dumps({'parameters': SIZES[1], 'losses': {'books': 2.0}}))
    with pytest.raises(ValueError) as raised:
        predict_reference_losses(paths, 1e9)
    assert str(raised.value) == f"{paths[1]}: domains ['books'] differ from those of {paths[0]}: ['books', 'code']"

    paths[1].write_text(json.dumps({'losses': {'books': 2.0, 'code': 1.0}}))
    command = ['reference-loss', 'fit', *map(str, paths), '--target-params', '1e9', '--out', str(tmp_path / 'o.json')]
    assert main(command) == 2
    assert capsys.readouterr().err == f"llmshearing reference-loss: error: {paths[1]}: missing key 'parameters'\n"

    paths[1].write_text('{"parameters": 1e9, "losses": {"books": "low", "code": 1.0}}')
    with pytest.raises(ValueError, match="losses\\['books'\\] must be a number, got 'low'"):
        predict_reference_losses(paths, 1e9)

    for index, (path, size) in enumerate(zip(paths, SIZES)):
        path.write_text(json.dumps({'parameters': size, 'losses': law_losses(size) | {'books': 2.0 + index / 10}}))
    with pytest.raises(ValueError, match=r"^domain 'books': losses \[.*\] do not decrease with the parameter count"):
        predict_reference_losses(paths, 1e9)


def test_fit_refuses_losses_that_grow_with_size():
    with pytest.raises(ValueError, match='do not decrease with the parameter count'):
        fit_scaling_law(SIZES[:3], [2.0, 2.2, 2.5])
