"""The real-model experiment (``scripts/experiments/real_model.py``) with ``--quick`` and one seed runs every stage on
SmolLM2-135M and the shared RedPajama sample and tasks, and reports only finite numbers."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / 'scripts' / 'experiments' / 'real_model.py'
SHARED = REPO.parent / 'shared'
NUMBER = re.compile(r'(?<![\w.])[-+]?(?:\d+\.\d+|nan|inf)(?![\w.])', re.IGNORECASE)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (SHARED / 'data' / 'redpajama-sample').is_dir() or not (SHARED / 'data' / 'eval-tasks').is_dir(),
        reason='needs ../shared/data/redpajama-sample and ../shared/data/eval-tasks',
    ),
]


def load_experiment() -> ModuleType:
    """The experiment script as a module (registered, as its dataclasses need)."""
    spec = importlib.util.spec_from_file_location('real_model', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def numbers(value: Any) -> Iterator[float]:
    """Every int and float inside a JSON value."""
    if isinstance(value, dict):
        for item in value.values():
            yield from numbers(item)
    elif isinstance(value, list):
        for item in value:
            yield from numbers(item)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield float(value)


def test_shearing_init_parses_importance_and_uniform_rates():
    experiment = load_experiment()
    assert experiment.ShearingInit.parse('uniform:0.01').overrides(Path('i.json')) == ('algorithms.shearing.droprate_init=0.01',)
    assert experiment.ShearingInit.parse('importance').overrides(Path('i.json')) == (
        'algorithms.shearing.init=importance', 'algorithms.shearing.importance_file=i.json',
    )
    for wrong in ('uniform', 'uniform:1.5', 'magnitude'):
        message = f'--shearing-init must be importance or uniform:P with 0 < P < 1, got {wrong!r}'
        with pytest.raises(argparse.ArgumentTypeError, match=re.escape(message)):
            experiment.ShearingInit.parse(wrong)


@pytest.mark.skipif(
    os.environ.get('LLMSHEARING_EXPERIMENT_TESTS') != '1',
    reason='about 10 minutes on 2 cores (SmolLM2 through eleven stages): set LLMSHEARING_EXPERIMENT_TESTS=1 to run it',
)
def test_quick_experiment_runs_every_stage_and_reports_finite_numbers(tmp_path, smollm2: Path):
    experiment = load_experiment()
    output_dir = tmp_path / 'run'
    experiment.main(['--quick', '--seeds', '1', '--output', str(output_dir)])

    report_dir = output_dir / 'report'
    results = json.loads((report_dir / 'results.json').read_text())
    assert [stage['name'] for stage in results['stages']] == [
        'prepare data', 'held-out losses of S', 'prune-oneshot (activation)',
        'pruning (sheared, seed 1)', 'continued pre-training (sheared, seed 1)',
        'pruning (sheared_importance_init, seed 1)', 'continued pre-training (sheared_importance_init, seed 1)',
        'continued pre-training (sheared, distilled, seed 1)', 'continued pre-training (oneshot, seed 1)',
        'continued pre-training (oneshot, distilled, seed 1)', 'evaluate (9 models)', 'throughput',
    ]
    assert set(results['models']) == set(experiment.MODELS) - {'scratch'}
    for name, runs in results['models'].items():
        assert len(runs) == 1, name
        assert set(runs[0]['losses']) == set(experiment.DOMAINS), name
        assert set(runs[0]['tasks']) == {'arc_easy', 'piqa'}, name
    assert all(math.isfinite(number) for number in numbers(results))
    assert results['task_settings']['limit'] == 4 and results['task_settings']['seed'] == experiment.TASK_SEED
    assert set(results['throughput']) == {'source', 'target'}
    assert results['parameters']['target'] < 0.5 * results['parameters']['source']
    quick = experiment.QUICK
    for label, runs in results['curves'].items():
        tokens = runs[0][0]
        assert tokens[0] == 0 and tokens[-1] == quick.small_model_batches * quick.tokens_per_batch, label

    markdown = (report_dir / 'README.md').read_text()
    assert NUMBER.findall(markdown) and all(math.isfinite(float(number)) for number in NUMBER.findall(markdown))
    assert all((report_dir / name).stat().st_size > 0 for name in ('loss_against_tokens.png', 'task_accuracy.png', 'domain_weights.png'))
