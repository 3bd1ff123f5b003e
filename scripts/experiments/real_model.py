"""Which pruning gives the best small model from a real pretrained one? SmolLM2-135M sheared vs importance-pruned,
with and without distillation, at two target sizes.

Source S: SmolLM2-135M-Instruct (``scripts.assets.smollm2.smollm2_folder``): hidden 576, 9 heads / 3 kv heads, MLP 1536,
30 layers, tied embeddings. Targets (``TARGETS``): ``narrow``, hidden 384, 6 heads / 3 kv heads, MLP 1024, 20 layers
(38% of S: every mask kind in play); ``moderate``, hidden 576, 9 heads / 3 kv heads, MLP 1152, 20 layers (64% of S:
layers and MLP channels). Data: the RedPajama sample (7 domains) prepared with S's tokenizer (``prepare-data``), its
held-out eval split. Every training stage runs ``precision: amp_bf16`` (bf16 autocast on the CPU) and dynamic batch
loading with S's per-domain losses as reference and each doremi update bounded (``DOREMI_MAX_STEP``). Arms per
target, every small model getting the same training tokens (pruning tokens count):

1. ``source``: S, no training (the ceiling);
2. ``sheared``: S pruned to the target with dynamic batch loading, masks starting as ``--shearing-init`` says (default
   ``all_kept``, the original code's start) under the per-row Lagrangian, exported, then continued pre-training from
   the domain weights pruning ended with;
3. ``sheared_distilled``: arm 2's pruned model continued with logit distillation from S (pruning itself is not
   distilled: S's extra forward would lengthen the costliest stage);
4. ``oneshot``: ``llmshearing prune-oneshot --importance activation`` (Minitron-style; seed-independent, its
   calibration samples are the first training samples of each domain in turn), then continued pre-training for the
   pruning and continued batches of arm 2 together;
5. ``oneshot_distilled``: arm 4 with distillation from S;
6. ``sheared_pruned``, ``oneshot_pruned``: the target right after pruning;
7. ``scratch`` (``--scratch``): the target's shape from random weights on the same tokens.

Measures of every model: per-domain and mean held-out LM loss (fp32); ``evaluate_models`` (``llmshearing evaluate``,
``amp_bf16``) on the shared tasks, 0-shot, on one seeded subset of ``task_limit`` rows per task for every model; the
average accuracy and its recovery (over S's); parameters; the throughput of a batched forward and of greedy generation
on CPU, relative to S.

The ``--quick`` setting runs every stage on samples of 128 tokens, batches of 2, 3 + 3 batches and 4 rows of 2
tasks. Each training stage runs ``train.py`` in its own process; ``stages.jsonl`` in the output folder records the
finished ones and ``setup.json`` its settings; ``--resume`` continues an interrupted run with the same settings.
``--targets`` runs some of the targets and ``--seeds`` some of the seeds; ``--include RESULTS ...`` reports earlier
runs' other targets and seeds (same settings and tasks) beside this run's, so that the parts can run on different
days. How long the stages take:
``docs/results/real_model/README.md``. From the repository root:

    .venv/bin/python -m scripts.experiments.real_model [--quick] [--output DIR] [--seeds 1 2]
        [--targets narrow moderate] [--shearing-init all_kept] [--scratch] [--include RESULTS_JSON ...]
        [--threads 2] [--resume]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
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
    check_output_folder,
    check_target_shape,
    continued_run,
    curves_as_lists,
    evaluate,
    experiment_parser,
    git_commit,
    llmshearing_stage,
    mean_and_spread,
    mean_loss,
    natural_mix,
    plot_loss_against_tokens,
    portable_paths,
    prepare_domains,
    print_report,
    pruning_run,
    reference_override,
    runs_curve,
    scratch_run,
    stages_and_commands,
    start,
    write_results,
)

TASK_DIR = REPO.parent / 'shared' / 'data' / 'eval-tasks'
TASK_SEED = 1234
PRETRAINED_LEARNING_RATE = 1e-4  # pruning and continuing a pretrained model; the tiny recipes' 1e-3 is for toy models
PRECISION = 'amp_bf16'  # bf16 autocast of the forward on the CPU (cpu_autocast), as the GPU recipes train
EVAL_DTYPE = 'amp_bf16'  # the task evaluation's forward; held-out losses stay fp32
# Each doremi update changes two domains' weight ratio by at most e^(2 * 0.2) = 1.49: a pruned SmolLM2 starts 5-8 nats
# above S's losses on every domain, and the unbounded update gave one domain most of the data (github 0.44 -> 0.87).
DOREMI_MAX_STEP = 0.2
IMPORTANCE_METHOD = 'activation'


@dataclass(frozen=True)
class Target:
    """A target shape of the experiment, the mask kinds that reach it from S, and why it was chosen."""

    name: str
    shape: dict[str, int]
    pruning_modules: tuple[str, ...]
    reason: str

    @property
    def shape_argument(self) -> str:
        """``prune-oneshot --target``'s form: ``field=size,...``."""
        return ','.join(f'{name}={size}' for name, size in self.shape.items())


