"""Which pruning gives the best small model from a real pretrained one? SmolLM2-135M sheared vs importance-pruned.

Source S: SmolLM2-135M-Instruct (``scripts.assets.smollm2.smollm2_folder``): hidden 576, 9 heads / 3 kv heads, MLP 1536,
30 layers, tied embeddings. Target T: hidden 384, 6 heads / 3 kv heads, MLP 1024, 20 layers (every mask kind in
play: layers, query heads, MLP channels, hidden width; the 3 kv heads stay). Data: the RedPajama sample (7 domains)
prepared with S's tokenizer (``prepare-data``), its held-out eval split. Arms, every small model getting the same
training tokens (pruning tokens count):

1. ``source``: S, no training (the ceiling);
2. ``sheared``: S pruned to T with dynamic batch loading (doremi, reference: S's own per-domain eval losses), masks
   initialised as ``--shearing-init`` says, exported, then continued pre-training from the domain weights pruning
   ended with; ``sheared_importance_init``: the same with masks initialised from arm 3's activation importance
   (``algorithms.shearing.init=importance``; left out when ``--shearing-init importance`` makes it arm 2);
3. ``oneshot``: ``llmshearing prune-oneshot --importance activation`` (Minitron-style; seed-independent, its
   calibration samples are the first training samples of each domain in turn), then continued pre-training for
   the pruning and continued batches of arm 2 together;
4. ``sheared_distilled``: arm 2's pruned model continued with logit distillation from S (pruning itself is not
   distilled: S's extra forward would double the costliest stage);
5. ``oneshot_distilled``: arm 3 with distillation from S;
6. ``sheared_pruned``, ``sheared_importance_init_pruned``, ``oneshot_pruned``: T right after pruning;
7. ``scratch`` (``--scratch``): T from random weights on the same tokens.

Measures of every model: per-domain and mean held-out LM loss; ``evaluate_models`` (``llmshearing evaluate``) on the
shared tasks, 0-shot, on one seeded subset of ``task_limit`` rows per task for every model; the average accuracy;
parameters; the throughput of a batched forward and of greedy generation on CPU, relative to S.

The ``--quick`` setting runs every stage on samples of 128 tokens, batches of 2, 3 + 3 batches and 4 rows of 2
tasks. Each training stage runs ``train.py`` in its own process; ``stages.jsonl`` in the output folder records the
finished ones and ``setup.json`` its settings; ``--resume`` continues an interrupted run with the same settings. How
long the stages take: ``docs/results/real_model/README.md``. From the repository root:

    .venv/bin/python -m scripts.experiments.real_model [--quick] [--output DIR] [--seeds 1 2] [--shearing-init all_kept]
        [--scratch] [--threads 2] [--resume]
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from llmshearing import report
from llmshearing.evaluation import evaluate_models, write_outputs
from llmshearing.pruning.shape import ModelShape
from scripts.assets.smollm2 import smollm2_folder
from scripts.experiments.common import (
    DATA,
    DOMAINS,
    REPO,
    StageLedger,
    TrainingRun,
    TrainingSettings,
    check_empty,
    check_target_shape,
    continued_run,
    curves_as_lists,
    evaluate,
    experiment_parser,
    git_commit,
    mean_and_spread,
    mean_loss,
    natural_mix,
    plot_loss_against_tokens,
    prepare_domains,
    print_report,
    pruning_run,
    reference_override,
    run_llmshearing,
    runs_curve,
    scratch_run,
    stages_and_commands,
    start,
    write_results,
)

TASK_DIR = REPO.parent / 'shared' / 'data' / 'eval-tasks'
TARGET_SHAPE = dict(
    hidden_size=384, num_attention_heads=6, num_key_value_heads=3, intermediate_size=1024, num_hidden_layers=20
)
TASK_SEED = 1234
PRETRAINED_LEARNING_RATE = 1e-4  # pruning and continuing a pretrained model; the tiny recipes' 1e-3 is for toy models
IMPORTANCE_METHOD = 'activation'
PRUNING_MODULES = ('layer', 'head', 'intermediate', 'hidden')  # yamls/tiny/pruning.yaml's; T keeps S's 3 kv heads
MODELS = {
    'source': 'S: SmolLM2-135M-Instruct, no training (ceiling)',
    'sheared_pruned': 'T sheared, right after pruning',
    'sheared': 'T sheared + continued',
    'sheared_distilled': 'T sheared + continued with distillation',
    'sheared_importance_init_pruned': 'T sheared (importance-initialised masks), right after pruning',
    'sheared_importance_init': 'T sheared (importance-initialised masks) + continued',
    'oneshot_pruned': 'T one-shot activation importance, no training',
    'oneshot': 'T one-shot activation importance + continued',
    'oneshot_distilled': 'T one-shot activation importance + continued with distillation',
    'scratch': 'T from scratch, same tokens',
}
CURVES = {
    'sheared': ('sheared_pruned', 'sheared'),
    'sheared (importance init)': ('sheared_importance_init_pruned', 'sheared_importance_init'),
    'sheared + distillation': ('sheared_pruned', 'sheared_distilled'),
    'one-shot': (None, 'oneshot'),
    'one-shot + distillation': (None, 'oneshot_distilled'),
    'scratch': (None, 'scratch'),
}


@dataclass(frozen=True)
class RealModelSettings(TrainingSettings):
    """Besides the training sizes: the one-shot arm's calibration samples, the task subset (``task_limit`` rows of
    each of ``tasks``) and the throughput shapes."""

    calibration_samples: int
    task_limit: int
    tasks: str
    throughput_batch: int
    generated_tokens: int


QUICK = RealModelSettings(
    seq_len=128, batch_size=2, eval_samples=4, max_docs_per_domain=20, pruning_batches=3, continued_batches=3,
    evaluations_per_stage=1, warmup_fraction=0.05, calibration_samples=8, task_limit=4, tasks='arc_easy,piqa',
    throughput_batch=2, generated_tokens=8,
)
FULL = RealModelSettings(
    seq_len=256, batch_size=4, eval_samples=16, max_docs_per_domain=None, pruning_batches=20, continued_batches=40,
    evaluations_per_stage=4, warmup_fraction=0.05, calibration_samples=64, task_limit=40, tasks='paper',
    throughput_batch=8, generated_tokens=32,
)


@dataclass(frozen=True)
class ShearingInit:
    """How the shearing arm's masks start: every gate kept (the original code's start), ``uniform`` at a drop rate,
    or from arm 3's importance scores."""

    kind: str
    droprate: float | None = None

    @classmethod
    def parse(cls, value: str) -> ShearingInit:
        """``all_kept``, ``importance`` or ``uniform:P`` with 0 < P < 1."""
        if value in ('all_kept', 'importance'):
            return cls(value)
        kind, _, rate = value.partition(':')
        try:
            droprate = float(rate)
        except ValueError:
            droprate = math.nan
        if kind != 'uniform' or not 0 < droprate < 1:
            raise argparse.ArgumentTypeError(
                f'--shearing-init must be all_kept, importance or uniform:P with 0 < P < 1, got {value!r}',
            )
        return cls('uniform', droprate)

    def overrides(self, importance_file: Path) -> tuple[str, ...]:
        """The recipe overrides of this start: ``init`` always, since the tiny recipe's own start is ``importance``."""
        if self.kind == 'importance':
            return ('algorithms.shearing.init=importance', f'algorithms.shearing.importance_file={importance_file}')
        if self.kind == 'uniform':
            return ('algorithms.shearing.init=uniform', f'algorithms.shearing.droprate_init={self.droprate}')
        return (f'algorithms.shearing.init={self.kind}',)

    def __str__(self) -> str:
        return f'uniform:{self.droprate}' if self.kind == 'uniform' else self.kind


