"""What the experiments share: their settings, the training runs they are made of, the ledger of finished stages,
the curves and plots of eval loss, and the report folder they write (``results.json``, ``README.md``, plots).

An experiment module defines its own settings (a subclass of ``TrainingSettings`` with a ``QUICK`` and a ``FULL``
instance), builds its runs with ``pruning_run``, ``continued_run`` and ``scratch_run``, runs every stage through a
``StageLedger`` and ends with ``write_results``; its ``main`` uses ``experiment_parser`` and ``start``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from llmshearing import report
from llmshearing.cli import main as llmshearing_main
from llmshearing.data.prepare import prepare_data
from llmshearing.data.reference_loss import evaluate_domain_losses
from llmshearing.pruning.shape import ModelShape

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / 'shared' / 'data' / 'redpajama-sample'
DOMAINS = ('cc', 'github', 'book', 'stackexchange', 'wiki', 'arxiv', 'c4-rp')
EVAL_BATCH_SIZE = 16
FINAL_MODEL = Path('huggingface') / 'final'


@dataclass(frozen=True)
class TrainingSettings:
    """The sizes every experiment sets: samples of ``seq_len`` tokens, training batches of ``batch_size`` samples,
    ``eval_samples`` held-out samples per domain (from at most ``max_docs_per_domain`` documents, ``None``: all),
    the batches of pruning and of continued pre-training, evaluations per stage, and the fraction of a stage trained
    from scratch that warms the learning rate up. Each experiment extends it with its own fields and defines its
    ``QUICK`` and ``FULL`` forms."""

    seq_len: int
    batch_size: int
    eval_samples: int
    max_docs_per_domain: int | None
    pruning_batches: int
    continued_batches: int
    evaluations_per_stage: int
    warmup_fraction: float

    @property
    def tokens_per_batch(self) -> int:
        return self.seq_len * self.batch_size

    @property
    def small_model_batches(self) -> int:
        """Pruning and continued pre-training together: what every small model of an experiment trains for."""
        return self.pruning_batches + self.continued_batches

    def recorded(self) -> dict[str, Any]:
        """The fields and the derived sizes, as the results record them."""
        return asdict(self) | {
            'tokens_per_batch': self.tokens_per_batch, 'small_model_batches': self.small_model_batches,
            'tokens_small_model': self.small_model_batches * self.tokens_per_batch,
        }


@dataclass(frozen=True)
class TrainingRun:
    """One ``train.py`` run of a tiny recipe with its overrides; its model ends in ``final_model``."""

    name: str
    yaml_name: str
    output_dir: Path
    batches: int
    overrides: tuple[str, ...]
    final_model: Path

    @property
    def yaml(self) -> Path:
        return REPO / 'yamls' / 'tiny' / self.yaml_name

    @property
    def metrics_file(self) -> Path:
        return self.output_dir / 'metrics.jsonl'

    @property
    def command(self) -> str:
        return shlex.join(['composer', 'train.py', str(self.yaml.relative_to(REPO)), *self.overrides])

    def metrics(self) -> report.StageMetrics:
        return report.StageMetrics.from_log(self.name, self.metrics_file)

    def with_overrides(self, extra: Sequence[str]) -> TrainingRun:
        return replace(self, overrides=(*self.overrides, *extra))

    def run(self) -> None:
        """Train through ``train.py`` in a child process with this process's torch threads. A process per run returns
        all of its memory: one process running stage after stage keeps growing (a full real-model run was killed for
        memory at its eleventh stage)."""
        log.info('stage %s: %d batches', self.name, self.batches)
        threads = str(torch.get_num_threads())
        environment = os.environ | {'OMP_NUM_THREADS': threads, 'MKL_NUM_THREADS': threads}
        command = [sys.executable, str(REPO / 'train.py'), str(self.yaml), *self.overrides]
        completed = subprocess.run(command, cwd=REPO, env=environment)
        if completed.returncode != 0:
            raise RuntimeError(f'stage {self.name} failed with exit status {completed.returncode}: {self.command}')


class StageLedger:
    """The experiment's finished steps, one JSON line each in ``stages.jsonl`` (name, batches, wall seconds, commit):
    a resumed run skips them and redoes an interrupted step from the start."""

    def __init__(self, path: Path, commit: str) -> None:
        self.path = path
        self.commit = commit
        lines = path.read_text().splitlines() if path.exists() else []
        self.entries = {entry['name']: entry for entry in map(json.loads, lines)}

    def run(self, name: str, batches: int, action: Callable[[], Any], output: Path) -> None:
        """Run ``action``, which writes ``output``, unless the ledger has ``name``; first remove ``output`` if an
        interrupted run left it."""
        if name in self.entries:
            log.info('%s: finished in an earlier run (%s)', name, self.path)
            return
        if output.exists():
            log.warning('%s: removing %s, left by an interrupted run', name, output)
            if output.is_dir():
                shutil.rmtree(output)
            else:
                output.unlink()
        started = time.monotonic()
        action()
        entry = {'name': name, 'batches': batches, 'wall_seconds': time.monotonic() - started, 'commit': self.commit}
        with self.path.open('a') as ledger:
            ledger.write(json.dumps(entry) + '\n')
        self.entries[name] = entry

    def train(self, run: TrainingRun) -> Path:
        """``run`` as a stage of the ledger; return its final model."""
        self.run(run.name, run.batches, run.run, run.output_dir)
        return run.final_model

    def timed(self, name: str, action: Callable[[], Any]) -> Any:
        """``action()``, its wall seconds recorded as a stage that a resumed run redoes (a measuring step)."""
        started = time.monotonic()
        value = action()
        seconds = time.monotonic() - started
        self.entries[name] = {'name': name, 'batches': 0, 'wall_seconds': seconds, 'commit': self.commit}
        return value

    @property
    def stages(self) -> list[dict[str, Any]]:
        return list(self.entries.values())


def loop_overrides(
    model_path: Path, data_dir: Path, output_dir: Path, batches: int, seed: int, seq_len: int, batch_size: int,
    evaluations: int,
) -> list[str]:
    """The training loop's overrides of any tiny recipe: the model and output paths, samples of ``seq_len`` tokens in
    batches of ``batch_size``, ``batches`` batches with ``evaluations`` evaluations (the first before training), one
    checkpoint, no training metrics (their extra cross-entropy over a large vocabulary costs more than a tenth of
    a CPU step), and the data in ``data_dir``."""
    eval_interval = max(batches // evaluations, 1)
    return [
        f'variables.model_path={model_path}',
        f'variables.output_dir={output_dir}',
        f'variables.run_name={output_dir.name}',
        f'seed={seed}',
        f'max_seq_len={seq_len}',
        f'device_train_batch_size={batch_size}',
        f'device_train_microbatch_size={batch_size}',
        f'global_train_batch_size={batch_size}',
        f'device_eval_batch_size={EVAL_BATCH_SIZE}',
        f'max_duration={batches}ba',
        f'eval_interval={eval_interval}ba',
        'eval_first=true',
        f'save_interval={batches}ba',
        f'console_log_interval={eval_interval}ba',
        'model.use_train_metrics=false',
        f'variables.data_local={data_dir}',
    ]


def common_overrides(
    settings: TrainingSettings, model_path: Path, data_dir: Path, output_dir: Path, batches: int, seed: int,
    mix: Sequence[float], evaluations: int | None = None,
) -> list[str]:
    """Overrides every run on the 7 domains shares: ``loop_overrides`` with ``evaluations`` evaluations (default
    ``settings.evaluations_per_stage``), the domains and their initial ``mix``."""
    return [
        *loop_overrides(
            model_path, data_dir, output_dir, batches, seed, settings.seq_len, settings.batch_size,
            evaluations or settings.evaluations_per_stage,
        ),
        f'variables.domains=[{",".join(DOMAINS)}]',
        f'train_loader.dataset.proportions=[{",".join(map(str, mix))}]',
    ]


def pruning_run(
    settings: TrainingSettings, name: str, source: Path, data_dir: Path, run_dir: Path, seed: int, mix: Sequence[float],
    target: dict[str, int], extra: Sequence[str],
) -> TrainingRun:
    """Pruning ``source`` to the ``target`` shape (``yamls/tiny/pruning.yaml``) into ``run_dir/pruning``, with the
    Lagrangian warmed up over a third of the batches; the exported fp32 model ends in ``final_model``."""
    pruning_dir = run_dir / 'pruning'
    pruned_model = pruning_dir / FINAL_MODEL
    return TrainingRun(
        name, 'pruning.yaml', pruning_dir, settings.pruning_batches,
        (
            *common_overrides(settings, source, data_dir, pruning_dir, settings.pruning_batches, seed, mix),
            *(f'algorithms.shearing.target.{field}={size}' for field, size in target.items()),
            f'algorithms.shearing.lagrangian_warmup={max(settings.pruning_batches // 3, 1)}ba',
            f'algorithms.shearing.export_dir={pruned_model}', 'algorithms.shearing.export_dtype=fp32', *extra,
        ),
        pruned_model,
    )


def continued_run(
    settings: TrainingSettings, name: str, model: Path, data_dir: Path, output_dir: Path, batches: int, seed: int,
    mix: Sequence[float], extra: Sequence[str], pruning_dir: Path | None = None, teacher: Path | None = None,
) -> TrainingRun:
    """Continued pre-training of ``model``, from the domain weights ``pruning_dir``'s run ended with if given (else
    from ``mix``), distilled from ``teacher`` if given."""
    overrides = [*common_overrides(settings, model, data_dir, output_dir, batches, seed, mix), *extra]
    if pruning_dir is not None:
        overrides.append(f'callbacks.dynamic_loading.initial_proportions={pruning_dir}')
    if teacher is not None:
        overrides.append(f'variables.teacher_path={teacher}')
    yaml_name = 'continued_pretraining.yaml' if teacher is None else 'continued_pretraining_distillation.yaml'
    return TrainingRun(name, yaml_name, output_dir, batches, tuple(overrides), output_dir / FINAL_MODEL)


def scratch_run(
    settings: TrainingSettings, name: str, initial_model: Path, data_dir: Path, output_dir: Path, batches: int,
    seed: int, mix: Sequence[float], evaluations: int | None = None,
) -> TrainingRun:
    """Training ``initial_model``'s shape from random weights on the fixed ``mix`` (``yamls/tiny/source.yaml``)."""
    return TrainingRun(
        name, 'source.yaml', output_dir, batches,
        (
            *common_overrides(settings, initial_model, data_dir, output_dir, batches, seed, mix, evaluations),
            f'scheduler.t_warmup={max(round(batches * settings.warmup_fraction), 1)}ba',
        ),
        output_dir / FINAL_MODEL,
    )


