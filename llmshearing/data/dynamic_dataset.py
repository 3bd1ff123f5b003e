"""Multi-domain MDS datasets whose samples carry their domain's index.

Data layout: ``ROOT/<split>/<domain>/`` holds MDS shards with a ``tokens`` column (``ndarray:uint16`` or
``ndarray:uint32``, one fixed-length sample per row) and a ``domain`` column (the domain's name);
``ROOT/eval/eval_merge/`` holds every domain's eval samples in one folder.

``DynamicStreamingDataset`` (training) draws an endless sequence of samples from the domains in
proportions that may change while it is read. The sequence is a pure function of the seed and the
proportion schedule, a list of ``ProportionChange(start, proportions)``:

* Global sample ``g`` (counted over all ranks since the start of training) belongs to the domain drawn
  by inverse CDF from a counter-based uniform ``u(seed, g)`` with the proportions in force at ``g``.
* If ``g`` is the ``k``-th draw of domain ``d``, it is sample ``k mod N_d`` of pass ``k div N_d`` over that
  domain, in Streaming's shuffle of the domain's shards seeded by (seed, domain, pass). So a domain that
  runs out starts a new, reshuffled pass, and no two global indices (hence no two ranks or workers)
  read the same sample in the same pass.
* Global batch ``t`` holds samples ``[t·R·B, (t+1)·R·B)``; rank ``r`` takes ``[t·R·B + r·B, t·R·B + (r+1)·B)``
  and DataLoader worker ``t mod W`` prepares it, the order in which the DataLoader hands batches out.

Each worker recomputes the draws of every global index up to its own samples (vectorised, in blocks),
so the checkpoint state is the schedule and the position, nothing per sample.

``DomainStreamingDataset`` (evaluation) reads every sample of a split once per epoch, always in the same
order.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import weakref
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from streaming import Stream, StreamingDataset
from streaming.base.shuffle import get_shuffle
from streaming.base.util import number_abbrev_to_int

from llmshearing.data.shared_memory import release_shared_memory

log = logging.getLogger(__name__)

DRAW_BLOCK = 1 << 16
"""Global sample indices per block of domain draws: one RNG seeding and one vectorised draw per block."""

_DRAW_STREAM, _SHUFFLE_STREAM = 0, 1  # keep the random streams of domain draws and pass shuffles apart
_PROPORTION_TOLERANCE = 1e-6


@dataclass(frozen=True)
class ProportionChange:
    """From global sample index ``start`` on, domains are drawn with ``proportions``."""

    start: int
    proportions: tuple[float, ...]


def validate_domains(domains: Sequence[str]) -> tuple[str, ...]:
    """The domain names as a tuple; raises ``ValueError`` naming ``domains`` if the list is empty or repeats one."""
    if isinstance(domains, str) or not domains:
        raise ValueError(f'domains: expected a list of domain names, got {domains!r}')
    for name, count in Counter(domains).items():
        if count > 1:
            raise ValueError(f'domains: {name!r} is listed {count} times')
    return tuple(str(name) for name in domains)


def validate_proportions(proportions: Sequence[float], num_domains: int) -> tuple[float, ...]:
    """The proportions as a tuple; raises ``ValueError`` naming ``proportions`` unless they are a distribution."""
    values = tuple(float(value) for value in proportions)
    if len(values) != num_domains:
        raise ValueError(f'proportions: expected {num_domains} values, one per domain, got {len(values)}')
    if not all(value >= 0 for value in values):
        raise ValueError(f'proportions: must be non-negative, got {list(values)}')
    total = math.fsum(values)
    if not abs(total - 1) <= _PROPORTION_TOLERANCE:
        raise ValueError(f'proportions: must sum to 1 (within {_PROPORTION_TOLERANCE:g}), got {total!r}')
    return values


def token_example(tokens: np.ndarray, domain: int, max_seq_len: int | None) -> dict[str, Any]:
    """One sample as the collator takes it: ``input_ids`` (int64, cut to ``max_seq_len``) and ``domain``."""
    return {'input_ids': torch.from_numpy(tokens[:max_seq_len].astype(np.int64)), 'domain': domain}


def check_local_split(local: str, split: str, domains: Sequence[str], merged: bool = False) -> None:
    """Raise ``ValueError`` naming ``domains`` unless ``local/split`` holds samples of every domain (``merged``: one
    MDS folder for all of them, as ``eval/eval_merge``)."""
    if merged:
        _check_local_data(os.path.join(local, split), f'split {split!r}')
        return
    for domain in domains:
        _check_local_data(os.path.join(local, split, domain), f'domain {domain!r}')


def _domain_streams(local: str, remote: str | None, split: str, domains: Sequence[str]) -> list[Stream]:
    if remote is None:
        check_local_split(local, split, domains)
    return [
        Stream(
            local=os.path.join(local, split, domain),
            remote=None if remote is None else os.path.join(remote, split, domain),
        )
        for domain in domains
    ]


def _check_local_data(folder: str, what: str) -> None:
    index_path = os.path.join(folder, 'index.json')
    if not os.path.isfile(index_path):
        raise ValueError(f'domains: no data for {what}: {index_path} does not exist')
    with open(index_path, encoding='utf-8') as index_file:
        if not sum(shard['samples'] for shard in json.load(index_file)['shards']):
            raise ValueError(f'domains: no data for {what}: {folder} holds no samples')


class _DomainDraws:
    """The domain of each global sample index under a proportion schedule, drawn one block at a time."""

    def __init__(self, seed: int, schedule: Sequence[ProportionChange]):
        self.seed = seed
        self.schedule: list[ProportionChange] = []
        self._thresholds: list[np.ndarray] = []
        self._block = -1
        self._block_domains = np.empty(0, np.int64)
        for change in schedule:
            self.add(change)

    def add(self, change: ProportionChange) -> None:
        self.schedule.append(change)
        self._thresholds.append(np.cumsum(change.proportions)[:-1])
        if change.start < (self._block + 1) * DRAW_BLOCK:
            self._block = -1

    def domains(self, start: int, stop: int) -> np.ndarray:
        """Domains of the global indices in ``[start, stop)``."""
        blocks = range(start // DRAW_BLOCK, (stop - 1) // DRAW_BLOCK + 1)
        parts = [self._slice(block, start, stop) for block in blocks]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def counts(self, start: int, stop: int) -> np.ndarray:
        """How many of the global indices in ``[start, stop)`` each domain has."""
        num_domains = len(self.schedule[0].proportions)
        counts = np.zeros(num_domains, np.int64)
        if stop > start:
            for block in range(start // DRAW_BLOCK, (stop - 1) // DRAW_BLOCK + 1):
                counts += np.bincount(self._slice(block, start, stop), minlength=num_domains)
        return counts

    def _slice(self, block: int, start: int, stop: int) -> np.ndarray:
        if block != self._block:
            self._block_domains = self._draw_block(block)
            self._block = block
        offset = block * DRAW_BLOCK
        return self._block_domains[max(start, offset) - offset:min(stop, offset + DRAW_BLOCK) - offset]

    def _draw_block(self, block: int) -> np.ndarray:
        uniforms = np.random.default_rng([self.seed, _DRAW_STREAM, block]).random(DRAW_BLOCK)
        domains = np.empty(DRAW_BLOCK, np.int64)
        block_start, block_stop = block * DRAW_BLOCK, (block + 1) * DRAW_BLOCK
        starts = [change.start for change in self.schedule] + [block_stop]
        for index, thresholds in enumerate(self._thresholds):
            begin = max(starts[index], block_start) - block_start
            end = min(starts[index + 1], block_stop) - block_start
            if begin < end:
                domains[begin:end] = np.searchsorted(thresholds, uniforms[begin:end], side='right')
        return domains


class _PassOrders:
    """Each domain's sample order in each pass over it: Streaming's shuffle of the domain's shards."""

    def __init__(self, dataset: DynamicStreamingDataset):
        self.dataset = dataset
        self._orders: dict[tuple[int, int], np.ndarray] = {}

    def sample_ids(self, domains: np.ndarray, draws: np.ndarray) -> np.ndarray:
        """Global sample ids for the ``draws``-th draws of ``domains``; logs where a new pass begins."""
        dataset = self.dataset
        sizes = dataset.samples_per_stream[domains]
        passes, positions = np.divmod(draws, sizes)
        sample_ids = np.empty(len(domains), np.int64)
        for domain, pass_index in {(int(d), int(p)) for d, p in zip(domains, passes)}:
            selected = (domains == domain) & (passes == pass_index)
            order = self.order(domain, pass_index)
            sample_ids[selected] = dataset.sample_offset_per_stream[domain] + order[positions[selected]]
            if pass_index and (positions[selected] == 0).any():
                log.info(
                    'Domain %r ran out after %d samples: pass %d over it begins, reshuffled',
                    dataset.domains[domain], sizes[selected][0], pass_index + 1,
                )
        return sample_ids

    def order(self, domain: int, pass_index: int) -> np.ndarray:
        key = (domain, pass_index)
        if key not in self._orders:
            for old in [old for old in self._orders if old[0] == domain and old[1] < pass_index - 1]:
                del self._orders[old]
            dataset = self.dataset
            first_shard = dataset.shard_offset_per_stream[domain]
            shard_sizes = dataset.samples_per_shard[first_shard:first_shard + dataset.shards_per_stream[domain]]
            seed = int(np.random.SeedSequence([dataset.shuffle_seed, _SHUFFLE_STREAM, domain]).generate_state(1)[0])
            self._orders[key] = get_shuffle(
                dataset.shuffle_algo, shard_sizes, 1, seed, pass_index, dataset.shuffle_block_size,
            )
        return self._orders[key]