def pruning_stage(
    settings: RealModelSettings, data_dir: Path, source: Path, run_dir: Path, seed: int, mix: Sequence[float],
    reference: str, init_overrides: Sequence[str], label: str,
) -> TrainingRun:
    """Pruning S to T with doremi domain weights, masks starting as ``init_overrides`` say."""
    return pruning_run(
        settings, f'pruning ({label}, seed {seed})', source, data_dir, run_dir, seed, mix, TARGET_SHAPE,
        (f'optimizer.lr={PRETRAINED_LEARNING_RATE}', *init_overrides, reference),
    )


def continued_stage(
    settings: RealModelSettings, data_dir: Path, model: Path, output_dir: Path, batches: int, seed: int,
    mix: Sequence[float], reference: str, label: str, teacher: Path | None = None, pruning_dir: Path | None = None,
) -> TrainingRun:
    """Continued pre-training of ``model`` (doremi), distilled from ``teacher`` if given, from the domain weights
    ``pruning_dir``'s run ended with if given (else from ``mix``)."""
    return continued_run(
        settings, f'continued pre-training ({label}, seed {seed})', model, data_dir, output_dir, batches, seed, mix,
        (f'optimizer.lr={PRETRAINED_LEARNING_RATE}', reference), pruning_dir=pruning_dir, teacher=teacher,
    )


