"""Where should pruning start? ``algorithms.shearing.init`` compared on SmolLM2-135M, side by side.

Source S: SmolLM2-135M-Instruct; target T and data as in ``real_model.py`` (hidden 384, 6 heads / 3 kv heads,
MLP 1024, 20 layers; the RedPajama sample prepared with S's tokenizer). One seed, the same batches for every arm:

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

    .venv/bin/python scripts/experiments/mask_init.py [--quick] [--output DIR] [--seed 1] [--threads 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_model import FULL as REAL_MODEL_FULL  # noqa: E402
from real_model import PRETRAINED_LEARNING_RATE, ShearingInit, continued_stage, prune_oneshot_command, pruning_stage  # noqa: E402
from shearing_vs_scratch import (  # noqa: E402
    DATA,
    DOMAINS,
    REPO,
    Stage,
    eval_curve,
    evaluate,
    git_commit,
    natural_mix,
    plot_loss_against_tokens,
    reference_override,
    stages_and_commands,
    training_tokens,
    write_results,
)

from llmshearing import report  # noqa: E402
from llmshearing.cli import build_parser  # noqa: E402
from llmshearing.data.prepare import prepare_data  # noqa: E402
from llmshearing.smollm2 import smollm2_folder  # noqa: E402

log = logging.getLogger('mask_init')

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


def with_overrides(stage: Stage, extra: Sequence[str]) -> Stage:
    return dataclasses.replace(stage, overrides=(*stage.overrides, *extra))


def train_lm_loss(stage: Stage) -> tuple[list[int], list[float]]:
    """The LM part of the training loss at every batch of a pruning stage (without the Lagrangian), batches counted
    from 1."""
    batches, losses = report.StageMetrics.from_log(stage.name, stage.metrics_file).series('loss/train/lm')
    return [int(batch) + 1 for batch in batches], [float(loss) for loss in losses]


def plot_train_loss(curves: dict[str, tuple[list[int], list[float]]]) -> Figure:
    figure = Figure(figsize=(7, 4.2), layout='constrained')
    axis = figure.subplots()
    for index, (label, (batches, losses)) in enumerate(curves.items()):
        axis.plot(batches, losses, color=f'C{index}', label=label)
    axis.set(xlabel='pruning batch', ylabel='train LM loss (nats/token)', title='Train LM loss while pruning, by mask initialisation')
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
            *(f'{checkpoints[str(batch)]:.2f}' if str(batch) in checkpoints else '—' for batch in results['loss_batches']),
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
        f'{PRETRAINED_LEARNING_RATE:g}, constant domain weights, seed {results["seed"]}. Held-out loss: the mean over every '
        f'eval token of the 7 RedPajama domains.',
        '',
        *report.markdown_table(headers, rows),
        '',
        '![train LM loss while pruning](train_loss.png)',
        '',
        '![held-out loss against tokens](loss_against_tokens.png)',
        '',
        *stages_and_commands(results),
    ]) + '\n'


def run_experiment(output_dir: Path, settings: Any, seed: int, command: str, data: Path = DATA) -> Path:
    """Every arm into ``output_dir`` (new or empty); return the report folder."""
    if output_dir.exists() and any(output_dir.iterdir()):
        raise FileExistsError(f'output folder {output_dir} is not empty; choose another with --output')
    started = time.monotonic()
    commit, dirty = git_commit()
    source = smollm2_folder()
    stage_log: list[dict[str, Any]] = []
    data_dir = output_dir / 'data'
    prepare_data(data, data_dir, source, settings.seq_len, eval_samples=settings.eval_samples, domains=DOMAINS,
                 max_docs_per_domain=settings.max_docs_per_domain)
    mix = natural_mix(training_tokens(data_dir))
    source_losses = evaluate(source, data_dir, output_dir / 'source_losses.json')
    reference = reference_override(source_losses['losses'])

    oneshot_dir = output_dir / 'oneshot' / 'pruned'
    oneshot_arguments = prune_oneshot_command(settings, source, data_dir, oneshot_dir)
    oneshot_args = build_parser().parse_args(oneshot_arguments)
    oneshot_args.run(oneshot_args)
    importance_file = oneshot_dir / 'importance.json'
    stage_commands = [shlex.join(['llmshearing', *oneshot_arguments])]

    def run(stage: Stage) -> Path:
        stage_log.append({'name': stage.name, 'batches': stage.batches, 'wall_seconds': stage.run()})
        stage_commands.append(stage.command)
        return stage.final_model

    arms: dict[str, dict[str, Any]] = {}
    tokens_per_batch = settings.tokens_per_batch
    eval_curves: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    train_curves = {}
    for label, init in INITS.items():
        run_dir = output_dir / label.split(' (')[0].replace(' ', '_')
        pruning = with_overrides(
            pruning_stage(settings, data_dir, source, run_dir, seed, mix, reference, init.overrides(importance_file), label),
            CONSTANT_MIX,
        )
        pruned = run(pruning)
        continued = with_overrides(continued_stage(
            settings, data_dir, pruned, run_dir / 'continued_pretraining', settings.continued_batches, seed, mix,
            reference, label,
        ), CONSTANT_MIX)
        final = run(continued)
        train_curves[label] = train_lm_loss(pruning)
        pruning_curve = eval_curve(report.StageMetrics.from_log(pruning.name, pruning.metrics_file), tokens_per_batch)
        continued_curve = eval_curve(report.StageMetrics.from_log(continued.name, continued.metrics_file), tokens_per_batch,
                                     settings.pruning_batches * tokens_per_batch)
        eval_curves[label] = [tuple(np.concatenate(parts) for parts in zip(pruning_curve, continued_curve))]
        arms[label] = {
            'train_lm_loss': train_curves[label],
            'after_pruning': report.ModelSummary.from_evaluation(label, evaluate(pruned, data_dir, run_dir / 'pruned_losses.json')).mean_loss,
            'after_continued': report.ModelSummary.from_evaluation(label, evaluate(final, data_dir, run_dir / 'continued_losses.json')).mean_loss,
        }
    oneshot = with_overrides(continued_stage(
        settings, data_dir, oneshot_dir, output_dir / 'oneshot' / 'continued_pretraining', settings.small_model_batches,
        seed, mix, reference, 'one-shot',
    ), CONSTANT_MIX)
    oneshot_final = run(oneshot)
    eval_curves['one-shot (activation)'] = [eval_curve(report.StageMetrics.from_log(oneshot.name, oneshot.metrics_file), tokens_per_batch)]
    arms['one-shot (activation)'] = {
        'after_pruning': report.ModelSummary.from_evaluation('oneshot', evaluate(oneshot_dir, data_dir, output_dir / 'oneshot' / 'pruned_losses.json')).mean_loss,
        'after_continued': report.ModelSummary.from_evaluation('oneshot', evaluate(oneshot_final, data_dir, output_dir / 'oneshot' / 'continued_losses.json')).mean_loss,
    }
    loss_batches = sorted({1, 5, settings.pruning_batches // 2, settings.pruning_batches})
    for arm in arms.values():
        if 'train_lm_loss' in arm:
            batches, losses = arm['train_lm_loss']
            arm['train_lm_loss_at'] = {str(batch): loss for batch, loss in zip(batches, losses) if batch in loss_batches}
    results = {
        'command': command, 'commit': commit, 'dirty': dirty, 'seed': seed, 'threads': torch.get_num_threads(),
        'settings': dataclasses.asdict(settings) | {'tokens_per_batch': tokens_per_batch, 'learning_rate': PRETRAINED_LEARNING_RATE},
        'source_loss': report.ModelSummary.from_evaluation('source', source_losses).mean_loss,
        'loss_batches': loss_batches, 'arms': arms,
        'eval_curves': {label: [[tokens.tolist(), losses.tolist()] for tokens, losses in runs] for label, runs in eval_curves.items()},
        'stages': stage_log, 'stage_commands': stage_commands,
    }
    report_dir = output_dir / 'report'
    report_dir.mkdir()
    plot_train_loss(train_curves).savefig(report_dir / 'train_loss.png', dpi=120)
    plot_loss_against_tokens(eval_curves, 'Target-shape held-out loss against tokens, by mask initialisation').savefig(
        report_dir / 'loss_against_tokens.png', dpi=120,
    )
    return write_results(report_dir, results, started, render_report)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--quick', action='store_true', help='a few documents and batches')
    parser.add_argument('--output', type=Path, help='a new or empty folder (default: outputs/mask_init[_quick])')
    parser.add_argument('--seed', type=int, default=1)
    parser.add_argument('--data', type=Path, default=DATA, help='per-domain jsonl folders (default: ../shared/data/redpajama-sample)')
    parser.add_argument('--threads', type=int, default=2, help='torch CPU threads (default: 2)')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(name)s: %(message)s')
    output_dir = (args.output or REPO / 'outputs' / ('mask_init_quick' if args.quick else 'mask_init')).resolve()
    command = shlex.join(['.venv/bin/python', 'scripts/experiments/mask_init.py', *(argv if argv is not None else sys.argv[1:])])
    torch.set_num_threads(args.threads)
    report_dir = run_experiment(output_dir, QUICK if args.quick else FULL, args.seed, command, args.data)
    print((report_dir / 'README.md').read_text())


if __name__ == '__main__':
    main()