def run_llmshearing(arguments: Sequence[str]) -> None:
    """Run ``llmshearing ARGUMENTS`` in this process. Raise ``RuntimeError`` naming the command if it fails."""
    status = llmshearing_main(list(arguments))
    if status != 0:
        command = shlex.join(['llmshearing', *arguments])
        raise RuntimeError(f'llmshearing {arguments[0]} failed with exit status {status}: {command}')


def llmshearing_stage(ledger: StageLedger, name: str, arguments: Sequence[str], output: Path) -> str:
    """``llmshearing ARGUMENTS``, which writes ``output``, as the ledger's stage ``name``; return its command line,
    also when the ledger skips the stage."""
    ledger.run(name, 0, lambda: run_llmshearing(arguments), output)
    return shlex.join(['llmshearing', *arguments])


def prepare_domains(
    ledger: StageLedger, settings: TrainingSettings, data: Path, tokenizer: Path, data_dir: Path,
) -> dict[str, int]:
    """``prepare-data`` of the 7 domains' jsonl folders in ``data`` into ``data_dir`` with ``tokenizer``, as the
    ledger's stage ``prepare data``; return each domain's training tokens."""
    ledger.run('prepare data', 0, lambda: prepare_data(
        data, data_dir, tokenizer, settings.seq_len, eval_samples=settings.eval_samples, domains=DOMAINS,
        max_docs_per_domain=settings.max_docs_per_domain,
    ), data_dir)
    return training_tokens(data_dir)


