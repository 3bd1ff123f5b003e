"""The ``dynamic_loading`` callback: its math against hand computations, its events on a hand-made state,
its errors, and real llm-foundry runs (uninterrupted and resumed) with ``dynamic_text`` loaders."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from composer.core import DataSpec, Evaluator
from composer.devices import DeviceCPU
from composer.metrics.nlp import LanguageCrossEntropy, LanguagePerplexity
from composer.models import HuggingFaceModel
from llmfoundry.command_utils import train_from_yaml
from streaming import LocalDataset, MDSWriter
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from llmshearing.callbacks import DynamicLoading
from llmshearing.callbacks.dynamic_loading import (
    domain_loss_sums,
    doremi_update,
    final_domain_weights,
    next_token_targets,
)
from llmshearing.data import DomainStreamingDataset, DynamicStreamingDataset, ProportionChange
from llmshearing.loggers import read_metrics
from llmshearing.metrics import DomainCrossEntropy
from llmshearing.toy import SPECIAL_TOKENS, save_toy_model, write_random_domain_data
from tests.paths import REPO

DOMAINS = ('cc', 'github', 'wiki')
INITIAL = (0.6, 0.3, 0.1)
SEQ_LEN = 64
VOCAB = 259


def write_domain_data(folder: Path, samples_per_domain: int, seed: int) -> Path:
    """Random tokens, each domain from its own range of the toy vocabulary, so the domains' losses differ."""
    rng = np.random.default_rng(seed)
    for domain, name in enumerate(DOMAINS):
        low = len(SPECIAL_TOKENS) + 80 * domain
        with MDSWriter(out=str(folder / name), columns={'tokens': 'ndarray:uint16', 'domain': 'str'}) as writer:
            for _ in range(samples_per_domain):
                writer.write(
                    {'tokens': rng.integers(low, low + 20 * (domain + 1), SEQ_LEN).astype(np.uint16), 'domain': name}
                )
    return folder


@pytest.fixture(scope='module')
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp('dynamic-loading') / 'data'
    write_domain_data(root / 'train', 64, seed=0)
    write_domain_data(root / 'eval', 8, seed=1)
    return root


def test_doremi_update_equals_the_hand_computation():
    proportions, losses, references = (0.5, 0.3, 0.2), (2.0, 3.5, 1.0), (2.5, 3.0, 0.8)
    eta, smoothing = 0.7, 1e-2
    # Excess losses max(l - l_ref, 0): 0, 0.5, 0.2.
    unnormalised = [0.5, 0.3 * math.exp(0.7 * 0.5), 0.2 * math.exp(0.7 * 0.2)]
    expected = [(1 - smoothing) * weight / sum(unnormalised) + smoothing / 3 for weight in unnormalised]
    np.testing.assert_allclose(doremi_update(proportions, losses, references, eta, smoothing), expected, rtol=1e-14)


def test_raw_excess_lets_a_domain_below_its_reference_lose_weight_as_the_original_code_does():
    proportions, losses, references = (0.5, 0.3, 0.2), (2.0, 3.5, 1.0), (2.5, 3.0, 0.8)
    # Excess losses l - l_ref: -0.5, 0.5, 0.2.
    unnormalised = [0.5 * math.exp(-0.5), 0.3 * math.exp(0.5), 0.2 * math.exp(0.2)]
    expected = [(1 - 1e-4) * weight / sum(unnormalised) + 1e-4 / 3 for weight in unnormalised]
    np.testing.assert_allclose(
        doremi_update(proportions, losses, references, 1.0, 1e-4, excess='raw'), expected, rtol=1e-14
    )


def test_a_wrong_excess_names_the_key():
    with pytest.raises(
        ValueError, match=re.escape("callbacks.dynamic_loading.excess must be one of ['clipped', 'raw'], got 'clip'")
    ):
        DynamicLoading(excess='clip')


def test_doremi_update_without_max_step_is_the_papers_update_bit_for_bit():
    proportions, losses, references = (0.5, 0.3, 0.2), (9.0, 11.0, 7.5), (3.0, 3.0, 2.5)
    # The paper's update as computed before max_step existed: excess losses 6, 8, 5, no centring.
    logits = np.log(np.array(proportions)) + 1.0 * np.maximum(np.array(losses) - np.array(references), 0.0)
    weights = np.exp(logits - logits.max())
    weights /= weights.sum()
    expected = (1 - 1e-4) * weights + 1e-4 / 3
    np.testing.assert_array_equal(doremi_update(proportions, losses, references, 1.0, 1e-4), expected)
    np.testing.assert_array_equal(doremi_update(proportions, losses, references, 1.0, 1e-4, max_step=None), expected)