TARGETS = {
    'narrow': Target(
        'narrow',
        dict(
            hidden_size=384, num_attention_heads=6, num_key_value_heads=3, intermediate_size=1024, num_hidden_layers=20
        ),
        ('layer', 'head', 'intermediate', 'hidden'),
        "the first run's target: every mask kind in play (layers, query heads, MLP channels, hidden width); S's 3 kv "
        'heads stay, as in the paper, which keeps the key-value heads of Llama-2-7B',
    ),
    'moderate': Target(
        'moderate',
        dict(
            hidden_size=576, num_attention_heads=9, num_key_value_heads=3, intermediate_size=1152, num_hidden_layers=20
        ),
        ('layer', 'intermediate'),
        'SmolLM2 ties its hidden size to its query heads of 64 channels, grouped over 3 kv heads, so the widths a '
        "pruned model can keep are 384 (6 heads: the narrow target) and 576 (9 heads: S's). The moderate target keeps "
        "S's width and attention, has the narrow target's 20 layers, and an MLP of 1152 (twice its hidden size, a "
        "multiple of 64) that lands it near 64% of S's parameters: the two targets differ in width only",
    ),
}
MODELS = {
    'source': 'S: SmolLM2-135M-Instruct, no training (ceiling)',
    'sheared_pruned': 'sheared, right after pruning',
    'sheared': 'sheared + continued',
    'sheared_distilled': 'sheared + continued with distillation',
    'oneshot_pruned': 'one-shot activation importance, no training',
    'oneshot': 'one-shot activation importance + continued',
    'oneshot_distilled': 'one-shot activation importance + continued with distillation',
    'scratch': 'from scratch, same tokens',
}
TRAINED_ARMS = ('sheared', 'sheared_distilled', 'oneshot', 'oneshot_distilled', 'scratch')
CURVES = {
    'sheared': ('sheared_pruned', 'sheared'),
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
    seq_len=256, batch_size=4, eval_samples=16, max_docs_per_domain=None, pruning_batches=40, continued_batches=140,
    evaluations_per_stage=4, warmup_fraction=0.05, calibration_samples=64, task_limit=100, tasks='paper',
    throughput_batch=8, generated_tokens=32,
)


@dataclass(frozen=True)
class ShearingInit:
    """How the shearing arm's masks start: every gate kept (the original code's start), ``uniform`` at a drop rate,
    or from the one-shot arm's importance scores."""

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



def training_overrides(reference: str) -> tuple[str, ...]:
    """Every shearing and continued stage's: the learning rate of a pretrained model, bf16 autocast, S's per-domain
    losses as doremi's reference and the bounded doremi step."""
    return (
        f'optimizer.lr={PRETRAINED_LEARNING_RATE}', f'precision={PRECISION}', reference,
        f'callbacks.dynamic_loading.max_step={DOREMI_MAX_STEP}',
    )