def training_tokens(data_dir: Path) -> dict[str, int]:
    """Each domain's training tokens, from the manifest ``prepare-data`` wrote into ``data_dir``."""
    manifest = json.loads((data_dir / 'manifest.json').read_text())
    return {domain: manifest['train'][domain]['tokens'] for domain in DOMAINS}


def natural_mix(tokens: dict[str, int]) -> tuple[float, ...]:
    """Each domain's share of the training ``tokens``, in the order of ``DOMAINS``, rounded to 4 decimals and summing
    to 1: the mix under which an epoch reads every domain once."""
    counts = np.array([tokens[domain] for domain in DOMAINS], dtype=np.float64)
    shares = np.round(counts / counts.sum(), 4)
    shares[shares.argmax()] += 1 - shares.sum()
    return tuple(round(float(share), 4) for share in shares)


def reference_override(losses: dict[str, float]) -> str:
    """``callbacks.dynamic_loading.reference=[...]``: ``losses`` in the order of ``DOMAINS``."""
    return 'callbacks.dynamic_loading.reference=[' + ','.join(f'{losses[domain]:.6f}' for domain in DOMAINS) + ']'


def evaluate(model_dir: Path, data_dir: Path, out: Path) -> dict[str, Any]:
    """Per-domain eval losses of ``model_dir``, also written to ``out``."""
    losses = evaluate_domain_losses(model_dir, data_dir, DOMAINS, batch_size=EVAL_BATCH_SIZE)
    out.write_text(json.dumps(losses, indent=2) + '\n')
    return losses


