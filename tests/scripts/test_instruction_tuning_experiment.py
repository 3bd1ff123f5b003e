"""The instruction-tuning experiment (``scripts.experiments.instruction_tuning``): its sizes, the responses it hands
to ``compare``, its report's sentences, and (opt-in) the ``--quick`` run end to end on SmolLM2-135M."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from scripts.experiments import instruction_tuning as experiment
from scripts.experiments import real_model
from tests.paths import SHARED, experiment_test, machine_path
from tests.pruning.references import hf_num_params
from tests.scripts.test_real_model_experiment import NUMBER, numbers


def test_full_and_quick_sizes_follow_the_paper_schedule():
    # FULL: 512 training conversations, one epoch in batches of 4 -> 128 batches; 3% of 128 = 3.84 -> 4 batches.
    assert (experiment.FULL.batches, experiment.FULL.warmup_batches) == (128, 4)
    # QUICK: 8 training conversations in batches of 2 -> 4 batches; 3% of 4 rounds to 0 -> at least 1.
    assert (experiment.QUICK.batches, experiment.QUICK.warmup_batches) == (4, 1)
    recorded = experiment.FULL.recorded()
    assert recorded['batches'] == 128 and recorded['seq_len'] == 512 and recorded['data_format'] == 'sharegpt'


def test_prepare_instructions_takes_sharegpt_first_turns_or_the_seed_tasks(tmp_path):
    full = experiment.prepare_instructions_command(experiment.FULL, tmp_path, tmp_path / 'out')
    assert full == [
        'prepare-instructions', 'sharegpt', str(tmp_path / 'out'), '--format', 'sharegpt', '--max-examples', '520',
        '--eval-examples', '8', '--seed', '42', '--first-turn',
    ]
    quick = experiment.prepare_instructions_command(experiment.QUICK, tmp_path, tmp_path / 'out')
    assert quick[1] == str(tmp_path / 'seed_tasks.jsonl') and '--first-turn' not in quick
    assert quick[quick.index('--format') + 1] == 'self-instruct'


def test_tuning_run_trains_in_bf16_with_the_paper_learning_rate(tmp_path):
    run = experiment.tuning_run(experiment.FULL, tmp_path / 'T', tmp_path / 'data', tmp_path / 'seed_3', 3)
    assert run.yaml_name == 'instruction_tuning.yaml' and run.batches == 128
    for override in (
        'precision=amp_bf16', 'optimizer.lr=5e-05', 'scheduler.t_warmup=4ba', 'max_duration=128ba', 'seed=3',
        f'variables.model_path={tmp_path / "T"}', f'variables.data_local={tmp_path / "data"}', 'max_seq_len=512',
        'eval_interval=32ba',
    ):
        assert override in run.overrides, override
    assert run.final_model == tmp_path / 'seed_3' / 'huggingface' / 'final'


def test_model_outputs_pair_each_response_with_its_ifeval_prompt_in_key_order():
    records = [
        {'model': 'b', 'key': 7, 'response': 'b7'},
        {'model': 'a', 'key': 9, 'response': 'a9'},
        {'model': 'a', 'key': 7, 'response': 'a7'},
    ]
    prompts = {7: 'Write a haiku.', 9: 'Answer in French.'}
    assert experiment.model_outputs(records, prompts, 'a', 'T') == [
        {'instruction': 'Write a haiku.', 'output': 'a7', 'generator': 'T', 'dataset': 'ifeval'},
        {'instruction': 'Answer in French.', 'output': 'a9', 'generator': 'T', 'dataset': 'ifeval'},
    ]
    with pytest.raises(ValueError, match='the IFEval records have no response of c'):
        experiment.model_outputs(records, prompts, 'c', 'S')


def test_comparison_summary_keeps_the_summed_margins_only_when_compare_gives_them():
    result = {
        'win_rate': 0.75, 'interval': [0.3, 0.95], 'wins': 1, 'ties': 1, 'losses': 0, 'position_consistency': 0.5,
        'identical_outputs': 0, 'instructions': {'shared': 2, 'only_in_a': 0, 'only_in_b': 0}, 'rows': [],
    }
    summary = experiment.comparison_summary(result)
    assert summary['pairs'] == 2 and 'summed_margins' not in summary and 'rows' not in summary
    margins = {'rule': 'r', 'win_rate': 1.0, 'interval': [0.34, 1.0], 'wins': 2, 'ties': 0, 'losses': 0}
    assert experiment.comparison_summary(result | {'summed_margins': margins})['summed_margins'] == {
        'win_rate': 1.0, 'interval': [0.34, 1.0], 'wins': 2, 'ties': 0, 'losses': 0,
    }


def test_report_says_where_t_came_from_and_that_the_judge_is_weak():
    made = experiment.student_sentence({'made_here': True, 'calibration_samples': 64, 'folder': 'x'})
    assert 'no `--student` given' in made and '`moderate` target' in made and 'on 64 calibration samples' in made
    assert real_model.TARGETS['moderate'].shape_argument in made
    assert experiment.student_sentence({'made_here': False, 'folder': 'runs/best'}) == (
        'T is `runs/best`, given with `--student`.'
    )
    judge = experiment.judge_sentence({'tuned_vs_untuned': [{'position_consistency': 0.25}],
                                       'tuned_vs_source': [{'position_consistency': 0.6}]})
    assert 'a weak judge' in judge and 'was 0.25 to 0.60;' in judge
    assert 'was 0.50;' in experiment.judge_sentence({'tuned_vs_untuned': [{'position_consistency': 0.5}]})
    assert [experiment.plural(count, 'batch', 'es') for count in (0, 1, 2)] == ['batches', 'batch', 'batches']


def test_metrics_show_the_standard_error_where_lm_eval_gives_one():
    model = {'ifeval': {'prompt_level_strict_acc': 0.25, 'prompt_level_strict_acc_stderr': 0.0433,
                        'inst_level_strict_acc': 0.375, 'inst_level_strict_acc_stderr': None}}
    assert experiment.format_metric(model, 'prompt_level_strict_acc') == '25.0 ± 4.3'
    assert experiment.format_metric(model, 'inst_level_strict_acc') == '37.5'
    assert experiment.format_interval(0.5, [0.25, 0.75]) == '0.500 [0.250, 0.750]'


@pytest.mark.slow
@pytest.mark.skipif(
    not (SHARED / 'data' / 'instructions' / 'ifeval.jsonl').is_file()
    or not (SHARED / 'data' / 'redpajama-sample').is_dir(),
    reason='needs ../shared/data/instructions (IFEval prompts, seed tasks) and ../shared/data/redpajama-sample',
)
@experiment_test(
    'a few minutes on 2 quiet cores (SmolLM2 pruned, tuned for 4 steps, 3 models on 3 IFEval prompts, two comparisons)'
)
def test_quick_experiment_runs_every_stage_and_reports_what_its_stages_measured(tmp_path, smollm2: Path):
    output_dir = tmp_path / 'run'
    experiment.main(['--quick', '--output', str(output_dir)])

    report_dir = output_dir / 'report'
    results = json.loads((report_dir / 'results.json').read_text())
    assert [stage['name'] for stage in results['stages']] == [
        'prepare data', 'prune-oneshot (moderate, activation)', 'prepare-instructions', 'instruction tuning (seed 1)',
        'IFEval (3 models)', 'compare tuned_vs_untuned (seed 1)', 'compare tuned_vs_source (seed 1)',
    ]
    assert all(math.isfinite(number) for number in numbers(results))
    assert results['student']['made_here'] and 0.6 < results['student']['parameters'] / results['models'][
        'source']['parameters'] < 0.65
    assert results['ifeval_settings']['prompts'] == 3 and results['data']['train'] == 8
    for comparison in results['comparisons'].values():
        assert comparison[0]['pairs'] == 3 and 0 <= comparison[0]['position_consistency'] <= 1
    # Each model's numbers are those its folder and the evaluate command's output give; each comparison's those of
    # its compare result, whose win rate counts a tie as half a win.
    evaluated = json.loads((output_dir / 'ifeval' / 'ifeval.json').read_text())['models']
    models = results['models']
    for name, model in [('source', models['source']), ('untuned', models['untuned'])] + [
        ('tuned', tuned) for tuned in models['tuned']
    ]:
        folder = machine_path(model['folder'])
        assert model['parameters'] == hf_num_params(folder), name
        scored = evaluated[str(folder)]['tasks']['ifeval']
        assert model['ifeval'] == {metric: scored[metric] for metric in model['ifeval']}, name
    for name, comparison in results['comparisons'].items():
        compared = json.loads((output_dir / 'compare' / f'{name}_seed_1.json').read_text())
        assert {key: comparison[0][key] for key in ('win_rate', 'wins', 'ties', 'losses')} == {
            key: compared[key] for key in ('win_rate', 'wins', 'ties', 'losses')
        }, name
        assert comparison[0]['win_rate'] == (compared['wins'] + compared['ties'] / 2) / comparison[0]['pairs'], name
    responses = json.loads((output_dir / 'responses' / 'tuned_seed_1.json').read_text())
    assert len(responses) == 3 and {row['dataset'] for row in responses} == {'ifeval'}

    markdown = (report_dir / 'README.md').read_text()
    assert 'a weak judge' in markdown and 'no `--student` given' in markdown
    assert NUMBER.findall(markdown) and all(math.isfinite(float(number)) for number in NUMBER.findall(markdown))
    assert all((report_dir / name).stat().st_size > 0 for name in ('ifeval_metrics.png', 'win_rates.png'))


def test_inputs_are_checked_before_any_stage(tmp_path):
    instructions = tmp_path / 'instructions'
    instructions.mkdir()

    def run(student: Path | None = None) -> None:
        experiment.run_experiment(
            tmp_path / 'run', experiment.QUICK, [1], 'test', student=student, instructions=instructions,
        )

    with pytest.raises(FileNotFoundError, match=f'{instructions / "ifeval.jsonl"} does not exist'):
        run()
    (instructions / 'ifeval.jsonl').write_text('')
    with pytest.raises(FileNotFoundError, match=f'{instructions / "seed_tasks.jsonl"} does not exist'):
        run()
    (instructions / 'seed_tasks.jsonl').write_text('')
    with pytest.raises(
        FileNotFoundError, match=f'--student: {tmp_path / "pruned"} is not a model folder with config.json',
    ):
        run(tmp_path / 'pruned')
    assert not (tmp_path / 'run').exists()