def target_runs(
    settings: RealModelSettings, target: Target, source: Path, oneshot_dir: Path, data_dir: Path, seed_dir: Path,
    seed: int, mix: Sequence[float], reference: str, init_overrides: Sequence[str], scratch: bool,
) -> dict[str, TrainingRun]:
    """One seed's training stages for ``target``, by the name of the model each ends with, in the order they run."""
    overrides = training_overrides(reference)
    pruning = pruning_run(
        settings, f'pruning ({target.name}, sheared, seed {seed})', source, data_dir, seed_dir / 'sheared', seed, mix,
        target.shape,
        (*overrides, f'algorithms.shearing.pruning_modules=[{",".join(target.pruning_modules)}]', *init_overrides),
    )

    def continued(arm: str, model: Path, batches: int, teacher: Path | None, pruning_dir: Path | None) -> TrainingRun:
        label = arm.replace('_', ', ')
        return continued_run(
            settings, f'continued pre-training ({target.name}, {label}, seed {seed})', model, data_dir,
            seed_dir / arm / 'continued_pretraining', batches, seed, mix, overrides, pruning_dir=pruning_dir,
            teacher=teacher,
        )

    runs = {
        'sheared_pruned': pruning,
        'sheared': continued('sheared', pruning.final_model, settings.continued_batches, None, pruning.output_dir),
        'sheared_distilled': continued(
            'sheared_distilled', pruning.final_model, settings.continued_batches, source, pruning.output_dir,
        ),
        'oneshot': continued('oneshot', oneshot_dir, settings.small_model_batches, None, None),
        'oneshot_distilled': continued('oneshot_distilled', oneshot_dir, settings.small_model_batches, source, None),
    }
    if scratch:
        initial_model = seed_dir / 'scratch_init'
        AutoConfig.from_pretrained(source, **target.shape).save_pretrained(initial_model)
        AutoTokenizer.from_pretrained(source).save_pretrained(initial_model)
        runs['scratch'] = scratch_run(
            settings, f'scratch ({target.name}, seed {seed})', initial_model, data_dir, seed_dir / 'scratch',
            settings.small_model_batches, seed, mix,
        ).with_overrides((f'precision={PRECISION}',))
    return runs


def prune_oneshot_command(
    settings: RealModelSettings, target: Target, source: Path, data_dir: Path, output_dir: Path,
) -> list[str]:
    """``llmshearing prune-oneshot`` arguments: activation importance on calibration samples, fp32 weights."""
    return [
        'prune-oneshot', str(source), str(output_dir), '--data', str(data_dir), '--domains', ','.join(DOMAINS),
        '--target', target.shape_argument, '--pruning-modules', ','.join(target.pruning_modules), '--importance',
        IMPORTANCE_METHOD, '--calibration-samples', str(settings.calibration_samples), '--dtype', 'fp32',
    ]


def model_tokens(settings: RealModelSettings) -> dict[str, int]:
    """The training tokens behind each model of a target (the one-shot arms' calibration forward not counted)."""
    trained = settings.small_model_batches * settings.tokens_per_batch
    return {
        'source': 0, 'sheared_pruned': settings.pruning_batches * settings.tokens_per_batch, 'oneshot_pruned': 0,
        **{arm: trained for arm in TRAINED_ARMS},
    }


def domain_weight_series(run: TrainingRun) -> dict[str, list[list[float]]]:
    """Each domain's training proportion after each evaluation of ``run``: ``{domain: [batches, proportions]}``."""
    metrics = run.metrics()
    return {
        domain: [values.tolist() for values in metrics.series(report.PROPORTION_PREFIX + domain)] for domain in DOMAINS
    }


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




def summary(models: dict[str, list[dict[str, Any]]], name: str, key: str) -> tuple[float, float]:
    """Mean over the seeds of ``key`` (``mean_loss`` or ``average``) of model ``name`` and its spread: half the seeds'
    range, or for the average accuracy at least its task standard error."""
    runs = models[name]
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
    one_seed: bool = False,
) -> str:
    """Whether the first (mean, spread) pair is better than the second, by how much (times ``scale``, in ``unit``), and
    whether the difference exceeds the two spreads together (with ``one_seed``: that there is no spread)."""
    difference = first[0] - second[0]
    better = (difference > 0) == higher_is_better
    beyond = abs(difference) > first[1] + second[1]
    spread = 'one seed: no spread' if one_seed else f'{"more" if beyond else "less"} than the spread'
    return f'{"better" if better else "worse"} by {scale * abs(difference):.{digits}f} {unit}, {spread}'