class _ScheduleFile:
    """The proportion schedule as a file of fixed-size records that DataLoader workers re-read.

    The main process appends a record before it hands out the batches that need it, so a worker that
    reads the file when it starts a batch has every change that can apply to that batch.
    """

    def __init__(self, path: str, num_domains: int):
        self.path = path
        self.record = np.dtype([('start', '<i8'), ('proportions', '<f8', (num_domains,))])

    def write(self, schedule: Sequence[ProportionChange]) -> None:
        records = np.array([(change.start, change.proportions) for change in schedule], self.record)
        temporary_path = f'{self.path}.tmp'
        with open(temporary_path, 'wb') as schedule_file:
            schedule_file.write(records.tobytes())
        os.replace(temporary_path, self.path)

    def append(self, change: ProportionChange) -> None:
        with open(self.path, 'ab') as schedule_file:
            schedule_file.write(np.array([(change.start, change.proportions)], self.record).tobytes())

    def read(self, skip: int) -> list[ProportionChange]:
        """The changes after the first ``skip``."""
        available = os.stat(self.path).st_size // self.record.itemsize
        if available <= skip:
            return []
        with open(self.path, 'rb') as schedule_file:
            schedule_file.seek(skip * self.record.itemsize)
            records = np.frombuffer(schedule_file.read((available - skip) * self.record.itemsize), self.record)
        return [ProportionChange(int(start), tuple(proportions.tolist())) for start, proportions in records]