def test_max_step_centres_and_clips_the_step_when_it_binds():
    proportions, losses, references = (0.5, 0.3, 0.2), (9.0, 11.0, 7.5), (3.0, 3.0, 2.5)
    # Steps η·Δ = 6, 8, 5; their mean is 19/3; centred: -1/3, 5/3, -4/3; clipped to [-0.5, 0.5]: -1/3, 0.5, -0.5.
    unnormalised = [0.5 * math.exp(-1 / 3), 0.3 * math.exp(0.5), 0.2 * math.exp(-0.5)]
    expected = [(1 - 1e-4) * weight / sum(unnormalised) + 1e-4 / 3 for weight in unnormalised]
    np.testing.assert_allclose(
        doremi_update(proportions, losses, references, 1.0, 1e-4, max_step=0.5), expected, rtol=1e-14
    )
    # Without the uniform mix, no two domains' weight ratio moves by more than e^(2b).
    bounded = doremi_update(proportions, losses, references, 1.0, 0.0, max_step=0.5)
    ratio_changes = np.log(np.outer(bounded, 1 / bounded) / np.outer(proportions, 1 / np.array(proportions)))
    assert np.abs(ratio_changes).max() == pytest.approx(1.0, rel=1e-12)  # github against wiki: 0.5 - (-0.5)


def test_max_step_that_does_not_bind_leaves_the_update_unchanged():
    proportions, losses, references = (0.5, 0.3, 0.2), (2.0, 3.5, 1.0), (2.5, 3.0, 0.8)
    # Steps 0.7 * (0, 0.5, 0.2) = 0, 0.35, 0.14; centred: -0.163, 0.187, -0.023, all inside [-0.5, 0.5].
    unnormalised = [0.5, 0.3 * math.exp(0.7 * 0.5), 0.2 * math.exp(0.7 * 0.2)]
    expected = [(1 - 1e-2) * weight / sum(unnormalised) + 1e-2 / 3 for weight in unnormalised]
    bounded = doremi_update(proportions, losses, references, 0.7, 1e-2, max_step=0.5)
    np.testing.assert_allclose(bounded, expected, rtol=1e-14)
    np.testing.assert_allclose(bounded, doremi_update(proportions, losses, references, 0.7, 1e-2), rtol=1e-14)


@pytest.mark.parametrize('max_step', [0, 0.0, -0.5, float('nan'), float('inf'), '0.5', True])
def test_a_max_step_that_is_not_a_positive_finite_number_names_the_key(max_step):
    message = f'callbacks.dynamic_loading.max_step must be a positive finite number or null, got {max_step!r}'
    with pytest.raises(ValueError, match=re.escape(message)):
        DynamicLoading(max_step=max_step)


def test_doremi_update_keeps_proportions_when_no_domain_lags_and_revives_a_domain_at_zero():
    np.testing.assert_allclose(
        doremi_update((0.5, 0.5, 0.0), (1.0, 1.0, 1.0), (2.0, 2.0, 2.0), 1.0, 0.0), (0.5, 0.5, 0.0)
    )
    np.testing.assert_allclose(
        doremi_update((0.5, 0.5, 0.0), (1.0, 1.0, 1.0), (2.0, 2.0, 2.0), 1.0, 0.3), (0.45, 0.45, 0.1)
    )


def test_domain_loss_sums_equal_the_cross_entropy_of_each_domains_tokens():
    logits = torch.randn(4, 6, 11)
    labels = torch.randint(0, 11, (4, 6))
    labels[1, 3] = -100
    domains = torch.tensor([2, 0, 2, 1])
    metric = DomainCrossEntropy()
    for rows in (slice(0, 3), slice(3, 4)):  # two microbatches
        metric.update({'domain': domains[rows]}, {'logits': logits[rows]}, next_token_targets(labels[rows]))
    loss_sums, token_counts = domain_loss_sums(metric.take_sample_losses(), 4)

    assert token_counts.tolist() == [4.0, 5.0, 10.0, 0.0]
    for domain in range(3):
        rows = domains == domain
        expected = F.cross_entropy(
            logits[rows, :-1].reshape(-1, 11), labels[rows, 1:].reshape(-1), ignore_index=-100, reduction='sum',
        )
        assert loss_sums[domain].item() == pytest.approx(expected.item(), rel=1e-6)
    assert loss_sums[3].item() == 0.0
    assert metric.take_sample_losses() == []


