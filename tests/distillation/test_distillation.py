"""The ``distillation`` algorithm: ``kd_loss`` against a direct ``F.kl_div``, the trainer's KD on a batch with
prompt and padding labels against the KL of the models' own logits over the predicted positions, the loss mix
(alpha 0 is the LM loss, an identical teacher gives KD 0), the combination with ``shearing`` in either order,
gradient accumulation, the teacher kept out of the optimizer and checkpoints, FSDP wrapping like the student's, the
errors before training, and a real ``train.py`` run with ``shearing`` and ``dynamic_loading`` that writes a pruned
model."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from composer import Callback, Trainer
from composer.core import Precision, State
from composer.loggers import Logger
from composer.utils import FSDPConfig
from llmfoundry.utils.builders import build_composer_model
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM

from llmshearing.distillation import Distillation, algorithm, distill_loss, kd_loss
from llmshearing.distillation.algorithm import load_teacher
from llmshearing.loggers import read_metrics
from llmshearing.preflight import check_train_config, load_train_config
from llmshearing.pruning import Shearing
from llmshearing.toy import byte_level_tokenizer, random_token_samples, save_toy_model, write_random_domain_data
from tests.paths import REPO

TINY_PRUNING_DISTILLATION = REPO / 'yamls' / 'tiny' / 'pruning_distillation.yaml'
DOMAINS = ['code', 'reference', 'docs']
TARGET = {'hidden_size': 48, 'num_attention_heads': 2, 'intermediate_size': 64, 'num_hidden_layers': 3}


def reference_kd(student: torch.Tensor, teacher: torch.Tensor, kept: torch.Tensor, temperature: float) -> torch.Tensor:
    """``F.kl_div`` of the tempered distributions, averaged over the ``kept`` positions, times ``T²``."""
    per_position = F.kl_div(
        F.log_softmax(student / temperature, dim=-1), F.log_softmax(teacher / temperature, dim=-1),
        log_target=True, reduction='none',
    ).sum(-1)
    return per_position[kept].mean() * temperature**2


@pytest.mark.parametrize('temperature', [1.0, 2.5])
@pytest.mark.parametrize('chunk_size', [None, 1, 5, 1024])
def test_kd_loss_equals_kl_div_with_ignored_positions(temperature, chunk_size):
    student = torch.randn(3, 7, 50, dtype=torch.float64).float().requires_grad_()
    teacher = torch.randn(3, 7, 50) * 2
    targets = torch.randint(0, 50, (3, 7))
    targets[0, :4] = -100
    targets[2, -1] = -100

    loss = kd_loss(student, teacher, targets, temperature, chunk_size)
    (gradient,) = torch.autograd.grad(loss, student)
    reference_student = student.detach().clone().requires_grad_()
    expected = reference_kd(reference_student, teacher, targets != -100, temperature)
    (expected_gradient,) = torch.autograd.grad(expected, reference_student)

    assert loss.dtype == torch.float32 and loss.shape == ()
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(gradient, expected_gradient, rtol=1e-5, atol=1e-8)
    assert gradient[0, :4].abs().max().item() == 0.0


def test_kd_loss_without_labels_averages_every_position_and_keeps_the_logits_dtype():
    student = torch.randn(2, 6, 40, dtype=torch.bfloat16, requires_grad=True)
    teacher = torch.randn(2, 6, 40, dtype=torch.bfloat16)
    loss = kd_loss(student, teacher, chunk_size=4)
    expected = reference_kd(student.detach().float(), teacher.float(), torch.ones(2, 6, dtype=torch.bool), 1.0)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-7)
    loss.backward()
    assert student.grad.dtype == torch.bfloat16 and student.grad.shape == student.shape


def test_kd_loss_errors():
    logits = torch.randn(2, 4, 8)
    with pytest.raises(ValueError, match=r'^temperature must be positive, got 0$'):
        kd_loss(logits, logits, temperature=0)
    with pytest.raises(
        ValueError, match=r'^student logits \(2, 4, 8\) and teacher logits \(2, 4, 9\) differ in shape$'
    ):
        kd_loss(logits, torch.randn(2, 4, 9))
    with pytest.raises(ValueError, match=r'^labels \(2, 3\) do not match the logits \(2, 4, 8\)$'):
        kd_loss(logits, logits, torch.zeros(2, 3, dtype=torch.long))
    student = logits.clone().requires_grad_()
    loss = kd_loss(student, torch.randn(2, 4, 8))
    loss.backward(retain_graph=True)
    with pytest.raises(
        RuntimeError, match=r'^kd_loss backpropagates once \(its gradient is scaled in place\); compute it again$'
    ):
        loss.backward()


@pytest.fixture(scope='module')
def toy(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp('distillation')
    write_random_domain_data(root / 'data', DOMAINS, train_samples=8, eval_samples=2, seq_len=64)
    return {
        'student': save_toy_model(root / 'student', seed=1, hidden_size=32, intermediate_size=48),
        'teacher': save_toy_model(root / 'teacher', seed=2),
        'root': root,
    }


def _batch(num_samples: int = 2, seq_len: int = 16) -> dict[str, torch.Tensor]:
    input_ids = torch.from_numpy(np.stack(random_token_samples(num_samples, seq_len, 259, seed=3))).long()
    return {'input_ids': input_ids, 'labels': input_ids.clone()}


def test_alpha_0_is_the_lm_loss_and_an_identical_teacher_gives_kd_0(toy):
    model = AutoModelForCausalLM.from_pretrained(toy['student'])
    batch = _batch()
    outputs = model(**batch)
    mixed = distill_loss(outputs.loss, outputs.logits, outputs.logits.detach(), batch['labels'], alpha=0.0)
    assert mixed['kd'].item() == 0.0
    assert torch.equal(mixed['total'], outputs.loss) and torch.equal(mixed['lm'], outputs.loss)
    mixed_gradients = torch.autograd.grad(mixed['total'], list(model.parameters()), retain_graph=True)
    lm_gradients = torch.autograd.grad(outputs.loss, list(model.parameters()))
    assert all(torch.equal(mixed, lm) for mixed, lm in zip(mixed_gradients, lm_gradients))


def test_the_mix_keeps_other_terms_of_the_total(toy):
    model = AutoModelForCausalLM.from_pretrained(toy['student'])
    teacher = load_teacher(toy['teacher'])
    batch = _batch()
    outputs = model(**batch)
    lagrangian = torch.tensor(0.25)
    loss = {'total': outputs.loss + lagrangian, 'lm': outputs.loss, 'lagrangian': lagrangian}
    mixed = distill_loss(
        loss, outputs.logits, teacher(batch['input_ids']).logits, batch['labels'], alpha=0.3, temperature=2.0
    )
    assert mixed.keys() == {'total', 'lm', 'lagrangian', 'kd'}
    assert mixed['kd'].item() > 0
    torch.testing.assert_close(mixed['total'], 0.3 * mixed['kd'] + 0.7 * outputs.loss + lagrangian)


class _RecordLosses(Callback):
    """The final loss dict of every microbatch, as Composer backpropagates it."""

    def __init__(self):
        self.losses: list[dict[str, float]] = []

    def before_backward(self, state: State, logger: Logger) -> None:
        self.losses.append({name: value.item() for name, value in state.loss.items()})


def _train(
    toy: dict[str, Path],
    algorithms: list,
    microbatch_size: int,
    steps: int = 2,
    batches: list[dict[str, torch.Tensor]] | None = None,
) -> tuple[Trainer, _RecordLosses]:
    """Train the student on ``batches`` (default: ``steps`` random batches of 2), one step each."""
    torch.manual_seed(0)
    tokenizer = byte_level_tokenizer()
    model = build_composer_model(
        'hf_causal_lm',
        {'pretrained_model_name_or_path': str(toy['student']), 'pretrained': True, 'use_train_metrics': False},
        tokenizer,
    )
    batches = batches if batches is not None else [_batch(num_samples=2) for _ in range(steps)]
    recorder = _RecordLosses()
    trainer = Trainer(
        model=model, train_dataloader=batches, max_duration=f'{len(batches)}ba', algorithms=algorithms,
        optimizers=torch.optim.SGD(model.parameters(), lr=0.1), device_train_microbatch_size=microbatch_size,
        callbacks=[recorder], seed=0, progress_bar=False, log_to_console=False, device='cpu',
    )
    trainer.fit()
    return trainer, recorder


def _shearing() -> Shearing:
    return Shearing(target={'hidden_size': 24, 'intermediate_size': 32}, lagrangian_warmup='0ba')


def test_with_shearing_in_either_order_the_total_is_kd_lm_and_lagrangian(toy):
    runs = {
        order: _train(toy, algorithms, microbatch_size=2)
        for order, algorithms in (
            ('shearing_first', [_shearing(), Distillation(str(toy['teacher']), alpha=0.4, temperature=2.0)]),
            ('distillation_first', [Distillation(str(toy['teacher']), alpha=0.4, temperature=2.0), _shearing()]),
        )
    }
    (first_trainer, first), (second_trainer, second) = runs.values()
    assert first.losses == second.losses
    for losses in first.losses:
        assert losses.keys() == {'total', 'lm', 'kd', 'lagrangian'}
        assert losses['total'] == pytest.approx(
            0.4 * losses['kd'] + 0.6 * losses['lm'] + losses['lagrangian'], rel=1e-6
        )
    first_state, second_state = first_trainer.state.model.state_dict(), second_trainer.state.model.state_dict()
    assert all(torch.equal(tensor, second_state[name]) for name, tensor in first_state.items())


def test_the_trainers_kd_is_the_kl_of_the_models_logits_over_the_predicted_positions(toy):
    """A batch with a 4-token prompt and right padding, both labelled -100: the KD that the trainer mixes in is the KL
    of the teacher's and the student's own next-token distributions (each model called directly) averaged over the
    positions whose *next* label is a real token, and the mix is alpha * KD + (1 - alpha) * the student's LM loss."""
    seq_len, prompt, lengths = 16, 4, (16, 12)  # the second sample is padded after 12 tokens
    input_ids = _batch(num_samples=2, seq_len=seq_len)['input_ids']
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, lengths[1]:] = 0
    labels = input_ids.clone()
    labels[:, :prompt] = -100
    labels[1, lengths[1]:] = -100
    batch = {'input_ids': input_ids, 'attention_mask': attention_mask, 'labels': labels}
    # Position t predicts token t + 1: sample 0 predicts tokens 4..15 at positions 3..14, sample 1 tokens 4..11 at
    # positions 3..10 (the last position of a sample predicts nothing).
    predicting = torch.zeros(2, seq_len, dtype=torch.bool)
    predicting[0, 3:15] = True
    predicting[1, 3:11] = True

    alpha, temperature = 0.5, 2.0
    _, recorder = _train(
        toy, [Distillation(str(toy['teacher']), alpha=alpha, temperature=temperature)], microbatch_size=2,
        batches=[batch],
    )

    student = AutoModelForCausalLM.from_pretrained(toy['student']).eval()
    teacher = AutoModelForCausalLM.from_pretrained(toy['teacher']).eval()
    with torch.no_grad():
        student_outputs = student(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        teacher_logits = teacher(input_ids=input_ids, attention_mask=attention_mask).logits
    expected_kd = reference_kd(student_outputs.logits, teacher_logits, predicting, temperature).item()
    [losses] = recorder.losses
    assert losses['kd'] == pytest.approx(expected_kd, rel=1e-5)
    assert losses['lm'] == pytest.approx(student_outputs.loss.item(), rel=1e-5)
    assert losses['total'] == pytest.approx(alpha * expected_kd + (1 - alpha) * student_outputs.loss.item(), rel=1e-5)


def test_gradient_accumulation_and_the_teacher_stays_out_of_optimizer_and_checkpoint(toy):
    distillation = Distillation(str(toy['teacher']), alpha=0.5)
    whole, whole_losses = _train(toy, [distillation], microbatch_size=2, steps=1)
    accumulated, _ = _train(toy, [Distillation(str(toy['teacher']), alpha=0.5)], microbatch_size=1, steps=1)
    for (name, tensor), accumulated_tensor in zip(
        whole.state.model.named_parameters(), accumulated.state.model.parameters()
    ):
        torch.testing.assert_close(tensor, accumulated_tensor, rtol=1e-5, atol=1e-6, msg=name)

    teacher_parameters = {id(parameter) for parameter in distillation.teacher.parameters()}
    optimized = {id(parameter) for group in whole.state.optimizers[0].param_groups for parameter in group['params']}
    assert not teacher_parameters & optimized
    assert not any(parameter.requires_grad for parameter in distillation.teacher.parameters())
    assert not distillation.teacher.training
    checkpoint = whole.state.state_dict()
    assert sum(tensor.numel() for tensor in checkpoint['model'].values()) == sum(
        p.numel() for p in whole.state.model.parameters()
    )
    assert checkpoint['algorithms'] == [('Distillation', {'repr': repr(distillation)})]
    assert whole_losses.losses[0].keys() == {'total', 'lm', 'kd'}


def test_the_teacher_is_wrapped_for_fsdp_like_the_student(toy, tmp_path, monkeypatch):
    AutoConfig.from_pretrained(toy['teacher']).save_pretrained(tmp_path / 'config-only')
    student = build_composer_model(
        'hf_causal_lm',
        {'pretrained_model_name_or_path': str(toy['student']), 'pretrained': False, 'init_device': 'meta'},
        byte_level_tokenizer(),
    )
    teacher = load_teacher(tmp_path / 'config-only', torch.bfloat16, device='meta')
    run_fsdp_config = FSDPConfig(sharding_strategy='FULL_SHARD', activation_checkpointing=True, use_orig_params=True)
    state = SimpleNamespace(fsdp_config=run_fsdp_config, precision=Precision.AMP_BF16, device='cpu')
    wrapped_calls = []
    monkeypatch.setattr(algorithm, 'prepare_fsdp_module', lambda *args: wrapped_calls.append(args))  # FSDP needs CUDA

    holder = algorithm.shard_teacher(teacher, state)

    [(module, optimizers, fsdp_config, precision, device)] = wrapped_calls
    assert module is holder and holder.teacher is teacher and optimizers is None
    assert (precision, device) == (Precision.AMP_BF16, 'cpu')
    assert fsdp_config == dataclasses.replace(run_fsdp_config, activation_checkpointing=False, sync_module_states=True)

    def wrapped(composer_child: torch.nn.Module) -> list[str]:
        """The modules Composer's policy wraps in each child of the module it is given (``_fsdp_wrap`` first)."""
        return [
            name
            for name, submodule in composer_child.named_modules()
            if submodule is not composer_child
            and getattr(submodule, '_fsdp_wrap', composer_child.fsdp_wrap_fn(submodule))
        ]

    assert wrapped(holder.teacher) == wrapped(student.model) == [f'model.layers.{index}' for index in range(4)]
    assert {parameter.device.type for parameter in teacher.parameters()} == {'meta'}
    assert {parameter.dtype for parameter in teacher.parameters()} == {torch.bfloat16}


def _config_overrides(toy: dict[str, Path], *extra: str) -> list[str]:
    return [
        f'variables.model_path={toy["teacher"]}',
        f'variables.data_local={toy["root"] / "data"}',
        f'save_folder={toy["root"] / "unused"}',
        *extra,
    ]


@pytest.mark.parametrize(
    ('override', 'error', 'message'),
    [
        ('algorithms.distillation.alpha=1.5', ValueError, 'algorithms.distillation.alpha must be in [0, 1], got 1.5'),
        (
            'algorithms.distillation.temperature=0',
            ValueError,
            'algorithms.distillation.temperature must be positive, got 0',
        ),
        (
            'algorithms.distillation.teacher=/nonexistent/teacher',
            FileNotFoundError,
            'algorithms.distillation.teacher: /nonexistent/teacher does not exist',
        ),
        (
            'algorithms.distillation.teacher={root}/data',
            FileNotFoundError,
            'algorithms.distillation.teacher: {root}/data has no config.json (not a Hugging Face model folder)',
        ),
        (
            'algorithms.distillation.temprature=2',
            ValueError,
            'algorithms.distillation.temprature is not a setting; '
            'the settings are teacher, temperature, alpha, chunk_size',
        ),
    ],
    ids=['alpha', 'temperature', 'missing_teacher', 'teacher_without_config', 'unknown_key'],
)
def test_bad_settings_fail_before_training_naming_the_key(toy, override, error, message):
    override, message = override.format(root=toy['root']), message.format(root=toy['root'])
    with pytest.raises(error) as raised:
        check_train_config(load_train_config(TINY_PRUNING_DISTILLATION, _config_overrides(toy, override)))
    assert str(raised.value) == message


def test_a_teacher_with_another_vocabulary_or_tokenizer_fails_before_training(toy, tmp_path):
    bigger_vocabulary = save_toy_model(tmp_path / 'bigger')
    config = json.loads((bigger_vocabulary / 'config.json').read_text())
    (bigger_vocabulary / 'config.json').write_text(json.dumps(config | {'vocab_size': 300}))
    with pytest.raises(ValueError) as raised:
        check_train_config(
            load_train_config(
                TINY_PRUNING_DISTILLATION, _config_overrides(toy, f'variables.teacher_path={bigger_vocabulary}')
            )
        )
    assert str(raised.value) == (
        f"algorithms.distillation.teacher: the vocabulary of {bigger_vocabulary} (300) differs from the student's (259)"
    )

    other_tokenizer = save_toy_model(tmp_path / 'other-tokenizer')
    vocabulary = json.loads((other_tokenizer / 'tokenizer.json').read_text())
    first, second = list(vocabulary['model']['vocab'])[10:12]
    vocabulary['model']['vocab'][first], vocabulary['model']['vocab'][second] = (
        vocabulary['model']['vocab'][second], vocabulary['model']['vocab'][first],
    )
    (other_tokenizer / 'tokenizer.json').write_text(json.dumps(vocabulary))
    with pytest.raises(ValueError) as raised:
        check_train_config(
            load_train_config(
                TINY_PRUNING_DISTILLATION, _config_overrides(toy, f'variables.teacher_path={other_tokenizer}')
            )
        )
    assert (
        str(raised.value)
        == f"algorithms.distillation.teacher: the tokenizer of {other_tokenizer} differs from the student's"
    )


@pytest.mark.slow
def test_pruning_run_with_distillation_and_dynamic_loading_writes_a_pruned_model(tmp_path):
    source = save_toy_model(tmp_path / 'source')
    write_random_domain_data(tmp_path / 'data', DOMAINS, train_samples=32, eval_samples=4, seq_len=64)
    command = [
        sys.executable,
        str(REPO / 'train.py'),
        str(TINY_PRUNING_DISTILLATION),
        f'variables.model_path={source}',
        f'variables.data_local={tmp_path / "data"}',
        f'variables.output_dir={tmp_path / "run"}',
        'max_duration=8ba',
        'eval_interval=4ba',
        f'algorithms.shearing.export_dir={tmp_path / "pruned"}',
        'algorithms.shearing.export_dtype=fp32',
    ]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    metrics = read_metrics(tmp_path / 'run' / 'metrics.jsonl')
    for name in (
        'loss/train/kd',
        'loss/train/lm',
        'loss/train/total',
        'loss/train/lagrangian',
        'dynamic_loading/proportion/code',
    ):
        assert len(metrics[name]) >= 1, name
    for (_, kd), (_, lm), (_, lagrangian), (_, total) in zip(
        *(metrics[f'loss/train/{name}'] for name in ('kd', 'lm', 'lagrangian', 'total')),
    ):
        assert total == pytest.approx(0.5 * kd + 0.5 * lm + lagrangian, rel=1e-5)
    assert all(kd > 0 for _, kd in metrics['loss/train/kd'])

    pruned = AutoModelForCausalLM.from_pretrained(tmp_path / 'pruned')
    for field, size in TARGET.items():
        assert getattr(pruned.config, field) == size
    checkpoint = torch.load(
        tmp_path / 'run' / 'checkpoints' / 'latest-rank0.pt', map_location='cpu', weights_only=False
    )
    source_weights = load_file(source / 'model.safetensors')
    checkpointed = checkpoint['state']['model']
    assert not any('teacher' in name for name in checkpointed)
    assert sum(tensor.numel() for name, tensor in checkpointed.items() if 'l0_module' not in name) == sum(
        tensor.numel() for tensor in source_weights.values()
    )
