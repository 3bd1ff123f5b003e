"""The demo's report: a markdown summary and PNG plots of a source → pruned → continued run.

The inputs are the ``jsonl`` metrics log of each training stage, the per-domain eval losses of each model
(``evaluate_domain_losses``) and the final pruning masks. The plot functions are pure: data in, a
matplotlib ``Figure`` out (rendered with Agg when saved, no pyplot state).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from transformers import AutoConfig

from llmshearing.choices import TARGET_FIELDS
from llmshearing.loggers import read_metrics
from llmshearing.pruning.l0_module import StructureMasks
from llmshearing.pruning.shape import ModelShape
from llmshearing.tables import markdown_table

Series = list[tuple[int, float | None]]

LOSS_PREFIX = 'dynamic_loading/loss/'
REFERENCE_PREFIX = 'dynamic_loading/reference/'
PROPORTION_PREFIX = 'dynamic_loading/proportion/'
EXPECTED_SPARSITY_PREFIX = 'shearing/expected_sparsity/'
TARGET_SPARSITY_PREFIX = 'shearing/target_sparsity/'
PLOTS = {
    'domain_losses.png': 'Eval loss per domain over each stage (dotted: the reference losses of dynamic batch loading; '
    'the source stage keeps its domain weights fixed)',
    'domain_weights.png': 'Training domain weights over each stage (set after each evaluation)',
    'sparsity.png': 'Expected sparsity per mask kind while pruning (dashed: the warmed-up target)',
    'kept_structures.png': 'Attention heads and MLP channels kept per layer by the final masks',
}
SHAPE_HEADERS = {
    'hidden_size': 'hidden',
    'num_attention_heads': 'heads',
    'num_key_value_heads': 'kv heads',
    'intermediate_size': 'MLP',
    'num_hidden_layers': 'layers',
}


@dataclass(frozen=True)
class ModelSummary:
    """A model's shape, parameter counts and per-domain eval losses."""

    name: str
    path: str
    shape: dict[str, int]
    parameters: int
    non_embedding_parameters: int
    losses: dict[str, float]
    tokens: dict[str, int]

    @classmethod
    def from_evaluation(cls, name: str, evaluation: dict[str, Any]) -> ModelSummary:
        """From what ``evaluate_domain_losses`` returns (the shape is read from the model's config)."""
        shape = ModelShape.from_config(AutoConfig.from_pretrained(evaluation['model']))
        return cls(
            name=name,
            path=evaluation['model'],
            shape={field: getattr(shape, field) for field in TARGET_FIELDS},
            parameters=evaluation['parameters'],
            non_embedding_parameters=shape.num_non_embedding_params(),
            losses=dict(evaluation['losses']),
            tokens=dict(evaluation['tokens']),
        )

    @property
    def mean_loss(self) -> float:
        """The loss over all domains' eval tokens together."""
        total_tokens = sum(self.tokens.values())
        return sum(self.losses[domain] * self.tokens[domain] for domain in self.losses) / total_tokens