def mean_loss(evaluation: dict[str, Any]) -> float:
    """The loss over all domains' eval tokens together, of what ``evaluate`` returns."""
    tokens = evaluation['tokens']
    return sum(loss * tokens[domain] for domain, loss in evaluation['losses'].items()) / sum(tokens.values())


def check_target_shape(models: dict[str, list[dict[str, Any]]], target: ModelShape, names: Sequence[str]) -> None:
    """Raise ``RuntimeError`` naming the first evaluated model of ``names`` that does not have the ``target`` shape."""
    expected = {field: getattr(target, field) for field in report.SHAPE_HEADERS}
    for name in names:
        for evaluation in models[name]:
            shape = report.ModelSummary.from_evaluation(name, evaluation).shape
            if shape != expected:
                raise RuntimeError(f'{evaluation["model"]} has shape {shape}, not the target shape {target}')


def mean_and_spread(values: Sequence[float]) -> tuple[float, float]:
    """The mean and half the range (max − min) / 2 of ``values``."""
    return float(np.mean(values)), float((max(values) - min(values)) / 2)


def eval_curve(
    stage: report.StageMetrics, tokens_per_batch: int, token_offset: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Tokens trained and mean eval loss over the domains at each evaluation of a stage."""
    series = [stage.series(report.LOSS_PREFIX + domain) for domain in DOMAINS]
    batches = series[0][0]
    return batches * tokens_per_batch + token_offset, np.mean([losses for _, losses in series], axis=0)


def runs_curve(runs: Sequence[TrainingRun], tokens_per_batch: int) -> tuple[np.ndarray, np.ndarray]:
    """``eval_curve`` of ``runs`` trained one after the other (pruning, then continued pre-training), in tokens of
    the whole sequence."""
    parts, offset = [], 0
    for run in runs:
        parts.append(eval_curve(run.metrics(), tokens_per_batch, offset))
        offset += run.batches * tokens_per_batch
    tokens, losses = (np.concatenate(values) for values in zip(*parts))
    return tokens, losses


def curves_as_lists(curves: dict[str, list[tuple[np.ndarray, np.ndarray]]]) -> dict[str, list[list[list[float]]]]:
    """``curves`` as JSON values."""
    return {name: [[tokens.tolist(), losses.tolist()] for tokens, losses in runs] for name, runs in curves.items()}


def plot_loss_against_tokens(
    curves: dict[str, list[tuple[np.ndarray, np.ndarray]]],
    title: str = 'Eval loss against tokens: pruned then continued vs from scratch',
) -> Figure:
    """Mean eval loss over the domains against training tokens, one line per run and seed."""
    figure = Figure(figsize=(7, 4.5), layout='constrained')
    axis = figure.subplots()
    for index, (name, runs) in enumerate(curves.items()):
        for run, (tokens, losses) in enumerate(runs):
            label = name if run == 0 else None
            axis.plot(tokens, losses, marker='o', markersize=3, color=f'C{index}', alpha=0.85, label=label)
    axis.set(
        xlabel='training tokens of the small model (pruning + continued; scratch)',
        ylabel='mean eval loss over the 7 domains (nats/token)',
    )
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend()
    return figure


def git_commit() -> tuple[str, bool]:
    """The commit ``HEAD`` of the repository and whether the working tree differs from it."""
    def git(*arguments: str) -> str:
        return subprocess.run(['git', *arguments], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()

    return git('rev-parse', 'HEAD'), bool(git('status', '--porcelain'))


def check_empty(output_dir: Path, hint: str = 'choose another with --output') -> None:
    """Raise ``FileExistsError`` if ``output_dir`` exists and holds anything."""
    if output_dir.exists() and any(output_dir.iterdir()):
        raise FileExistsError(f'output folder {output_dir} is not empty; {hint}')


def check_finite(value: Any, path: str = 'results') -> None:
    """Raise ``ValueError`` naming the first number inside ``value`` (JSON-like results) that is not finite."""
    if isinstance(value, dict):
        for key, item in value.items():
            check_finite(item, f'{path}.{key}')
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            check_finite(item, f'{path}[{index}]')
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f'{path} is {value}')


def stages_and_commands(results: dict[str, Any]) -> list[str]:
    """The report's last sections: each stage's batches and wall time, the commit, the command and every stage's."""
    return [
        '## Stages',
        '',
        *report.markdown_table(
            ['stage', 'batches', 'wall seconds'],
            [[stage['name'], stage['batches'], f'{stage["wall_seconds"]:.0f}'] for stage in results['stages']],
        ),
        '',
        '## Commands',
        '',
        f'Run at commit `{results["commit"]}`'
        + (' (the working tree also had uncommitted changes).' if results['dirty'] else '.'),
        '',
        '```',
        results['command'],
        '```',
        '',
        'Its stages as single commands (from the repository root):',
        '',
        '```',
        *results['stage_commands'],
        '```',
        '',
    ]


def portable_paths(text: str) -> str:
    """``text`` with the paths of this machine made relative: to the checkout (``../shared`` beside it), or to the home
    folder (``$HOME``, which a shell expands after ``key=`` where it leaves ``~`` alone)."""
    return text.replace(f'{REPO}/', '').replace(f'{REPO.parent}/', '../').replace(str(Path.home()), '$HOME')


def write_results(
    output_dir: Path, results: dict[str, Any], started: float, render: Callable[[dict[str, Any]], str],
    figures: dict[str, Figure],
) -> Path:
    """Check that every number of ``results`` is finite, then create the report folder ``output_dir/report`` (a run
    with a number that is not finite stays resumable), save the ``figures`` by file name into it, record the wall time
    since ``started`` (``time.monotonic``) and write ``results.json`` and the rendered ``README.md`` with
    ``portable_paths``; return the report folder."""
    check_finite(results)
    report_dir = output_dir / 'report'
    report_dir.mkdir()
    for name, figure in figures.items():
        figure.savefig(report_dir / name, dpi=120)
    results['wall_seconds'] = time.monotonic() - started
    (report_dir / 'results.json').write_text(portable_paths(json.dumps(results, indent=2)) + '\n')
    (report_dir / 'README.md').write_text(portable_paths(render(results)))
    log.info('experiment finished in %.0f s; report: %s', results['wall_seconds'], report_dir / 'README.md')
    return report_dir


def check_output_folder(output_dir: Path, setup: dict[str, Any], resume: bool) -> tuple[Path, Path]:
    """Check that ``output_dir`` is new or empty, or with ``resume`` an interrupted run of the same ``setup`` (its
    ``setup.json``; no report yet); return the ledger's and the setup's files. Raise ``FileNotFoundError``,
    ``FileExistsError`` or ``ValueError`` saying what to do otherwise."""
    ledger_file, setup_file = output_dir / 'stages.jsonl', output_dir / 'setup.json'
    if not resume:
        check_empty(output_dir, 'choose another with --output, or continue it with --resume')
        return ledger_file, setup_file
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
    return ledger_file, setup_file


def experiment_parser(
    description: str, module: str, quick_help: str, resumable: bool = False,
) -> argparse.ArgumentParser:
    """The arguments every experiment takes: ``--quick``, ``--output``, ``--data`` and ``--threads``; ``--resume``
    for an experiment with a ledger (``resumable``)."""
    name = module.rpartition('.')[2]
    parser = argparse.ArgumentParser(prog=f'python -m {module}', description=description)
    parser.add_argument('--quick', action='store_true', help=quick_help)
    parser.add_argument('--output', type=Path, help=f'a new or empty folder (default: outputs/{name}[_quick])')
    parser.add_argument(
        '--data', type=Path, default=DATA, help='per-domain jsonl folders (default: ../shared/data/redpajama-sample)',
    )
    parser.add_argument('--threads', type=int, default=2, help='torch CPU threads (default: 2)')
    if resumable:
        parser.add_argument(
            '--resume', action='store_true', help='continue an interrupted run in --output: keep its finished stages'
        )
    return parser


def start(args: argparse.Namespace, module: str, argv: Sequence[str] | None) -> tuple[Path, str]:
    """Set up logging and torch's threads; return the output folder (default ``outputs/<name>[_quick]``) and the
    command line to record."""
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(name)s: %(message)s')
    torch.set_num_threads(args.threads)
    name = module.rpartition('.')[2]
    output_dir = (args.output or REPO / 'outputs' / (f'{name}_quick' if args.quick else name)).resolve()
    command = shlex.join(['.venv/bin/python', '-m', module, *(argv if argv is not None else sys.argv[1:])])
    return output_dir, command


def print_report(report_dir: Path) -> None:
    """The command's output: the report."""
    print((report_dir / 'README.md').read_text())
