"""Does continued pre-training gain from starting at the domain weights pruning ended with?

On the output folder of a finished ``llmshearing demo``, continued pre-training of its pruned model runs again for
each seed (the order of the data), once from the domain weights pruning ended with
(``callbacks.dynamic_loading.initial_proportions``, what the demo does) and once from the recipe's initial mix, with
the demo's settings and reference losses. It prints each run's per-domain eval losses and, per start, the mean loss
over the domains for each seed.

    .venv/bin/llmshearing demo --output outputs/demo
    .venv/bin/python -m scripts.experiments.continued_initial_mix outputs/demo [--quick] [--seeds 1 2 3]
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from llmshearing.demo import (
    DOMAINS,
    FINAL_MODEL,
    FULL,
    QUICK,
    TORCH_THREADS,
    TrainingStage,
    reference_override,
    torch_threads,
)

log = logging.getLogger('continued_initial_mix')


def continued_runs(demo_dir: Path, quick: bool, seeds: Sequence[int]) -> dict[str, list[float]]:
    """Per start (``pruning_weights``, ``recipe_mix``), the mean eval loss over the domains of each seed's run."""
    settings = QUICK if quick else FULL
    source_losses = json.loads((demo_dir / 'source' / 'losses.json').read_text())['losses']
    starts = {
        'pruning_weights': (f'callbacks.dynamic_loading.initial_proportions={demo_dir / "pruning"}',),
        'recipe_mix': (),
    }
    means: dict[str, list[float]] = {}
    for start, overrides in starts.items():
        for seed in seeds:
            output_dir = demo_dir / 'continued_initial_mix' / f'{start}_seed{seed}'
            if output_dir.exists():
                raise FileExistsError(f'{output_dir} exists: remove {output_dir.parent} to run again')
            stage = TrainingStage(
                f'continued pre-training from {start}, seed {seed}', 'continued_pretraining.yaml',
                demo_dir / 'pruning' / FINAL_MODEL, demo_dir / 'data', output_dir, settings.continued_batches,
                settings.evaluations_per_stage, (reference_override(source_losses), f'seed={seed}', *overrides),
            )
            with torch_threads(TORCH_THREADS):
                losses = stage.run()['losses']
            print(f'{start} seed {seed}: ' + ', '.join(f'{domain} {losses[domain]:.4f}' for domain in DOMAINS))
            means.setdefault(start, []).append(float(np.mean([losses[domain] for domain in DOMAINS])))
    return means


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('demo_dir', type=Path, help='the output folder of a finished llmshearing demo')
    parser.add_argument('--quick', action='store_true', help='the demo ran with --quick')
    parser.add_argument('--seeds', type=int, nargs='+', default=[1, 2, 3], help='seeds of the continued runs')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    means = continued_runs(args.demo_dir.resolve(), args.quick, args.seeds)
    for start, values in means.items():
        print(
            f'{start}: mean eval loss over the domains {np.mean(values):.4f} '
            f'(seeds: {", ".join(f"{value:.4f}" for value in values)})'
        )


if __name__ == '__main__':
    main()