def test_domain_cross_entropy_equals_llm_foundrys_cross_entropy():
    logits = torch.randn(4, 6, 11)
    targets = next_token_targets(torch.randint(0, 11, (4, 6)))
    targets[1, 2] = -100
    reference, metric = LanguageCrossEntropy(), DomainCrossEntropy()
    reference.update(logits, targets)
    metric.update({}, logits, targets)
    assert metric.compute().item() == pytest.approx(reference.compute().item(), rel=1e-6)
    assert metric.sample_losses == []  # a batch without domains keeps no per-sample losses


@pytest.mark.parametrize(
    ('settings', 'message'),
    [
        ({'update': 'bandit'}, "callbacks.dynamic_loading.update must be one of ['doremi', 'constant'], got 'bandit'"),
        ({'eta': -1.0}, 'callbacks.dynamic_loading.eta must be non-negative, got -1.0'),
        ({'smoothing': 1.5}, 'callbacks.dynamic_loading.smoothing must be in [0, 1], got 1.5'),
        (
            {'reference': 'final'},
            "callbacks.dynamic_loading.reference must be 'initial' or a list of losses, got 'final'",
        ),
        (
            {'reference': [1.0, float('nan'), 2.0]},
            'callbacks.dynamic_loading.reference must be finite losses, got [1.0, nan, 2.0]',
        ),
        ({'initial_proportions': [0.5, 0.6]}, 'callbacks.dynamic_loading.initial_proportions: must sum to 1'),
    ],
)
def test_bad_settings_fail_at_construction_naming_the_key(settings, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        DynamicLoading(**settings)


class RecordingLogger:
    def __init__(self):
        self.metrics: list[dict[str, float]] = []

    def log_metrics(self, metrics: dict[str, float]) -> None:
        self.metrics.append(metrics)


def trainer_state(data: Path, eval_domains: Sequence[str] = DOMAINS, lookahead_batches: int = 0) -> SimpleNamespace:
    """The parts of a Composer State the callback reads, with real loaders."""
    train = DynamicStreamingDataset(
        local=str(data),
        domains=list(DOMAINS),
        proportions=list(INITIAL),
        batch_size=4,
        lookahead_batches=lookahead_batches,
    )
    evaluation = DomainStreamingDataset(local=str(data), domains=list(eval_domains), batch_size=4)
    return SimpleNamespace(
        train_dataloader=DataLoader(train, batch_size=4),
        evaluators=[
            Evaluator(label='eval', dataloader=DataSpec(DataLoader(evaluation, batch_size=4)), metric_names=[])
        ],
        eval_metrics={
            'eval': {'LanguageCrossEntropy': LanguageCrossEntropy(), 'LanguagePerplexity': LanguagePerplexity()}
        },
        device=DeviceCPU(),
        dataloader_label='eval',
        timestamp=SimpleNamespace(sample=0),
    )


def evaluate(
    callback: DynamicLoading, state: SimpleNamespace, logger: RecordingLogger,
    batches: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
) -> None:
    """Run the callback's evaluation events and the metric updates over (labels, domains, logits) batches, as
    Composer's eval loop does (the model's eval_forward shifts the labels to the next-token targets)."""
    callback.eval_before_all(state, logger)
    callback.eval_start(state, logger)
    metrics = state.eval_metrics['eval']
    for metric in metrics.values():
        metric.reset()
    for labels, domains, logits in batches:
        batch = {'input_ids': labels, 'domain': domains}
        for metric in metrics.values():
            metric.update(batch, logits, next_token_targets(labels))
        callback.eval_batch_end(state, logger)
    callback.eval_after_all(state, logger)


def random_eval_batches(seed: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randint(0, VOCAB, (4, 8), generator=generator),
            torch.tensor(domains),
            torch.randn(4, 8, VOCAB, generator=generator),
        )
        for domains in ([0, 1, 2, 0], [1, 2, 2, 0])
    ]


def hand_losses(batches) -> np.ndarray:
    """Each domain's mean next-token cross-entropy over all its eval tokens."""
    losses = []
    for domain in range(len(DOMAINS)):
        logits = torch.cat([batch_logits[batch_domains == domain] for _, batch_domains, batch_logits in batches])
        labels = torch.cat([batch_labels[batch_domains == domain] for batch_labels, batch_domains, _ in batches])
        losses.append(F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1)).item())
    return np.array(losses)


