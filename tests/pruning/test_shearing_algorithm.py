"""The ``shearing`` Composer algorithm inside a real Trainer."""

from __future__ import annotations

import pytest
import torch
from composer import Trainer
from composer.core import Event
from composer.models import HuggingFaceModel
from composer.optim import DecoupledAdamW
from torch.utils.data import DataLoader
from transformers import LlamaConfig

from llmshearing.pruning import Shearing, apply_shearing
from llmshearing.pruning.hard_concrete import LOG_ALPHA_MAX
from tests.pruning.references import hf_non_embedding_params, log_alpha_keeping
from tests.tiny_models import VOCAB_SIZE, tiny_gqa_llama, tiny_llama

TARGET = {'hidden_size': 24, 'num_attention_heads': 4, 'intermediate_size': 32}
MODULES = ['head', 'intermediate', 'hidden']


def _batches(num_samples: int) -> DataLoader:
    input_ids = torch.randint(0, VOCAB_SIZE, (num_samples, 16))
    samples = [{'input_ids': ids, 'labels': ids.clone()} for ids in input_ids]
    return DataLoader(samples, batch_size=4)


def _trainer(
    algorithm: Shearing, microbatch_size: int, lr: float = 0.0, num_batches: int = 1,
    optimizer: type[torch.optim.Optimizer] = torch.optim.SGD, **kwargs,
) -> Trainer:
    torch.manual_seed(0)
    model = HuggingFaceModel(tiny_gqa_llama(), use_logits=True)
    return Trainer(
        model=model,
        train_dataloader=_batches(4 * num_batches),
        optimizers=optimizer(model.parameters(), lr=lr),
        max_duration=f'{num_batches}ba',
        algorithms=[algorithm],
        device_train_microbatch_size=microbatch_size,
        seed=0,
        progress_bar=False,
        log_to_console=False,
        **kwargs,
    )


@pytest.mark.parametrize('microbatch_size', [4, 2, 1])
def test_lagrangian_counts_once_per_batch_under_gradient_accumulation(microbatch_size):
    """With plain SGD the lambdas of a kind move by exactly lag_lr * (mean gap, mean squared gap) over its rows after
    one batch, however the batch is split."""
    algorithm = Shearing(TARGET, MODULES, lagrangian_warmup='0ba', lag_lr=0.5, init='uniform')
    trainer = _trainer(algorithm, microbatch_size)
    l0_module = algorithm.l0_module
    gaps = {
        name: l0_module.expected_sparsities()[name].detach() - l0_module.target_sparsities(1.0)[name]
        for name in MODULES
    }
    trainer.fit()
    for name in MODULES:
        lambda_1, lambda_2 = l0_module.lambdas[name].tolist()
        assert lambda_1 == pytest.approx(0.5 * gaps[name].mean().item(), rel=1e-5)
        assert lambda_2 == pytest.approx(0.5 * (gaps[name] ** 2).mean().item(), rel=1e-5)


def test_the_lagrangian_drives_every_row_to_its_target_over_a_run():
    """From the original code's start (every structure kept), under the recipes' optimizer (AdamW; masks and
    multipliers at lag_lr 1.0) with a 50-batch warm-up, every row ends near its target: 8 of the 32 hidden channels,
    half the query heads of each key/value group and half of each layer's MLP channels dropped; the expected size
    near the parameter count of the target model as transformers builds it."""
    algorithm = Shearing(TARGET, MODULES, lagrangian_warmup='50ba')
    trainer = _trainer(algorithm, 4, lr=1e-3, num_batches=150, optimizer=DecoupledAdamW)
    l0_module = algorithm.l0_module
    assert all(sparsity.max().item() < 0.01 for sparsity in l0_module.expected_sparsities().values())
    trainer.fit()
    expected = {name: sparsity.detach() for name, sparsity in l0_module.expected_sparsities().items()}
    for name, target in {'hidden': 8 / 32, 'head': 4 / 8, 'intermediate': 32 / 64}.items():
        torch.testing.assert_close(expected[name], torch.full_like(expected[name], target), rtol=0, atol=0.03)
    target_config = LlamaConfig(**(tiny_gqa_llama().config.to_dict() | TARGET))
    target_params = hf_non_embedding_params(target_config)
    assert l0_module.expected_num_params().item() == pytest.approx(target_params, rel=0.03)


def test_masks_join_the_optimizer_and_the_checkpointed_model():
    algorithm = Shearing(TARGET, MODULES, lag_lr=0.25)
    trainer = _trainer(algorithm, 4, lr=1e-3)
    optimizer = trainer.state.optimizers[0]
    mask_group, lambda_group = optimizer.param_groups[-2:]
    assert mask_group['lr'] == lambda_group['lr'] == 0.25
    assert mask_group['weight_decay'] == lambda_group['weight_decay'] == 0.0
    assert {id(p) for p in mask_group['params']} == {id(p) for p in algorithm.l0_module.masks.parameters()}
    model_state = trainer.state.model.state_dict()
    assert 'model.l0_module.masks.hidden.log_alpha' in model_state
    assert 'model.l0_module.lambdas.head' in model_state


