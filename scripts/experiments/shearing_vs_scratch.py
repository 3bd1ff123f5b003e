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

From the repository root:

    .venv/bin/python -m scripts.experiments.shearing_vs_scratch [--quick] [--output DIR] [--seeds 1 2] [--threads 2]
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from transformers import LlamaTokenizerFast

from llmshearing import report
from llmshearing.pruning.shape import ModelShape
from llmshearing.toy import llama_config
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
    eval_curve,
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
    runs_curve,
    scratch_run,
    stages_and_commands,
    start,
    write_results,
)

TOKENIZER = REPO.parent / 'shared' / 'tokenizers' / 'mistral-7b-v0.1' / 'tokenizer.model'
SOURCE_SEED = 17
SOURCE_SHAPE = dict(
    hidden_size=128,
    num_attention_heads=4,
    num_key_value_heads=4,
    intermediate_size=512,
    num_hidden_layers=4,
    head_dim=32,
)
TARGET_SHAPE = dict(
    hidden_size=112, num_attention_heads=3, num_key_value_heads=3, intermediate_size=384, num_hidden_layers=3
)
MODELS = {
    'source': 'S, the source',
    'pruned': 'T pruned (doremi), before continued pre-training',
    'continued': 'T pruned + continued (doremi)',
    'scratch': 'T from scratch, same tokens',
    'pruned_constant': 'T pruned (constant), before continued pre-training',
    'continued_constant': 'T pruned + continued (constant): ablation',
}


@dataclass(frozen=True)
class ScratchComparisonSettings(TrainingSettings):
    """The source stage trains S from scratch for ``source_batches`` and evaluates ``source_evaluations`` times (its
    curve shows where the loss levels off)."""

    source_batches: int
    source_evaluations: int


QUICK = ScratchComparisonSettings(
    seq_len=64, batch_size=8, eval_samples=8, max_docs_per_domain=40, source_batches=40, source_evaluations=2,
    pruning_batches=12, continued_batches=12, evaluations_per_stage=2, warmup_fraction=0.05,
)
FULL = ScratchComparisonSettings(
    seq_len=128, batch_size=16, eval_samples=32, max_docs_per_domain=None, source_batches=750, source_evaluations=10,
    pruning_batches=60, continued_batches=140, evaluations_per_stage=4, warmup_fraction=0.05,
)


def write_initial_model(folder: Path, vocab_size: int, tokenizer: LlamaTokenizerFast, **shape: int) -> Path:
    """A config (weights start random with ``pretrained: false``) and the tokenizer, as an HF folder."""
    llama_config(vocab_size, max_position_embeddings=1024, **shape).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def pruning_and_continued(
    settings: ScratchComparisonSettings, data_dir: Path, source_model: Path, run_dir: Path, seed: int,
    mix: Sequence[float], update: str, reference: str,
) -> tuple[TrainingRun, TrainingRun]:
    """Pruning S to T with ``update`` domain weights, then continued pre-training of the exported model from the
    domain weights pruning ended with (with ``constant``, the initial ``mix``)."""
    weights = (f'callbacks.dynamic_loading.update={update}', reference)
    pruning = pruning_run(
        settings, f'pruning ({update}, seed {seed})', source_model, data_dir, run_dir, seed, mix, TARGET_SHAPE, weights,
    )
    continued = continued_run(
        settings,
        f'continued pre-training ({update}, seed {seed})',
        pruning.final_model,
        data_dir,
        run_dir / 'continued_pretraining',
        settings.continued_batches,
        seed,
        mix,
        weights,
        pruning_dir=pruning.output_dir,
    )
    return pruning, continued