def test_each_evaluation_updates_the_training_proportions_as_computed_by_hand(data):
    state = trainer_state(data)
    logger = RecordingLogger()
    callback = DynamicLoading(reference='initial', eta=0.5, smoothing=1e-3)
    callback.after_load(state, logger)
    dataset = state.train_dataloader.dataset
    assert list(state.eval_metrics['eval']) == ['LanguageCrossEntropy', 'LanguagePerplexity']
    callback.eval_start(state, logger)
    assert list(state.eval_metrics['eval']) == ['LanguageCrossEntropy']
    assert isinstance(state.eval_metrics['eval']['LanguageCrossEntropy'], DomainCrossEntropy)

    first, second = random_eval_batches(0), random_eval_batches(1)
    first_losses, second_losses = hand_losses(first), hand_losses(second)
    evaluate(callback, state, logger, first)
    after_first = doremi_update(INITIAL, first_losses, first_losses, 0.5, 1e-3)
    np.testing.assert_allclose(callback.references, first_losses, rtol=1e-6)
    np.testing.assert_allclose(dataset.proportions, after_first, rtol=1e-12)
    assert [change.start for change in dataset.schedule] == [0, 0]

    state.timestamp.sample = 96
    evaluate(callback, state, logger, second)
    after_second = doremi_update(after_first, second_losses, first_losses, 0.5, 1e-3)
    np.testing.assert_allclose(dataset.proportions, after_second, rtol=1e-5)
    assert [change.start for change in dataset.schedule] == [0, 0, 96]
    assert callback.proportions == dataset.proportions
    logged = logger.metrics[-1]
    assert set(logged) == {
        f'dynamic_loading/{kind}/{name}' for kind in ('loss', 'reference', 'proportion') for name in DOMAINS
    }
    assert logged['dynamic_loading/loss/github'] == pytest.approx(second_losses[1], rel=1e-6)
    assert logged['dynamic_loading/proportion/wiki'] == dataset.proportions[2]


def test_the_callback_bounds_its_update_by_max_step(data):
    state = trainer_state(data)
    logger = RecordingLogger()
    callback = DynamicLoading(reference=[0.0, 0.0, 0.0], max_step=0.1)
    callback.fit_start(state, logger)
    batches = random_eval_batches(0)
    evaluate(callback, state, logger, batches)
    losses = hand_losses(batches)
    expected = doremi_update(INITIAL, losses, (0.0, 0.0, 0.0), 1.0, 1e-4, max_step=0.1)
    np.testing.assert_allclose(state.train_dataloader.dataset.proportions, expected, rtol=1e-6)
    unbounded = doremi_update(INITIAL, losses, (0.0, 0.0, 0.0), 1.0, 1e-4)
    assert not np.allclose(expected, unbounded, rtol=1e-3)


def test_a_change_applies_after_the_batches_the_workers_may_have_prepared(data):
    state = trainer_state(data, lookahead_batches=4)
    logger = RecordingLogger()
    callback = DynamicLoading(reference=[0.0, 0.0, 0.0])
    callback.fit_start(state, logger)
    state.timestamp.sample = 40
    evaluate(callback, state, logger, random_eval_batches(0))
    assert [change.start for change in state.train_dataloader.dataset.schedule] == [0, 40 + 4 * 4]


def test_constant_update_keeps_the_proportions_and_logs_the_losses(data):
    state = trainer_state(data)
    logger = RecordingLogger()
    callback = DynamicLoading(reference=[5.0, 5.0, 5.0], update='constant')
    callback.fit_start(state, logger)
    batches = random_eval_batches(0)
    evaluate(callback, state, logger, batches)
    assert state.train_dataloader.dataset.schedule == (ProportionChange(0, INITIAL),)
    assert logger.metrics[-1]['dynamic_loading/proportion/cc'] == 0.6
    assert logger.metrics[-1]['dynamic_loading/loss/wiki'] == pytest.approx(hand_losses(batches)[2], rel=1e-6)


def test_an_evaluation_without_a_domain_is_an_error_not_a_nan(data):
    state = trainer_state(data)
    logger = RecordingLogger()
    callback = DynamicLoading()
    callback.fit_start(state, logger)
    labels, _, logits = random_eval_batches(0)[0]
    with pytest.raises(RuntimeError, match=re.escape("this evaluation has no tokens of the domains ['wiki']")):
        evaluate(callback, state, logger, [(labels, torch.tensor([0, 1, 1, 0]), logits)])


@pytest.mark.parametrize(
    ('settings', 'eval_domains', 'message'),
    [
        (
            {'domains': ['cc', 'wiki', 'github']},
            DOMAINS,
            "callbacks.dynamic_loading.domains: ['cc', 'wiki', 'github'] do not match the training data's domains "
            "['cc', 'github', 'wiki']",
        ),
        (
            {'reference': [1.0, 2.0]},
            DOMAINS,
            "callbacks.dynamic_loading.reference: expected 3 losses, one per domain ['cc', 'github', 'wiki'], got 2",
        ),
        (
            {},
            ('cc', 'github'),
            "eval_loader.dataset.domains: ['cc', 'github'] do not match the training data's domains "
            "['cc', 'github', 'wiki']",
        ),
    ],
)
def test_mismatches_with_the_data_fail_before_training(data, settings, eval_domains, message):
    state = trainer_state(data, eval_domains)
    with pytest.raises(ValueError, match=re.escape(message)):
        DynamicLoading(**settings).after_load(state, RecordingLogger())


