"""Does shearing beat training from scratch? A miniature Sheared-LLaMA experiment on real text.

On the RedPajama sample (7 domains) tokenised with the Mistral-7B tokenizer:

1. pre-train a source Llama S on the training split for over an epoch, with a cosine schedule, so that its eval loss
   levels off (the report says how far it still fell over its last quarter) (``yamls/tiny/source.yaml``; the natural
   domain mix: each domain in proportion to its training tokens, so an epoch reads every domain once);
2. per seed, prune S to the target shape T (about half of S's non-embedding parameters; layers, heads, MLP
   channels and hidden width) with dynamic batch loading (``doremi``, reference: S's per-domain eval losses),
   export it and continue pre-training it for B batches, from the domain weights pruning ended with
   (``callbacks.dynamic_loading.initial_proportions``; ``yamls/tiny/pruning.yaml``,
   ``yamls/tiny/continued_pretraining.yaml``);
3. per seed, train a model of shape T from scratch for as many tokens as pruning and continued pre-training
   together (``yamls/tiny/source.yaml``);
4. per seed, the prune-and-continue run of 2 with ``constant`` domain weights;
5. a report: per-domain eval losses of every model (mean and spread over the seeds), eval loss against tokens,
   domain weights over time.

S: hidden 128, 4 heads of 32, MLP 512, 4 layers (1.05 M non-embedding parameters); T: hidden 112, 3 heads of 32,
MLP 384, 3 layers (0.52 M, 49 %). The 32000-token vocabulary makes the embeddings and the LM head (8.2 M
parameters in S) the larger part of the compute. S, scratch and pruning start from the natural mix; scratch and the
constant ablation keep it.

    .venv/bin/python scripts/experiments/shearing_vs_scratch.py [--quick] [--output DIR] [--seeds 1 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from transformers import LlamaTokenizerFast

from llmshearing import report
from llmshearing.data.prepare import prepare_data
from llmshearing.data.reference_loss import evaluate_domain_losses
from llmshearing.pruning.shape import ModelShape
from llmshearing.toy import llama_config

log = logging.getLogger('shearing_vs_scratch')

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / 'shared' / 'data' / 'redpajama-sample'
TOKENIZER = REPO.parent / 'shared' / 'tokenizers' / 'mistral-7b-v0.1' / 'tokenizer.model'
DOMAINS = ('cc', 'github', 'book', 'stackexchange', 'wiki', 'arxiv', 'c4-rp')
SOURCE_SEED = 17
SOURCE_SHAPE = dict(hidden_size=128, num_attention_heads=4, num_key_value_heads=4, intermediate_size=512, num_hidden_layers=4, head_dim=32)
TARGET_SHAPE = dict(hidden_size=112, num_attention_heads=3, num_key_value_heads=3, intermediate_size=384, num_hidden_layers=3)
EVAL_BATCH_SIZE = 16
FINAL_MODEL = Path('huggingface') / 'final'
MODELS = {
    'source': 'S, the source',
    'pruned': 'T pruned (doremi), before continued pre-training',
    'continued': 'T pruned + continued (doremi)',
    'scratch': 'T from scratch, same tokens',
    'pruned_constant': 'T pruned (constant), before continued pre-training',
    'continued_constant': 'T pruned + continued (constant): ablation',
}


@dataclass(frozen=True)
class Settings:
    """How much data and how many training batches (of ``batch_size`` × ``seq_len`` tokens) one run uses.

    The source stage evaluates ``source_evaluations`` times (its curve shows where the loss levels off), every other
    stage ``evaluations_per_stage`` times; stages trained from scratch warm the learning rate up over
    ``warmup_fraction`` of their batches.
    """

    seq_len: int
    batch_size: int
    eval_samples: int
    max_docs_per_domain: int | None
    source_batches: int
    source_evaluations: int
    pruning_batches: int
    continued_batches: int
    evaluations_per_stage: int
    warmup_fraction: float

    @property
    def tokens_per_batch(self) -> int:
        return self.seq_len * self.batch_size


QUICK = Settings(
    seq_len=64, batch_size=8, eval_samples=8, max_docs_per_domain=40, source_batches=40, source_evaluations=2,
    pruning_batches=12, continued_batches=12, evaluations_per_stage=2, warmup_fraction=0.05,
)
FULL = Settings(
    seq_len=128, batch_size=16, eval_samples=32, max_docs_per_domain=None, source_batches=750, source_evaluations=10,
    pruning_batches=60, continued_batches=140, evaluations_per_stage=4, warmup_fraction=0.05,
)


@dataclass(frozen=True)
class Stage:
    """One training run of a tiny recipe with its overrides; its model ends in ``final_model``."""

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

    def run(self) -> float:
        """Train through ``train.py`` in a child process with this process's torch threads, and return the wall
        seconds it took. A process per stage returns all of a stage's memory: one process running stage after stage
        keeps growing (a full real-model run was killed for memory at its eleventh stage)."""
        started = time.monotonic()
        log.info('stage %s: %d batches', self.name, self.batches)
        threads = str(torch.get_num_threads())
        environment = os.environ | {'OMP_NUM_THREADS': threads, 'MKL_NUM_THREADS': threads}
        completed = subprocess.run([sys.executable, str(REPO / 'train.py'), str(self.yaml), *self.overrides], cwd=REPO, env=environment)
        if completed.returncode != 0:
            raise RuntimeError(f'stage {self.name} failed with exit status {completed.returncode}: {self.command}')
        return time.monotonic() - started


def common_overrides(
    settings: Settings, model_path: Path, data_dir: Path, output_dir: Path, batches: int, seed: int, mix: Sequence[float],
    evaluations: int | None = None,
) -> list[str]:
    """Overrides every stage shares: paths, the 7 domains and their initial ``mix``, batch sizes, duration,
    ``evaluations`` evaluations (default ``settings.evaluations_per_stage``), one checkpoint, and no training metrics
    (their extra cross-entropy over the 32000-token vocabulary costs more than a tenth of a CPU step)."""
    eval_interval = max(batches // (evaluations or settings.evaluations_per_stage), 1)
    return [
        f'variables.model_path={model_path}',
        f'variables.data_local={data_dir}',
        f'variables.output_dir={output_dir}',
        f'variables.run_name={output_dir.name}',
        f'variables.domains=[{",".join(DOMAINS)}]',
        f'train_loader.dataset.proportions=[{",".join(map(str, mix))}]',
        f'seed={seed}',
        f'max_seq_len={settings.seq_len}',
        f'device_train_batch_size={settings.batch_size}',
        f'device_train_microbatch_size={settings.batch_size}',
        f'global_train_batch_size={settings.batch_size}',
        f'device_eval_batch_size={EVAL_BATCH_SIZE}',
        f'max_duration={batches}ba',
        f'eval_interval={eval_interval}ba',
        'eval_first=true',
        f'save_interval={batches}ba',
        f'console_log_interval={eval_interval}ba',
        'model.use_train_metrics=false',
    ]


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


def write_initial_model(folder: Path, vocab_size: int, tokenizer: LlamaTokenizerFast, **shape: int) -> Path:
    """A config (weights start random with ``pretrained: false``) and the tokenizer, as an HF folder."""
    llama_config(vocab_size, max_position_embeddings=1024, **shape).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def from_scratch(
    settings: Settings, name: str, initial_model: Path, data_dir: Path, output_dir: Path, batches: int, seed: int,
    mix: Sequence[float], evaluations: int | None = None,
) -> Stage:
    """Training ``initial_model``'s shape from random weights on the fixed ``mix`` (``yamls/tiny/source.yaml``)."""
    return Stage(
        name, 'source.yaml', output_dir, batches,
        (
            *common_overrides(settings, initial_model, data_dir, output_dir, batches, seed, mix, evaluations),
            f'scheduler.t_warmup={max(round(batches * settings.warmup_fraction), 1)}ba',
        ),
        output_dir / FINAL_MODEL,
    )