def winner_sentence(models: dict[str, list[dict[str, Any]]], key: str) -> str:
    """The trained arm with the best mean ``key`` (``mean_loss``: lowest; ``average``: highest), and whether its lead
    over the runner-up exceeds their spreads together."""
    higher_is_better = key == 'average'
    arms = sorted(
        (arm for arm in TRAINED_ARMS if models.get(arm)),
        key=lambda arm: summary(models, arm, key)[0],
        reverse=higher_is_better,
    )
    best, runner_up = (summary(models, arm, key) for arm in arms[:2])
    scale, unit, digits = (100, 'points', 1) if higher_is_better else (1, 'nats', 3)
    lead = scale * abs(best[0] - runner_up[0])
    if len(models[arms[0]]) == 1:
        verdict = 'one seed, no spread to judge the lead by'
    elif lead > scale * (best[1] + runner_up[1]):
        verdict = 'the winner'
    else:
        verdict = "no winner beyond the seeds' spread"
    measure = 'average accuracy' if higher_is_better else 'held-out loss'
    return (
        f'Best {measure}: {MODELS[arms[0]]}, {lead:.{digits}f} {unit} ahead of {MODELS[arms[1]]} '
        f'(spreads {scale * best[1]:.{digits}f} and {scale * runner_up[1]:.{digits}f}): {verdict}.'
    )


def outcome_sentences(models: dict[str, list[dict[str, Any]]]) -> list[str]:
    """What one target's numbers say: the winners, then arm against arm for the held-out loss and the average task
    accuracy."""
    pairs = [
        ('sheared', 'oneshot', 'Shearing against one-shot importance pruning, both continued'),
        ('sheared_distilled', 'oneshot_distilled', 'Shearing against one-shot importance pruning, both distilled'),
        ('sheared_distilled', 'sheared', 'Distillation in continued pre-training of the sheared model'),
        ('oneshot_distilled', 'oneshot', 'Distillation in continued pre-training of the one-shot model'),
        ('sheared_pruned', 'oneshot_pruned', 'Right after pruning, shearing against one-shot importance'),
        ('sheared', 'scratch', 'Shearing against training the target from scratch'),
    ]
    sentences = [winner_sentence(models, 'mean_loss'), winner_sentence(models, 'average')]
    for first, second, title in pairs:
        if not models.get(first) or not models.get(second):
            continue
        loss = [summary(models, name, 'mean_loss') for name in (first, second)]
        accuracy = [summary(models, name, 'average') for name in (first, second)]
        one_seed = min(len(models[first]), len(models[second])) < 2
        sentences.append(
            f'{title}: held-out loss {loss[0][0]:.3f} ± {loss[0][1]:.3f} vs {loss[1][0]:.3f} ± {loss[1][1]:.3f} '
            f'nats/token ({comparison(*loss, False, "nats", one_seed=one_seed)}); average accuracy '
            f'{100 * accuracy[0][0]:.1f} ± {100 * accuracy[0][1]:.1f} vs {100 * accuracy[1][0]:.1f} ± '
            f'{100 * accuracy[1][1]:.1f} % ({comparison(*accuracy, True, "points", 100, 1)}).',
        )
    return sentences


def model_rows(target_results: dict[str, Any], task_names: Sequence[str]) -> list[list[str]]:
    """Per model of a target: its training tokens, mean held-out loss and its excess over S's, each domain's, each
    task's accuracy, the average and its recovery (over S's average), mean ± spread over seeds."""
    models, tokens = target_results['models'], target_results['tokens']
    source_loss, source_average = summary(models, 'source', 'mean_loss')[0], summary(models, 'source', 'average')[0]
    rows = []
    for name, runs in models.items():

        def cell(values: Sequence[float], scale: float = 1.0, digits: int = 3, spread_floor: float = 0.0) -> str:
            mean, spread = mean_and_spread(values)
            spread = max(spread, spread_floor)
            if len(runs) == 1 and not spread_floor:
                return f'{scale * mean:.{digits}f}'
            return f'{scale * mean:.{digits}f} ± {scale * spread:.{digits}f}'

        losses = [run['mean_loss'] for run in runs]
        cells = [MODELS[name], f'{tokens[name]:,}', cell(losses), cell([loss - source_loss for loss in losses])]
        cells += [cell([run['losses'][domain] for run in runs]) for domain in DOMAINS]
        for task in task_names:
            stderr = float(np.mean([run['tasks'][task]['stderr'] or 0.0 for run in runs]))
            cells.append(cell([run['tasks'][task]['score'] for run in runs], 100, 1, stderr))
        mean, spread = summary(models, name, 'average')
        cells += [f'{100 * mean:.1f} ± {100 * spread:.1f}', f'{mean / source_average:.0%}']
        rows.append(cells)
    return rows


