"""DynamicStreamingDataset, DomainStreamingDataset and the ``dynamic_text`` loader on small MDS data made here.

Every sample's tokens are its code, ``domain * 10_000 + index in domain``, repeated, so a batch says which
samples it holds. Global sample ``g`` of a one-rank run is element ``g`` of the concatenated batches.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from llmfoundry import registry
from streaming import MDSWriter
from torch.utils.data import DataLoader

from llmshearing.data import DomainStreamingDataset, DynamicStreamingDataset, ProportionChange
from tests.streaming_memory import open_descriptors
from tests.two_ranks import WORLD_SIZE, join_group

DOMAINS = ('a', 'b', 'c')
SIZES = (400, 300, 60)
SEQ_LEN = 8
BATCH = 16
OLD = (0.6, 0.3, 0.1)
NEW = (0.1, 0.2, 0.7)
# Largest chi-square statistic accepted with 3 domains (2 degrees of freedom, where chi-square is exponential:
# P(X > x) = exp(-x / 2)) at significance 1e-6.
CHI_SQUARE_BOUND = -2 * math.log(1e-6)


def code(domain: int, index: int) -> int:
    return domain * 10_000 + index


def write_domains(folder: Path, sizes: Sequence[int] = SIZES, dtype: str = 'uint16', seq_len: int = SEQ_LEN) -> Path:
    """One MDS folder per domain under ``folder``, several shards each."""
    for domain, (name, size) in enumerate(zip(DOMAINS, sizes)):
        with MDSWriter(
            out=str(folder / name), columns={'tokens': f'ndarray:{dtype}', 'domain': 'str'}, size_limit=1 << 10
        ) as writer:
            for index in range(size):
                writer.write({'tokens': np.full(seq_len, code(domain, index), dtype), 'domain': name})
    return folder


@pytest.fixture
def data(tmp_path) -> Path:
    write_domains(tmp_path / 'data' / 'train')
    return tmp_path / 'data'


def dynamic_dataset(data: Path, **overrides) -> DynamicStreamingDataset:
    settings = dict(local=str(data), domains=list(DOMAINS), proportions=list(OLD), batch_size=BATCH, shuffle_seed=17)
    return DynamicStreamingDataset(**(settings | overrides))


def loader(dataset, num_workers: int = 0, persistent_workers: bool = False) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=dataset.batch_size,
        num_workers=num_workers,
        persistent_workers=persistent_workers and num_workers > 0,
        prefetch_factor=2 if num_workers else None,
    )


def endless(data_loader: DataLoader) -> Iterator[dict]:
    """Batches over epochs, a new iteration of the loader each epoch, as Composer does."""
    while True:
        yield from data_loader


def codes(batches: Sequence[dict]) -> list[int]:
    return [int(batch['input_ids'][row, 0]) for batch in batches for row in range(len(batch['input_ids']))]


def read_with_change(
    data_loader: DataLoader, dataset, changes: dict[int, Sequence[float]], num_batches: int
) -> list[int]:
    """The codes of ``num_batches`` batches; ``changes[k]`` is set after ``k`` batches, as the callback sets it."""
    batches = endless(data_loader)
    read = []
    for index in range(num_batches):
        if index in changes:
            dataset.set_proportions(changes[index], samples_seen=index * dataset.global_batch_size)
        read.append(next(batches))
    return codes(read)


def chi_square(sample_codes: Sequence[int], proportions: Sequence[float]) -> float:
    observed = np.bincount([sample // 10_000 for sample in sample_codes], minlength=len(proportions))
    expected = len(sample_codes) * np.asarray(proportions)
    return float(((observed - expected) ** 2 / expected).sum())


@pytest.mark.parametrize('num_workers', [0, 2])
def test_domain_frequencies_follow_the_proportions_before_and_after_a_change(data, num_workers):
    dataset = dynamic_dataset(data, lookahead_batches=2 * num_workers)
    sample_codes = read_with_change(loader(dataset, num_workers, persistent_workers=True), dataset, {100: NEW}, 200)

    change_start = (100 + dataset.lookahead_batches) * BATCH
    assert dataset.schedule == (ProportionChange(0, OLD), ProportionChange(change_start, NEW))
    before, after = sample_codes[:100 * BATCH], sample_codes[change_start:]
    assert chi_square(before, OLD) < CHI_SQUARE_BOUND
    assert chi_square(after, NEW) < CHI_SQUARE_BOUND
    assert chi_square(after, OLD) > 100 * CHI_SQUARE_BOUND


def test_the_sequence_depends_on_the_seed_and_schedule_not_on_the_workers(data):
    sequences = []
    for num_workers, persistent_workers in [(0, False), (2, True), (2, False)]:
        dataset = dynamic_dataset(data, lookahead_batches=4)
        sequences.append(
            read_with_change(loader(dataset, num_workers, persistent_workers), dataset, {30: NEW, 70: OLD}, 120)
        )
        del dataset
    assert sequences[0] == sequences[1] == sequences[2]
    assert len(sequences[0]) == 120 * BATCH

    dataset = dynamic_dataset(data, lookahead_batches=4, shuffle_seed=18)
    assert read_with_change(loader(dataset), dataset, {30: NEW, 70: OLD}, 120) != sequences[0]


def test_of_two_changes_for_the_same_sample_the_later_applies_in_workers_too(data):
    sequences = []
    for changes in ({30: NEW}, {30: OLD}):
        dataset = dynamic_dataset(data, lookahead_batches=4)
        sequences.append(read_with_change(loader(dataset, 2, persistent_workers=True), dataset, changes, 60))
        del dataset
    dataset = dynamic_dataset(data, lookahead_batches=4)
    batches = endless(loader(dataset, 2, persistent_workers=True))
    read = []
    for index in range(60):
        if index == 30:
            dataset.set_proportions(OLD, samples_seen=30 * BATCH)
            dataset.set_proportions(NEW, samples_seen=30 * BATCH)
        read.append(next(batches))
    assert codes(read) == sequences[0] != sequences[1]


def test_each_pass_over_a_domain_reads_every_sample_once_and_a_new_pass_is_reshuffled(data, caplog):
    dataset = dynamic_dataset(data, proportions=[0.2, 0.2, 0.6])
    with caplog.at_level(logging.INFO, logger='llmshearing.data.dynamic_dataset'):
        sample_codes = read_with_change(loader(dataset), dataset, {}, 30)

    for domain, size in enumerate(SIZES):
        indices = [sample % 10_000 for sample in sample_codes if sample // 10_000 == domain]
        passes = [indices[start:start + size] for start in range(0, len(indices), size)]
        for read in passes:
            assert len(set(read)) == len(read)
        for read in passes[:-1]:
            assert sorted(read) == list(range(size))
    c_indices = [sample % 10_000 for sample in sample_codes if sample // 10_000 == 2]
    assert len(c_indices) >= 3 * SIZES[2]
    assert c_indices[:SIZES[2]] != c_indices[SIZES[2]:2 * SIZES[2]]
    messages = [record.getMessage() for record in caplog.records]
    assert "Domain 'c' ran out after 60 samples: pass 2 over it begins, reshuffled" in messages
    assert "Domain 'c' ran out after 60 samples: pass 3 over it begins, reshuffled" in messages


def read_as_rank(rank: int, data: Path, output: Path) -> None:
    """Read 60 batches of 4 as rank ``rank`` of 2 (Streaming finds its rank in the environment)."""
    join_group(rank, output / 'rendezvous')
    try:
        dataset = dynamic_dataset(data, batch_size=4)
        codes = read_with_change(loader(dataset), dataset, {30: NEW}, 60)
        (output / f'rank{rank}.json').write_text(json.dumps(codes))
    finally:
        torch.distributed.destroy_process_group()


def test_two_ranks_read_disjoint_halves_of_the_one_rank_sequence(data, tmp_path):
    torch.multiprocessing.spawn(read_as_rank, args=(data, tmp_path), nprocs=WORLD_SIZE, join=True)
    rank_codes = [json.loads((tmp_path / f'rank{rank}.json').read_text()) for rank in range(2)]

    dataset = dynamic_dataset(data, batch_size=8)
    one_rank = read_with_change(loader(dataset), dataset, {30: NEW}, 60)
    interleaved = [
        code for batch in range(60) for rank in range(2) for code in rank_codes[rank][4 * batch : 4 * batch + 4]
    ]
    assert interleaved == one_rank

    reads_per_pass: dict[tuple[int, int], tuple[list[int], list[int]]] = {}
    draws = [0] * len(DOMAINS)
    for position, sample in enumerate(interleaved):
        domain = sample // 10_000
        pass_index = draws[domain] // SIZES[domain]
        draws[domain] += 1
        reads_per_pass.setdefault((domain, pass_index), ([], []))[position // 4 % 2].append(sample)
    assert max(pass_index for _, pass_index in reads_per_pass) >= 2
    for rank0, rank1 in reads_per_pass.values():
        assert len(set(rank0 + rank1)) == len(rank0 + rank1)


@pytest.mark.parametrize('num_workers', [0, 2])
def test_resuming_from_a_checkpoint_reads_what_the_uninterrupted_run_reads(data, num_workers):
    changes = {20: NEW, 90: (0.3, 0.3, 0.4)}
    dataset = dynamic_dataset(data, lookahead_batches=2 * num_workers)
    batches_per_epoch = dataset.samples_per_epoch // BATCH
    batches = endless(loader(dataset, num_workers, persistent_workers=True))
    uninterrupted = []
    for index in range(120):
        if index in changes:
            dataset.set_proportions(changes[index], samples_seen=index * BATCH)
        if index == 70:
            state = dataset.state_dict(num_samples=(70 - batches_per_epoch) * BATCH, from_beginning=True)
        uninterrupted.append(next(batches))
    del batches, dataset
    assert state['epoch'] == 1
    assert len(state['schedule']) == 2

    resumed_dataset = dynamic_dataset(data, lookahead_batches=2 * num_workers)
    resumed_dataset.load_state_dict(state)
    batches = endless(loader(resumed_dataset, num_workers, persistent_workers=True))
    resumed = []
    for index in range(70, 120):
        if index in changes:
            resumed_dataset.set_proportions(changes[index], samples_seen=index * BATCH)
        resumed.append(next(batches))
    assert codes(resumed) == codes(uninterrupted[70:])
    assert resumed_dataset.schedule == tuple(
        [ProportionChange(0, OLD)]
        + [
            ProportionChange((index + 2 * num_workers) * BATCH, tuple(proportions))
            for index, proportions in changes.items()
        ],
    )


def test_the_state_holds_the_position_and_the_schedule_only(data):
    dataset = dynamic_dataset(data)
    read_with_change(loader(dataset), dataset, {10: NEW, 60: OLD}, 100)
    epoch_batches = dataset.samples_per_epoch // BATCH
    assert dataset.state_dict(num_samples=(100 - 2 * epoch_batches) * BATCH, from_beginning=True) == {
        'epoch': 2,
        'sample_in_epoch': (100 - 2 * epoch_batches) * BATCH,
        'samples_per_epoch': 752,
        'shuffle_seed': 17,
        'domains': list(DOMAINS),
        'schedule': [[0, list(OLD)], [10 * BATCH, list(NEW)], [60 * BATCH, list(OLD)]],
    }


def test_set_proportions_without_samples_seen_applies_after_the_batches_yielded(data):
    dataset = dynamic_dataset(data)
    batches = iter(loader(dataset))
    for _ in range(5):
        next(batches)
    dataset.set_proportions(NEW)
    assert dataset.schedule[-1] == ProportionChange(5 * BATCH, NEW)


def test_a_change_that_workers_may_already_have_passed_is_an_error(data):
    """The change starts at batch 5 once batch 5 has arrived: the worker that drew it (worker 1 of 2) has passed
    the change's start whatever the load, and fails when it draws its next batch."""
    dataset = dynamic_dataset(data, lookahead_batches=0)
    batches = endless(loader(dataset, num_workers=2, persistent_workers=True))
    for _ in range(6):
        next(batches)
    dataset.set_proportions(NEW, samples_seen=5 * dataset.global_batch_size)
    message = 'reached a DataLoader worker that had already drawn the domains up to sample'
    with pytest.raises(RuntimeError, match=message):
        for _ in range(20):
            next(batches)