def test_loaders_that_do_not_carry_domains_fail_before_training(data):
    state = trainer_state(data)
    state.evaluators = []
    with pytest.raises(ValueError, match='callbacks.dynamic_loading needs an eval_loader of name dynamic_text'):
        DynamicLoading().fit_start(state, RecordingLogger())
    state.train_dataloader = DataLoader(range(8))
    with pytest.raises(ValueError, match='callbacks.dynamic_loading needs a train_loader of name dynamic_text'):
        DynamicLoading().fit_start(state, RecordingLogger())


def test_initial_proportions_replace_the_loaders_from_the_first_sample(data):
    state = trainer_state(data, lookahead_batches=4)
    callback = DynamicLoading(initial_proportions=[0.2, 0.3, 0.5])
    callback.after_load(state, RecordingLogger())
    callback.fit_start(state, RecordingLogger())
    assert state.train_dataloader.dataset.schedule == (ProportionChange(0, (0.2, 0.3, 0.5)),)
    assert callback.proportions == (0.2, 0.3, 0.5)


def test_a_resumed_run_keeps_its_checkpoints_proportions(data):
    state = trainer_state(data)
    callback = DynamicLoading(initial_proportions=[0.2, 0.3, 0.5])
    callback.load_state_dict({'references': [1.0, 2.0, 3.0], 'proportions': [0.5, 0.25, 0.25]})
    callback.after_load(state, RecordingLogger())
    assert state.train_dataloader.dataset.schedule == (ProportionChange(0, INITIAL),)
    assert callback.proportions == (0.5, 0.25, 0.25)


def test_initial_proportions_that_do_not_fit_the_data_fail_before_training(data, tmp_path):
    with pytest.raises(ValueError, match=re.escape(
        'callbacks.dynamic_loading.initial_proportions: expected 3 values, one per domain, got 2',
    )):
        DynamicLoading(initial_proportions=[0.5, 0.5]).after_load(trainer_state(data), RecordingLogger())
    with pytest.raises(FileNotFoundError, match=re.escape(
        f'callbacks.dynamic_loading.initial_proportions: checkpoint {tmp_path / "pruning"} does not exist',
    )):
        DynamicLoading(initial_proportions=str(tmp_path / 'pruning'))
    (tmp_path / 'checkpoints').mkdir()
    with pytest.raises(FileNotFoundError, match=re.escape(
        f'callbacks.dynamic_loading.initial_proportions: checkpoint folder {tmp_path / "checkpoints"} has no '
        'latest-rank0.pt or latest-sharded-rank0',
    )):
        DynamicLoading(initial_proportions=str(tmp_path))


def test_initial_proportions_of_a_run_on_other_domains_fail_before_training(data, tmp_path):
    checkpoint = tmp_path / 'ep0-ba8-rank0.pt'
    train_state = {'domains': ['cc', 'books', 'wiki'], 'schedule': [[0, [0.2, 0.3, 0.5]]]}
    torch.save({'state': {'dataset_state': {'train': train_state}}}, checkpoint)
    callback = DynamicLoading(initial_proportions=str(checkpoint))
    with pytest.raises(ValueError) as raised:
        callback.after_load(trainer_state(data), RecordingLogger())
    assert str(raised.value) == (
        f"callbacks.dynamic_loading.initial_proportions: {checkpoint} has the domains ['cc', 'books', 'wiki'], the "
        "training data ['cc', 'github', 'wiki']"
    )


def test_state_round_trips():
    callback = DynamicLoading()
    callback.load_state_dict({'references': [1.0, 2.0, 3.0], 'proportions': [0.2, 0.3, 0.5]})
    assert callback.state_dict() == {'references': [1.0, 2.0, 3.0], 'proportions': [0.2, 0.3, 0.5]}


