"""Streaming's shared-memory names: two unrelated processes that prepare data and build ``dynamic_text`` datasets
at the same moments on one machine must not collide (``FileExistsError: /NNNNNN_locals``), and a process that holds
many names must not open a descriptor per name for each dataset it builds."""

from __future__ import annotations

import json
import multiprocessing
import os
import traceback
from pathlib import Path

import pytest
import streaming.base.dataset

from llmshearing.data import DomainStreamingDataset, DynamicStreamingDataset
from llmshearing.data.shared_memory import serialize_shm_prefix_registration
from tests.data.test_dynamic_dataset import write_domains
from tests.streaming_memory import open_descriptors

DOMAINS = ('alpha', 'beta')
ROUNDS = 12
"""Without the lock, about one round in two collided on 2 cores, so 12 rounds all but surely hit one."""


def build_datasets(run_dir: Path, tokenizer_dir: Path, barrier: multiprocessing.Barrier) -> None:
    """Prepare ``run_dir/input`` into ``run_dir/data``, then build a training and an eval dataset of it at each of
    ``ROUNDS`` moments shared with the other process; write ``run_dir/result.json``."""
    from llmshearing.data import DomainStreamingDataset, DynamicStreamingDataset
    from llmshearing.data.prepare import prepare_data

    errors = []
    try:
        barrier.wait(timeout=120)
        prepare_data(run_dir / 'input', run_dir / 'data', tokenizer_dir, 16, eval_samples=2, workers=1)
        for _ in range(ROUNDS):
            barrier.wait(timeout=120)
            DynamicStreamingDataset(local=str(run_dir / 'data'), domains=DOMAINS, proportions=[0.5, 0.5], batch_size=2)
            DomainStreamingDataset(local=str(run_dir / 'data'), domains=DOMAINS, batch_size=2)
    except Exception:  # reported to the test, which names it
        errors.append(traceback.format_exc())
        barrier.abort()
    (run_dir / 'result.json').write_text(json.dumps(errors))


def test_two_simultaneous_dataset_builds_do_not_collide(tmp_path):
    from llmshearing.toy import byte_level_tokenizer

    tokenizer_dir = tmp_path / 'tokenizer'
    byte_level_tokenizer().save_pretrained(tokenizer_dir)
    run_dirs = [tmp_path / f'run{index}' for index in range(2)]
    for run_dir in run_dirs:
        for domain in DOMAINS:
            (run_dir / 'input' / domain).mkdir(parents=True)
            lines = [json.dumps({'text': f'{domain} document {index} ' * 4}) for index in range(40)]
            (run_dir / 'input' / domain / 'part.jsonl').write_text('\n'.join(lines) + '\n')

    context = multiprocessing.get_context('spawn')
    barrier = context.Barrier(2)
    processes = [context.Process(target=build_datasets, args=(run_dir, tokenizer_dir, barrier)) for run_dir in run_dirs]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=300)
    assert [process.exitcode for process in processes] == [0, 0]
    errors = [error for run_dir in run_dirs for error in json.loads((run_dir / 'result.json').read_text())]
    assert errors == []


def test_the_registration_lock_is_installed_once():
    serialize_shm_prefix_registration()
    locked = streaming.base.dataset.get_shm_prefix
    serialize_shm_prefix_registration()
    assert streaming.base.dataset.get_shm_prefix is locked and locked.serialized
    assert locked.__wrapped__.__module__ == 'streaming.base.shared.prefix'


def shared_memory_descriptors() -> set[tuple[str, str]]:
    """This process's open descriptors of ``/dev/shm`` blocks, as (number, block name)."""
    return {
        (number, target.removeprefix('/dev/shm/'))
        for number, target in open_descriptors().items() if target.startswith('/dev/shm/')
    }


@pytest.mark.skipif(not os.path.isdir('/proc/self/fd'), reason='reads open descriptors from /proc/self/fd (Linux)')
def test_a_dataset_built_while_many_names_are_taken_opens_descriptors_of_its_own_names_only(tmp_path):
    data = tmp_path / 'data'
    write_domains(data / 'train')
    settings = dict(local=str(data), domains=['a', 'b', 'c'], batch_size=4)
    held = [DomainStreamingDataset(**settings, split='train') for _ in range(12)]
    try:
        before = shared_memory_descriptors()
        with DynamicStreamingDataset(**settings, proportions=[0.5, 0.3, 0.2]) as dataset:
            opened = shared_memory_descriptors() - before
            own_prefix = f'{dataset._shm_prefix_int:06}_'
            assert opened and {name for _, name in opened if not name.startswith(own_prefix)} == set()
    finally:
        for dataset in held:
            dataset.close()