def _remove_if_owner(path: str, owner_pid: int) -> None:
    if os.getpid() == owner_pid and os.path.exists(path):
        os.remove(path)


class ClosableStreamingDataset(StreamingDataset):
    """A ``StreamingDataset`` that releases its shared memory on ``close()`` or at the end of a ``with`` block.

    Streaming keeps each dataset's shared memory (file descriptors, maps and ``/dev/shm`` blocks) until the
    process exits, so a process that builds many datasets (a sweep, a notebook) should close each when done
    with it (and its DataLoaders). The dataset cannot be read after ``close()``.
    """

    def close(self) -> None:
        """Release the shared memory (``release_shared_memory``)."""
        release_shared_memory(self)

    def __enter__(self):
        return self

    def __exit__(self, *exception: object) -> None:
        self.close()


class DynamicStreamingDataset(ClosableStreamingDataset):
    """An endless mix of per-domain MDS streams whose domain proportions can change while it is read.

    Yields ``{'input_ids': LongTensor[seq_len], 'domain': int}``. See the module docstring for the sample
    sequence. An epoch (what ``len`` and Composer count) is ``epoch_size`` samples rounded down to whole
    global batches; epochs continue the same sequence.

    Args:
        local: root of the prepared data (or the local cache of ``remote``); reads ``local/<split>/<domain>``.
        domains: the domains to read, in the order of ``proportions`` and of the ``domain`` indices.
        proportions: the initial domain proportions (non-negative, summing to 1).
        batch_size: the per-device batch size of the DataLoader.
        split: the sub-folder of ``local`` (and ``remote``) holding one folder per domain.
        remote: where to download shards from, if not all local.
        max_seq_len: cut samples to this many tokens (default: keep them whole).
        shuffle_seed: seed of the domain draws and of every pass's shuffle.
        epoch_size: samples per epoch over all ranks (default: all samples of all domains).
        lookahead_batches: how many batches per rank the DataLoader may prepare before the trainer takes
            them: ``num_workers * prefetch_factor`` (0 without workers). A proportion change takes effect
            after them.
        shuffle_algo, shuffle_block_size: Streaming's shuffle of each pass over a domain.
        cache_limit, download_retry, download_timeout, validate_hash, keep_zip, allow_unsafe_types: as in
            ``StreamingDataset`` (a worker downloads a missing shard when it first needs one of its samples).
    """

    def __init__(
        self,
        *,
        local: str,
        domains: Sequence[str],
        proportions: Sequence[float],
        batch_size: int,
        split: str = 'train',
        remote: str | None = None,
        max_seq_len: int | None = None,
        shuffle_seed: int = 9176,
        epoch_size: int | str | None = None,
        lookahead_batches: int = 0,
        shuffle_algo: str = 'py1e',
        shuffle_block_size: int = 1 << 18,
        cache_limit: int | str | None = None,
        download_retry: int = 2,
        download_timeout: float = 60,
        validate_hash: str | None = None,
        keep_zip: bool = False,
        allow_unsafe_types: bool = False,
    ):
        self.domains = validate_domains(domains)
        initial_proportions = validate_proportions(proportions, len(self.domains))
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f'batch_size: must be a positive integer, got {batch_size!r}')
        if lookahead_batches < 0:
            raise ValueError(f'lookahead_batches: must be non-negative, got {lookahead_batches}')
        super().__init__(
            streams=_domain_streams(local, remote, split, self.domains),
            batch_size=batch_size,
            shuffle=True,
            shuffle_algo=shuffle_algo,
            shuffle_seed=shuffle_seed,
            shuffle_block_size=shuffle_block_size,
            cache_limit=cache_limit,
            download_retry=download_retry,
            download_timeout=download_timeout,
            validate_hash=validate_hash,
            keep_zip=keep_zip,
            allow_unsafe_types=allow_unsafe_types,
        )
        self.max_seq_len = max_seq_len
        self.lookahead_batches = lookahead_batches
        self.global_batch_size = batch_size * self._parallel_rank_world.num_ranks
        requested = self.num_samples if epoch_size is None else number_abbrev_to_int(epoch_size)
        self.samples_per_epoch = requested // self.global_batch_size * self.global_batch_size
        if not self.samples_per_epoch:
            raise ValueError(
                f'epoch_size: {requested} samples do not fill one global batch '
                f'({batch_size} per device × {self._parallel_rank_world.num_ranks} ranks)',
            )
        self._schedule = [ProportionChange(0, initial_proportions)]
        self._samples_seen = 0
        file_descriptor, path = tempfile.mkstemp(prefix='llmshearing-proportions-')
        os.close(file_descriptor)
        weakref.finalize(self, _remove_if_owner, path, os.getpid())
        self._schedule_file = _ScheduleFile(path, len(self.domains))
        self._schedule_file.write(self._schedule)

    def __len__(self) -> int:
        """Samples per epoch on this rank."""
        return self.samples_per_epoch // self._parallel_rank_world.num_ranks

    @property
    def proportions(self) -> tuple[float, ...]:
        """The proportions of the latest change."""
        return self._schedule[-1].proportions

    @property
    def schedule(self) -> tuple[ProportionChange, ...]:
        """Every proportion change so far, the initial proportions first."""
        return tuple(self._schedule)

    def set_initial_proportions(self, proportions: Sequence[float]) -> None:
        """Draw every domain from the first sample on with ``proportions``: only before any change or draw."""
        values = validate_proportions(proportions, len(self.domains))
        if len(self._schedule) > 1 or self._samples_seen:
            raise RuntimeError(
                f'set_initial_proportions: the dataset has drawn {self._samples_seen} samples and has '
                f'{len(self._schedule) - 1} proportion changes; set the initial proportions before reading it',
            )
        self._schedule = [ProportionChange(0, values)]
        self._schedule_file.write(self._schedule)
        log.info('Initial domain proportions: %s', dict(zip(self.domains, values)))

    def set_proportions(self, proportions: Sequence[float], samples_seen: int | None = None) -> None:
        """Draw the domains with ``proportions`` from the first sample that no DataLoader can have prepared.

        Call it with the same arguments on every rank. Of two changes from the same sample, the later applies.

        Args:
            proportions: the new domain proportions (non-negative, summing to 1).
            samples_seen: samples the trainer has taken from this dataset since the start of training, over all
                ranks (Composer's ``state.timestamp.sample``). Defaults to the end of the last batch this process
                has yielded itself, which is that number when the DataLoader has no workers.
        """
        values = validate_proportions(proportions, len(self.domains))
        seen = self._samples_seen if samples_seen is None else samples_seen
        change = ProportionChange(seen + self.lookahead_batches * self.global_batch_size, values)
        if change.start < self._schedule[-1].start:
            raise ValueError(
                f'samples_seen: {seen} is before the previous proportion change (which starts at sample '
                f'{self._schedule[-1].start})',
            )
        self._schedule.append(change)
        self._schedule_file.append(change)
        log.info('Domain proportions from sample %d on: %s', change.start, dict(zip(self.domains, values)))

    def state_dict(self, num_samples: int, from_beginning: bool) -> dict[str, Any]:
        """The position and the proportion schedule, as Composer checkpoints them (on each rank).

        Args:
            num_samples: samples taken in the current epoch, over all ranks.
            from_beginning: whether ``num_samples`` counts from the start of the epoch (Composer) or from where
                this run resumed.
        """
        epoch, resumed_at = self._resume(self._parallel_rank_world, self.next_epoch - 1)
        return {
            'epoch': max(epoch, 0),
            'sample_in_epoch': num_samples if from_beginning else resumed_at + num_samples,
            'samples_per_epoch': self.samples_per_epoch,
            'shuffle_seed': self.shuffle_seed,
            'domains': list(self.domains),
            'schedule': [[change.start, list(change.proportions)] for change in self._schedule],
        }

    def load_state_dict(self, obj: dict[str, Any]) -> None:
        """Resume from ``state_dict``'s output: the next epoch iterated continues the checkpointed sequence."""
        if list(obj['domains']) != list(self.domains):
            raise ValueError(f'domains: the checkpoint has {obj["domains"]}, this dataset {list(self.domains)}')
        if obj['samples_per_epoch'] != self.samples_per_epoch or obj['sample_in_epoch'] % self.global_batch_size:
            raise ValueError(
                f'epoch_size: the checkpoint has {obj["samples_per_epoch"]} samples per epoch and stopped at sample '
                f'{obj["sample_in_epoch"]}; this dataset has {self.samples_per_epoch} per epoch in global batches of '
                f'{self.global_batch_size}: resume with the same epoch_size, batch size and number of ranks',
            )
        self._schedule = [ProportionChange(start, tuple(proportions)) for start, proportions in obj['schedule']]
        self._schedule_file.write(self._schedule)
        self._samples_seen = obj['epoch'] * self.samples_per_epoch + obj['sample_in_epoch']
        super().load_state_dict({
            'epoch': obj['epoch'],
            'sample_in_epoch': obj['sample_in_epoch'],
            'shuffle_seed': obj['shuffle_seed'],
            'num_canonical_nodes': 1,
        })

    def get_item(self, sample_id: int, retry: int = 7) -> dict[str, Any]:
        """Sample ``sample_id`` (an index over all domains' samples) as ``token_example`` gives it."""
        sample = super().get_item(sample_id, retry)
        shard_id, _ = self.spanner[sample_id]
        return token_example(sample['tokens'], int(self.stream_per_shard[shard_id]), self.max_seq_len)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for sample_id in self.sample_ids():
            yield self.get_item(sample_id)

    def sample_ids(self) -> Iterator[int]:
        """Start the next epoch (or the checkpointed one) and yield the ids of the samples this process reads.

        ``__iter__`` reads these samples; DataLoader workers and ranks each get their own.
        """
        self._unique_worker_world = self._unique_rank_world.detect_workers()
        self._parallel_worker_world = world = self._parallel_rank_world.detect_workers()
        epoch, sample_in_epoch = self._resume_incr_epoch()
        epoch_start = epoch * self.samples_per_epoch
        first_batch = sample_in_epoch // self.global_batch_size
        draws = _DomainDraws(self.shuffle_seed, self._schedule_file.read(0))
        orders = _PassOrders(self)
        cursor = epoch_start + first_batch * self.global_batch_size
        counts = draws.counts(0, cursor)
        for batch in range(
            first_batch + world.worker_of_rank,
            self.samples_per_epoch // self.global_batch_size,
            world.workers_per_rank,
        ):
            for change in self._schedule_file.read(len(draws.schedule)):
                if change.start < cursor:
                    raise RuntimeError(
                        f'Proportions for the samples from {change.start} on reached a DataLoader worker that had '
                        f'already drawn the domains up to sample {cursor}: pass the trainer\'s samples_seen to '
                        f'set_proportions, and lookahead_batches >= num_workers × prefetch_factor to the dataset',
                    )
                draws.add(change)
            batch_start = epoch_start + batch * self.global_batch_size + world.rank * self.batch_size
            counts += draws.counts(cursor, batch_start)
            domains = draws.domains(batch_start, batch_start + self.batch_size)
            earlier_in_batch = np.cumsum(domains[:, None] == np.arange(len(self.domains)), axis=0)
            draw_numbers = counts[domains] + earlier_in_batch[np.arange(len(domains)), domains] - 1
            counts += np.bincount(domains, minlength=len(self.domains))
            cursor = batch_start + self.batch_size
            self._samples_seen = epoch_start + (batch + 1) * self.global_batch_size
            yield from orders.sample_ids(domains, draw_numbers).tolist()