def target_section(results: dict[str, Any], name: str) -> list[str]:
    """The report's section of one target: its shape and reason, the outcome, the table and its plots."""
    target, tasks = results['targets'][name], results['task_settings']
    task_names = list(tasks['tasks'])
    source_parameters = target['models']['source'][0]['parameters']
    return [
        f'## Target `{name}`: '
        + ', '.join(f'{header} {target["shape"][field]}' for field, header in report.SHAPE_HEADERS.items())
        + f' ({target["parameters"]:,} parameters, {target["parameters"] / source_parameters:.1%} of S)',
        '',
        f'Why this shape: {target["reason"]}. Masks on: {", ".join(target["pruning_modules"])}. Seeds: '
        f'{", ".join(map(str, target["seeds"]))}.',
        '',
        *(f'- {sentence}' for sentence in outcome_sentences(target['models'])),
        '',
        *report.markdown_table(
            [
                'model', 'training tokens', 'mean loss', 'above S', *DOMAINS,
                *(tasks['tasks'][task]['title'] for task in task_names), 'average accuracy', 'recovery',
            ],
            model_rows(target, task_names),
        ),
        '',
        f'![Held-out loss against tokens, {name}](loss_against_tokens_{name}.png)',
        '',
        f'![Accuracy per task and arm, {name}](task_accuracy_{name}.png)',
        '',
        f'![Domain weights while pruning, {name}](domain_weights_{name}.png)',
        '',
    ]


PLANNED_SEEDS = (1, 2)


def coverage_lines(results: dict[str, Any]) -> list[str]:
    """A paragraph naming the parts of the planned run (every target of ``TARGETS``, seeds ``PLANNED_SEEDS``) that
    the results lack, or nothing when they have them all."""
    missing = []
    for name in TARGETS:
        ran = results['targets'].get(name, {}).get('seeds', [])
        seeds = [str(seed) for seed in PLANNED_SEEDS if seed not in ran]
        if seeds:
            missing.append(f'`{name}` seeds {", ".join(seeds)}')
    if not missing:
        return []
    return [
        f'**Incomplete:** the planned run is every target ({", ".join(TARGETS)}) with seeds '
        f'{", ".join(map(str, PLANNED_SEEDS))}; not yet run: {"; ".join(missing)}. Those parts run separately '
        '(`--targets`, `--seeds`) and join this report with `--include`. Until then a target with one seed has no '
        'spread, and no winner is named.',
        '',
    ]