def scratch_stage(
    settings: RealModelSettings, data_dir: Path, source: Path, output_dir: Path, seed: int, mix: Sequence[float],
) -> TrainingRun:
    """T's shape from random weights on the fixed ``mix`` for the small models' batches."""
    initial_model = output_dir.parent / 'scratch_init'
    AutoConfig.from_pretrained(source, **TARGET_SHAPE).save_pretrained(initial_model)
    AutoTokenizer.from_pretrained(source).save_pretrained(initial_model)
    return scratch_run(
        settings, f'scratch (seed {seed})', initial_model, data_dir, output_dir, settings.small_model_batches, seed, mix
    )


def prune_oneshot_command(settings: RealModelSettings, source: Path, data_dir: Path, output_dir: Path) -> list[str]:
    """``llmshearing prune-oneshot`` arguments: activation importance on calibration samples, fp32 weights."""
    target = ','.join(f'{field}={size}' for field, size in TARGET_SHAPE.items())
    return [
        'prune-oneshot',
        str(source),
        str(output_dir),
        '--data',
        str(data_dir),
        '--domains',
        ','.join(DOMAINS),
        '--target',
        target,
        '--pruning-modules',
        ','.join(PRUNING_MODULES),
        '--importance',
        IMPORTANCE_METHOD,
        '--calibration-samples',
        str(settings.calibration_samples),
        '--dtype',
        'fp32',
    ]


def best_seconds(action: Callable[[], Any], repeats: int) -> float:
    """The shortest wall time of ``repeats`` calls of ``action`` after one warm-up call."""
    action()
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        timings.append(time.perf_counter() - started)
    return min(timings)


def model_throughput(
    folder: Path, settings: RealModelSettings, generator: torch.Generator, repeats: int,
) -> dict[str, float]:
    """Tokens per second of a batched forward (``throughput_batch`` × ``seq_len``) and of greedy generation
    (``throughput_batch`` prompts of 32 tokens, ``generated_tokens`` new ones) of the model in ``folder``, fp32 on
    CPU, the best of ``repeats``."""
    model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).eval()
    batch = torch.randint(model.config.vocab_size, (settings.throughput_batch, settings.seq_len), generator=generator)
    prompts = batch[:, :32]
    with torch.no_grad():
        forward = best_seconds(lambda: model(input_ids=batch), repeats)
        generation = best_seconds(
            lambda: model.generate(
                prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=settings.generated_tokens,
                min_new_tokens=settings.generated_tokens, do_sample=False, pad_token_id=0,
            ),
            repeats,
        )
    return {
        'forward_tokens_per_second': batch.numel() / forward,
        'generated_tokens_per_second': prompts.shape[0] * settings.generated_tokens / generation,
    }