class DomainStreamingDataset(ClosableStreamingDataset):
    """Every sample of a split once per epoch, in the same order each epoch, tagged with its domain's index.

    Yields ``{'input_ids': LongTensor[seq_len], 'domain': int}``, the domain indexing ``domains``.

    Args:
        local: root of the prepared data (or the local cache of ``remote``).
        domains: the domains, in the order of the training data's.
        batch_size: the per-device batch size of the DataLoader.
        split: the sub-folder of ``local`` with one folder per domain, or (``merged``) one MDS folder whose
            ``domain`` column names each sample's domain, e.g. ``eval/eval_merge``.
        merged: read ``split`` as one folder instead of one per domain.
        remote: where to download shards from, if not all local.
        max_seq_len: cut samples to this many tokens (default: keep them whole).
        shuffle: mix the domains (one fixed order for every epoch), so that a subset of batches has them all.
        shuffle_seed: seed of that order.
        predownload, cache_limit, download_retry, download_timeout, validate_hash, keep_zip,
            allow_unsafe_types: as in ``StreamingDataset``.
    """

    def __init__(
        self,
        *,
        local: str,
        domains: Sequence[str],
        batch_size: int,
        split: str = 'eval',
        merged: bool = False,
        remote: str | None = None,
        max_seq_len: int | None = None,
        shuffle: bool = True,
        shuffle_seed: int = 9176,
        predownload: int | None = None,
        cache_limit: int | str | None = None,
        download_retry: int = 2,
        download_timeout: float = 60,
        validate_hash: str | None = None,
        keep_zip: bool = False,
        allow_unsafe_types: bool = False,
    ):
        self.domains = validate_domains(domains)
        self.merged = merged
        if merged:
            if remote is None:
                check_local_split(local, split, self.domains, merged=True)
            streams = [
                Stream(
                    local=os.path.join(local, split), remote=None if remote is None else os.path.join(remote, split)
                ),
            ]
        else:
            streams = _domain_streams(local, remote, split, self.domains)
        super().__init__(
            streams=streams,
            batch_size=batch_size,
            shuffle=shuffle,
            shuffle_seed=shuffle_seed,
            predownload=predownload,
            cache_limit=cache_limit,
            download_retry=download_retry,
            download_timeout=download_timeout,
            validate_hash=validate_hash,
            keep_zip=keep_zip,
            allow_unsafe_types=allow_unsafe_types,
        )
        self.max_seq_len = max_seq_len
        self._domain_index = {name: index for index, name in enumerate(self.domains)}
        if merged:
            names = Counter(
                StreamingDataset.get_item(self, sample_id)['domain'] for sample_id in range(self.num_samples)
            )
            unknown = sorted(set(names) - set(self.domains))
            if unknown:
                raise ValueError(f'domains: {split} has samples of domains {unknown}, which are not listed')
            missing = [name for name in self.domains if not names[name]]
            if missing:
                raise ValueError(f'domains: {split} has no samples of {missing}')
            self.samples_per_domain = tuple(names[name] for name in self.domains)
        else:
            self.samples_per_domain = tuple(int(count) for count in self.samples_per_stream)

    def get_item(self, sample_id: int, retry: int = 7) -> dict[str, Any]:
        """Sample ``sample_id`` as ``token_example`` gives it."""
        sample = super().get_item(sample_id, retry)
        if self.merged:
            domain = self._domain_index[sample['domain']]
        else:
            domain = int(self.stream_per_shard[self.spanner[sample_id][0]])
        return token_example(sample['tokens'], domain, self.max_seq_len)

    def _resume_incr_epoch(self) -> tuple[int, int]:
        """Shuffle every epoch as the first: each evaluation reads the same samples in the same order."""
        _, sample_in_epoch = super()._resume_incr_epoch()
        return 0, sample_in_epoch
