"""The teacher is read once: two real ranks (gloo, CPU) build it, rank 1 from a folder without weights, and both end
with the weights of rank 0's file (tied embeddings tied again, in fp32 and bf16) and rank 0's rotary buffer."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed
import torch.multiprocessing
from composer.devices import DeviceCPU
from safetensors.torch import load_file

from llmshearing.distillation.algorithm import build_teacher
from llmshearing.toy import save_toy_model

WORLD_SIZE = 2


def _build_on_rank(rank: int, folders: list[Path], dtype: torch.dtype, output: Path) -> None:
    """One rank: join the gloo group, build the teacher from this rank's folder and save what it holds."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE), LOCAL_WORLD_SIZE='2')
    torch.distributed.init_process_group(
        'gloo', init_method=f'file://{output / "rendezvous"}', rank=rank, world_size=WORLD_SIZE
    )
    try:
        teacher = build_teacher(folders[rank], dtype, SimpleNamespace(fsdp_config=None, device=DeviceCPU()))
        tied = teacher.lm_head.weight is teacher.model.embed_tokens.weight
        inv_freq = teacher.model.rotary_emb.inv_freq  # a buffer the state dict leaves out
        torch.save({'state': teacher.state_dict(), 'tied': tied, 'inv_freq': inv_freq}, output / f'rank{rank}.pt')
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.parametrize(('dtype', 'tied'), [(torch.float32, False), (torch.bfloat16, True)])
def test_rank_1_never_reads_the_weights_and_both_ranks_hold_the_file(tmp_path, dtype, tied):
    source = save_toy_model(tmp_path / 'teacher', seed=4, tie_word_embeddings=tied)
    without_weights = tmp_path / 'without-weights'
    shutil.copytree(source, without_weights, ignore=shutil.ignore_patterns('*.safetensors'))
    assert not list(without_weights.glob('*.safetensors'))

    torch.multiprocessing.spawn(
        _build_on_rank, args=([source, without_weights], dtype, tmp_path), nprocs=WORLD_SIZE, join=True
    )

    expected = load_file(source / 'model.safetensors')
    if tied:
        assert 'lm_head.weight' not in expected
        expected['lm_head.weight'] = expected['model.embed_tokens.weight']
    built_on = [torch.load(tmp_path / f'rank{rank}.pt') for rank in range(WORLD_SIZE)]
    assert torch.equal(built_on[0]['inv_freq'], built_on[1]['inv_freq'])
    for rank, built in enumerate(built_on):
        assert built['tied'] == tied, rank
        weights = built['state']
        assert weights.keys() == expected.keys(), rank
        for name, tensor in expected.items():
            assert torch.equal(weights[name], tensor.to(dtype)), (rank, name)
