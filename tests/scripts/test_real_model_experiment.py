"""The real-model experiment (``scripts.experiments.real_model``) with ``--quick`` and one seed runs every stage on
SmolLM2-135M and the shared RedPajama sample and tasks, and reports what its stages measured."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scripts.experiments import real_model as experiment
from scripts.experiments.common import StageLedger, TrainingRun
from tests.paths import REPO, SHARED, experiment_test, machine_path
from tests.pruning.references import hf_num_params

NUMBER = re.compile(r'(?<![\w.])[-+]?(?:\d+\.\d+|nan|inf)(?![\w.])', re.IGNORECASE)


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


def test_shearing_init_parses_every_start_and_always_names_init():
    # The tiny recipe starts from importance: a uniform start has to say init=uniform, not only the drop rate.
    assert experiment.ShearingInit.parse('uniform:0.01').overrides(Path('i.json')) == (
        'algorithms.shearing.init=uniform', 'algorithms.shearing.droprate_init=0.01',
    )
    assert experiment.ShearingInit.parse('all_kept').overrides(Path('i.json')) == ('algorithms.shearing.init=all_kept',)
    assert experiment.ShearingInit.parse('importance').overrides(Path('i.json')) == (
        'algorithms.shearing.init=importance', 'algorithms.shearing.importance_file=i.json',
    )
    for wrong in ('uniform', 'uniform:1.5', 'magnitude'):
        message = f'--shearing-init must be all_kept, importance or uniform:P with 0 < P < 1, got {wrong!r}'
        with pytest.raises(argparse.ArgumentTypeError, match=re.escape(message)):
            experiment.ShearingInit.parse(wrong)


def test_ledger_skips_finished_steps_and_redoes_an_interrupted_one(tmp_path):
    ledger_file = tmp_path / 'stages.jsonl'
    calls = []
    ledger = StageLedger(ledger_file, 'commit-a')
    ledger.run('first', 3, lambda: calls.append('first') or (tmp_path / 'first').mkdir(), tmp_path / 'first')
    leftover = tmp_path / 'second'
    leftover.mkdir()
    (leftover / 'partial.bin').write_text('from a killed run')

    resumed = StageLedger(ledger_file, 'commit-b')
    resumed.run('first', 3, lambda: calls.append('first again'), tmp_path / 'first')
    resumed.run('second', 5, lambda: calls.append('second') or leftover.mkdir(), leftover)

    assert calls == ['first', 'second']
    assert not (leftover / 'partial.bin').exists()
    assert [(stage['name'], stage['batches'], stage['commit']) for stage in resumed.stages] == [
        ('first', 3, 'commit-a'),
        ('second', 5, 'commit-b'),
    ]
    assert [json.loads(line)['name'] for line in ledger_file.read_text().splitlines()] == ['first', 'second']
    assert all(stage['wall_seconds'] >= 0 for stage in resumed.stages)


def test_resume_needs_an_interrupted_run_of_the_same_setup_and_a_new_run_an_empty_folder(tmp_path):
    task_dir = tmp_path / 'tasks'
    task_dir.mkdir()
    importance = experiment.ShearingInit('importance')

    def run(folder: Path, resume: bool, settings=experiment.QUICK, shearing_init=importance) -> None:
        experiment.run_experiment(
            folder, settings, [1], 'test', shearing_init, data=tmp_path / 'data', task_dir=task_dir, resume=resume
        )

    with pytest.raises(
        FileNotFoundError, match=re.escape(f'--resume: {tmp_path / "run" / "stages.jsonl"} does not exist')
    ):
        run(tmp_path / 'run', resume=True)
    used = tmp_path / 'used'
    used.mkdir()
    (used / 'stages.jsonl').write_text('')
    with pytest.raises(FileNotFoundError, match=re.escape(f'--resume: {used / "setup.json"} does not exist')):
        run(used, resume=True)
    setup = {
        'settings': dataclasses.asdict(experiment.QUICK),
        'shearing_init': 'importance',
        'targets': list(experiment.TARGETS),
        'scratch': False,
        'data': str(tmp_path / 'data'),
    }
    (used / 'setup.json').write_text(json.dumps(setup))
    with pytest.raises(
        FileExistsError, match='is not empty; choose another with --output, or continue it with --resume'
    ):
        run(used, resume=False)
    with pytest.raises(
        ValueError, match=re.escape("--resume: settings, shearing_init differ from the interrupted run's")
    ):
        run(used, resume=True, settings=experiment.FULL, shearing_init=experiment.ShearingInit('uniform', 0.5))
    (used / 'report').mkdir()
    with pytest.raises(FileExistsError, match=re.escape(f'--resume: {used} already has its report')):
        run(used, resume=True)
    assert sorted(path.name for path in used.iterdir()) == ['report', 'setup.json', 'stages.jsonl']
    assert json.loads((used / 'setup.json').read_text()) == setup


def test_a_failing_stage_names_itself_and_its_command(tmp_path):
    stage = TrainingRun('pruning (sheared, seed 1)', 'missing.yaml', tmp_path, 2, ('seed=1',), tmp_path / 'final')
    with pytest.raises(
        RuntimeError,
        match=re.escape(
            'stage pruning (sheared, seed 1) failed with exit status 1: '
            'composer train.py yamls/tiny/missing.yaml seed=1'
        ),
    ):
        stage.run()


@pytest.mark.slow
@pytest.mark.skipif(
    not (SHARED / 'data' / 'redpajama-sample').is_dir() or not (SHARED / 'data' / 'eval-tasks').is_dir(),
    reason='needs ../shared/data/redpajama-sample and ../shared/data/eval-tasks',
)
@experiment_test('about 8 minutes on 2 quiet cores (SmolLM2 through 15 steps, two targets)')
def test_quick_experiment_runs_every_stage_and_reports_what_its_stages_measured(tmp_path, smollm2: Path):
    output_dir = tmp_path / 'run'
    experiment.main(['--quick', '--seeds', '1', '--output', str(output_dir)])

    report_dir = output_dir / 'report'
    results = json.loads((report_dir / 'results.json').read_text())
    assert [stage['name'] for stage in results['stages']] == [
        'prepare data',
        'held-out losses of S',
        *(
            name
            for target in experiment.TARGETS
            for name in (
                f'prune-oneshot ({target}, activation)',
                f'pruning ({target}, sheared, seed 1)',
                f'continued pre-training ({target}, sheared, seed 1)',
                f'continued pre-training ({target}, sheared, distilled, seed 1)',
                f'continued pre-training ({target}, oneshot, seed 1)',
                f'continued pre-training ({target}, oneshot, distilled, seed 1)',
            )
        ),
        'held-out losses (12 models)',
        'evaluate (13 models)',
        'throughput',
    ]
    assert list(results['targets']) == list(experiment.TARGETS)
    assert all(math.isfinite(number) for number in numbers(results))
    assert results['task_settings']['limit'] == 4 and results['task_settings']['seed'] == experiment.TASK_SEED
    quick = experiment.QUICK
    for name, target in results['targets'].items():
        assert set(target['models']) == set(experiment.MODELS) - {'scratch'}, name
        for model, runs in target['models'].items():
            assert len(runs) == 1, (name, model)
            assert set(runs[0]['losses']) == set(experiment.DOMAINS), (name, model)
            assert set(runs[0]['tasks']) == {'arc_easy', 'piqa'}, (name, model)
        # the pruned config also names SmolLM2's head_dim (576 / 9 heads), which the smaller hidden sizes keep
        assert target['shape'] == experiment.TARGETS[name].shape | {'head_dim': 64}
        for label, runs in target['curves'].items():
            tokens = runs[0][0]
            assert tokens[0] == 0, (name, label)
            assert tokens[-1] == quick.small_model_batches * quick.tokens_per_batch, (name, label)
        assert set(target['domain_weights']) == set(experiment.DOMAINS), name
    # Each model's numbers are those its folder and the evaluate command's output give.
    evaluated = json.loads((output_dir / 'downstream' / 'tasks.json').read_text())['models']
    for name, target in results['targets'].items():
        for model, runs in target['models'].items():
            run, folder = runs[0], machine_path(runs[0]['model'])
            assert run['parameters'] == hf_num_params(folder), (name, model)
            assert run['tasks'] == evaluated[str(folder)]['tasks'], (name, model)
            tokens = run['tokens']
            assert run['mean_loss'] == pytest.approx(
                sum(run['losses'][domain] * tokens[domain] for domain in tokens) / sum(tokens.values()), rel=1e-12,
            ), (name, model)
        assert target['parameters'] == target['models']['sheared'][0]['parameters'], name
    fractions = {name: target['parameters'] / results['source_parameters']
                 for name, target in results['targets'].items()}
    assert 0.35 < fractions['narrow'] < 0.4 and 0.6 < fractions['moderate'] < 0.65

    markdown = (report_dir / 'README.md').read_text()
    assert NUMBER.findall(markdown) and all(math.isfinite(float(number)) for number in NUMBER.findall(markdown))
    assert all(
        (report_dir / name).stat().st_size > 0
        for target in experiment.TARGETS
        for name in (f'loss_against_tokens_{target}.png', f'task_accuracy_{target}.png', f'domain_weights_{target}.png')
    )


def results_of(seeds_by_target: dict[str, list[int]], commit: str, precision: str = 'amp_bf16') -> dict[str, Any]:
    """The fields of a results.json that ``include_run`` reads: per target its seeds, S and the one-shot pruned model
    once, the sheared model and its curve per seed (loss 5 + seed); one pruning stage and command per target."""
    targets = {
        name: {
            'seeds': list(seeds),
            'models': {
                'source': [{'mean_loss': 3.0}],
                'oneshot_pruned': [{'mean_loss': 9.0}],
                'sheared': [{'mean_loss': 5.0 + seed} for seed in seeds],
            },
            'curves': {'sheared': [[[0, 10], [9.0, 5.0 + seed]] for seed in seeds]},
        }
        for name, seeds in seeds_by_target.items()
    }
    return {
        'settings': experiment.FULL.recorded(), 'task_settings': {'limit': 100}, 'shearing_init': 'all_kept',
        'precision': precision, 'doremi_max_step': 0.2, 'eval_dtype': 'amp_bf16', 'commit': commit,
        'command': f'run at {commit}', 'seeds': sorted({seed for seeds in seeds_by_target.values() for seed in seeds}),
        'targets': targets,
        'stages': [{'name': f'pruning ({name}, sheared)', 'commit': commit} for name in targets],
        'stage_commands': [f'composer train.py {commit}/{name}' for name in targets],
    }


def test_include_adds_an_earlier_runs_targets_and_seeds_and_refuses_other_settings(tmp_path):
    earlier = tmp_path / 'results.json'
    earlier.write_text(json.dumps(results_of({'narrow': [1, 2], 'moderate': [2]}, 'a')))

    included = experiment.include_run(earlier, results_of({'moderate': [1]}, 'b'))

    assert list(included['targets']) == ['moderate', 'narrow'] and included['seeds'] == [1, 2]
    moderate = included['targets']['moderate']
    assert moderate['seeds'] == [1, 2]
    assert moderate['models'] == {
        'source': [{'mean_loss': 3.0}],
        'oneshot_pruned': [{'mean_loss': 9.0}],
        'sheared': [{'mean_loss': 6.0}, {'mean_loss': 7.0}],
    }
    assert moderate['curves'] == {'sheared': [[[0, 10], [9.0, 6.0]], [[0, 10], [9.0, 7.0]]]}
    assert included['targets']['narrow'] == results_of({'narrow': [1, 2]}, 'a')['targets']['narrow']
    assert [(stage['name'], stage['commit']) for stage in included['stages']] == [
        ('pruning (moderate, sheared)', 'b'),
        ('pruning (narrow, sheared) [included run]', 'a'),
        ('pruning (moderate, sheared) [included run]', 'a'),
    ]
    assert included['stage_commands'] == [
        'composer train.py b/moderate', 'composer train.py a/narrow', 'composer train.py a/moderate',
    ]
    assert included['included'] == [{'path': str(earlier), 'commit': 'a', 'command': 'run at a'}]
    # The earlier report wrote its paths portable; this run's task folder is still a path of this machine.
    portable = results_of({'moderate': [1]}, 'c') | {'task_settings': {'limit': 100, 'task_dir': '../shared/tasks'}}
    earlier.write_text(json.dumps(portable))
    here_tasks = {'limit': 100, 'task_dir': str(REPO.parent / 'shared' / 'tasks')}
    here = results_of({'moderate': [2]}, 'd') | {'task_settings': here_tasks}
    assert experiment.include_run(earlier, here)['targets']['moderate']['seeds'] == [2, 1]
    earlier.write_text(json.dumps(results_of({'narrow': [1, 2], 'moderate': [2]}, 'a')))
    with pytest.raises(ValueError, match=re.escape(f'--include: {earlier} ran other precision; include a run')):
        experiment.include_run(earlier, results_of({'moderate': [1]}, 'b', precision='fp32'))
    with pytest.raises(ValueError, match=re.escape(f'--include: {earlier} also ran target moderate with seeds [2]')):
        experiment.include_run(earlier, results_of({'moderate': [2, 3]}, 'b'))


def test_a_winner_leads_the_runner_up_by_more_than_both_spreads():
    def models(**losses: list[float]) -> dict[str, list[dict[str, float]]]:
        return {arm: [{'mean_loss': loss} for loss in values] for arm, values in losses.items()}

    # sheared 5.1 ± 0.1 leads sheared + distillation 5.4 ± 0.1 by 0.3 > 0.2; oneshot arms further behind.
    clear = models(sheared=[5.0, 5.2], sheared_distilled=[5.3, 5.5], oneshot=[5.5, 5.6], oneshot_distilled=[6.0, 6.0])
    assert experiment.winner_sentence(clear, 'mean_loss') == (
        'Best held-out loss: sheared + continued, 0.300 nats ahead of sheared + continued with distillation '
        '(spreads 0.100 and 0.100): the winner.'
    )
    # 5.1 ± 0.1 against 5.2 ± 0.05: a lead of 0.1 inside 0.15.
    close = clear | models(sheared_distilled=[5.15, 5.25])
    assert experiment.winner_sentence(close, 'mean_loss').endswith(
        "0.100 nats ahead of sheared + continued with distillation (spreads 0.100 and 0.050): no winner beyond the "
        "seeds' spread."
    )
    one_seed = models(sheared=[5.0], oneshot=[5.5])
    assert experiment.winner_sentence(one_seed, 'mean_loss').endswith('one seed, no spread to judge the lead by.')


def test_the_report_names_the_planned_parts_it_lacks():
    partial = {'targets': {'moderate': {'seeds': [1]}}}
    assert experiment.coverage_lines(partial)[0] == (
        '**Incomplete:** the planned run is every target (narrow, moderate) with seeds 1, 2; not yet run: `narrow` '
        'seeds 1, 2; `moderate` seeds 2. Those parts run separately (`--targets`, `--seeds`) and join this report with '
        '`--include`. Until then a target with one seed has no spread, and no winner is named.'
    )
    complete = {'targets': {name: {'seeds': [2, 1]} for name in experiment.TARGETS}}
    assert experiment.coverage_lines(complete) == []
