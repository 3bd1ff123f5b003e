"""bf16 autocast against fp32 on the CPU, as ``precision: amp_bf16`` trains there (``cpu_autocast``).

Three ratios, each measured side by side (interleaved calls in one process, the median of per-repeat ratios), on
SmolLM2-135M (``--model toy``: a small random Llama, the form the tests run):

- a training step (forward, backward, AdamW step) in fp32 over the same step under bf16 autocast (goal >= 2);
- an eval forward (no grad) in fp32 over the same under bf16 autocast;
- a pruning step (masks sampled, Lagrangian added, masks clamped) over a plain step, both under bf16 autocast
  (goal <= 1.05).

Weights and optimizer state stay fp32, as on a GPU with ``amp_bf16``.

    .venv/bin/python -m scripts.bench.cpu_bf16 [--model smollm2|toy] [--repeats 6] [--batch-size 4] [--seq-len 256]
        [--quick]
"""

from __future__ import annotations

import argparse
import copy
import statistics
from collections.abc import Callable

import torch
from transformers import AutoModelForCausalLM, LlamaForCausalLM, PreTrainedModel

from llmshearing.pruning import attach_masks
from llmshearing.toy import llama_config
from scripts.bench.pruning_step import interleaved_times, training_step
from scripts.bench.quick import parse_args

SMOLLM2_TARGET = {
    'hidden_size': 384, 'num_attention_heads': 6, 'num_key_value_heads': 3, 'intermediate_size': 1024,
    'num_hidden_layers': 20,
}
TOY_TARGET = {'hidden_size': 48, 'num_attention_heads': 2, 'intermediate_size': 64, 'num_hidden_layers': 2}
PRUNING_MODULES = ['layer', 'head', 'intermediate', 'hidden']


def source_model(name: str) -> tuple[PreTrainedModel, dict[str, int]]:
    """SmolLM2-135M (fp32, SDPA attention) or a small random Llama, with a target shape for the pruning step."""
    if name == 'toy':
        torch.manual_seed(0)
        return LlamaForCausalLM(llama_config(512, num_hidden_layers=3)), TOY_TARGET
    from scripts.assets.smollm2 import smollm2_folder

    model = AutoModelForCausalLM.from_pretrained(
        smollm2_folder(), torch_dtype=torch.float32, attn_implementation='sdpa'
    )
    return model, SMOLLM2_TARGET


def bf16(step: Callable[[], None]) -> Callable[[], None]:
    """``step`` under bf16 autocast on the CPU."""

    def autocast_step() -> None:
        with torch.autocast('cpu', dtype=torch.bfloat16):
            step()

    return autocast_step


def median_ratio(numerators: list[float], denominators: list[float]) -> float:
    return statistics.median(numerator / denominator for numerator, denominator in zip(numerators, denominators))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model', choices=('smollm2', 'toy'), default='smollm2')
    parser.add_argument('--batch-size', type=int, default=4)
    parser.add_argument('--seq-len', type=int, default=256)
    parser.add_argument('--repeats', type=int, default=6)
    args = parse_args(parser, {'model': 'toy', 'batch_size': 2, 'seq_len': 32, 'repeats': 1})

    fp32_model, target = source_model(args.model)
    fp32_model.train()
    bf16_model = copy.deepcopy(fp32_model)
    masked_model = copy.deepcopy(fp32_model)
    l0_module = attach_masks(masked_model, target, PRUNING_MODULES)
    optimizers = {
        name: torch.optim.AdamW(model.parameters(), lr=1e-5)
        for name, model in (('fp32', fp32_model), ('bf16', bf16_model), ('masked', masked_model))
    }
    input_ids = torch.randint(0, fp32_model.config.vocab_size, (args.batch_size, args.seq_len))
    tokens = args.batch_size * args.seq_len
    print(
        f'{args.model}: {sum(parameter.numel() for parameter in fp32_model.parameters()) / 1e6:.1f}M parameters, '
        f'batch {args.batch_size} x {args.seq_len} tokens, {torch.get_num_threads()} threads, '
        f'median of {args.repeats} interleaved repeats',
    )

    fp32_times, bf16_times = interleaved_times(
        lambda: training_step(fp32_model, optimizers['fp32'], input_ids),
        bf16(lambda: training_step(bf16_model, optimizers['bf16'], input_ids)),
        args.repeats, torch.device('cpu'),
    )
    print(
        f'train step: fp32 {statistics.median(fp32_times) * 1e3:.0f} ms, bf16 autocast '
        f'{statistics.median(bf16_times) * 1e3:.0f} ms ({tokens / statistics.median(bf16_times):.0f} tokens/s); '
        f'fp32 / bf16 = {median_ratio(fp32_times, bf16_times):.2f} (goal >= 2)',
    )

    def eval_forward(model: PreTrainedModel) -> Callable[[], None]:
        def forward() -> None:
            with torch.no_grad():
                model(input_ids=input_ids)

        return forward

    fp32_model.eval()
    fp32_eval, bf16_eval = interleaved_times(
        eval_forward(fp32_model), bf16(eval_forward(fp32_model)), args.repeats, torch.device('cpu'),
    )
    fp32_model.train()
    print(
        f'eval forward: fp32 {statistics.median(fp32_eval) * 1e3:.0f} ms, bf16 autocast '
        f'{statistics.median(bf16_eval) * 1e3:.0f} ms; fp32 / bf16 = {median_ratio(fp32_eval, bf16_eval):.2f}',
    )

    plain_times, pruning_times = interleaved_times(
        bf16(lambda: training_step(bf16_model, optimizers['bf16'], input_ids)),
        bf16(lambda: training_step(masked_model, optimizers['masked'], input_ids, l0_module)),
        args.repeats, torch.device('cpu'),
    )
    print(
        f'pruning step under bf16 autocast: plain {statistics.median(plain_times) * 1e3:.0f} ms, pruning '
        f'{statistics.median(pruning_times) * 1e3:.0f} ms; pruning / plain = '
        f'{median_ratio(pruning_times, plain_times):.3f} (goal <= 1.05)',
    )


if __name__ == '__main__':
    main()