def pruning_and_continued(
    settings: Settings, data_dir: Path, source_model: Path, run_dir: Path, seed: int, mix: Sequence[float], update: str,
    reference: str,
) -> tuple[Stage, Stage]:
    """Pruning S to T with ``update`` domain weights, then continued pre-training of the exported model from the
    domain weights pruning ended with (with ``constant``, the initial ``mix``)."""
    pruning_dir, continued_dir = run_dir / 'pruning', run_dir / 'continued_pretraining'
    pruned_model = pruning_dir / FINAL_MODEL
    target = [f'algorithms.shearing.target.{field}={size}' for field, size in TARGET_SHAPE.items()]
    pruning = Stage(
        f'pruning ({update}, seed {seed})', 'pruning.yaml', pruning_dir, settings.pruning_batches,
        (
            *common_overrides(settings, source_model, data_dir, pruning_dir, settings.pruning_batches, seed, mix), *target,
            f'algorithms.shearing.lagrangian_warmup={max(settings.pruning_batches // 3, 1)}ba',
            f'algorithms.shearing.export_dir={pruned_model}', 'algorithms.shearing.export_dtype=fp32',
            f'callbacks.dynamic_loading.update={update}', reference,
        ),
        pruned_model,
    )
    continued = Stage(
        f'continued pre-training ({update}, seed {seed})', 'continued_pretraining.yaml', continued_dir,
        settings.continued_batches,
        (
            *common_overrides(settings, pruned_model, data_dir, continued_dir, settings.continued_batches, seed, mix),
            f'callbacks.dynamic_loading.update={update}', reference,
            f'callbacks.dynamic_loading.initial_proportions={pruning_dir}',
        ),
        continued_dir / FINAL_MODEL,
    )
    return pruning, continued