def train_tiny_recipe(
    source: Path, data: Path, output: Path, *, batches: int, interval: int, domains: Sequence[str],
    proportions: Sequence[float], references: Sequence[float], settings: Sequence[str] = (),
) -> None:
    """The tiny continued pre-training YAML on ``domains``, starting from ``proportions``: ``batches`` batches,
    evaluated first and every ``interval`` batches against the loss ``references``, with a checkpoint at each
    evaluation; ``settings`` are further overrides."""
    train_from_yaml(
        str(REPO / 'yamls/tiny/continued_pretraining.yaml'),
        [
            f'variables.model_path={source}', f'variables.data_local={data}', f'variables.output_dir={output}',
            f'max_duration={batches}ba', f'eval_interval={interval}ba', f'save_interval={interval}ba',
            f'variables.domains=[{",".join(domains)}]',
            f'train_loader.dataset.proportions=[{",".join(map(str, proportions))}]',
            f'callbacks.dynamic_loading.reference=[{",".join(map(str, references))}]', *settings,
        ],
    ).close()


@pytest.fixture(scope='module')
def training_runs(data, tmp_path_factory) -> Path:
    """The tiny continued pre-training YAML for 8 batches, evaluated first and every 4; then again resumed from
    its batch-4 checkpoint."""
    root = tmp_path_factory.mktemp('runs')
    source = save_toy_model(root / 'source')
    run = {'batches': 8, 'interval': 4, 'domains': DOMAINS, 'proportions': INITIAL, 'references': (4.0, 4.0, 4.0)}
    train_tiny_recipe(source, data, root / 'uninterrupted', **run)
    checkpoint = root / 'uninterrupted' / 'checkpoints' / 'ep0-ba4-rank0.pt'
    train_tiny_recipe(source, data, root / 'resumed', **run, settings=[f'load_path={checkpoint}'])
    return root


@pytest.fixture(scope='module')
def continued_run(training_runs, data) -> Path:
    """4 batches of the tiny continued pre-training YAML, starting from the proportions the uninterrupted run
    ended with, its domains listed in another order."""
    output = training_runs / 'continued'
    train_tiny_recipe(
        training_runs / 'source', data, output, batches=4, interval=4, domains=('wiki', 'cc', 'github'),
        proportions=(0.2, 0.4, 0.4), references=(4.0, 4.0, 4.0),
        settings=[f'callbacks.dynamic_loading.initial_proportions={training_runs / "uninterrupted"}'],
    )
    return output


def load_state(path: Path) -> dict:
    return torch.load(path, map_location='cpu', weights_only=False)['state']


def model_at_batch(batch: int, source: Path, checkpoints: Path) -> LlamaForCausalLM:
    """The Hugging Face model a run evaluated at ``batch``: the source at 0, else the weights of that batch's
    Composer checkpoint (``model.`` stripped from their names)."""
    model = AutoModelForCausalLM.from_pretrained(source, torch_dtype=torch.float32)
    if batch:
        weights = load_state(checkpoints / f'ep0-ba{batch}-rank0.pt')['model']
        model.load_state_dict({name.removeprefix('model.'): tensor for name, tensor in weights.items()})
    return model.eval()


def direct_eval_losses(model: LlamaForCausalLM, eval_root: Path, domains: Sequence[str]) -> np.ndarray:
    """Each domain's mean next-token cross-entropy over every token of its eval samples, straight from the MDS
    shards and the Hugging Face forward."""
    losses = []
    for name in domains:
        shards = LocalDataset(str(eval_root / name))
        input_ids = torch.tensor(np.stack([shards[index]['tokens'] for index in range(len(shards))]).astype(np.int64))
        with torch.no_grad():
            logits = model(input_ids).logits
        losses.append(F.cross_entropy(logits[:, :-1].flatten(0, 1), input_ids[:, 1:].flatten()).item())
    return np.array(losses)


def rule_by_hand(
    proportions: Sequence[float], losses: Sequence[float], references: Sequence[float], eta: float, smoothing: float,
    max_step: float | None = None,
) -> list[float]:
    """The documented update, written out: step s_i = eta * max(l_i - ref_i, 0) (centred and clipped to
    [-max_step, max_step] when set), w_i = a_i * exp(s_i), a_i <- (1 - c) * w_i / sum(w) + c / k."""
    steps = [eta * max(loss - reference, 0.0) for loss, reference in zip(losses, references)]
    if max_step is not None:
        mean = sum(steps) / len(steps)
        steps = [min(max(step - mean, -max_step), max_step) for step in steps]
    weights = [proportion * math.exp(step) for proportion, step in zip(proportions, steps)]
    return [(1 - smoothing) * weight / sum(weights) + smoothing / len(weights) for weight in weights]


