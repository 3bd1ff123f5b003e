"""The whole Sheared-LLaMA pipeline on one CPU, offline, on text already on this machine.

1. A corpus of three domains: ``code`` (the Python standard library's modules), ``reference`` (the language
   reference that ships with the standard library in ``pydoc_data``) and ``docs`` (the long descriptions of
   the installed packages), prepared as MDS shards with a byte-level tokenizer.
2. A small Llama pre-trained on it from scratch (``yamls/tiny/source.yaml``).
3. The source pruned to a smaller shape with dynamic batch loading (``yamls/tiny/pruning.yaml``), which writes
   the pruned model when it ends.
4. Continued pre-training of the pruned model (``yamls/tiny/continued_pretraining.yaml``), starting from the
   domain weights pruning ended with (``callbacks.dynamic_loading.initial_proportions``).
5. Per-domain eval losses of the three models, and a report folder with a summary and plots.

The console shows one line per stage: a progress bar, the wall time and the stage's key figure. Each stage's
whole log is in ``OUTPUT/<stage>/log.txt``; ``verbose`` shows it on the console as well. ``llmshearing demo`` runs it.

Both dynamic-loading stages take the source model's per-domain eval losses as reference losses.
"""

from __future__ import annotations

import email
import json
import logging
import pydoc_data.topics
import random
import shlex
import sys
import sysconfig
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llmshearing import report
from llmshearing.checks import ParameterError
from llmshearing.data.prepare import prepare_data
from llmshearing.data.reference_loss import evaluate_domain_losses
from llmshearing.pruning.export import masked_model_from_checkpoint
from llmshearing.resources import recipe_path
from llmshearing.stage_console import Stage, console_stage, register_stage_progress
from llmshearing.toy import byte_level_tokenizer, llama_config

log = logging.getLogger(__name__)

RECIPES = 'tiny'
"""The recipes the demo trains with, in ``yamls/`` (``llmshearing/recipes/`` when installed)."""
STAGES = 5
DOMAINS = ('code', 'reference', 'docs')
SEQ_LEN = 64
EVAL_BATCH_SIZE = 8
FILES_PER_DOMAIN = 4
MAX_DOCUMENT_CHARACTERS = 20_000
MIN_CHARACTERS_PER_DOMAIN = 200_000
MIN_README_CHARACTERS = 1_000
CORPUS_SEED = 0
TORCH_THREADS = 1
"""The toy models' matrices are too small to gain from a second thread; on a busy machine a second thread that
waits for a core makes every operation several times slower."""
FINAL_MODEL = Path('huggingface') / 'final'


@dataclass(frozen=True)
class DemoSettings:
    """How much text and how many training batches one demo run uses."""

    max_characters_per_domain: int
    eval_samples: int
    source_batches: int
    pruning_batches: int
    continued_batches: int
    evaluations_per_stage: int


QUICK = DemoSettings(
    max_characters_per_domain=MIN_CHARACTERS_PER_DOMAIN,
    eval_samples=32,
    source_batches=240,
    pruning_batches=60,
    continued_batches=60,
    evaluations_per_stage=4,
)
FULL = DemoSettings(
    max_characters_per_domain=1_000_000,
    eval_samples=128,
    source_batches=2000,
    pruning_batches=600,
    continued_batches=600,
    evaluations_per_stage=10,
)


def standard_library() -> Path:
    """The running interpreter's standard library folder."""
    return Path(sysconfig.get_paths()['stdlib'])


def package_folders() -> list[Path]:
    """The folders on ``sys.path`` that hold installed packages (``*.dist-info``), in ``sys.path`` order: the
    environment's site-packages, and any other a wheel's dependencies may live in."""
    folders = dict.fromkeys(Path(entry) for entry in sys.path if entry)
    return [folder for folder in folders if folder.is_dir() and any(folder.glob('*.dist-info'))]


def code_documents() -> Iterator[str]:
    """The standard library's top-level ``.py`` modules."""
    for path in sorted(standard_library().glob('*.py')):
        yield path.read_text(encoding='utf-8', errors='replace')