def render_report(results: dict[str, Any]) -> str:
    """The report's markdown."""
    settings, tasks = results['settings'], results['task_settings']
    lines = [
        '# A real pretrained model: SmolLM2-135M sheared vs importance-pruned, with and without distillation',
        '',
        f'Source S: SmolLM2-135M-Instruct ({results["source_parameters"]:,} parameters); targets '
        + ', '.join(f'`{name}`' for name in results['targets'])
        + ". Data: the RedPajama sample (7 domains) prepared with S's tokenizer into samples of "
        f'{settings["seq_len"]} tokens; {settings["eval_samples"]} held-out samples per domain. Every small model '
        f'trains on {settings["tokens_small_model"]:,} tokens (batches of {settings["tokens_per_batch"]:,}): shearing '
        f'{settings["pruning_batches"]} pruning + {settings["continued_batches"]} continued batches, the one-shot arms '
        f'{settings["small_model_batches"]} continued batches (and {settings["calibration_samples"]} calibration '
        f'samples, forward only). Training in `precision: {results["precision"]}` (bf16 autocast on the CPU); dynamic '
        f'batch loading with S\'s losses as reference, each doremi update bounded by `max_step: '
        f'{results["doremi_max_step"]}`. Shearing masks start as `--shearing-init {results["shearing_init"]}`. Seeds '
        f'{", ".join(map(str, results["seeds"]))}. Wall time {results["wall_seconds"] / 60:.1f} min; the stages below '
        f'took {sum(stage["wall_seconds"] for stage in results["stages"]) / 60:.1f} min together.',
        '',
        f"Tasks: {tasks['subset_rule']}, 0-shot ({tasks['harness']}), forward in `{results['eval_dtype']}`; ± is the "
        "task standard error or half the seeds' range, whichever is larger; recovery is a model's average accuracy "
        "over S's. Losses: mean loss per predicted token (nats, fp32), ± half the seeds' range.",
        '',
        *coverage_lines(results),
    ]
    for name in results['targets']:
        lines += target_section(results, name)
    lines += [
        '## Size and speed',
        '',
        *report.markdown_table(
            ['model', 'parameters', 'forward tokens/s', 'relative to S', 'generated tokens/s', 'relative to S'],
            [
                [
                    label,
                    f'{parameters:,}',
                    f'{speed["forward_tokens_per_second"]:.0f}',
                    f'{speed["forward_tokens_per_second"] / source["forward_tokens_per_second"]:.2f}',
                    f'{speed["generated_tokens_per_second"]:.1f}',
                    f'{speed["generated_tokens_per_second"] / source["generated_tokens_per_second"]:.2f}',
                ]
                for name, target in results['targets'].items()
                for source in (target['throughput']['source'],)
                for label, parameters, speed in (
                    (f'S (measured with {name})', results['source_parameters'], source),
                    (name, target['parameters'], target['throughput']['target']),
                )
            ],
        ),
        '',
        f'fp32 on {results["threads"]} CPU threads: a forward of {settings["throughput_batch"]} × '
        f'{settings["seq_len"]} tokens and greedy generation of {settings["generated_tokens"]} tokens after '
        f'{settings["throughput_batch"]} prompts of 32, best of 3; each target beside S in the same run.',
        '',
        *stages_and_commands(results),
    ]
    earlier = {stage['name']: stage['commit'] for stage in results['stages'] if stage['commit'] != results['commit']}
    if earlier:
        lines += [
            f'{len(earlier)} stages ran at another commit (an interrupted run continued with `--resume`, or a run '
            f'reported with `--include`): {", ".join(sorted(set(earlier.values())))}.',
            '',
        ]
    return '\n'.join(lines)


def plots(results: dict[str, Any]) -> dict[str, Figure]:
    """Per target, from ``results`` alone, by file name: held-out loss against tokens, accuracy per task, domain
    weights while pruning."""
    task_titles = {task: values['title'] for task, values in results['task_settings']['tasks'].items()}
    chance = {
        values['title']: values['chance']
        for values in results['task_settings']['tasks'].values()
        if values['chance'] is not None
    }
    figures = {}
    for name, target in results['targets'].items():
        curves = {
            label: [(np.asarray(tokens), np.asarray(losses)) for tokens, losses in runs]
            for label, runs in target['curves'].items()
        }
        figures[f'loss_against_tokens_{name}.png'] = plot_loss_against_tokens(
            curves, f'Held-out loss against tokens: SmolLM2-135M pruned to {name}',
        )
        scores = {
            MODELS[model]: {
                task_titles[task]: float(np.mean([run['tasks'][task]['score'] for run in runs])) for task in task_titles
            }
            | {'average': float(np.mean([run['average'] for run in runs]))}
            for model, runs in target['models'].items()
        }
        figures[f'task_accuracy_{name}.png'] = report.plot_task_accuracies(scores, chance)
        weights = report.StageMetrics(
            f'pruning to {name}, seed {target["seeds"][0]}',
            {
                report.PROPORTION_PREFIX + domain: list(zip(*series))
                for domain, series in target['domain_weights'].items()
            },
        )
        figures[f'domain_weights_{name}.png'] = report.plot_domain_weights([weights], DOMAINS)
    return figures


SEED_INDEPENDENT_MODELS = ('source', 'oneshot_pruned')