def inference_throughput(
    model_dirs: dict[str, Path], settings: RealModelSettings, repeats: int = 3,
) -> dict[str, dict[str, float]]:
    """``model_throughput`` of each model, one loaded at a time, from one seeded generator of inputs."""
    generator = torch.Generator().manual_seed(0)
    return {name: model_throughput(folder, settings, generator, repeats) for name, folder in model_dirs.items()}


def average_stderr(tasks: dict[str, dict[str, Any]]) -> float:
    """The standard error of the mean over tasks of independent task accuracies."""
    errors = [task['stderr'] or 0.0 for task in tasks.values()]
    return math.sqrt(sum(error ** 2 for error in errors)) / len(errors)


def summary(results: dict[str, Any], name: str, key: str) -> tuple[float, float]:
    """Mean over the seeds of ``key`` (``mean_loss`` or ``average``) and its spread: half the seeds' range, or for
    the average accuracy at least its task standard error."""
    runs = results['models'][name]
    mean, spread = mean_and_spread([run[key] for run in runs])
    if key == 'average':
        spread = max(spread, float(np.mean([run['average_stderr'] for run in runs])))
    return mean, spread


def comparison(
    first: tuple[float, float],
    second: tuple[float, float],
    higher_is_better: bool,
    unit: str,
    scale: float = 1.0,
    digits: int = 3,
) -> str:
    """Whether the first (mean, spread) pair is better than the second, by how much (times ``scale``, in ``unit``), and
    whether the difference exceeds the two spreads together."""
    difference = first[0] - second[0]
    better = (difference > 0) == higher_is_better
    beyond = abs(difference) > first[1] + second[1]
    return (
        f'{"better" if better else "worse"} by {scale * abs(difference):.{digits}f} {unit}, '
        f'{"more" if beyond else "less"} than the spread'
    )


def outcome_sentences(results: dict[str, Any]) -> list[str]:
    """What the numbers say, arm against arm, for the held-out loss and the average task accuracy."""
    pairs = [
        ('sheared', 'oneshot', 'Shearing against one-shot importance pruning, both continued'),
        ('sheared_distilled', 'oneshot_distilled', 'Shearing against one-shot importance pruning, both distilled'),
        ('sheared_distilled', 'sheared', 'Distillation in continued pre-training of the sheared model'),
        ('oneshot_distilled', 'oneshot', 'Distillation in continued pre-training of the one-shot model'),
        (
            'sheared_importance_init',
            'sheared',
            "Importance-initialised masks against the shearing arm's initialisation",
        ),
        ('sheared_pruned', 'oneshot_pruned', 'Right after pruning, shearing against one-shot importance'),
        ('sheared', 'scratch', 'Shearing against training T from scratch'),
    ]
    sentences = []
    for first, second, title in pairs:
        if not results['models'].get(first) or not results['models'].get(second):
            continue
        loss = [summary(results, name, 'mean_loss') for name in (first, second)]
        accuracy = [summary(results, name, 'average') for name in (first, second)]
        sentences.append(
            f'{title}: held-out loss {loss[0][0]:.3f} ± {loss[0][1]:.3f} vs {loss[1][0]:.3f} ± {loss[1][1]:.3f} '
            f'nats/token ({comparison(*loss, False, "nats")}); average accuracy '
            f'{100 * accuracy[0][0]:.1f} ± {100 * accuracy[0][1]:.1f} vs {100 * accuracy[1][0]:.1f} ± '
            f'{100 * accuracy[1][1]:.1f} % ({comparison(*accuracy, True, "points", 100, 1)}).',
        )
    return sentences