@dataclass(frozen=True)
class StageMetrics:
    """The metrics a training stage logged: name -> [(batch, value), ...]."""

    name: str
    metrics: dict[str, Series]

    @classmethod
    def from_log(cls, name: str, path: str | Path) -> StageMetrics:
        return cls(name, read_metrics(path))

    @property
    def batches(self) -> int:
        """The last batch the stage logged."""
        return max(batch for series in self.metrics.values() for batch, _ in series)

    def series(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Batches and values of one metric, without the non-finite values the logger stored as null."""
        points = [(batch, value) for batch, value in self.metrics.get(name, []) if value is not None]
        return np.array([batch for batch, _ in points]), np.array([value for _, value in points])

    def final(self, name: str) -> float:
        """The last finite value of a metric."""
        _, values = self.series(name)
        if not len(values):
            raise ValueError(f'stage {self.name!r} logged no finite value of {name}')
        return float(values[-1])


def _stage_axes(stages: Sequence[StageMetrics], title: str) -> tuple[Figure, list[Axes]]:
    figure = Figure(figsize=(4.2 * len(stages), 3.8), layout='constrained')
    axes = list(figure.subplots(1, len(stages), squeeze=False)[0])
    figure.suptitle(title)
    for axis, stage in zip(axes, stages):
        axis.set_title(stage.name)
        axis.set_xlabel('batch')
        axis.grid(alpha=0.3)
    return figure, axes


def plot_domain_losses(stages: Sequence[StageMetrics], domains: Sequence[str]) -> Figure:
    """Per stage, each domain's eval loss over batches, with its reference loss dotted."""
    figure, axes = _stage_axes(stages, 'Eval loss per domain')
    for axis, stage in zip(axes, stages):
        for index, domain in enumerate(domains):
            color = f'C{index}'
            batches, losses = stage.series(LOSS_PREFIX + domain)
            axis.plot(batches, losses, marker='o', color=color, label=domain)
            reference_batches, references = stage.series(REFERENCE_PREFIX + domain)
            axis.plot(reference_batches, references, linestyle=':', color=color)
        axis.set_ylabel('loss (nats per token)')
    axes[0].legend()
    return figure


def plot_domain_weights(stages: Sequence[StageMetrics], domains: Sequence[str]) -> Figure:
    """Per stage, each domain's training proportion, a step after each evaluation."""
    figure, axes = _stage_axes(stages, 'Domain weights')
    for axis, stage in zip(axes, stages):
        for index, domain in enumerate(domains):
            batches, proportions = stage.series(PROPORTION_PREFIX + domain)
            axis.step(batches, proportions, where='post', marker='o', color=f'C{index}', label=domain)
        axis.set_ylim(0, 1)
        axis.set_ylabel('proportion of training samples')
    axes[0].legend()
    return figure


def sparsity_kinds(stage: StageMetrics) -> list[str]:
    """The mask kinds whose expected sparsity the stage logged."""
    prefix = EXPECTED_SPARSITY_PREFIX
    return sorted(name.removeprefix(prefix) for name in stage.metrics if name.startswith(prefix))


def plot_sparsity(stage: StageMetrics) -> Figure:
    """Per mask kind, its expected sparsity over the batches of a pruning stage and its target (dashed)."""
    kinds = sparsity_kinds(stage)
    figure = Figure(figsize=(3.4 * len(kinds), 3.4), layout='constrained')
    axes = figure.subplots(1, len(kinds), sharey=True, squeeze=False)[0]
    for axis, kind in zip(axes, kinds):
        axis.plot(*stage.series(EXPECTED_SPARSITY_PREFIX + kind), label='expected')
        axis.plot(*stage.series(TARGET_SPARSITY_PREFIX + kind), linestyle='--', color='black', label='target')
        axis.set(title=kind, xlabel='batch')
        axis.grid(alpha=0.3)
    axes[0].set_ylabel('sparsity')
    axes[0].legend()
    figure.suptitle(f'Expected sparsity per mask kind ({stage.name})')
    return figure


@dataclass(frozen=True)
class LayerKept:
    """What the final masks keep of one layer."""

    layer: int
    kept: bool
    heads: int
    channels: int

    @property
    def label(self) -> str:
        return f'layer {self.layer}' + ('' if self.kept else ' (removed)')


def kept_per_layer(masks: StructureMasks) -> list[LayerKept]:
    """Per source layer: whether the layer stays, its attention heads and MLP channels kept (non-zero masks).
    ``masks`` must have head and MLP channel masks."""
    heads = (masks.query_heads != 0).sum(-1).tolist()
    channels = (masks.intermediate != 0).sum(-1).tolist()
    layers = (masks.layer != 0).tolist() if masks.layer is not None else [True] * len(heads)
    return [
        LayerKept(index, bool(kept), int(head), int(channel))
        for index, (kept, head, channel) in enumerate(zip(layers, heads, channels))
    ]


def plot_kept_structures(masks: StructureMasks) -> Figure:
    """Which attention heads and MLP channels of each layer the final masks keep; removed layers pale."""
    layers = kept_per_layer(masks)
    removed = [not layer.kept for layer in layers]
    figure = Figure(figsize=(11, 1.2 + 0.55 * len(layers)), layout='constrained')
    axes = figure.subplots(1, 2, width_ratios=[1, 3])
    panels = (
        (axes[0], 'attention heads', 'head', masks.query_heads, [layer.heads for layer in layers]),
        (axes[1], 'MLP channels', 'channel', masks.intermediate, [layer.channels for layer in layers]),
    )
    for axis, title, unit, mask, counts in panels:
        kept = (mask != 0).float().numpy()
        kept[removed] *= 0.35
        axis.imshow(kept, aspect='auto', cmap='Greens', vmin=0, vmax=1, interpolation='nearest')
        axis.set_yticks(range(len(layers)), [layer.label for layer in layers])
        axis.set_xlabel(f'{unit} index')
        axis.set_title(f'{title} kept per layer: {", ".join(map(str, counts))} of {mask.shape[-1]}')
    figure.suptitle('Kept by the final masks (dark: kept; pale: in a removed layer)')
    return figure


def plot_task_accuracies(scores: Mapping[str, Mapping[str, float]], chance: Mapping[str, float]) -> Figure:
    """Grouped bars: per task (and the average), one bar per model; chance levels dashed.

    ``scores`` maps a model label to {task title: accuracy in [0, 1]}; ``chance`` maps task titles to 1 / choices.
    """
    models = list(scores)
    tasks = list(next(iter(scores.values())))
    width = 0.8 / len(models)
    figure = Figure(figsize=(1.2 + 1.1 * len(tasks) + 0.3 * len(models), 4.2), layout='constrained')
    axis = figure.subplots()
    positions = np.arange(len(tasks))
    for index, model in enumerate(models):
        offsets = positions - 0.4 + width * (index + 0.5)
        axis.bar(offsets, [100 * scores[model][task] for task in tasks], width, label=model, color=f'C{index}')
    for position, task in zip(positions, tasks):
        if task in chance:
            axis.hlines(100 * chance[task], position - 0.45, position + 0.45, colors='black', linestyles='dashed')
    axis.set_xticks(positions, tasks, rotation=20)
    axis.set_ylabel('accuracy (%)')
    axis.set_ylim(0, 100)
    axis.grid(axis='y', alpha=0.3)
    axis.legend(fontsize='small')
    axis.set_title('Downstream accuracy per task (dashed: chance)')
    return figure


def render_readme(
    corpus: Mapping[str, str],
    models: Sequence[ModelSummary],
    stages: Sequence[StageMetrics],
    masks: StructureMasks,
    commands: Sequence[str],
    wall_seconds: float,
) -> str:
    """The report's markdown: the corpus, shapes and parameter counts, per-domain losses, stages, kept structures,
    plots, commands. ``corpus`` says where each domain's text came from."""
    domains = list(models[0].losses)
    lines = [
        '# Sheared-LLaMA demo',
        '',
        f'A source model trained from scratch, pruned with dynamic batch loading and continued-pre-trained, '
        f'in {wall_seconds:.0f} s of wall time. The corpus:',
        '',
        *(f'- {domain}: {origin}' for domain, origin in corpus.items()),
        '',
        '## Models',
        '',
        *markdown_table(
            ['model', *SHAPE_HEADERS.values(), 'parameters', 'non-embedding parameters', 'folder'],
            [
                [model.name, *(model.shape[field] for field in SHAPE_HEADERS), f'{model.parameters:,}',
                 f'{model.non_embedding_parameters:,}', f'`{model.path}`']
                for model in models
            ],
        ),
        '',
        '## Eval loss per domain',
        '',
        'Mean loss per predicted token (nats) on each domain\'s eval split; *pruned* is the pruned model before '
        'continued pre-training. Eval tokens per domain: '
        + ', '.join(f'{domain} {models[0].tokens[domain]:,}' for domain in domains) + '.',
        '',
        *markdown_table(
            ['model', *domains, 'all domains'],
            [
                [model.name, *(f'{model.losses[domain]:.4f}' for domain in domains), f'{model.mean_loss:.4f}']
                for model in models
            ],
        ),
        '',
        '## Training stages',
        '',
        *markdown_table(
            ['stage', 'batches', *(f'final weight: {domain}' for domain in domains)],
            [
                [stage.name, stage.batches, *(f'{stage.final(PROPORTION_PREFIX + domain):.3f}' for domain in domains)]
                for stage in stages
            ],
        ),
        '',
        '## Kept per layer by the final masks',
        '',
        *markdown_table(
            ['layer', 'kept', 'attention heads', 'MLP channels'],
            [
                [layer.layer, 'yes' if layer.kept else 'no', layer.heads, layer.channels]
                for layer in kept_per_layer(masks)
            ],
        ),
        '',
        '## Plots',
        '',
    ]
    for file_name, caption in PLOTS.items():
        lines += [f'![{Path(file_name).stem.replace("_", " ")}]({file_name})', '', caption + '.', '']
    lines += [
        '## Commands',
        '',
        'The demo, then each of its stages as one command (training from the repository root):',
        '',
        '```',
        *commands,
        '```',
        '',
    ]
    return '\n'.join(lines)


def write_report(
    report_dir: str | Path,
    corpus: Mapping[str, str],
    models: Sequence[ModelSummary],
    stages: Sequence[StageMetrics],
    masks: StructureMasks,
    commands: Sequence[str],
    wall_seconds: float,
) -> Path:
    """Write ``README.md`` and the ``PLOTS`` to ``report_dir`` (see ``render_readme``); the sparsity plot shows the
    first stage that logged sparsities."""
    pruning = next((stage for stage in stages if sparsity_kinds(stage)), None)
    if pruning is None:
        raise ValueError(f'no stage of {[stage.name for stage in stages]} logged {EXPECTED_SPARSITY_PREFIX}* metrics')
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    domains = list(models[0].losses)
    figures = {
        'domain_losses.png': plot_domain_losses(stages, domains),
        'domain_weights.png': plot_domain_weights(stages, domains),
        'sparsity.png': plot_sparsity(pruning),
        'kept_structures.png': plot_kept_structures(masks),
    }
    for file_name, figure in figures.items():
        figure.savefig(report_dir / file_name, dpi=120)
    (report_dir / 'README.md').write_text(render_readme(corpus, models, stages, masks, commands, wall_seconds))
    return report_dir
