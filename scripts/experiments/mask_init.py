"""Where should pruning start? ``algorithms.shearing.init`` compared on SmolLM2-135M, side by side.

Source S: SmolLM2-135M-Instruct; target T and data as in ``scripts.experiments.real_model`` (hidden 384, 6 heads /
3 kv heads, MLP 1024, 20 layers; the RedPajama sample prepared with S's tokenizer). One seed, the same batches for
every arm:

- ``uniform 0.5``: every gate at drop rate 0.5 (log-alpha 0), CoFiPruning's start;
- ``all kept``: every gate at log-alpha 5, clamped to ln 100 (keep probability 0.998), the start of the original
  LLM-Shearing code and of the released Sheared-LLaMA runs: the first batches compute (almost) S itself;
- ``importance``: log-alphas ranked by S's activation importance (the ``importance.json`` of the one-shot arm), so
  the deterministic masks start as the one-shot selection;
- ``one-shot``: ``prune-oneshot --importance activation`` and continued pre-training for the pruning and
  continued batches of the other arms together.

Each shearing arm prunes for ``pruning_batches`` and continues the exported model for ``continued_batches``, with
constant domain weights (the natural mix) so that only the start differs, at a learning rate for a pretrained
model. Measured: the train LM loss of every pruning batch, the target-shape held-out loss at each evaluation, and
the held-out loss of each exported model at the end of pruning and after continued pre-training.

From the repository root:

    .venv/bin/python -m scripts.experiments.mask_init [--quick] [--output DIR] [--seed 1] [--threads 2]
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from llmshearing import report
from scripts.assets.smollm2 import smollm2_folder
from scripts.experiments.common import (
    DATA,
    StageLedger,
    TrainingRun,
    check_empty,
    continued_run,
    curves_as_lists,
    evaluate,
    experiment_parser,
    git_commit,
    llmshearing_stage,
    mean_loss,
    natural_mix,
    plot_loss_against_tokens,
    prepare_domains,
    print_report,
    pruning_run,
    reference_override,
    runs_curve,
    stages_and_commands,
    start,
    write_results,
)
from scripts.experiments.real_model import FULL as REAL_MODEL_FULL
from scripts.experiments.real_model import (
    PRETRAINED_LEARNING_RATE,
    TARGETS,
    RealModelSettings,
    ShearingInit,
    prune_oneshot_command,
)

TARGET = TARGETS['narrow']

INITS = {
    'uniform 0.5 (CoFiPruning)': ShearingInit('uniform', 0.5),
    'all kept (the original code)': ShearingInit('all_kept'),
    'importance (activation)': ShearingInit('importance'),
}
FULL = dataclasses.replace(
    REAL_MODEL_FULL, seq_len=128, batch_size=4, eval_samples=8, pruning_batches=40, continued_batches=20,
    evaluations_per_stage=4, calibration_samples=16,
)
QUICK = dataclasses.replace(
    FULL, eval_samples=2, max_docs_per_domain=20, pruning_batches=4, continued_batches=2, evaluations_per_stage=1,
    calibration_samples=4,
)
CONSTANT_MIX = ('callbacks.dynamic_loading.update=constant',)


def pruning_stage(
    settings: RealModelSettings, data_dir: Path, source: Path, run_dir: Path, seed: int, mix: Sequence[float],
    reference: str, init_overrides: Sequence[str], label: str,
) -> TrainingRun:
    """Pruning S to the narrow target with doremi domain weights (fp32), masks starting as ``init_overrides`` say."""
    return pruning_run(
        settings, f'pruning ({label}, seed {seed})', source, data_dir, run_dir, seed, mix, TARGET.shape,
        (f'optimizer.lr={PRETRAINED_LEARNING_RATE}', *init_overrides, reference),
    )


def continued_stage(
    settings: RealModelSettings, data_dir: Path, model: Path, output_dir: Path, batches: int, seed: int,
    mix: Sequence[float], reference: str, label: str,
) -> TrainingRun:
    """Continued pre-training of ``model`` (fp32) from ``mix``."""
    return continued_run(
        settings, f'continued pre-training ({label}, seed {seed})', model, data_dir, output_dir, batches, seed, mix,
        (f'optimizer.lr={PRETRAINED_LEARNING_RATE}', reference),
    )


def train_lm_loss(run: TrainingRun) -> tuple[list[int], list[float]]:
    """The LM part of the training loss at every batch of a pruning run (without the Lagrangian), batches counted
    from 1."""
    batches, losses = run.metrics().series('loss/train/lm')
    return [int(batch) + 1 for batch in batches], [float(loss) for loss in losses]


def plot_train_loss(curves: dict[str, tuple[list[int], list[float]]]) -> Figure:
    figure = Figure(figsize=(7, 4.2), layout='constrained')
    axis = figure.subplots()
    for index, (label, (batches, losses)) in enumerate(curves.items()):
        axis.plot(batches, losses, color=f'C{index}', label=label)
    axis.set(
        xlabel='pruning batch', ylabel='train LM loss (nats/token)',
        title='Train LM loss while pruning, by mask initialisation',
    )
    axis.grid(alpha=0.3)
    axis.legend()
    return figure


def render_report(results: dict[str, Any]) -> str:
    settings = results['settings']
    tokens = settings['tokens_per_batch']
    rows = []
    for label, arm in results['arms'].items():
        checkpoints = arm.get('train_lm_loss_at', {})
        rows.append([
            label,
            *(f'{checkpoints[str(batch)]:.2f}' if str(batch) in checkpoints else '—'
              for batch in results['loss_batches']),
            f'{arm["after_pruning"]:.3f}', f'{arm["after_continued"]:.3f}',
        ])
    headers = ['start', *(f'train LM loss, batch {batch}' for batch in results['loss_batches']),
               'held-out loss after pruning (T)', 'held-out loss after continued']
    return '\n'.join([
        '# Where pruning starts: mask initialisation on SmolLM2-135M',
        '',
        f'S (SmolLM2-135M-Instruct, held-out loss {results["source_loss"]:.3f} nats/token) pruned to T (hidden 384, '
        f'6/3 heads, MLP 1024, 20 layers) for {settings["pruning_batches"]} batches, then continued for '
        f'{settings["continued_batches"]}; the one-shot model continued for both together. Batches of '
        f'{settings["batch_size"]} × {settings["seq_len"]} tokens ({tokens:,} tokens), learning rate '
        f'{PRETRAINED_LEARNING_RATE:g}, constant domain weights, seed {results["seed"]}. Held-out loss: the mean over '
        'every eval token of the 7 RedPajama domains.',
        '',
        *report.markdown_table(headers, rows),
        '',
        '![train LM loss while pruning](train_loss.png)',
        '',
        '![held-out loss against tokens](loss_against_tokens.png)',
        '',
        *stages_and_commands(results),
    ]) + '\n'


def run_experiment(output_dir: Path, settings: RealModelSettings, seed: int, command: str, data: Path = DATA) -> Path:
    """Every arm into ``output_dir`` (new or empty); return the report folder."""
    check_empty(output_dir)
    started = time.monotonic()
    commit, dirty = git_commit()
    source = smollm2_folder()
    output_dir.mkdir(parents=True, exist_ok=True)
    ledger = StageLedger(output_dir / 'stages.jsonl', commit)
    data_dir = output_dir / 'data'
    mix = natural_mix(prepare_domains(ledger, settings, data, source, data_dir))
    source_losses = evaluate(source, data_dir, output_dir / 'source_losses.json')
    reference = reference_override(source_losses['losses'])

    oneshot_dir = output_dir / 'oneshot' / 'pruned'
    stage_commands = [llmshearing_stage(
        ledger, 'prune-oneshot (activation)', prune_oneshot_command(settings, TARGET, source, data_dir, oneshot_dir),
        oneshot_dir,
    )]
    importance_file = oneshot_dir / 'importance.json'

    def train(run: TrainingRun) -> Path:
        stage_commands.append(run.command)
        return ledger.train(run)

    def held_out_loss(model: Path, out: Path) -> float:
        return mean_loss(evaluate(model, data_dir, out))

    arms: dict[str, dict[str, Any]] = {}
    eval_curves: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    train_curves = {}
    for label, init in INITS.items():
        run_dir = output_dir / label.split(' (')[0].replace(' ', '_')
        pruning = pruning_stage(
            settings, data_dir, source, run_dir, seed, mix, reference, init.overrides(importance_file), label,
        ).with_overrides(CONSTANT_MIX)
        pruned = train(pruning)
        continued = continued_stage(
            settings, data_dir, pruned, run_dir / 'continued_pretraining', settings.continued_batches, seed, mix,
            reference, label,
        ).with_overrides(CONSTANT_MIX)
        final = train(continued)
        train_curves[label] = train_lm_loss(pruning)
        eval_curves[label] = [runs_curve([pruning, continued], settings.tokens_per_batch)]
        arms[label] = {
            'train_lm_loss': train_curves[label],
            'after_pruning': held_out_loss(pruned, run_dir / 'pruned_losses.json'),
            'after_continued': held_out_loss(final, run_dir / 'continued_losses.json'),
        }
    oneshot = continued_stage(
        settings, data_dir, oneshot_dir, output_dir / 'oneshot' / 'continued_pretraining', settings.small_model_batches,
        seed, mix, reference, 'one-shot',
    ).with_overrides(CONSTANT_MIX)
    oneshot_final = train(oneshot)
    eval_curves['one-shot (activation)'] = [runs_curve([oneshot], settings.tokens_per_batch)]
    arms['one-shot (activation)'] = {
        'after_pruning': held_out_loss(oneshot_dir, output_dir / 'oneshot' / 'pruned_losses.json'),
        'after_continued': held_out_loss(oneshot_final, output_dir / 'oneshot' / 'continued_losses.json'),
    }
    loss_batches = sorted({1, 5, settings.pruning_batches // 2, settings.pruning_batches})
    for arm in arms.values():
        if 'train_lm_loss' in arm:
            batches, losses = arm['train_lm_loss']
            arm['train_lm_loss_at'] = {
                str(batch): loss for batch, loss in zip(batches, losses) if batch in loss_batches
            }
    results = {
        'command': command, 'commit': commit, 'dirty': dirty, 'seed': seed, 'threads': torch.get_num_threads(),
        'settings': settings.recorded() | {'learning_rate': PRETRAINED_LEARNING_RATE},
        'source_loss': mean_loss(source_losses),
        'loss_batches': loss_batches, 'arms': arms,
        'eval_curves': curves_as_lists(eval_curves),
        'stages': ledger.stages, 'stage_commands': stage_commands,
    }
    return write_results(output_dir, results, started, render_report, {
        'train_loss.png': plot_train_loss(train_curves),
        'loss_against_tokens.png': plot_loss_against_tokens(
            eval_curves, 'Target-shape held-out loss against tokens, by mask initialisation',
        ),
    })


def main(argv: Sequence[str] | None = None) -> None:
    """Run the experiment from the command line and print the report."""
    parser = experiment_parser(__doc__.split('\n\n')[0], __spec__.name, 'a few documents and batches')
    parser.add_argument('--seed', type=int, default=1)
    args = parser.parse_args(argv)
    output_dir, command = start(args, __spec__.name, argv)
    print_report(run_experiment(output_dir, QUICK if args.quick else FULL, args.seed, command, args.data))


if __name__ == '__main__':
    main()