def test_a_real_run_updates_the_proportions_by_the_rule_from_the_models_own_eval_losses(training_runs, data):
    """Evaluations at batches 0, 4 and 8: each one's losses, computed here from the weights of that batch's
    checkpoint (the source at batch 0), give the next proportions by the rule written out by hand."""
    checkpoints = training_runs / 'uninterrupted' / 'checkpoints'
    state = load_state(checkpoints / 'ep0-ba8-rank0.pt')
    schedule = state['dataset_state']['train']['schedule']
    metrics = read_metrics(training_runs / 'uninterrupted' / 'metrics.jsonl')
    proportions = list(INITIAL)
    assert [start for start, _ in schedule] == [0, 0, 4 * 4, 8 * 4]
    for evaluation, batch in enumerate((0, 4, 8)):
        model = model_at_batch(batch, training_runs / 'source', checkpoints)
        losses = direct_eval_losses(model, data / 'eval', DOMAINS)
        logged_losses = [metrics[f'dynamic_loading/loss/{name}'][evaluation] for name in DOMAINS]
        assert logged_losses == [(batch, pytest.approx(loss, rel=1e-5)) for loss in losses]
        proportions = rule_by_hand(proportions, losses, (4.0, 4.0, 4.0), eta=1.0, smoothing=1e-4)
        np.testing.assert_allclose(schedule[evaluation + 1][1], proportions, rtol=1e-5)
        logged = [metrics[f'dynamic_loading/proportion/{name}'][evaluation] for name in DOMAINS]
        assert logged == [(batch, value) for value in schedule[evaluation + 1][1]]
    assert state['callbacks']['DynamicLoading'] == {'references': [4.0, 4.0, 4.0], 'proportions': schedule[-1][1]}


TWO_DOMAINS = ('cc', 'github')
TWO_DOMAIN_REFERENCES = (4.0, 8.0)  # random tokens give a toy model about ln 256: cc above its reference, github below


@pytest.fixture(scope='module', params=[None, 0.1], ids=['unbounded', 'max_step'])
def two_domain_run(request, tmp_path_factory) -> tuple[Path, float | None]:
    """4 batches of the tiny continued pre-training YAML on 2 domains, evaluated first and every 2 batches, with a
    checkpoint at each evaluation; without max_step, and with a max_step that binds."""
    max_step = request.param
    root = tmp_path_factory.mktemp('two-domains')
    save_toy_model(root / 'source')
    write_random_domain_data(root / 'data', TWO_DOMAINS, train_samples=16, eval_samples=4, seq_len=SEQ_LEN)
    train_tiny_recipe(
        root / 'source', root / 'data', root / 'run', batches=4, interval=2, domains=TWO_DOMAINS,
        proportions=(0.7, 0.3), references=TWO_DOMAIN_REFERENCES,
        settings=[
            'callbacks.dynamic_loading.eta=0.5', 'callbacks.dynamic_loading.smoothing=0.05',
            f'callbacks.dynamic_loading.max_step={"null" if max_step is None else max_step}',
        ],
    )
    return root, max_step


def test_a_real_run_clips_the_excess_smooths_and_bounds_the_step_as_documented(two_domain_run):
    """The losses of each evaluation, computed here from its checkpoint's weights, and the rule written out by hand
    (github below its reference: no step; smoothing c/k with c = 0.05; max_step centred and clipped) give exactly
    the proportions the run logged and checkpointed."""
    root, max_step = two_domain_run
    checkpoints = root / 'run' / 'checkpoints'
    schedule = load_state(checkpoints / 'ep0-ba4-rank0.pt')['dataset_state']['train']['schedule']
    metrics = read_metrics(root / 'run' / 'metrics.jsonl')
    assert [start for start, _ in schedule] == [0, 0, 2 * 4, 4 * 4]
    proportions = [0.7, 0.3]
    for evaluation, batch in enumerate((0, 2, 4)):
        model = model_at_batch(batch, root / 'source', checkpoints)
        losses = direct_eval_losses(model, root / 'data' / 'eval', TWO_DOMAINS)
        assert losses[0] > TWO_DOMAIN_REFERENCES[0] and losses[1] < TWO_DOMAIN_REFERENCES[1]
        proportions = rule_by_hand(proportions, losses, TWO_DOMAIN_REFERENCES, 0.5, 0.05, max_step)
        np.testing.assert_allclose(schedule[evaluation + 1][1], proportions, rtol=1e-6)
        logged = [metrics[f'dynamic_loading/proportion/{name}'][evaluation] for name in TWO_DOMAINS]
        assert logged == [(batch, value) for value in schedule[evaluation + 1][1]]
    if max_step is not None:  # the bound binds: the first update moves cc's log-odds (before the mix) by 2 * max_step
        cc, github = ((value - 0.05 / 2) / 0.95 for value in schedule[1][1])
        assert math.log(cc / github) - math.log(0.7 / 0.3) == pytest.approx(2 * max_step)