def loss_rows(results: dict[str, Any]) -> list[list[str]]:
    """Per model: each domain's loss and the mean over all eval tokens, as mean ± spread over the seeds."""
    rows = []
    for name, label in MODELS.items():
        per_seed = results['models'][name]
        cells = []
        for key in (*DOMAINS, 'all domains'):
            mean, spread = mean_and_spread(
                [evaluation['losses'][key] if key in DOMAINS else evaluation['mean_loss'] for evaluation in per_seed]
            )
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
    mean = {
        name: mean_and_spread([evaluation['mean_loss'] for evaluation in runs])
        for name, runs in results['models'].items()
    }
    tokens = results['settings']['tokens_small_model']
    seeds = len(results['seeds'])
    continued, scratch, constant = mean['continued'], mean['scratch'], mean['continued_constant']
    pruned, pruned_constant = mean['pruned'], mean['pruned_constant']
    return [
        f'Pruned + continued reaches a mean eval loss of {continued[0]:.3f} ± {continued[1]:.3f} against '
        f'{scratch[0]:.3f} ± {scratch[1]:.3f} for the same shape trained from scratch on the same {tokens:,} tokens '
        f"({seeds} seeds; mean ± half range): {compared(continued, scratch)} (the source model's own "
        f'training, {mean["source"][0]:.3f} at its end, is not counted in that budget).',
        f'With doremi domain weights the pruned + continued model reaches {continued[0]:.3f} ± {continued[1]:.3f}, '
        f'with constant weights {constant[0]:.3f} ± {constant[1]:.3f} (mean over all eval tokens): doremi is '
        f'{compared(continued, constant)}; right after pruning, before continued pre-training, doremi '
        f'{pruned[0]:.3f} ± {pruned[1]:.3f} against constant {pruned_constant[0]:.3f} ± {pruned_constant[1]:.3f} is '
        f'{compared(pruned, pruned_constant)}.',
    ]


def source_convergence(results: dict[str, Any]) -> str:
    """How far S's mean eval loss fell in all and over the last quarter of its training, from its eval curve."""
    tokens, losses = (np.array(values) for values in results['source_curve'])
    last_quarter = int(np.flatnonzero(tokens <= 0.75 * tokens[-1])[-1])
    whole_fall, late_fall = losses[0] - losses[-1], losses[last_quarter] - losses[-1]
    epochs = tokens[-1] / sum(results['training_tokens'].values())
    return (
        f"S's mean eval loss went from {losses[0]:.3f} at random initialisation to {losses[-1]:.3f} after "
        f'{int(tokens[-1]):,} tokens ({epochs:.2f} epochs of the training split); over its last '
        f'{int(tokens[-1] - tokens[last_quarter]):,} tokens it fell by {late_fall:.3f} nats, '
        f'{late_fall / whole_fall:.1%} of its whole fall.'
    )


