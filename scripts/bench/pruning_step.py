"""Time of one pruning training step divided by one plain training step of the same model and batch.

Both steps (forward, backward, AdamW step; the pruning step's optimizer holds the masks and multipliers too)
run interleaved in one process, so machine noise hits both alike; the figure is the median of the per-repeat
ratios. The physical limit is 1.0: the masks add O(tokens * width) work to O(tokens * width^2) matmuls.

    .venv/bin/python -m scripts.bench.pruning_step [--device cuda --dtype bf16] [--quick]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from llmshearing.pruning import attach_masks
from scripts.bench.quick import parse_args

DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16}


def training_step(model, optimizer, input_ids, l0_module=None) -> None:
    loss = model(input_ids=input_ids, labels=input_ids).loss
    if l0_module is not None:
        loss = loss + l0_module.lagrangian(1.0)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if l0_module is not None:
        l0_module.constrain_parameters()


def timed(step, device: torch.device) -> float:
    if device.type == 'cuda':
        torch.cuda.synchronize()
    start = time.perf_counter()
    step()
    if device.type == 'cuda':
        torch.cuda.synchronize()
    return time.perf_counter() - start


def interleaved_times(
    first, second, repeats: int, device: torch.device, warmup: int = 2
) -> tuple[list[float], list[float]]:
    """Seconds of each of ``repeats`` calls of ``first`` and of ``second``, called alternately after ``warmup``
    untimed calls of each, so that machine noise hits both alike."""
    for _ in range(warmup):
        first()
        second()
    first_times, second_times = [], []
    for _ in range(repeats):
        first_times.append(timed(first, device))
        second_times.append(timed(second, device))
    return first_times, second_times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--dtype', choices=sorted(DTYPES), default='fp32')
    parser.add_argument('--hidden-size', type=int, default=512)
    parser.add_argument('--layers', type=int, default=4)
    parser.add_argument('--batch-size', type=int, default=4)
    parser.add_argument('--seq-len', type=int, default=256)
    parser.add_argument('--repeats', type=int, default=12)
    args = parse_args(parser, {'hidden_size': 128, 'layers': 2, 'batch_size': 2, 'seq_len': 32, 'repeats': 1})

    torch.manual_seed(0)
    device = torch.device(args.device)
    hidden = args.hidden_size
    config = LlamaConfig(
        vocab_size=8192, hidden_size=hidden, num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64,
        intermediate_size=int(hidden * 2.75), num_hidden_layers=args.layers, attn_implementation='sdpa',
    )
    plain = LlamaForCausalLM(config).to(device, DTYPES[args.dtype]).train()
    pruned = copy.deepcopy(plain)
    plain_optimizer = torch.optim.AdamW(plain.parameters(), lr=1e-5)
    target = {
        'hidden_size': hidden * 5 // 8, 'num_attention_heads': config.num_attention_heads * 5 // 8,
        'intermediate_size': config.intermediate_size * 5 // 8, 'num_hidden_layers': args.layers * 3 // 4,
    }
    l0_module = attach_masks(pruned, target, ['layer', 'head', 'intermediate', 'hidden'])
    pruning_optimizer = torch.optim.AdamW(pruned.parameters(), lr=1e-5)
    input_ids = torch.randint(0, config.vocab_size, (args.batch_size, args.seq_len), device=device)

    def plain_step() -> None:
        training_step(plain, plain_optimizer, input_ids)

    def pruning_step() -> None:
        training_step(pruned, pruning_optimizer, input_ids, l0_module)

    plain_times, pruning_times = interleaved_times(plain_step, pruning_step, args.repeats, device)
    ratios = [pruning / plain for plain, pruning in zip(plain_times, pruning_times)]
    print(
        f'model: hidden {hidden}, layers {args.layers}, batch {args.batch_size} x {args.seq_len} tokens, '
        f'{args.device} {args.dtype}, {torch.get_num_threads()} threads',
    )
    print(f'plain step   (median of {args.repeats}): {statistics.median(plain_times) * 1e3:8.1f} ms')
    print(f'pruning step (median of {args.repeats}): {statistics.median(pruning_times) * 1e3:8.1f} ms')
    print(f'pruning step / plain step: {statistics.median(ratios):.3f} (median of per-repeat ratios; goal <= 1.10)')


if __name__ == '__main__':
    main()