def reference_documents() -> Iterator[str]:
    """The topics of the language reference that ships with the standard library (``pydoc_data.topics``)."""
    for topic in sorted(pydoc_data.topics.topics):
        yield pydoc_data.topics.topics[topic]


def docs_documents() -> Iterator[str]:
    """The long descriptions (READMEs) in the ``*.dist-info/METADATA`` of the installed packages, each package
    once (the first on ``sys.path``)."""
    seen = set()
    for folder in package_folders():
        for path in sorted(folder.glob('*.dist-info/METADATA')):
            if path.parent.name in seen:
                continue
            seen.add(path.parent.name)
            metadata = email.message_from_string(path.read_text(encoding='utf-8', errors='replace'))
            description = metadata.get_payload() or metadata.get('Description') or ''
            if len(description) >= MIN_README_CHARACTERS:
                yield description


@dataclass(frozen=True)
class CorpusDomain:
    """A domain of the demo corpus: where its text comes from and how to read it."""

    name: str
    origin: str
    documents: Callable[[], Iterator[str]]


CORPUS = (
    CorpusDomain('code', f'the .py modules of the standard library in {standard_library()}', code_documents),
    CorpusDomain('reference', 'the language reference in pydoc_data.topics', reference_documents),
    CorpusDomain('docs', 'package READMEs in the *.dist-info/METADATA of the packages on sys.path', docs_documents),
)


def domain_texts(domain: CorpusDomain, max_characters: int) -> list[str]:
    """The domain's documents in a fixed shuffled order, each cut to ``MAX_DOCUMENT_CHARACTERS``, until about
    ``max_characters``. Raises ``ValueError`` if this machine has less than ``MIN_CHARACTERS_PER_DOMAIN`` of them."""
    documents = [text[:MAX_DOCUMENT_CHARACTERS] for text in domain.documents() if text.strip()]
    random.Random(CORPUS_SEED).shuffle(documents)
    available = sum(len(text) for text in documents)
    if available < MIN_CHARACTERS_PER_DOMAIN:
        raise ValueError(
            f'demo corpus: domain {domain.name!r} ({domain.origin}) has {available} characters of text on this '
            f'machine; the demo needs at least {MIN_CHARACTERS_PER_DOMAIN}'
        )
    texts, total = [], 0
    for text in documents:
        if total >= max_characters:
            break
        texts.append(text)
        total += len(text)
    return texts


