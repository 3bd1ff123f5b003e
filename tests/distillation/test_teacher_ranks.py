"""The teacher is read once: two real ranks (gloo, CPU) build it, rank 1 from a folder without weights, and both end
with the weights of rank 0's file (tied embeddings tied again, in fp32 and bf16) and rank 0's rotary buffer; under
FSDP2 each rank holds half of every weight and both give the logits of the whole teacher."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed
import torch.multiprocessing
from composer.core import Precision
from composer.devices import DeviceCPU
from composer.utils import FSDP2Config
from safetensors.torch import load_file
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import Shard

from llmshearing.distillation.algorithm import build_teacher, load_teacher
from llmshearing.toy import save_toy_model
from tests.two_ranks import WORLD_SIZE, join_group

INPUT_IDS = torch.arange(3, 35).view(2, 16)


def _build_on_rank(rank: int, folders: list[Path], dtype: torch.dtype, output: Path) -> None:
    """One rank: join the gloo group, build the teacher from this rank's folder and save what it holds."""
    join_group(rank, output / 'rendezvous')
    try:
        teacher = build_teacher(folders[rank], dtype, SimpleNamespace(fsdp_config=None, device=DeviceCPU()))
        tied = teacher.lm_head.weight is teacher.model.embed_tokens.weight
        inv_freq = teacher.model.rotary_emb.inv_freq  # a buffer the state dict leaves out
        torch.save({'state': teacher.state_dict(), 'tied': tied, 'inv_freq': inv_freq}, output / f'rank{rank}.pt')
    finally:
        torch.distributed.destroy_process_group()


def _shard_on_rank(rank: int, folders: list[Path], output: Path) -> None:
    """One rank of an FSDP2 run: build the teacher, save which modules FSDP wraps, this rank's part of every
    weight and the logits of ``INPUT_IDS``."""
    join_group(rank, output / 'rendezvous')
    try:
        state = SimpleNamespace(fsdp_config=FSDP2Config(), precision=Precision.FP32, device=DeviceCPU())
        teacher = build_teacher(folders[rank], torch.float32, state)
        parameters = dict(teacher.named_parameters())
        with torch.no_grad():
            logits = teacher(input_ids=INPUT_IDS).logits
        torch.save(
            {
                'wrapped': [name for name, module in teacher.named_modules() if isinstance(module, FSDPModule)],
                'placements': {name: parameter.placements for name, parameter in parameters.items()},
                'local': {name: parameter.to_local().clone() for name, parameter in parameters.items()},
                'logits': logits,
            },
            output / f'fsdp-rank{rank}.pt',
        )
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


def test_under_fsdp2_each_rank_holds_half_of_every_weight_and_both_give_the_whole_teachers_logits(tmp_path):
    """Two ranks (gloo, CPU), rank 1 without the weights: FSDP2 wraps the teacher and each decoder layer as the
    student's policy does, every weight is split by rows between the ranks (the halves are the file's weights), and
    the logits of both ranks are those of the teacher loaded whole."""
    source = save_toy_model(tmp_path / 'teacher', seed=4)
    without_weights = tmp_path / 'without-weights'
    shutil.copytree(source, without_weights, ignore=shutil.ignore_patterns('*.safetensors'))

    torch.multiprocessing.spawn(
        _shard_on_rank, args=([source, without_weights], tmp_path), nprocs=WORLD_SIZE, join=True
    )

    expected = load_file(source / 'model.safetensors')
    with torch.no_grad():
        whole_logits = load_teacher(source).forward(input_ids=INPUT_IDS).logits
    ranks = [torch.load(tmp_path / f'fsdp-rank{rank}.pt', weights_only=False) for rank in range(WORLD_SIZE)]
    for rank, built in enumerate(ranks):
        assert built['wrapped'] == ['', *(f'model.layers.{index}' for index in range(4))], rank
        assert built['local'].keys() == expected.keys(), rank
        assert all(placements == (Shard(0),) for placements in built['placements'].values()), rank
        torch.testing.assert_close(built['logits'], whole_logits, rtol=1e-5, atol=1e-6)
    for name, tensor in expected.items():
        first, second = (built['local'][name] for built in ranks)
        assert first.shape[0] == -(-tensor.shape[0] // 2), name
        assert torch.equal(torch.cat([first, second]), tensor), name