def include_run(path: Path, results: dict[str, Any]) -> dict[str, Any]:
    """``results`` with an earlier run's (its ``results.json`` at ``path``) targets and seeds added: a target this run
    lacks whole, a target both ran with the earlier seeds' models and curves added (the seed-independent models once);
    the earlier stages marked as its own and its commands added. Raise ``ValueError`` if it ran other settings, tasks
    or starts, a seed of a target this run also ran, or nothing this run lacks."""
    earlier = json.loads(path.read_text())
    compared = ('settings', 'task_settings', 'shearing_init', 'precision', 'doremi_max_step', 'eval_dtype')
    # The earlier run's paths were written portable (``portable_paths``); this run's are still this machine's.
    current = {key: json.loads(portable_paths(json.dumps(results[key]))) for key in compared}
    differing = [key for key in compared if earlier.get(key) != current[key]]
    if differing:
        raise ValueError(f'--include: {path} ran other {", ".join(differing)}; include a run with these arguments')
    for name, target in earlier['targets'].items():
        if name not in results['targets']:
            results['targets'][name] = target
            continue
        merged = results['targets'][name]
        repeated = sorted(set(target['seeds']) & set(merged['seeds']))
        if repeated:
            raise ValueError(f'--include: {path} also ran target {name} with seeds {repeated}')
        merged['seeds'] += target['seeds']
        for model, runs in target['models'].items():
            if model not in SEED_INDEPENDENT_MODELS:
                merged['models'].setdefault(model, []).extend(runs)
        for label, curves in target['curves'].items():
            merged['curves'].setdefault(label, []).extend(curves)
    results['seeds'] = sorted({seed for target in results['targets'].values() for seed in target['seeds']})
    results['stages'] += [stage | {'name': f'{stage["name"]} [included run]'} for stage in earlier['stages']]
    results['stage_commands'] += earlier['stage_commands']
    results.setdefault('included', []).append(
        {'path': str(path), 'commit': earlier['commit'], 'command': earlier['command']}
    )
    return results