def evaluate(model_dir: Path, data_dir: Path, out: Path) -> dict[str, Any]:
    """Per-domain eval losses of ``model_dir``, also written to ``out``."""
    losses = evaluate_domain_losses(model_dir, data_dir, DOMAINS, batch_size=EVAL_BATCH_SIZE)
    out.write_text(json.dumps(losses, indent=2) + '\n')
    return losses


def mean_and_spread(values: Sequence[float]) -> tuple[float, float]:
    """The mean and half the range (max − min) / 2 of ``values``."""
    return float(np.mean(values)), float((max(values) - min(values)) / 2)


def eval_curve(stage: report.StageMetrics, tokens_per_batch: int, token_offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Tokens trained and mean eval loss over the domains at each evaluation of a stage."""
    series = [stage.series(report.LOSS_PREFIX + domain) for domain in DOMAINS]
    batches = series[0][0]
    return batches * tokens_per_batch + token_offset, np.mean([losses for _, losses in series], axis=0)


def plot_loss_against_tokens(
    curves: dict[str, list[tuple[np.ndarray, np.ndarray]]],
    title: str = 'Eval loss against tokens: pruned then continued vs from scratch',
) -> Figure:
    """Mean eval loss over the domains against training tokens, one line per run and seed."""
    figure = Figure(figsize=(7, 4.5), layout='constrained')
    axis = figure.subplots()
    for index, (name, runs) in enumerate(curves.items()):
        for run, (tokens, losses) in enumerate(runs):
            axis.plot(tokens, losses, marker='o', markersize=3, color=f'C{index}', alpha=0.85, label=name if run == 0 else None)
    axis.set(xlabel='training tokens of the small model (pruning + continued; scratch)', ylabel='mean eval loss over the 7 domains (nats/token)')
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend()
    return figure


def git_commit() -> tuple[str, bool]:
    """The commit ``HEAD`` of the repository and whether the working tree differs from it."""
    head = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    status = subprocess.run(['git', 'status', '--porcelain'], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return head, bool(status.strip())


def loss_rows(results: dict[str, Any]) -> list[list[str]]:
    """Per model: each domain's loss and the mean over all eval tokens, as mean ± spread over the seeds."""
    rows = []
    for name, label in MODELS.items():
        per_seed = results['models'][name]
        cells = []
        for key in (*DOMAINS, 'all domains'):
            mean, spread = mean_and_spread([evaluation['losses'][key] if key in DOMAINS else evaluation['mean_loss'] for evaluation in per_seed])
            cells.append(f'{mean:.3f}' if len(per_seed) == 1 else f'{mean:.3f} ± {spread:.3f}')
        rows.append([label, *cells])
    return rows


def compared(better: tuple[float, float], worse: tuple[float, float]) -> str:
    """Whether the first (mean, spread) is lower or higher than the second, by how much, against the seeds' spread."""
    difference = worse[0] - better[0]
    beyond = abs(difference) > better[1] + worse[1]
    return (
        f'{"lower" if difference > 0 else "higher"} by {abs(difference):.3f} nats/token, '
        f'{"more" if beyond else "less"} than the spread across seeds'
    )


def outcome_sentences(results: dict[str, Any]) -> list[str]:
    """What the numbers say about pruned vs scratch and doremi vs constant, one sentence each."""
    mean = {name: mean_and_spread([evaluation['mean_loss'] for evaluation in runs]) for name, runs in results['models'].items()}
    tokens = results['settings']['tokens_small_model']
    seeds = len(results['seeds'])
    continued, scratch, constant = mean['continued'], mean['scratch'], mean['continued_constant']
    pruned, pruned_constant = mean['pruned'], mean['pruned_constant']
    return [
        f'Pruned + continued reaches a mean eval loss of {continued[0]:.3f} ± {continued[1]:.3f} against '
        f'{scratch[0]:.3f} ± {scratch[1]:.3f} for the same shape trained from scratch on the same {tokens:,} tokens '
        f'({seeds} seeds; mean ± half range): {compared(continued, scratch)} (the source model\'s own '
        f'training, {mean["source"][0]:.3f} at its end, is not counted in that budget).',
        f'With doremi domain weights the pruned + continued model reaches {continued[0]:.3f} ± {continued[1]:.3f}, with constant '
        f'weights {constant[0]:.3f} ± {constant[1]:.3f} (mean over all eval tokens): doremi is {compared(continued, constant)}; '
        f'right after pruning, before continued pre-training, doremi {pruned[0]:.3f} ± {pruned[1]:.3f} against constant '
        f'{pruned_constant[0]:.3f} ± {pruned_constant[1]:.3f} is {compared(pruned, pruned_constant)}.',
    ]


def source_convergence(results: dict[str, Any]) -> str:
    """How far S's mean eval loss fell in all and over the last quarter of its training, from its eval curve."""
    tokens, losses = (np.array(values) for values in results['source_curve'])
    last_quarter = int(np.flatnonzero(tokens <= 0.75 * tokens[-1])[-1])
    whole_fall, late_fall = losses[0] - losses[-1], losses[last_quarter] - losses[-1]
    epochs = tokens[-1] / sum(results['training_tokens'].values())
    return (
        f'S\'s mean eval loss went from {losses[0]:.3f} at random initialisation to {losses[-1]:.3f} after {int(tokens[-1]):,} '
        f'tokens ({epochs:.2f} epochs of the training split); over its last {int(tokens[-1] - tokens[last_quarter]):,} tokens it '
        f'fell by {late_fall:.3f} nats, {late_fall / whole_fall:.1%} of its whole fall.'
    )


def stages_and_commands(results: dict[str, Any]) -> list[str]:
    """The report's last sections: each stage's batches and wall time, the commit, the command and every stage's."""
    return [
        '## Stages',
        '',
        *report.markdown_table(['stage', 'batches', 'wall seconds'], [[stage['name'], stage['batches'], f'{stage["wall_seconds"]:.0f}'] for stage in results['stages']]),
        '',
        '## Commands',
        '',
        f'Run at commit `{results["commit"]}`' + (' (the working tree also had uncommitted changes).' if results['dirty'] else '.'),
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


def render_report(results: dict[str, Any]) -> str:
    """The report's markdown."""
    settings = results['settings']
    source, target = results['shapes']['source'], results['shapes']['target']
    lines = [
        '# Shearing vs training from scratch: a miniature Sheared-LLaMA experiment',
        '',
        f'Data: the RedPajama sample (7 domains) tokenised with the Mistral-7B tokenizer (32000 pieces) into samples of '
        f'{settings["seq_len"]} tokens; {settings["eval_samples"]} eval samples per domain, from documents training never reads. '
        f'Batches of {settings["batch_size"]} samples ({settings["tokens_per_batch"]:,} tokens). Seeds {", ".join(map(str, results["seeds"]))} '
        f'(data order, mask sampling, initialisation from scratch); the source model is trained once (seed {SOURCE_SEED}). '
        f'Wall time {results["wall_seconds"] / 60:.1f} min.',
        '',
        '## Outcome',
        '',
        *(f'- {sentence}' for sentence in outcome_sentences(results)),
        '',
        '## Models',
        '',
        *report.markdown_table(
            ['model', *report.SHAPE_HEADERS.values(), 'head dim', 'non-embedding parameters', 'training'],
            [
                ['S (source)', *(source[field] for field in report.SHAPE_HEADERS), source['head_dim'], f'{results["parameters"]["source"]:,}',
                 f'{settings["source_batches"]} batches from scratch ({settings["source_batches"] * settings["tokens_per_batch"]:,} tokens)'],
                ['T (pruned, scratch)', *(target[field] for field in report.SHAPE_HEADERS), target['head_dim'], f'{results["parameters"]["target"]:,}',
                 f'pruning {settings["pruning_batches"]} + continued {settings["continued_batches"]} batches; scratch '
                 f'{settings["pruning_batches"] + settings["continued_batches"]} batches ({settings["tokens_small_model"]:,} tokens)'],
            ],
        ),
        '',
        f'T keeps {results["parameters"]["target"] / results["parameters"]["source"]:.1%} of S\'s non-embedding parameters; '
        'pruning learns masks over layers, attention heads, MLP channels and the hidden width. S, scratch and pruning start from the '
        f'natural mix of the {sum(results["training_tokens"].values()):,} training tokens, each domain in proportion to its '
        f'tokens ({", ".join(f"{domain} {share:.3f}" for domain, share in results["mix"].items())}); S, scratch and the '
        'constant ablation keep it, doremi runs update it after each evaluation towards the reference losses, S\'s own '
        'per-domain eval losses, and continued pre-training starts from the domain weights its pruning run ended with. '
        'The pruned model is evaluated at the target shape (deterministic masks) while pruning.',
        '',
        '## The source model',
        '',
        source_convergence(results),
        '',
        *report.markdown_table(
            ['tokens', 'epochs', 'mean eval loss'],
            [[f'{tokens:,}', f'{tokens / sum(results["training_tokens"].values()):.2f}', f'{loss:.3f}'] for tokens, loss in zip(*results['source_curve'])],
        ),
        '',
        '![Eval loss of the source per domain](source_loss.png)',
        '',
        'S\'s eval loss per domain against its training batches (dotted: the loader\'s reference, its losses at '
        'random initialisation, which constant weights do not use).',
        '',
        '## Eval loss per domain',
        '',
        'Mean loss per predicted token (nats) on each domain\'s eval split; *all domains* is the mean over all eval tokens. '
        'Mean ± half the range over the seeds (S: one run).',
        '',
        *report.markdown_table(['model', *DOMAINS, 'all domains'], loss_rows(results)),
        '',
        '## Plots',
        '',
        '![Eval loss against tokens](loss_against_tokens.png)',
        '',
        'Mean eval loss over the domains against training tokens of the small model: pruning (masked model at the target '
        'shape) then continued pre-training, against the same shape from scratch; every seed.',
        '',
        '![Domain weights](domain_weights.png)',
        '',
        'Training domain weights (doremi) while pruning and in continued pre-training, set after each evaluation.',
        '',
        *stages_and_commands(results),
    ]
    return '\n'.join(lines)


def check_finite(results: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming the first model and domain whose loss is not finite."""
    for name, runs in results['models'].items():
        for evaluation in runs:
            for key, value in (*evaluation['losses'].items(), ('mean', evaluation['mean_loss'])):
                if not math.isfinite(value):
                    raise ValueError(f'{name}: loss on {key} is {value}')


def portable_paths(text: str) -> str:
    """``text`` with the paths of this machine made relative: to the checkout (``../shared`` beside it), or to the home
    folder (``$HOME``, which a shell expands after ``key=`` where it leaves ``~`` alone)."""
    return text.replace(f'{REPO}/', '').replace(f'{REPO.parent}/', '../').replace(str(Path.home()), '$HOME')


def write_results(report_dir: Path, results: dict[str, Any], started: float, render: Callable[[dict[str, Any]], str]) -> Path:
    """Record the wall time since ``started`` (``time.monotonic``), write ``results.json`` and the rendered
    ``README.md`` into ``report_dir`` with ``portable_paths``; return ``report_dir``."""
    results['wall_seconds'] = time.monotonic() - started
    (report_dir / 'results.json').write_text(portable_paths(json.dumps(results, indent=2)) + '\n')
    (report_dir / 'README.md').write_text(portable_paths(render(results)))
    log.info('experiment finished in %.0f s; report: %s', results['wall_seconds'], report_dir / 'README.md')
    return report_dir


def run_experiment(output_dir: Path, settings: Settings, seeds: Sequence[int], command: str, data: Path = DATA, tokenizer_path: Path = TOKENIZER) -> Path:
    """Every stage into ``output_dir`` (new or empty); return the report folder."""
    if output_dir.exists() and any(output_dir.iterdir()):
        raise FileExistsError(f'output folder {output_dir} is not empty; choose another with --output')
    started = time.monotonic()
    commit, dirty = git_commit()
    data_dir = output_dir / 'data'
    prepare_data(
        data, data_dir, tokenizer_path, settings.seq_len, eval_samples=settings.eval_samples, domains=DOMAINS,
        max_docs_per_domain=settings.max_docs_per_domain,
    )
    stage_log: list[dict[str, Any]] = [{'name': 'prepare data', 'batches': 0, 'wall_seconds': time.monotonic() - started}]
    train_tokens = training_tokens(data_dir)
    mix = natural_mix(train_tokens)
    tokenizer = LlamaTokenizerFast(vocab_file=str(tokenizer_path), legacy=False)
    vocab_size = len(tokenizer)
    source_shape = ModelShape.from_config(llama_config(vocab_size, **SOURCE_SHAPE))
    target_shape = source_shape.with_target(TARGET_SHAPE)
    target_config = target_shape.config_updates()

    def run_stage(stage: Stage) -> None:
        stage_log.append({'name': stage.name, 'batches': stage.batches, 'wall_seconds': stage.run()})

    source_dir = output_dir / 'source'
    source_init = write_initial_model(source_dir / 'init', vocab_size, tokenizer, **SOURCE_SHAPE)
    source = from_scratch(
        settings, 'source', source_init, data_dir, source_dir, settings.source_batches, SOURCE_SEED, mix,
        settings.source_evaluations,
    )
    run_stage(source)
    source_losses = evaluate(source.final_model, data_dir, source_dir / 'losses.json')
    reference = reference_override(source_losses['losses'])
    small_batches = settings.pruning_batches + settings.continued_batches

    evaluations: dict[str, list[dict[str, Any]]] = {name: [] for name in MODELS}
    evaluations['source'].append(source_losses)
    stages_by_seed: dict[int, dict[str, Stage]] = {}
    for seed in seeds:
        seed_dir = output_dir / f'seed_{seed}'
        doremi, constant = (
            pruning_and_continued(settings, data_dir, source.final_model, seed_dir / update, seed, mix, update, reference)
            for update in ('doremi', 'constant')
        )
        scratch_dir = seed_dir / 'scratch'
        scratch_init = write_initial_model(scratch_dir / 'init', vocab_size, tokenizer, **target_config)
        scratch = from_scratch(settings, f'scratch (seed {seed})', scratch_init, data_dir, scratch_dir, small_batches, seed, mix)
        named = dict(zip(('pruned', 'continued', 'pruned_constant', 'continued_constant', 'scratch'), (*doremi, *constant, scratch)))
        for name, stage in named.items():
            run_stage(stage)
            evaluations[name].append(evaluate(stage.final_model, data_dir, stage.output_dir / 'losses.json'))
        stages_by_seed[seed] = named

    for name, runs in evaluations.items():
        for evaluation in runs:
            evaluation['mean_loss'] = report.ModelSummary.from_evaluation(name, evaluation).mean_loss
    for name in ('pruned', 'continued', 'scratch', 'pruned_constant', 'continued_constant'):
        for evaluation in evaluations[name]:
            shape = report.ModelSummary.from_evaluation(name, evaluation).shape
            if shape != {field: getattr(target_shape, field) for field in report.SHAPE_HEADERS}:
                raise RuntimeError(f'{evaluation["model"]} has shape {shape}, not the target shape {target_shape}')

    results: dict[str, Any] = {
        'command': command,
        'commit': commit,
        'dirty': dirty,
        'seeds': list(seeds),
        'training_tokens': train_tokens,
        'mix': dict(zip(DOMAINS, mix)),
        'settings': asdict(settings) | {
            'tokens_per_batch': settings.tokens_per_batch, 'tokens_small_model': small_batches * settings.tokens_per_batch,
        },
        'shapes': {'source': source_shape.config_updates(), 'target': target_shape.config_updates()},
        'parameters': {'source': source_shape.num_non_embedding_params(), 'target': target_shape.num_non_embedding_params()},
        'models': evaluations,
        'stages': stage_log,
        'stage_commands': [source.command, *(stage.command for named in stages_by_seed.values() for stage in named.values())],
    }
    check_finite(results)

    report_dir = output_dir / 'report'
    report_dir.mkdir()
    tokens_per_batch = settings.tokens_per_batch
    pruning_tokens = settings.pruning_batches * tokens_per_batch
    curves: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {'pruned + continued (doremi)': [], 'pruned + continued (constant)': [], 'scratch': []}
    doremi_stages = []
    for named in stages_by_seed.values():
        for label, (pruning, continued) in (
            ('pruned + continued (doremi)', (named['pruned'], named['continued'])),
            ('pruned + continued (constant)', (named['pruned_constant'], named['continued_constant'])),
        ):
            pruning_metrics = report.StageMetrics.from_log(pruning.name, pruning.metrics_file)
            continued_metrics = report.StageMetrics.from_log(continued.name, continued.metrics_file)
            pruning_curve = eval_curve(pruning_metrics, tokens_per_batch)
            continued_curve = eval_curve(continued_metrics, tokens_per_batch, pruning_tokens)
            curves[label].append(tuple(np.concatenate(parts) for parts in zip(pruning_curve, continued_curve)))
            if label.endswith('(doremi)'):
                doremi_stages += [pruning_metrics, continued_metrics]
        curves['scratch'].append(eval_curve(report.StageMetrics.from_log(named['scratch'].name, named['scratch'].metrics_file), tokens_per_batch))
    results['curves'] = {name: [[tokens.tolist(), losses.tolist()] for tokens, losses in runs] for name, runs in curves.items()}
    source_metrics = report.StageMetrics.from_log(source.name, source.metrics_file)
    results['source_curve'] = [values.tolist() for values in eval_curve(source_metrics, tokens_per_batch)]
    report.plot_domain_losses([source_metrics], DOMAINS).savefig(report_dir / 'source_loss.png', dpi=120)
    plot_loss_against_tokens(curves).savefig(report_dir / 'loss_against_tokens.png', dpi=120)
    report.plot_domain_weights(doremi_stages, DOMAINS).savefig(report_dir / 'domain_weights.png', dpi=120)
    return write_results(report_dir, results, started, render_report)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the experiment from the command line and print the report."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--quick', action='store_true', help='fewer documents, shorter samples and fewer batches')
    parser.add_argument('--output', type=Path, help='a new or empty folder (default: outputs/shearing_vs_scratch[_quick])')
    parser.add_argument('--seeds', type=int, nargs='+', default=[1, 2], help='seeds of the pruning, continued and scratch runs')
    parser.add_argument('--data', type=Path, default=DATA, help='per-domain jsonl folders (default: ../shared/data/redpajama-sample)')
    parser.add_argument('--tokenizer', type=Path, default=TOKENIZER, help='SentencePiece tokenizer.model (default: ../shared Mistral-7B)')
    parser.add_argument('--threads', type=int, default=2, help='torch CPU threads (default: 2)')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(name)s: %(message)s')
    output_dir = (args.output or REPO / 'outputs' / ('shearing_vs_scratch_quick' if args.quick else 'shearing_vs_scratch')).resolve()
    command = shlex.join(['.venv/bin/python', 'scripts/experiments/shearing_vs_scratch.py', *(argv if argv is not None else sys.argv[1:])])
    torch.set_num_threads(args.threads)
    report_dir = run_experiment(output_dir, QUICK if args.quick else FULL, args.seeds, command, args.data, args.tokenizer)
    print((report_dir / 'README.md').read_text())


if __name__ == '__main__':
    main()
