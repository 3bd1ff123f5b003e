"""The shearing-vs-scratch experiment (``scripts.experiments.shearing_vs_scratch``), in a setting smaller than
``--quick`` and with one seed, runs every stage on the shared RedPajama sample and reports what its stages measured."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import pytest

from scripts.experiments import shearing_vs_scratch as experiment
from tests.paths import SHARED, experiment_test

NUMBER = re.compile(r'(?<![\w.])[-+]?(?:\d+\.\d+|nan|inf)(?![\w.])', re.IGNORECASE)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (SHARED / 'data' / 'redpajama-sample').is_dir() or not (SHARED / 'tokenizers' / 'mistral-7b-v0.1').is_dir(),
        reason='needs ../shared/data/redpajama-sample and ../shared/tokenizers/mistral-7b-v0.1',
    ),
]


@experiment_test('about 95 s on 2 cores (every stage, two seeds)')
def test_quick_experiment_runs_every_stage_and_reports_what_its_stages_measured(tmp_path):
    smallest = dataclasses.replace(
        experiment.QUICK, seq_len=32, eval_samples=4, max_docs_per_domain=10, source_batches=8, source_evaluations=2,
        pruning_batches=4, continued_batches=4, evaluations_per_stage=1,
    )
    experiment.run_experiment(tmp_path / 'run', smallest, [1], 'test_experiment')

    report_dir = tmp_path / 'run' / 'report'
    results = json.loads((report_dir / 'results.json').read_text())
    stage_names = [stage['name'] for stage in results['stages']]
    assert stage_names == [
        'prepare data', 'source', 'pruning (doremi, seed 1)', 'continued pre-training (doremi, seed 1)',
        'pruning (constant, seed 1)', 'continued pre-training (constant, seed 1)', 'scratch (seed 1)',
    ]
    assert set(results['models']) == set(experiment.MODELS)
    for name, runs in results['models'].items():
        assert len(runs) == 1, name
        assert set(runs[0]['losses']) == set(experiment.DOMAINS), name
        assert all(math.isfinite(loss) for loss in [*runs[0]['losses'].values(), runs[0]['mean_loss']]), name
        losses, tokens = runs[0]['losses'], runs[0]['tokens']
        by_tokens = sum(losses[domain] * tokens[domain] for domain in losses) / sum(tokens.values())
        assert runs[0]['mean_loss'] == pytest.approx(by_tokens, rel=1e-12), name
        # The model that was evaluated has the shape the experiment asks for.
        config = json.loads((Path(runs[0]['model']) / 'config.json').read_text())
        shape = experiment.SOURCE_SHAPE if name == 'source' else experiment.TARGET_SHAPE
        assert {field: config[field] for field in shape} == shape, name
    assert sum(results['mix'].values()) == pytest.approx(1, abs=1e-9)
    assert list(results['mix']) == list(experiment.DOMAINS) and all(share > 0 for share in results['mix'].values())
    # The natural mix: each domain's share of the training tokens prepare-data counted (rounded to 4 decimals).
    manifest = json.loads((tmp_path / 'run' / 'data' / 'manifest.json').read_text())
    train_tokens = {domain: manifest['train'][domain]['tokens'] for domain in experiment.DOMAINS}
    for domain, share in results['mix'].items():
        assert share == pytest.approx(train_tokens[domain] / sum(train_tokens.values()), abs=5e-4), domain
    source_tokens, source_losses = results['source_curve']
    assert source_tokens == [0, 4 * 8 * 32, 8 * 8 * 32] and all(map(math.isfinite, source_losses))
    for name, runs in results['curves'].items():
        assert runs and all(math.isfinite(value) for tokens, losses in runs for value in [*tokens, *losses]), name
    for stage in ('pruning', 'continued_pretraining'):
        assert (tmp_path / 'run' / 'seed_1' / 'doremi' / stage / 'huggingface' / 'final' / 'config.json').is_file()

    markdown = (report_dir / 'README.md').read_text()
    numbers = NUMBER.findall(markdown)
    assert numbers and all(math.isfinite(float(number)) for number in numbers)
    assert all(
        (report_dir / name).stat().st_size > 0
        for name in ('loss_against_tokens.png', 'domain_weights.png', 'source_loss.png')
    )