def test_log_alpha_is_clamped_after_each_batch_and_metrics_are_logged():
    algorithm = Shearing(TARGET, MODULES, lag_lr=100.0, lagrangian_warmup='4ba')
    trainer = _trainer(algorithm, 4, num_batches=3)
    logged = {}
    trainer.logger.log_metrics = lambda metrics, step=None: logged.update(metrics)
    trainer.fit()
    for mask in algorithm.l0_module.masks.values():
        assert mask.log_alpha.max().item() <= LOG_ALPHA_MAX + 1e-6
    for name in MODULES:
        for metric in ('expected_sparsity', 'target_sparsity', 'lambda_1', 'lambda_2'):
            assert f'shearing/{metric}/{name}' in logged
    # Logged as used in the last batch (the third, index 2): 2/4 of the way through the warmup.
    assert logged['shearing/target_sparsity/hidden'] == pytest.approx(0.5 * (1 - 24 / 32))
    assert 'shearing/expected_num_params' in logged and 'shearing/lagrangian' in logged


def test_loss_is_split_into_language_model_and_lagrangian():
    """Non-zero multipliers and keep probabilities away from the target: the total is the LM loss plus the Lagrangian
    worked out by hand, every row (one layer's MLP channels, one key/value group's query heads) held to the target on
    its own."""
    algorithm = Shearing(TARGET, MODULES)
    trainer = _trainer(algorithm, 4)
    l0_module = algorithm.l0_module
    with torch.no_grad():
        # hidden: keep 24 of 32 (target sparsity 0.25), sparsity 0.5: 1 * 0.25 + 2 * 0.25^2 = 0.375.
        l0_module.masks['hidden'].log_alpha.copy_(log_alpha_keeping([0.5] * 32))
        l0_module.lambdas['hidden'].copy_(torch.tensor([1.0, 2.0]))
        # head: keep 2 of the 4 query heads of each of the 2 key/value groups (0.5); sparsities 0.25 and 0.75 in every
        # layer: mean(2 * -0.25 + 4 * 0.0625, 2 * 0.25 + 4 * 0.0625) = 0.25 (0 if a layer's heads were one row).
        l0_module.masks['head'].log_alpha.copy_(log_alpha_keeping([[[0.75] * 4, [0.25] * 4]] * 3))
        l0_module.lambdas['head'].copy_(torch.tensor([2.0, 4.0]))
        # intermediate: keep 32 of 64 (0.5); sparsities 0.25, 0.5, 0.75 per layer:
        # mean(-0.25 + 0.0625, 0, 0.25 + 0.0625) = 0.125 / 3.
        l0_module.masks['intermediate'].log_alpha.copy_(log_alpha_keeping([[0.75] * 64, [0.5] * 64, [0.25] * 64]))
        l0_module.lambdas['intermediate'].copy_(torch.tensor([1.0, 1.0]))
    seen = {}
    original_apply = algorithm.apply

    def recording_apply(event, state, logger):
        original_apply(event, state, logger)
        if event == Event.AFTER_LOSS:
            seen.update({name: value.detach().clone() for name, value in state.loss.items()})

    algorithm.apply = recording_apply
    trainer.fit()
    assert seen['lagrangian'].item() == pytest.approx(0.375 + 0.25 + 0.125 / 3, abs=1e-5)
    assert seen['total'].item() == pytest.approx(seen['lm'].item() + 0.375 + 0.25 + 0.125 / 3, abs=1e-5)


@pytest.mark.parametrize(
    ('kwargs', 'message'),
    [
        ({'lag_lr': 0.0}, 'algorithms.shearing.lag_lr must be positive, got 0.0'),
        ({'lagrangian_warmup': 'soon'}, 'algorithms.shearing.lagrangian_warmup'),
        (
            {'export_dtype': 'int8'},
            "algorithms.shearing.export_dtype must be one of \\['bf16', 'fp16', 'fp32'\\], got 'int8'",
        ),
    ],
)
def test_bad_algorithm_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Shearing(TARGET, MODULES, **kwargs)


def test_an_export_dir_holding_files_fails_at_init(tmp_path):
    (tmp_path / 'config.json').write_text('{}')
    with pytest.raises(FileExistsError, match=f'algorithms.shearing.export_dir: {tmp_path} already holds files'):
        _trainer(Shearing(TARGET, MODULES, export_dir=str(tmp_path)), 4)
    assert (tmp_path / 'config.json').read_text() == '{}'


def test_default_pruning_modules_are_every_kind_the_source_has():
    """Without ``pruning_modules``: ``kv_head`` with grouped-query attention only; the checkpoint saves the list."""
    algorithm = Shearing(TARGET)
    _trainer(algorithm, 4)
    assert algorithm.pruning_modules == ['layer', 'head', 'kv_head', 'intermediate', 'hidden']
    assert algorithm.state_dict()['mask_config']['pruning_modules'] == algorithm.pruning_modules
    multi_head = apply_shearing(tiny_llama(), target={'num_attention_heads': 2})
    assert multi_head.pruning_modules == ['layer', 'head', 'intermediate', 'hidden']


def test_resuming_with_another_target_is_an_error():
    saved = Shearing(TARGET, MODULES).state_dict()
    with pytest.raises(
        ValueError, match=r"algorithms.shearing.target=\{'hidden_size': 16\} differs from the checkpoint's"
    ):
        Shearing({'hidden_size': 16}, MODULES).load_state_dict(saved)
    Shearing(TARGET, MODULES).load_state_dict(saved)