def write_domain_jsonl(folder: Path, texts: Sequence[str], num_files: int) -> None:
    """Write ``texts`` as ``{"text": ...}`` lines in order over ``num_files`` files of about equal size."""
    folder.mkdir(parents=True)
    total = sum(len(text) for text in texts)
    files = [(folder / f'part-{index}.jsonl').open('w', encoding='utf-8') for index in range(num_files)]
    try:
        start = 0
        for text in texts:
            files[min(start * num_files // total, num_files - 1)].write(json.dumps({'text': text}) + '\n')
            start += len(text)
    finally:
        for file in files:
            file.close()


def write_corpus_domain(corpus_dir: Path, domain: CorpusDomain, max_characters: int) -> None:
    """Write ``domain`` as ``corpus_dir/<domain>/part-N.jsonl``."""
    texts = domain_texts(domain, max_characters)
    write_domain_jsonl(corpus_dir / domain.name, texts, FILES_PER_DOMAIN)
    characters = sum(len(text) for text in texts)
    log.info('domain %r: %d documents, %d characters, from %s', domain.name, len(texts), characters, domain.origin)


@dataclass(frozen=True)
class TrainingStage:
    """One run of a tiny recipe: it trains ``model_path`` on ``data_dir`` for ``batches``, evaluating at the start
    and ``evaluations`` times after, saving one checkpoint at the end and its model to ``final_model``."""

    name: str
    yaml_name: str
    model_path: Path
    data_dir: Path
    output_dir: Path
    batches: int
    evaluations: int
    extra_overrides: tuple[str, ...] = ()

    @property
    def yaml(self) -> Path:
        return recipe_path(f'{RECIPES}/{self.yaml_name}')

    @property
    def overrides(self) -> list[str]:
        return [
            f'variables.model_path={self.model_path}',
            f'variables.data_local={self.data_dir}',
            f'variables.output_dir={self.output_dir}',
            f'max_duration={self.batches}ba',
            f'eval_interval={max(self.batches // self.evaluations, 1)}ba',
            'eval_first=true',
            f'save_interval={self.batches}ba',
            *self.extra_overrides,
        ]

    @property
    def final_model(self) -> Path:
        return self.output_dir / FINAL_MODEL

    @property
    def metrics_file(self) -> Path:
        return self.output_dir / 'metrics.jsonl'

    @property
    def losses_file(self) -> Path:
        return self.output_dir / 'losses.json'

    @property
    def commands(self) -> list[str]:
        """The training and the evaluation as commands (training from the repository root)."""
        return [
            shlex.join(['composer', 'train.py', f'yamls/{RECIPES}/{self.yaml_name}', *self.overrides]),
            shlex.join([
                'llmshearing', 'reference-loss', 'eval', str(self.final_model), str(self.data_dir), '--out',
                str(self.losses_file), '--domains', ','.join(DOMAINS), '--batch-size', str(EVAL_BATCH_SIZE),
            ]),
        ]

    def run(self) -> dict[str, Any]:
        """Check the config as ``train.py`` does, train (advancing the console stage's bar at every batch), then
        write the final model's per-domain eval losses to ``losses_file`` and return them."""
        from llmfoundry.command_utils import train

        from llmshearing.preflight import check_train_config, load_train_config

        config = load_train_config(self.yaml, [*self.overrides, f'callbacks.{register_stage_progress()}={{}}'])
        check_train_config(config)
        train(config).close()
        losses = evaluate_domain_losses(self.final_model, self.data_dir, DOMAINS, batch_size=EVAL_BATCH_SIZE)
        self.losses_file.write_text(json.dumps(losses, indent=2) + '\n')
        return losses


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run torch operations on ``count`` threads inside the block."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def reference_override(losses: dict[str, float]) -> str:
    """``callbacks.dynamic_loading.reference=[...]``: ``losses`` in the order of ``DOMAINS``."""
    return 'callbacks.dynamic_loading.reference=[' + ','.join(f'{losses[domain]:.6f}' for domain in DOMAINS) + ']'


def run_demo(output_dir: str | Path, quick: bool = False, verbose: bool = False) -> Path:
    """Run every stage into ``output_dir`` (which must be new or empty); return the report folder. The console
    shows one line per stage (``verbose``: everything each stage logs and prints as well)."""
    output_dir = Path(output_dir)
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        raise ParameterError('output_dir', f'{output_dir} exists and is not empty: choose a new or empty folder')
    output_dir = output_dir.resolve()
    command = shlex.join(['llmshearing', 'demo', *(['--quick'] if quick else []), '--output', str(output_dir)])
    with torch_threads(TORCH_THREADS):
        return run_stages(output_dir, QUICK if quick else FULL, command, verbose)


def run_stages(output_dir: Path, settings: DemoSettings, command: str, verbose: bool = False) -> Path:
    """The demo's stages, into ``output_dir``, each one line on the console with its log in ``<stage>/log.txt``
    (``verbose``: everything on the console as well); ``command`` is how the report says it was run."""
    started = time.monotonic()
    corpus_dir, data_dir, tokenizer_dir = output_dir / 'corpus', output_dir / 'data', output_dir / 'tokenizer'
    evaluations = settings.evaluations_per_stage

    def demo_stage(index: int, label: str, folder: Path, total: int, unit: str) -> AbstractContextManager[Stage]:
        return console_stage(f'[{index}/{STAGES}] {label}', folder, total, unit, verbose)

    with demo_stage(1, 'corpus, prepared as MDS shards', corpus_dir, len(CORPUS) + 1, 'steps') as current:
        log.info('corpus: %s, at most about %d characters each', ', '.join(DOMAINS), settings.max_characters_per_domain)
        for domain in CORPUS:
            write_corpus_domain(corpus_dir, domain, settings.max_characters_per_domain)
            current.bar.update(1)
        tokenizer = byte_level_tokenizer()
        tokenizer.save_pretrained(tokenizer_dir)
        manifest = prepare_data(
            corpus_dir, data_dir, tokenizer_dir, SEQ_LEN, eval_samples=settings.eval_samples, domains=DOMAINS,
        )
        current.bar.update(1)
        train_tokens, eval_tokens = (
            sum(split['tokens'] for split in manifest[split_name].values()) for split_name in ('train', 'eval')
        )
        current.figure = f'{train_tokens:,} train and {eval_tokens:,} eval tokens'
    prepare_command = shlex.join([
        'llmshearing', 'prepare-data', str(corpus_dir), str(data_dir), '--tokenizer', str(tokenizer_dir),
        '--seq-len', str(SEQ_LEN), '--eval-samples', str(settings.eval_samples), '--domains', ','.join(DOMAINS),
    ])

    init_dir = output_dir / 'source' / 'init'
    source = TrainingStage(
        'source', 'source.yaml', init_dir, data_dir, output_dir / 'source', settings.source_batches, evaluations,
    )
    with demo_stage(2, 'source model, trained from scratch', source.output_dir, source.batches, 'batches') as current:
        llama_config(len(tokenizer)).save_pretrained(init_dir)
        tokenizer.save_pretrained(init_dir)
        source_model = report.ModelSummary.from_evaluation('source', source.run())
        current.figure = f'eval loss {source_model.mean_loss:.3f}'

    # Both dynamic-loading stages aim at the source model's per-domain losses.
    reference = reference_override(source_model.losses)
    pruning_dir = output_dir / 'pruning'
    pruning = TrainingStage(
        'pruning', 'pruning.yaml', source.final_model, data_dir, pruning_dir, settings.pruning_batches, evaluations,
        (
            f'algorithms.shearing.lagrangian_warmup={max(settings.pruning_batches // 3, 1)}ba',
            f'algorithms.shearing.export_dir={pruning_dir / FINAL_MODEL}',
            'algorithms.shearing.export_dtype=fp32',
            reference,
        ),
    )
    with demo_stage(3, 'pruning + dynamic batch loading', pruning_dir, pruning.batches, 'batches') as current:
        pruned_model = report.ModelSummary.from_evaluation('pruned', pruning.run())
        kept = ', '.join(f'{report.SHAPE_HEADERS[name]} {size}' for name, size in pruned_model.shape.items())
        current.figure = f'kept {kept}; eval loss {pruned_model.mean_loss:.3f}'

    continued = TrainingStage(
        'continued pre-training', 'continued_pretraining.yaml', pruning.final_model, data_dir,
        output_dir / 'continued_pretraining', settings.continued_batches, evaluations,
        (reference, f'callbacks.dynamic_loading.initial_proportions={pruning_dir}'),
    )
    label = 'continued pre-training + dynamic loading'
    with demo_stage(4, label, continued.output_dir, continued.batches, 'batches') as current:
        continued_model = report.ModelSummary.from_evaluation('continued', continued.run())
        current.figure = f'eval loss {continued_model.mean_loss:.3f}'

    report_dir = output_dir / 'report'
    with demo_stage(5, 'report', report_dir, 1, 'steps') as current:
        masked_model, _ = masked_model_from_checkpoint(pruning_dir / 'checkpoints')
        stages = (source, pruning, continued)
        report.write_report(
            report_dir,
            corpus={domain.name: domain.origin for domain in CORPUS},
            models=[source_model, pruned_model, continued_model],
            stages=[report.StageMetrics.from_log(stage.name, stage.metrics_file) for stage in stages],
            masks=masked_model.l0_module.deterministic_masks(),
            commands=[command, prepare_command, *(line for stage in stages for line in stage.commands)],
            wall_seconds=time.monotonic() - started,
        )
        current.bar.update(1)
        current.figure = f'{report_dir / "README.md"} (the demo took {time.monotonic() - started:.0f} s)'
    return report_dir