def render_report(results: dict[str, Any]) -> str:
    """The report's markdown."""
    settings = results['settings']
    source, target = results['shapes']['source'], results['shapes']['target']
    lines = [
        '# Shearing vs training from scratch: a miniature Sheared-LLaMA experiment',
        '',
        'Data: the RedPajama sample (7 domains) tokenised with the Mistral-7B tokenizer (32000 pieces) into samples of '
        f'{settings["seq_len"]} tokens; {settings["eval_samples"]} eval samples per domain, from documents training '
        f'never reads. Batches of {settings["batch_size"]} samples ({settings["tokens_per_batch"]:,} tokens). Seeds '
        f'{", ".join(map(str, results["seeds"]))} (data order, mask sampling, initialisation from scratch); the source '
        f'model is trained once (seed {SOURCE_SEED}). Wall time {results["wall_seconds"] / 60:.1f} min.',
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
                [
                    'S (source)',
                    *(source[field] for field in report.SHAPE_HEADERS),
                    source['head_dim'],
                    f'{results["parameters"]["source"]:,}',
                    f'{settings["source_batches"]} batches from scratch '
                    f'({settings["source_batches"] * settings["tokens_per_batch"]:,} tokens)',
                ],
                [
                    'T (pruned, scratch)',
                    *(target[field] for field in report.SHAPE_HEADERS),
                    target['head_dim'],
                    f'{results["parameters"]["target"]:,}',
                    f'pruning {settings["pruning_batches"]} + continued {settings["continued_batches"]} batches; '
                    f'scratch {settings["pruning_batches"] + settings["continued_batches"]} batches '
                    f'({settings["tokens_small_model"]:,} tokens)',
                ],
            ],
        ),
        '',
        f"T keeps {results['parameters']['target'] / results['parameters']['source']:.1%} of S's non-embedding "
        'parameters; pruning learns masks over layers, attention heads, MLP channels and the hidden width. S, scratch '
        f'and pruning start from the natural mix of the {sum(results["training_tokens"].values()):,} training tokens, '
        'each domain in proportion to its tokens '
        f'({", ".join(f"{domain} {share:.3f}" for domain, share in results["mix"].items())}); S, scratch and the '
        "constant ablation keep it, doremi runs update it after each evaluation towards the reference losses, S's "
        'own per-domain eval losses, and continued pre-training starts from the domain weights its pruning run ended '
        'with. The pruned model is evaluated at the target shape (deterministic masks) while pruning.',
        '',
        '## The source model',
        '',
        source_convergence(results),
        '',
        *report.markdown_table(
            ['tokens', 'epochs', 'mean eval loss'],
            [
                [f'{tokens:,}', f'{tokens / sum(results["training_tokens"].values()):.2f}', f'{loss:.3f}']
                for tokens, loss in zip(*results['source_curve'])
            ],
        ),
        '',
        '![Eval loss of the source per domain](source_loss.png)',
        '',
        "S's eval loss per domain against its training batches (dotted: the loader's reference, its losses at "
        'random initialisation, which constant weights do not use).',
        '',
        '## Eval loss per domain',
        '',
        "Mean loss per predicted token (nats) on each domain's eval split; *all domains* is the mean over all eval "
        'tokens. Mean ± half the range over the seeds (S: one run).',
        '',
        *report.markdown_table(['model', *DOMAINS, 'all domains'], loss_rows(results)),
        '',
        '## Plots',
        '',
        '![Eval loss against tokens](loss_against_tokens.png)',
        '',
        'Mean eval loss over the domains against training tokens of the small model: pruning (masked model at the '
        'target shape) then continued pre-training, against the same shape from scratch; every seed.',
        '',
        '![Domain weights](domain_weights.png)',
        '',
        'Training domain weights (doremi) while pruning and in continued pre-training, set after each evaluation.',
        '',
        *stages_and_commands(results),
    ]
    return '\n'.join(lines)


