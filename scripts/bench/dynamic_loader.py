"""Samples per second of ``DynamicStreamingDataset`` against stock ``StreamingDataset``, and its state size.

Throughput: the same per-domain MDS shards (RedPajama's 7 domains at the paper's initial proportions,
``--seq-len`` uint16 tokens per sample), read through a ``DataLoader`` with ``num_workers`` 0 and 2. Stock
Streaming mixes the domains with ``Stream(proportion=...)`` over an epoch of the same size, shuffled (py1e),
and its batches are collated to the same int64 tensors. Each figure is the median of ``--rounds`` rounds,
run in turns (each loader first every other round); the ratio is the median of the rounds' ratios. A round
reads ``--batches`` batches from a fresh iterator (worker start included).

State size: the pickled ``state_dict`` after 10³ and 10⁶ samples of the sequence, with the same 10 proportion
changes (the sequence is advanced by ``sample_ids``, without reading the tokens).

    .venv/bin/python -m scripts.bench.dynamic_loader [--quick]
"""

from __future__ import annotations

import argparse
import logging
import pickle
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from streaming import MDSWriter, Stream, StreamingDataset
from torch.utils.data import DataLoader

from llmshearing.data import DynamicStreamingDataset
from llmshearing.data.dataloader import collate_domain_batch
from llmshearing.data.dynamic_dataset import token_example
from llmshearing.data.shared_memory import release_shared_memory
from scripts.bench.quick import parse_args

DOMAINS = ('arxiv', 'book', 'c4', 'cc', 'github', 'stackexchange', 'wiki')
PROPORTIONS = (0.025, 0.045, 0.15, 0.67, 0.045, 0.02, 0.045)


def write_domains(root: Path, samples_per_domain: int, seq_len: int) -> None:
    rng = np.random.default_rng(0)
    for name in DOMAINS:
        with MDSWriter(out=str(root / 'train' / name), columns={'tokens': 'ndarray:uint16', 'domain': 'str'}) as writer:
            for _ in range(samples_per_domain):
                writer.write({'tokens': rng.integers(0, 32000, seq_len, dtype=np.uint16), 'domain': name})


def collate_stock_batch(samples: list[dict]) -> dict[str, Any]:
    """The same batch as the dynamic loader's, from stock samples (token arrays and domain names)."""
    return collate_domain_batch(
        [token_example(sample['tokens'], DOMAINS.index(sample['domain']), None) for sample in samples],
    )


def samples_per_second(loader: DataLoader, num_batches: int) -> float:
    start = time.perf_counter()
    batches = iter(loader)
    for _ in range(num_batches):
        next(batches)
    elapsed = time.perf_counter() - start
    del batches
    return num_batches * loader.batch_size / elapsed


def throughput(root: Path, samples_per_domain: int, batch_size: int, num_batches: int, rounds: int) -> None:
    epoch_size = len(DOMAINS) * samples_per_domain
    for num_workers in (0, 2):
        # Fresh datasets for each setting: a dataset iterated in this process cannot be forked into workers.
        dynamic = DynamicStreamingDataset(
            local=str(root), domains=DOMAINS, proportions=PROPORTIONS, batch_size=batch_size, epoch_size=epoch_size,
            lookahead_batches=2 * num_workers,
        )
        stock = StreamingDataset(
            streams=[
                Stream(local=str(root / 'train' / name), proportion=share) for name, share in zip(DOMAINS, PROPORTIONS)
            ],
            batch_size=batch_size, epoch_size=epoch_size, shuffle=True,
        )
        options = dict(batch_size=batch_size, num_workers=num_workers, prefetch_factor=2 if num_workers else None)
        loaders = {
            'dynamic': DataLoader(dynamic, collate_fn=collate_domain_batch, **options),
            'stock': DataLoader(stock, collate_fn=collate_stock_batch, **options),
        }
        rates = {name: [] for name in loaders}
        for round_index in range(rounds):
            for name in sorted(loaders, reverse=bool(round_index % 2)):
                rates[name].append(samples_per_second(loaders[name], num_batches))
        ratios = [dynamic_rate / stock_rate for dynamic_rate, stock_rate in zip(rates['dynamic'], rates['stock'])]
        print(
            f'num_workers={num_workers}: dynamic {statistics.median(rates["dynamic"]):,.0f} samples/s, '
            f'stock {statistics.median(rates["stock"]):,.0f} samples/s (medians); dynamic / stock: median '
            f'{statistics.median(ratios):.2f} of rounds {", ".join(f"{ratio:.2f}" for ratio in ratios)}',
        )
        del loaders
        dynamic.close()
        release_shared_memory(stock)


def state_sizes(root: Path) -> None:
    """The state after 10³ and 10⁶ samples of the sequence (planned by ``sample_ids``, their tokens not read)."""
    dataset = DynamicStreamingDataset(local=str(root), domains=DOMAINS, proportions=PROPORTIONS, batch_size=250)
    rng = np.random.default_rng(1)
    for change in range(1, 11):
        dataset.set_proportions(rng.dirichlet(np.ones(len(DOMAINS))), samples_seen=50 * change)
    sample_ids = (sample_id for _ in iter(int, 1) for sample_id in dataset.sample_ids())
    planned = 0
    for checkpoint in (10**3, 10**6):
        for _ in range(checkpoint - planned):
            next(sample_ids)
        planned = checkpoint
        state = dataset.state_dict(num_samples=planned % dataset.samples_per_epoch, from_beginning=True)
        print(
            f'state after {planned:>9,} samples (epoch {state["epoch"]}, {len(state["schedule"])} schedule entries): '
            f'{len(pickle.dumps(state))} bytes pickled',
        )
    dataset.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--samples-per-domain', type=int, default=4000)
    parser.add_argument('--seq-len', type=int, default=2048)
    parser.add_argument('--batch-size', type=int, default=16)
    parser.add_argument('--batches', type=int, default=150)
    parser.add_argument('--rounds', type=int, default=7)
    args = parse_args(
        parser, {'samples_per_domain': 100, 'seq_len': 64, 'batch_size': 4, 'batches': 5, 'rounds': 1},
    )
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as work:
        write_domains(Path(work) / 'throughput', args.samples_per_domain, args.seq_len)
        print(
            f'{len(DOMAINS)} domains × {args.samples_per_domain:,} samples of {args.seq_len} tokens, '
            f'batches of {args.batch_size}'
        )
        throughput(Path(work) / 'throughput', args.samples_per_domain, args.batch_size, args.batches, args.rounds)
        write_domains(Path(work) / 'state', 500, 16)
        state_sizes(Path(work) / 'state')


if __name__ == '__main__':
    main()