def model_rows(results: dict[str, Any]) -> list[list[str]]:
    """Per arm: mean held-out loss, each domain's, each task's accuracy and the average, mean ± spread over seeds."""
    task_names = list(results['task_settings']['tasks'])
    rows = []
    for name, runs in results['models'].items():
        if not runs:
            continue
        cells = [MODELS[name]]
        for values in (
            [run['mean_loss'] for run in runs], *([run['losses'][domain] for run in runs] for domain in DOMAINS),
        ):
            mean, spread = mean_and_spread(values)
            cells.append(f'{mean:.3f}' if len(runs) == 1 else f'{mean:.3f} ± {spread:.3f}')
        for task in task_names:
            mean, spread = mean_and_spread([run['tasks'][task]['score'] for run in runs])
            stderr = float(np.mean([run['tasks'][task]['stderr'] or 0.0 for run in runs]))
            cells.append(f'{100 * mean:.1f} ± {100 * max(spread, stderr):.1f}')
        mean, spread = summary(results, name, 'average')
        cells.append(f'{100 * mean:.1f} ± {100 * spread:.1f}')
        rows.append(cells)
    return rows


def render_report(results: dict[str, Any]) -> str:
    """The report's markdown."""
    settings, tasks = results['settings'], results['task_settings']
    task_names = list(tasks['tasks'])
    throughput = results['throughput']
    source_speed = throughput['source']
    lines = [
        '# A real pretrained model: SmolLM2-135M sheared vs importance-pruned, with and without distillation',
        '',
        f'Source S: SmolLM2-135M-Instruct ({results["parameters"]["source"]:,} parameters). Target T: '
        + ', '.join(f'{header} {results["shapes"]["target"][field]}' for field, header in report.SHAPE_HEADERS.items())
        + f' ({results["parameters"]["target"]:,} parameters, '
        f'{results["parameters"]["target"] / results["parameters"]["source"]:.1%} of S). '
        "Data: the RedPajama sample (7 domains) prepared with S's tokenizer into samples of "
        f'{settings["seq_len"]} tokens; {settings["eval_samples"]} held-out samples per domain. Every small model '
        f'trains on {settings["tokens_small_model"]:,} tokens (batches of {settings["tokens_per_batch"]:,}): shearing '
        f'{settings["pruning_batches"]} pruning + {settings["continued_batches"]} continued batches, the one-shot arms '
        f'{settings["small_model_batches"]} continued batches (and {settings["calibration_samples"]} calibration '
        'samples, forward only). Shearing masks start as '
        f'`--shearing-init {results["shearing_init"]}`. Seeds {", ".join(map(str, results["seeds"]))}. Wall time '
        f'{results["wall_seconds"] / 60:.1f} min; the stages below took '
        f'{sum(stage["wall_seconds"] for stage in results["stages"]) / 60:.1f} min together.',
        '',
        f"Tasks: {tasks['subset_rule']}, 0-shot ({tasks['harness']}); ± is the task standard error or half the seeds' "
        "range, whichever is larger. Losses: mean loss per predicted token (nats), ± half the seeds' range.",
        '',
        '## Outcome',
        '',
        *(f'- {sentence}' for sentence in outcome_sentences(results)),
        '',
        '## Held-out loss and task accuracy',
        '',
        *report.markdown_table(
            [
                'model',
                'mean loss',
                *DOMAINS,
                *(tasks['tasks'][task]['title'] for task in task_names),
                'average accuracy',
            ],
            model_rows(results),
        ),
        '',
        '## Size and speed',
        '',
        *report.markdown_table(
            ['model', 'parameters', 'forward tokens/s', 'relative', 'generated tokens/s', 'relative'],
            [
                [
                    name,
                    f'{results["parameters"][name]:,}',
                    f'{speed["forward_tokens_per_second"]:.0f}',
                    f'{speed["forward_tokens_per_second"] / source_speed["forward_tokens_per_second"]:.2f}',
                    f'{speed["generated_tokens_per_second"]:.1f}',
                    f'{speed["generated_tokens_per_second"] / source_speed["generated_tokens_per_second"]:.2f}',
                ]
                for name, speed in throughput.items()
            ],
        ),
        '',
        f'fp32 on {results["threads"]} CPU threads: a forward of {settings["throughput_batch"]} × '
        f'{settings["seq_len"]} tokens and greedy generation of {settings["generated_tokens"]} tokens after '
        f'{settings["throughput_batch"]} prompts of 32, best of 3.',
        '',
        '## Plots',
        '',
        '![Held-out loss against training tokens](loss_against_tokens.png)',
        '',
        "Mean held-out loss over the domains against the small model's training tokens, every arm and seed "
        '(shearing: the masked model at the target shape while pruning, then continued pre-training).',
        '',
        '![Accuracy per task and arm](task_accuracy.png)',
        '',
        '![Domain weights while pruning](domain_weights.png)',
        '',
        'Training domain weights (doremi) while pruning, set after each evaluation.',
        '',
        *stages_and_commands(results),
    ]
    earlier = {stage['name']: stage['commit'] for stage in results['stages'] if stage['commit'] != results['commit']}
    if earlier:
        lines += [
            f'Continued with `--resume`: {len(earlier)} stages had finished in the interrupted run, at commit '
            f'{", ".join(f"`{commit}`" for commit in sorted(set(earlier.values())))}: {", ".join(earlier)}.',
            '',
        ]
    return '\n'.join(lines)