def test_final_domain_weights_are_those_of_the_runs_last_checkpoint(training_runs):
    schedule = load_state(training_runs / 'uninterrupted' / 'checkpoints' / 'ep0-ba8-rank0.pt')['dataset_state'][
        'train'
    ]['schedule']
    expected = dict(zip(DOMAINS, schedule[-1][1]))
    assert final_domain_weights(training_runs / 'uninterrupted') == expected
    assert final_domain_weights(training_runs / 'uninterrupted' / 'checkpoints') == expected
    four_batches = load_state(training_runs / 'uninterrupted' / 'checkpoints' / 'ep0-ba4-rank0.pt')['dataset_state'][
        'train'
    ]
    assert final_domain_weights(training_runs / 'uninterrupted' / 'checkpoints' / 'ep0-ba4-rank0.pt') == dict(
        zip(DOMAINS, four_batches['schedule'][-1][1]),
    )


def test_continued_training_starts_from_the_proportions_a_run_ended_with(training_runs, continued_run):
    ended_with = final_domain_weights(training_runs / 'uninterrupted')
    schedule = load_state(continued_run / 'checkpoints' / 'ep0-ba4-rank0.pt')['dataset_state']['train']['schedule']
    assert schedule[0] == [0, [ended_with['wiki'], ended_with['cc'], ended_with['github']]]
    assert [start for start, _ in schedule] == [0, 0, 4 * 4]


def test_a_resumed_run_equals_the_uninterrupted_one(training_runs):
    uninterrupted = load_state(training_runs / 'uninterrupted' / 'checkpoints' / 'ep0-ba8-rank0.pt')
    resumed = load_state(training_runs / 'resumed' / 'checkpoints' / 'ep0-ba8-rank0.pt')
    assert resumed['dataset_state'] == uninterrupted['dataset_state']
    assert resumed['callbacks']['DynamicLoading'] == uninterrupted['callbacks']['DynamicLoading']
    assert resumed['model'].keys() == uninterrupted['model'].keys()
    for name, weight in uninterrupted['model'].items():
        assert torch.equal(resumed['model'][name], weight), name


def test_per_domain_losses_through_the_eval_loop_equal_the_cross_entropy_of_the_logits(data, tmp_path):
    """On a tiny model, Composer's eval_forward and metric updates, microbatched, give the callback the per-domain
    losses of a separate full-vocabulary cross-entropy of the logits (the computation the callback used to repeat)."""
    model = HuggingFaceModel(
        AutoModelForCausalLM.from_pretrained(save_toy_model(tmp_path / 'toy')), use_logits=True, shift_labels=True
    ).eval()
    state = trainer_state(data)
    logger = RecordingLogger()
    callback = DynamicLoading(reference=[0.0, 0.0, 0.0], update='constant')
    callback.after_load(state, logger)
    callback.eval_before_all(state, logger)
    callback.eval_start(state, logger)
    metric = state.eval_metrics['eval']['LanguageCrossEntropy']
    generator = torch.Generator().manual_seed(0)
    batches = [
        {
            'input_ids': torch.randint(len(SPECIAL_TOKENS), VOCAB, (4, 16), generator=generator),
            'domain': torch.tensor(domains),
        }
        for domains in ([0, 1, 2, 0], [2, 2, 1, 0])
    ]
    expected_sums = torch.zeros(len(DOMAINS), dtype=torch.float64)
    expected_counts = torch.zeros(len(DOMAINS), dtype=torch.float64)
    metric.reset()
    with torch.no_grad():
        for batch in batches:
            for rows in (slice(0, 2), slice(2, 4)):
                microbatch = {key: value[rows] for key, value in batch.items()} | {
                    'labels': batch['input_ids'][rows].clone()
                }
                logits = model.eval_forward(microbatch)
                model.update_metric(microbatch, logits, metric)
                targets = next_token_targets(batch['input_ids'][rows])
                token_losses = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction='none')
                expected_sums.index_add_(0, batch['domain'][rows], token_losses.view(targets.shape).sum(dim=1).double())
                expected_counts.index_add_(0, batch['domain'][rows], (targets != -100).sum(dim=1).double())
            callback.eval_batch_end(state, logger)
    callback.eval_after_all(state, logger)

    logged = logger.metrics[-1]
    for index, name in enumerate(DOMAINS):
        assert logged[f'dynamic_loading/loss/{name}'] == pytest.approx(
            (expected_sums[index] / expected_counts[index]).item(), rel=1e-6
        )
    assert metric.compute().item() == pytest.approx((expected_sums.sum() / expected_counts.sum()).item(), rel=1e-6)
