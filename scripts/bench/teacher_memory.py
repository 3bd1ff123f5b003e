"""Each rank's peak host memory while the distillation teacher is set up, against the teacher's weight bytes.

Two CPU ranks (gloo) set up a random Llama teacher (``--hidden-size``, ``--layers``, ``--vocab-size``, fp32) in
two ways, each in fresh processes: every rank reading the weights file (``load_teacher`` on each rank, as before),
and the way ``Distillation`` does it (``build_teacher``: rank 0 reads the file, rank 1 builds the teacher on the
meta device and receives rank 0's weights by broadcast). Each rank reports the peak of its resident memory during
the set-up beyond what it held before (``VmHWM`` after resetting it; the pages of the memory-mapped weights file
count), printed as bytes and as a multiple of the teacher's bytes. Without FSDP every rank must end with the
whole teacher, so rank 1's peak stays about one teacher; what it loses is its own read of the file. Under FSDP
(GPUs) rank 1 builds only its shards on the GPU and its host peak is that of the meta model. ``--quick``: a toy
teacher (hidden 64, 2 layers, vocabulary 1,000).

    .venv/bin/python -m scripts.bench.teacher_memory [--quick]
"""

from __future__ import annotations

import argparse
import datetime
import os
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed
import torch.multiprocessing
from composer.devices import DeviceCPU
from transformers import LlamaForCausalLM

from llmshearing.distillation.algorithm import build_teacher, load_teacher
from llmshearing.toy import llama_config
from scripts.bench.distillation_step import peak_bytes_beyond_start
from scripts.bench.quick import parse_args

WORLD_SIZE = 2
SETUP_TIMEOUT_S = 600
"""How long both ranks may take to set the teacher up and write their peaks; past it the benchmark fails."""
TEARDOWN_GRACE_S = 30
"""How long a rank that has written its peak may take to leave the gloo group and exit (gloo's teardown has hung
once in destroy_process_group after both ranks passed their last barrier); past it the rank is terminated."""
SETUPS = {
    'every rank reads the file': lambda folder: load_teacher(folder, torch.float32),
    'rank 0 reads, rank 1 receives': lambda folder: build_teacher(
        folder, torch.float32, SimpleNamespace(fsdp_config=None, device=DeviceCPU())
    ),
}


def measure_rank(rank: int, setup: str, folder: Path, work: Path) -> None:
    """One rank: join the gloo group and write its peak memory beyond its start during the teacher's set-up."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE), LOCAL_WORLD_SIZE='2')
    torch.distributed.init_process_group(
        'gloo', init_method=f'file://{work / "rendezvous"}', rank=rank, world_size=WORLD_SIZE,
        timeout=datetime.timedelta(seconds=SETUP_TIMEOUT_S),
    )
    try:
        held = []
        peak = peak_bytes_beyond_start(lambda: held.append(SETUPS[setup](folder)), torch.device('cpu'))
        torch.distributed.barrier()
        (work / f'peak-rank{rank}').write_text(str(peak))
    finally:
        torch.distributed.destroy_process_group()


def measure_ranks(setup: str, folder: Path, work: Path) -> list[int]:
    """Each rank's peak during ``setup``, from ``WORLD_SIZE`` fresh processes. A rank still running
    ``TEARDOWN_GRACE_S`` after every rank wrote its peak is terminated (and said so); no peak within
    ``SETUP_TIMEOUT_S`` is a ``RuntimeError``."""
    peak_files = [work / f'peak-rank{rank}' for rank in range(WORLD_SIZE)]
    context = torch.multiprocessing.start_processes(
        measure_rank, args=(setup, folder, work), nprocs=WORLD_SIZE, join=False,
    )
    deadline = time.monotonic() + SETUP_TIMEOUT_S
    while not context.join(timeout=1):
        if all(path.exists() for path in peak_files):
            deadline = min(deadline, time.monotonic() + TEARDOWN_GRACE_S)
        if time.monotonic() > deadline:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
            if not all(path.exists() for path in peak_files):
                raise RuntimeError(f'{setup}: the ranks did not report their peaks within {SETUP_TIMEOUT_S} s')
            print(f'{setup}: a rank hung leaving the gloo group after writing its peak and was terminated')
            break
    return [int(path.read_text()) for path in peak_files]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--hidden-size', type=int, default=768)
    parser.add_argument('--layers', type=int, default=6)
    parser.add_argument('--vocab-size', type=int, default=32000)
    args = parse_args(parser, {'hidden_size': 64, 'layers': 2, 'vocab_size': 1000})
    with tempfile.TemporaryDirectory() as root:
        folder = Path(root) / 'teacher'
        config = llama_config(
            args.vocab_size, hidden_size=args.hidden_size, num_attention_heads=max(args.hidden_size // 64, 1),
            num_key_value_heads=max(args.hidden_size // 64, 1), intermediate_size=int(args.hidden_size * 2.75),
            num_hidden_layers=args.layers,
        )
        LlamaForCausalLM(config).save_pretrained(folder)
        teacher_bytes = (folder / 'model.safetensors').stat().st_size
        print(f'teacher: {teacher_bytes / 2**20:,.1f} MiB of fp32 weights; 2 CPU ranks (gloo)')
        ratios = {}
        for setup in SETUPS:
            work = Path(root) / setup.replace(' ', '-').replace(',', '')
            work.mkdir()
            peaks = measure_ranks(setup, folder, work)
            ratios[setup] = [peak / teacher_bytes for peak in peaks]
            print(
                f'{setup}: ' + ', '.join(
                    f'rank {rank} peak {peak / 2**20:,.1f} MiB ({ratio:.2f} × teacher)'
                    for rank, (peak, ratio) in enumerate(zip(peaks, ratios[setup]))
                ),
            )
        before, after = ratios.values()
        print(
            f'rank 1 peak / teacher bytes: every rank reads {before[1]:.2f}, rank 0 reads {after[1]:.2f}; '
            f'file reads: {WORLD_SIZE} before, 1 after',
        )


if __name__ == '__main__':
    main()