def run_experiment(
    output_dir: Path,
    settings: RealModelSettings,
    seeds: Sequence[int],
    command: str,
    shearing_init: ShearingInit,
    scratch: bool = False,
    data: Path = DATA,
    task_dir: Path = TASK_DIR,
    source: Path | None = None,
    resume: bool = False,
) -> Path:
    """Every stage into ``output_dir`` (new or empty; with ``resume``, an interrupted run's, whose finished stages are
    kept); return the report folder."""
    ledger_file, setup_file = output_dir / 'stages.jsonl', output_dir / 'setup.json'
    setup = {'settings': asdict(settings), 'shearing_init': str(shearing_init), 'scratch': scratch, 'data': str(data)}
    if resume:
        for needed in (ledger_file, setup_file):
            if not needed.is_file():
                raise FileNotFoundError(
                    f'--resume: {needed} does not exist; {output_dir} is not an interrupted run of this experiment'
                )
        if (output_dir / 'report').exists():
            raise FileExistsError(f'--resume: {output_dir} already has its report')
        recorded = json.loads(setup_file.read_text())
        changed = sorted(key for key in setup if recorded.get(key) != setup[key])
        if changed:
            raise ValueError(
                f"--resume: {', '.join(changed)} differ from the interrupted run's ({setup_file}); "
                'resume with its arguments'
            )
    else:
        check_empty(output_dir, 'choose another with --output, or continue it with --resume')
    if not task_dir.is_dir():
        raise FileNotFoundError(f'task folder {task_dir} does not exist')
    started = time.monotonic()
    commit, dirty = git_commit()
    source = source or smollm2_folder()
    output_dir.mkdir(parents=True, exist_ok=True)
    setup_file.write_text(json.dumps(setup, indent=2) + '\n')
    ledger = StageLedger(ledger_file, commit)

    data_dir = output_dir / 'data'
    mix = natural_mix(prepare_domains(ledger, settings, data, source, data_dir))
    source_losses_file = output_dir / 'source_losses.json'
    ledger.run('held-out losses of S', 0, lambda: evaluate(source, data_dir, source_losses_file), source_losses_file)
    source_losses = json.loads(source_losses_file.read_text())
    reference = reference_override(source_losses['losses'])

    oneshot_dir = output_dir / 'oneshot' / 'pruned'
    oneshot_arguments = prune_oneshot_command(settings, source, data_dir, oneshot_dir)
    ledger.run('prune-oneshot (activation)', 0, lambda: run_llmshearing(oneshot_arguments), oneshot_dir)
    importance_file = oneshot_dir / 'importance.json'

    model_dirs: dict[str, list[Path]] = {name: [] for name in MODELS}
    model_dirs['source'].append(source)
    model_dirs['oneshot_pruned'].append(oneshot_dir)
    stage_commands = [shlex.join(['llmshearing', *oneshot_arguments])]
    runs_by_seed: dict[int, dict[str, TrainingRun]] = {}
    inits = {'sheared': shearing_init.overrides(importance_file)}
    if shearing_init.kind != 'importance':
        inits['sheared_importance_init'] = ShearingInit('importance').overrides(importance_file)
    for seed in seeds:
        seed_dir = output_dir / f'seed_{seed}'
        named: dict[str, TrainingRun] = {}
        for arm, init_overrides in inits.items():
            pruning = pruning_stage(
                settings, data_dir, source, seed_dir / arm, seed, mix, reference, init_overrides, arm
            )
            named[f'{arm}_pruned'] = pruning
            named[arm] = continued_stage(
                settings,
                data_dir,
                pruning.final_model,
                seed_dir / arm / 'continued_pretraining',
                settings.continued_batches,
                seed,
                mix,
                reference,
                arm,
                pruning_dir=pruning.output_dir,
            )
        named['sheared_distilled'] = continued_stage(
            settings,
            data_dir,
            named['sheared_pruned'].final_model,
            seed_dir / 'sheared_distilled' / 'continued_pretraining',
            settings.continued_batches,
            seed,
            mix,
            reference,
            'sheared, distilled',
            teacher=source,
            pruning_dir=named['sheared_pruned'].output_dir,
        )
        for arm, teacher in (('oneshot', None), ('oneshot_distilled', source)):
            named[arm] = continued_stage(
                settings, data_dir, oneshot_dir, seed_dir / arm / 'continued_pretraining', settings.small_model_batches,
                seed, mix, reference, arm.replace('_', ', '), teacher=teacher,
            )
        if scratch:
            named['scratch'] = scratch_stage(settings, data_dir, source, seed_dir / 'scratch', seed, mix)
        for name, run in named.items():
            model_dirs[name].append(ledger.train(run))
            stage_commands.append(run.command)
        runs_by_seed[seed] = named

    def held_out_losses() -> dict[str, list[dict[str, Any]]]:
        evaluations: dict[str, list[dict[str, Any]]] = {name: [] for name in MODELS}
        for name, folders in model_dirs.items():
            for folder in folders:
                losses = (
                    source_losses
                    if name == 'source'
                    else evaluate(folder, data_dir, folder.parent / f'{folder.name}_losses.json')
                )
                evaluations[name].append(losses | {'mean_loss': mean_loss(losses)})
        return evaluations

    all_folders = [folder for folders in model_dirs.values() for folder in folders]
    evaluations = ledger.timed(f'held-out losses ({len(all_folders) - 1} models)', held_out_losses)
    downstream, records = ledger.timed(f'evaluate ({len(all_folders)} models)', lambda: evaluate_models(
        all_folders, settings.tasks, task_dir, limit=settings.task_limit, seed=TASK_SEED, num_fewshot=0,
    ))
    write_outputs(downstream, records, output_dir / 'downstream' / 'tasks.json')
    for name, folders in model_dirs.items():
        for evaluation, folder in zip(evaluations[name], folders):
            task_result = downstream['models'][str(folder)]
            evaluation |= {
                'tasks': task_result['tasks'],
                'average': task_result['average'],
                'average_stderr': average_stderr(task_result['tasks']),
            }
    first_seed = runs_by_seed[seeds[0]]
    throughput = ledger.timed(
        'throughput',
        lambda: inference_throughput({'source': source, 'target': first_seed['sheared'].final_model}, settings),
    )

    source_shape = ModelShape.from_config(AutoConfig.from_pretrained(source))
    target_shape = source_shape.with_target(TARGET_SHAPE)
    check_target_shape(evaluations, target_shape, [name for name in MODELS if name != 'source'])
    results: dict[str, Any] = {
        'command': command,
        'commit': commit,
        'dirty': dirty,
        'seeds': list(seeds),
        'shearing_init': str(shearing_init),
        'threads': torch.get_num_threads(),
        'mix': dict(zip(DOMAINS, mix)),
        'settings': settings.recorded(),
        'task_settings': downstream['settings'],
        'shapes': {'source': source_shape.config_updates(), 'target': target_shape.config_updates()},
        'parameters': {'source': source_losses['parameters'], 'target': evaluations['oneshot_pruned'][0]['parameters']},
        'models': {name: runs for name, runs in evaluations.items() if runs},
        'throughput': throughput,
        'stages': ledger.stages,
        'stage_commands': stage_commands,
    }

    report_dir = output_dir / 'report'
    report_dir.mkdir()
    curves: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for named in runs_by_seed.values():
        for label, (pruning_name, continued_name) in CURVES.items():
            if continued_name in named:
                runs = [named[pruning_name], named[continued_name]] if pruning_name else [named[continued_name]]
                curves.setdefault(label, []).append(runs_curve(runs, settings.tokens_per_batch))
    results['curves'] = curves_as_lists(curves)
    plot_loss_against_tokens(curves, 'Held-out loss against tokens: SmolLM2-135M pruned to T, every arm').savefig(
        report_dir / 'loss_against_tokens.png', dpi=120
    )
    pruning_metrics = [
        first_seed[name].metrics()
        for name in ('sheared_pruned', 'sheared_importance_init_pruned')
        if name in first_seed
    ]
    report.plot_domain_weights(pruning_metrics, DOMAINS).savefig(report_dir / 'domain_weights.png', dpi=120)
    task_titles = {task: values['title'] for task, values in downstream['settings']['tasks'].items()}
    scores = {
        name: {task_titles[task]: float(np.mean([run['tasks'][task]['score'] for run in runs])) for task in task_titles}
        | {'average': float(np.mean([run['average'] for run in runs]))}
        for name, runs in results['models'].items()
    }
    chance = {
        values['title']: values['chance']
        for values in downstream['settings']['tasks'].values()
        if values['chance'] is not None
    }
    report.plot_task_accuracies(scores, chance).savefig(report_dir / 'task_accuracy.png', dpi=120)
    return write_results(report_dir, results, started, render_report)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the experiment from the command line and print the report."""
    parser = experiment_parser(
        __doc__.split('\n\n')[0], __spec__.name, 'fewer documents, shorter samples, fewer batches and task rows'
    )
    parser.add_argument('--seeds', type=int, nargs='+', default=[1, 2], help='seeds of the training runs')
    parser.add_argument(
        '--shearing-init',
        type=ShearingInit.parse,
        default=ShearingInit('all_kept'),
        help="masks of the shearing arms: all_kept (the original code's start), importance or uniform:P, "
        'drop rate P (default: all_kept)',
    )
    parser.add_argument('--scratch', action='store_true', help='also train T from scratch on the same tokens')
    parser.add_argument(
        '--resume', action='store_true', help='continue an interrupted run in --output: keep its finished stages'
    )
    parser.add_argument(
        '--task-dir', type=Path, default=TASK_DIR, help='task files (default: ../shared/data/eval-tasks)'
    )
    args = parser.parse_args(argv)
    output_dir, command = start(args, __spec__.name, argv)
    print_report(
        run_experiment(
            output_dir,
            QUICK if args.quick else FULL,
            args.seeds,
            command,
            args.shearing_init,
            args.scratch,
            args.data,
            args.task_dir,
            resume=args.resume,
        )
    )


if __name__ == '__main__':
    main()