def run_experiment(
    output_dir: Path,
    settings: RealModelSettings,
    seeds: Sequence[int],
    command: str,
    shearing_init: ShearingInit,
    targets: Sequence[str] = tuple(TARGETS),
    scratch: bool = False,
    data: Path = DATA,
    task_dir: Path = TASK_DIR,
    source: Path | None = None,
    resume: bool = False,
    includes: Sequence[Path] = (),
) -> Path:
    """Every stage into ``output_dir`` (new or empty; with ``resume``, an interrupted run's, whose finished stages are
    kept); return the report folder."""
    setup = {
        'settings': asdict(settings), 'shearing_init': str(shearing_init), 'targets': list(targets),
        'scratch': scratch, 'data': str(data),
    }
    ledger_file, setup_file = check_output_folder(output_dir, setup, resume)
    if not task_dir.is_dir():
        raise FileNotFoundError(f'task folder {task_dir} does not exist')
    for include in includes:
        if not include.is_file():
            raise FileNotFoundError(f'--include: {include} does not exist')
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

    stage_commands: list[str] = []
    model_dirs: dict[str, dict[str, list[Path]]] = {}
    first_seed_runs: dict[str, dict[str, TrainingRun]] = {}
    curves: dict[str, dict[str, list[tuple[np.ndarray, np.ndarray]]]] = {}
    for target in (TARGETS[name] for name in targets):
        target_dir = output_dir / target.name
        oneshot_dir = target_dir / 'oneshot' / 'pruned'
        oneshot_arguments = prune_oneshot_command(settings, target, source, data_dir, oneshot_dir)
        stage_commands.append(llmshearing_stage(
            ledger, f'prune-oneshot ({target.name}, activation)', oneshot_arguments, oneshot_dir,
        ))
        init_overrides = shearing_init.overrides(oneshot_dir / 'importance.json')
        folders = model_dirs[target.name] = {name: [] for name in MODELS}
        folders['source'].append(source)
        folders['oneshot_pruned'].append(oneshot_dir)
        target_curves = curves[target.name] = {}
        for seed in seeds:
            runs = target_runs(
                settings, target, source, oneshot_dir, data_dir, target_dir / f'seed_{seed}', seed, mix, reference,
                init_overrides, scratch,
            )
            for name, run in runs.items():
                folders[name].append(ledger.train(run))
                stage_commands.append(run.command)
            first_seed_runs.setdefault(target.name, runs)
            for label, (pruning_name, continued_name) in CURVES.items():
                if continued_name in runs:
                    curve_runs = [runs[name] for name in (pruning_name, continued_name) if name is not None]
                    target_curves.setdefault(label, []).append(runs_curve(curve_runs, settings.tokens_per_batch))

    def held_out_losses() -> dict[Path, dict[str, Any]]:
        losses = {source: source_losses}
        for folder in all_folders:
            if folder not in losses:
                losses[folder] = evaluate(folder, data_dir, folder.parent / f'{folder.name}_losses.json')
        return {folder: values | {'mean_loss': mean_loss(values)} for folder, values in losses.items()}

    all_folders = list(dict.fromkeys(
        folder for folders in model_dirs.values() for paths in folders.values() for folder in paths
    ))
    evaluations = ledger.timed(f'held-out losses ({len(all_folders) - 1} models)', held_out_losses)
    downstream, records = ledger.timed(f'evaluate ({len(all_folders)} models)', lambda: evaluate_models(
        all_folders, settings.tasks, task_dir, limit=settings.task_limit, seed=TASK_SEED, num_fewshot=0,
        dtype=EVAL_DTYPE,
    ))
    write_outputs(downstream, records, output_dir / 'downstream' / 'tasks.json')
    for folder, evaluation in evaluations.items():
        task_result = downstream['models'][str(folder)]
        evaluation |= {
            'tasks': task_result['tasks'],
            'average': task_result['average'],
            'average_stderr': average_stderr(task_result['tasks']),
        }
    throughput = ledger.timed('throughput', lambda: inference_throughput(
        {'source': source} | {name: runs['sheared'].final_model for name, runs in first_seed_runs.items()}, settings,
    ))

    source_shape = ModelShape.from_config(AutoConfig.from_pretrained(source))
    target_results = {}
    for name, folders in model_dirs.items():
        target = TARGETS[name]
        models = {model: [evaluations[folder] for folder in paths] for model, paths in folders.items() if paths}
        target_shape = source_shape.with_target(target.shape)
        check_target_shape(models, target_shape, [model for model in models if model != 'source'])
        target_results[name] = {
            'reason': target.reason,
            'seeds': list(seeds),
            'pruning_modules': list(target.pruning_modules),
            'shape': target_shape.config_updates(),
            'parameters': models['oneshot_pruned'][0]['parameters'],
            'tokens': model_tokens(settings),
            'models': models,
            'throughput': {'source': throughput['source'], 'target': throughput[name]},
            'curves': curves_as_lists(curves[name]),
            'domain_weights': domain_weight_series(first_seed_runs[name]['sheared_pruned']),
        }
    results: dict[str, Any] = {
        'command': command,
        'commit': commit,
        'dirty': dirty,
        'seeds': list(seeds),
        'shearing_init': str(shearing_init),
        'precision': PRECISION,
        'eval_dtype': EVAL_DTYPE,
        'doremi_max_step': DOREMI_MAX_STEP,
        'threads': torch.get_num_threads(),
        'mix': dict(zip(DOMAINS, mix)),
        'settings': settings.recorded(),
        'task_settings': downstream['settings'],
        'source_shape': source_shape.config_updates(),
        'source_parameters': source_losses['parameters'],
        'targets': target_results,
        'stages': ledger.stages,
        'stage_commands': stage_commands,
    }
    for include in includes:
        results = include_run(include, results)
    return write_results(output_dir, results, started, render_report, plots(results))


def main(argv: Sequence[str] | None = None) -> None:
    """Run the experiment from the command line and print the report."""
    parser = experiment_parser(
        __doc__.split('\n\n')[0], __spec__.name, 'fewer documents, shorter samples, fewer batches and task rows',
        resumable=True,
    )
    parser.add_argument('--seeds', type=int, nargs='+', default=[1, 2], help='seeds of the training runs')
    parser.add_argument(
        '--targets', nargs='+', choices=list(TARGETS), default=list(TARGETS), help='target shapes (default: all)',
    )
    parser.add_argument(
        '--shearing-init',
        type=ShearingInit.parse,
        default=ShearingInit('all_kept'),
        help="masks of the shearing arms: all_kept (the original code's start), importance or uniform:P, "
        'drop rate P (default: all_kept)',
    )
    parser.add_argument('--scratch', action='store_true', help='also train each target from scratch on the same tokens')
    parser.add_argument(
        '--include',
        type=Path,
        nargs='+',
        default=[],
        help="earlier runs' results.json whose other targets and seeds the report adds to this run's",
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
            targets=args.targets,
            scratch=args.scratch,
            data=args.data,
            task_dir=args.task_dir,
            resume=args.resume,
            includes=args.include,
        )
    )


if __name__ == '__main__':
    main()