def test_remote_shards_are_cached_locally_and_read_the_same(data, tmp_path):
    local = dynamic_dataset(data)
    expected = read_with_change(loader(local), local, {10: NEW}, 30)
    cached = dynamic_dataset(tmp_path / 'cache', remote=str(data))
    assert read_with_change(loader(cached), cached, {10: NEW}, 30) == expected
    assert (tmp_path / 'cache' / 'train' / 'c' / 'index.json').is_file()


def test_uint32_tokens_and_max_seq_len(tmp_path):
    write_domains(tmp_path / 'train', sizes=(20, 20, 20), dtype='uint32', seq_len=12)
    dataset = dynamic_dataset(tmp_path, batch_size=4, max_seq_len=5)
    batch = next(iter(loader(dataset)))
    assert batch['input_ids'].dtype == torch.int64
    assert batch['input_ids'].shape == (4, 5)
    assert batch['domain'].tolist() == (batch['input_ids'][:, 0] // 10_000).tolist()


@pytest.mark.parametrize(
    ('overrides', 'message'),
    [
        ({'proportions': [0.5, 0.5]}, 'proportions: expected 3 values, one per domain, got 2'),
        ({'proportions': [0.6, -0.1, 0.5]}, 'proportions: must be non-negative, got [0.6, -0.1, 0.5]'),
        ({'proportions': [0.6, 0.3, 0.09]}, 'proportions: must sum to 1 (within 1e-06), got 0.99'),
        ({'proportions': [0.6, 0.3, 0.1 + 2e-6]}, 'proportions: must sum to 1 (within 1e-06), got 1.000002'),
        ({'domains': ['a', 'b', 'a']}, "domains: 'a' is listed 2 times"),
        ({'epoch_size': 10}, 'epoch_size: 10 samples do not fill one global batch (16 per device × 1 ranks)'),
    ],
)
def test_bad_settings_name_the_key(data, overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        dynamic_dataset(data, **overrides)


def test_a_domain_without_data_is_named(data):
    missing = data / 'train' / 'd' / 'index.json'
    with pytest.raises(ValueError, match=re.escape(f"domains: no data for domain 'd': {missing} does not exist")):
        dynamic_dataset(data, domains=['a', 'b', 'd'])


def test_bad_proportion_changes_are_refused(data):
    dataset = dynamic_dataset(data)
    with pytest.raises(ValueError, match=re.escape('proportions: must be non-negative, got [1.5, -0.5, 0.0]')):
        dataset.set_proportions([1.5, -0.5, 0.0], samples_seen=0)
    dataset.set_proportions(NEW, samples_seen=64)
    with pytest.raises(
        ValueError,
        match=re.escape('samples_seen: 32 is before the previous proportion change (which starts at sample 64)'),
    ):
        dataset.set_proportions(OLD, samples_seen=32)
    assert dataset.schedule == (ProportionChange(0, OLD), ProportionChange(64, NEW))


def test_a_checkpoint_of_another_batch_size_is_refused(data):
    dataset = dynamic_dataset(data)
    state = dataset.state_dict(num_samples=0, from_beginning=True)
    with pytest.raises(ValueError, match=re.escape('epoch_size: the checkpoint has 752 samples per epoch')):
        dynamic_dataset(data, batch_size=12).load_state_dict(state)


def write_merged(folder: Path, sizes: Sequence[int]) -> Path:
    with MDSWriter(
        out=str(folder), columns={'tokens': 'ndarray:uint16', 'domain': 'str'}, size_limit=1 << 10
    ) as writer:
        for domain, (name, size) in enumerate(zip(DOMAINS, sizes)):
            for index in range(size):
                writer.write({'tokens': np.full(SEQ_LEN, code(domain, index), np.uint16), 'domain': name})
    return folder


@pytest.mark.parametrize('merged', [False, True])
def test_eval_data_is_read_once_per_epoch_in_one_order_with_its_domain(tmp_path, merged):
    sizes = (7, 5, 9)
    if merged:
        write_merged(tmp_path / 'eval' / 'eval_merge', sizes)
        dataset = DomainStreamingDataset(
            local=str(tmp_path), domains=list(DOMAINS), batch_size=4, split='eval/eval_merge', merged=True
        )
    else:
        write_domains(tmp_path / 'eval', sizes)
        dataset = DomainStreamingDataset(local=str(tmp_path), domains=list(DOMAINS), batch_size=4)
    assert dataset.samples_per_domain == sizes
    epochs = [list(loader(dataset)) for _ in range(2)]
    first = codes(epochs[0])
    assert sorted(first) == sorted(code(domain, index) for domain, size in enumerate(sizes) for index in range(size))
    assert codes(epochs[1]) == first
    assert first != sorted(first)
    for batch in epochs[0]:
        assert batch['domain'].tolist() == (batch['input_ids'][:, 0] // 10_000).tolist()


def test_eval_data_missing_a_domain_is_an_error(tmp_path):
    write_merged(tmp_path / 'eval' / 'eval_merge', (4, 0, 4))
    with pytest.raises(ValueError, match=re.escape("domains: eval/eval_merge has no samples of ['b']")):
        DomainStreamingDataset(
            local=str(tmp_path), domains=list(DOMAINS), batch_size=4, split='eval/eval_merge', merged=True
        )
    with pytest.raises(
        ValueError, match=re.escape("domains: eval/eval_merge has samples of domains ['c'], which are not listed")
    ):
        DomainStreamingDataset(
            local=str(tmp_path), domains=['a', 'b'], batch_size=4, split='eval/eval_merge', merged=True
        )
    write_domains(tmp_path / 'eval', (4, 0, 4))
    with pytest.raises(
        ValueError, match=re.escape(f"domains: no data for domain 'b': {tmp_path / 'eval' / 'b'} holds no samples")
    ):
        DomainStreamingDataset(local=str(tmp_path), domains=list(DOMAINS), batch_size=4)


def test_dynamic_text_builds_train_and_eval_loaders_from_yaml_settings(data):
    write_domains(data / 'eval', (5, 5, 5))
    build = registry.dataloaders.get('dynamic_text')
    dataset_settings = {'local': str(data), 'domains': list(DOMAINS), 'max_seq_len': 6, 'shuffle_seed': 17}
    train = build(
        tokenizer=None, device_batch_size=4, dataset=dataset_settings | {'split': 'train', 'proportions': list(OLD)},
        drop_last=True, num_workers=2, prefetch_factor=3, persistent_workers=True,
    )
    assert isinstance(train.dataloader.dataset, DynamicStreamingDataset)
    assert train.dataloader.dataset.lookahead_batches == 6
    batch = next(iter(train.dataloader))
    assert set(batch) == {'input_ids', 'labels', 'domain'}
    assert batch['input_ids'].shape == batch['labels'].shape == (4, 6)
    assert torch.equal(batch['labels'], batch['input_ids'])
    assert batch['domain'].tolist() == (batch['input_ids'][:, 0] // 10_000).tolist()
    assert train.get_num_tokens_in_batch(batch) == 24
    assert train.get_num_tokens_in_batch(batch, token_type='loss_generating') == 20

    evaluation = build(
        tokenizer=None, device_batch_size=4, dataset=dataset_settings | {'split': 'eval'},
        drop_last=False, num_workers=0, prefetch_factor=None,
    )
    assert isinstance(evaluation.dataloader.dataset, DomainStreamingDataset)
    eval_batches = list(evaluation.dataloader)
    assert [len(batch['domain']) for batch in eval_batches] == [4, 4, 4, 3]
    assert sorted(codes(eval_batches)) == sorted(code(domain, index) for domain in range(3) for index in range(5))


@pytest.mark.parametrize('dataset_class', [DynamicStreamingDataset, DomainStreamingDataset])
def test_closing_a_dataset_releases_its_shared_memory(data, dataset_class):
    descriptors_before = set(open_descriptors().values())
    dynamic = dataset_class is DynamicStreamingDataset
    own = {'proportions': list(OLD), 'shuffle_seed': 17} if dynamic else {'split': 'train'}
    settings = {'domains': list(DOMAINS), 'batch_size': BATCH} | own
    with dataset_class(local=str(data), **settings) as dataset:
        next(iter(loader(dataset)))
        opened = set(open_descriptors().values()) - descriptors_before
        blocks = {target for target in opened if target.startswith('/dev/shm/')}
        assert len(blocks) >= 5, 'Streaming holds shared memory while the dataset is open'
        assert all(os.path.exists(block) for block in blocks)
    assert not blocks & set(open_descriptors().values()), 'the descriptors of the blocks are closed'
    assert not [block for block in blocks if os.path.exists(block)], 'the blocks this process created are unlinked'