def run_experiment(
    output_dir: Path, settings: ScratchComparisonSettings, seeds: Sequence[int], command: str, data: Path = DATA,
    tokenizer_path: Path = TOKENIZER,
) -> Path:
    """Every stage into ``output_dir`` (new or empty); return the report folder."""
    check_empty(output_dir)
    started = time.monotonic()
    commit, dirty = git_commit()
    output_dir.mkdir(parents=True, exist_ok=True)
    ledger = StageLedger(output_dir / 'stages.jsonl', commit)
    data_dir = output_dir / 'data'
    train_tokens = prepare_domains(ledger, settings, data, tokenizer_path, data_dir)
    mix = natural_mix(train_tokens)
    tokenizer = LlamaTokenizerFast(vocab_file=str(tokenizer_path), legacy=False)
    vocab_size = len(tokenizer)
    source_shape = ModelShape.from_config(llama_config(vocab_size, **SOURCE_SHAPE))
    target_shape = source_shape.with_target(TARGET_SHAPE)
    target_config = target_shape.config_updates()

    source_init = write_initial_model(output_dir / 'source_init', vocab_size, tokenizer, **SOURCE_SHAPE)
    source = scratch_run(
        settings, 'source', source_init, data_dir, output_dir / 'source', settings.source_batches, SOURCE_SEED, mix,
        settings.source_evaluations,
    )
    ledger.train(source)
    source_losses = evaluate(source.final_model, data_dir, source.output_dir / 'losses.json')
    reference = reference_override(source_losses['losses'])

    evaluations: dict[str, list[dict[str, Any]]] = {name: [] for name in MODELS}
    evaluations['source'].append(source_losses)
    runs_by_seed: dict[int, dict[str, TrainingRun]] = {}
    for seed in seeds:
        seed_dir = output_dir / f'seed_{seed}'
        doremi, constant = (
            pruning_and_continued(
                settings, data_dir, source.final_model, seed_dir / update, seed, mix, update, reference
            )
            for update in ('doremi', 'constant')
        )
        scratch_init = write_initial_model(seed_dir / 'scratch_init', vocab_size, tokenizer, **target_config)
        scratch = scratch_run(
            settings,
            f'scratch (seed {seed})',
            scratch_init,
            data_dir,
            seed_dir / 'scratch',
            settings.small_model_batches,
            seed,
            mix,
        )
        named = dict(
            zip(
                ('pruned', 'continued', 'pruned_constant', 'continued_constant', 'scratch'),
                (*doremi, *constant, scratch),
            )
        )
        for name, run in named.items():
            evaluations[name].append(evaluate(ledger.train(run), data_dir, run.output_dir / 'losses.json'))
        runs_by_seed[seed] = named

    for runs in evaluations.values():
        for evaluation in runs:
            evaluation['mean_loss'] = mean_loss(evaluation)
    check_target_shape(evaluations, target_shape, [name for name in MODELS if name != 'source'])

    results: dict[str, Any] = {
        'command': command,
        'commit': commit,
        'dirty': dirty,
        'seeds': list(seeds),
        'training_tokens': train_tokens,
        'mix': dict(zip(DOMAINS, mix)),
        'settings': settings.recorded(),
        'shapes': {'source': source_shape.config_updates(), 'target': target_config},
        'parameters': {
            'source': source_shape.num_non_embedding_params(),
            'target': target_shape.num_non_embedding_params(),
        },
        'models': evaluations,
        'stages': ledger.stages,
        'stage_commands': [source.command, *(run.command for named in runs_by_seed.values() for run in named.values())],
    }

    curves: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for named in runs_by_seed.values():
        curves.setdefault('pruned + continued (doremi)', []).append(
            runs_curve([named['pruned'], named['continued']], settings.tokens_per_batch)
        )
        curves.setdefault('pruned + continued (constant)', []).append(
            runs_curve([named['pruned_constant'], named['continued_constant']], settings.tokens_per_batch),
        )
        curves.setdefault('scratch', []).append(runs_curve([named['scratch']], settings.tokens_per_batch))
    results['curves'] = curves_as_lists(curves)
    source_metrics = source.metrics()
    results['source_curve'] = [values.tolist() for values in eval_curve(source_metrics, settings.tokens_per_batch)]
    doremi_metrics = [run.metrics() for named in runs_by_seed.values() for run in (named['pruned'], named['continued'])]
    return write_results(output_dir, results, started, render_report, {
        'source_loss.png': report.plot_domain_losses([source_metrics], DOMAINS),
        'loss_against_tokens.png': plot_loss_against_tokens(curves),
        'domain_weights.png': report.plot_domain_weights(doremi_metrics, DOMAINS),
    })


def main(argv: Sequence[str] | None = None) -> None:
    """Run the experiment from the command line and print the report."""
    parser = experiment_parser(
        __doc__.split('\n\n')[0], __spec__.name, 'fewer documents, shorter samples and fewer batches'
    )
    parser.add_argument(
        '--seeds', type=int, nargs='+', default=[1, 2], help='seeds of the pruning, continued and scratch runs'
    )
    parser.add_argument(
        '--tokenizer',
        type=Path,
        default=TOKENIZER,
        help='SentencePiece tokenizer.model (default: ../shared Mistral-7B)',
    )
    args = parser.parse_args(argv)
    output_dir, command = start(args, __spec__.name, argv)
    print_report(
        run_experiment(output_dir, QUICK if args.quick else FULL, args.seeds, command, args.data, args.tokenizer)
    )


if __name__ == '__main__':
    main()
