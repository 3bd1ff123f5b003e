"""A distillation training step against a plain one, and the peak memory of ``kd_loss`` against the LM loss.

Step time: a student of the pruned shape and a teacher of the source's shape, one batch. Three calls run
interleaved in one process, so machine noise hits them alike: the plain step (student forward with the LM loss,
backward, AdamW step), the distillation step (teacher forward under ``torch.no_grad``, student forward,
``distill_loss``, backward, AdamW step), the teacher's forward alone and ``kd_loss`` forward + backward alone on
logits of the batch's shape. The prediction from the teacher's forward time alone is (plain + teacher forward) /
plain; printed: both ratios and measured / predicted (goal <= 1.10), then where the rest goes: the distillation
step's time beyond plain + teacher forward next to the KD loss alone, and measured / (plain + teacher + KD loss);
medians of the per-repeat figures.

Memory: on one long, large-vocabulary microbatch of logits (``--memory-seq-len`` x ``--memory-vocab``, the
``--dtype`` of the logits, as under autocast), the peak memory taken by forward + backward of the LM loss
(transformers' causal-LM cross-entropy, which upcasts the logits to fp32) and of ``kd_loss`` (chunked, and with
``chunk_size=None``), beyond the logits themselves (RSS high-water mark on CPU, allocator peak on CUDA).

    .venv/bin/python -m scripts.bench.distillation_step [--device cuda --dtype bf16] [--quick]
"""

from __future__ import annotations

import argparse
import gc
import statistics
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.loss.loss_utils import ForCausalLMLoss

from llmshearing.distillation import distill_loss, kd_loss
from llmshearing.distillation.loss import DEFAULT_CHUNK_SIZE
from scripts.bench.pruning_step import DTYPES, timed
from scripts.bench.quick import parse_args


def llama(vocab_size: int, hidden_size: int, layers: int) -> LlamaConfig:
    heads = hidden_size // 64
    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, num_attention_heads=heads, num_key_value_heads=heads,
        intermediate_size=int(hidden_size * 2.75), num_hidden_layers=layers, attn_implementation='sdpa',
    )


def resident_bytes(field: str) -> int:
    for line in Path('/proc/self/status').read_text().splitlines():
        if line.startswith(f'{field}:'):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f'/proc/self/status has no {field}')


def peak_bytes_beyond_start(work: Callable[[], None], device: torch.device) -> int:
    """The memory ``work`` takes at its peak beyond what was held when it started."""
    gc.collect()
    if device.type == 'cuda':
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        work()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - start
    Path('/proc/self/clear_refs').write_text('5')  # resets the high-water mark VmHWM to the current RSS
    start = resident_bytes('VmRSS')
    work()
    return resident_bytes('VmHWM') - start


def step_times(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    teacher = (
        LlamaForCausalLM(llama(args.vocab, args.teacher_hidden_size, args.teacher_layers)).to(device, dtype).eval()
    )
    teacher.requires_grad_(False)
    student = (
        LlamaForCausalLM(llama(args.vocab, args.student_hidden_size, args.student_layers)).to(device, dtype).train()
    )
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-5)
    input_ids = torch.randint(0, args.vocab, (args.batch_size, args.seq_len), device=device)

    def plain_step() -> None:
        student(input_ids=input_ids, labels=input_ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def teacher_forward() -> torch.Tensor:
        with torch.no_grad():
            return teacher(input_ids=input_ids).logits

    def distillation_step() -> None:
        teacher_logits = teacher_forward()
        outputs = student(input_ids=input_ids, labels=input_ids)
        distill_loss(outputs.loss, outputs.logits, teacher_logits, input_ids, alpha=args.alpha)['total'].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    student_logits = student(input_ids=input_ids).logits.detach().requires_grad_()
    fixed_teacher_logits = teacher_forward()

    def kd_alone() -> None:
        kd_loss(student_logits, fixed_teacher_logits, input_ids).backward()
        student_logits.grad = None

    steps = {
        'plain': plain_step, 'distillation': distillation_step, 'teacher forward': teacher_forward, 'kd_loss': kd_alone,
    }
    for _ in range(2):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, step in steps.items():
            times[name].append(timed(step, device))
    measured = [distill / plain for plain, distill in zip(times['plain'], times['distillation'])]
    predicted = [(plain + forward) / plain for plain, forward in zip(times['plain'], times['teacher forward'])]
    print(
        f'teacher: hidden {args.teacher_hidden_size}, {args.teacher_layers} layers; student: hidden '
        f'{args.student_hidden_size}, {args.student_layers} layers; vocabulary {args.vocab}; batch {args.batch_size} x '
        f'{args.seq_len} tokens; {device.type} {args.dtype}, {torch.get_num_threads()} threads',
    )
    labels = {'plain': 'plain step', 'distillation': 'distillation step', 'kd_loss': 'kd_loss forward + backward'}
    for name, values in times.items():
        print(f'{labels.get(name, name):<27} (median of {args.repeats}): {statistics.median(values) * 1e3:8.1f} ms')
    print(f'distillation step / plain step:                   {statistics.median(measured):.3f}')
    print(f'predicted from the teacher forward, (plain + teacher) / plain: {statistics.median(predicted):.3f}')
    ratio = statistics.median(m / p for m, p in zip(measured, predicted))
    print(f'measured / predicted: {ratio:.3f} (median of per-repeat ratios; goal <= 1.10)')
    # Where the rest goes: the step's time beyond plain + teacher forward, next to the KD loss timed alone.
    beyond = [
        distill - plain - forward
        for plain, distill, forward in zip(times['plain'], times['distillation'], times['teacher forward'])
    ]
    print(
        f'distillation - plain - teacher forward: {statistics.median(beyond) * 1e3:.1f} ms; kd_loss forward + backward '
        f'alone: {statistics.median(times["kd_loss"]) * 1e3:.1f} ms',
    )
    with_kd = [
        distill / (plain + forward + kd)
        for plain, distill, forward, kd in zip(
            times['plain'], times['distillation'], times['teacher forward'], times['kd_loss']
        )
    ]
    print(
        'measured / predicted with the KD loss, distillation / (plain + teacher + kd_loss): '
        f'{statistics.median(with_kd):.3f}'
    )


def loss_memory(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    shape = (1, args.memory_seq_len, args.memory_vocab)
    student_logits = torch.randn(shape, device=device, dtype=dtype).requires_grad_()
    teacher_logits = torch.randn(shape, device=device, dtype=dtype)
    labels = torch.randint(0, args.memory_vocab, shape[:2], device=device)
    logits_bytes = student_logits.numel() * student_logits.element_size()

    def lm_loss() -> None:
        ForCausalLMLoss(student_logits, labels, args.memory_vocab).backward()
        student_logits.grad = None

    def kd(chunk_size: int | None) -> Callable[[], None]:
        def run() -> None:
            kd_loss(student_logits, teacher_logits, labels, chunk_size=chunk_size).backward()
            student_logits.grad = None

        return run

    print(
        f'logits: {shape[1]} tokens x {shape[2]} vocabulary, {student_logits.dtype} on {device.type}: '
        f'{logits_bytes / 2**30:.2f} GiB each (student, teacher)',
    )
    peaks = {
        'LM loss (fp32 upcast)': peak_bytes_beyond_start(lm_loss, device),
        f'kd_loss, chunk_size {DEFAULT_CHUNK_SIZE}': peak_bytes_beyond_start(kd(DEFAULT_CHUNK_SIZE), device),
        'kd_loss, chunk_size None': peak_bytes_beyond_start(kd(None), device),
    }
    for name, peak in peaks.items():
        print(
            f'{name:<28} forward + backward peak beyond the logits: {peak / 2**30:6.2f} GiB = '
            f'{peak / logits_bytes:5.2f} x logits'
        )
    lm_peak, chunked_peak = list(peaks.values())[:2]
    print(f'kd_loss (chunked) peak / LM loss peak: {chunked_peak / lm_peak:.3f}')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--dtype', choices=sorted(DTYPES), default='fp32')
    parser.add_argument('--vocab', type=int, default=8192)
    parser.add_argument('--teacher-hidden-size', type=int, default=512)
    parser.add_argument('--teacher-layers', type=int, default=4)
    parser.add_argument('--student-hidden-size', type=int, default=320)
    parser.add_argument('--student-layers', type=int, default=3)
    parser.add_argument('--batch-size', type=int, default=4)
    parser.add_argument('--seq-len', type=int, default=256)
    parser.add_argument('--alpha', type=float, default=0.5)
    parser.add_argument('--repeats', type=int, default=12)
    parser.add_argument('--memory-seq-len', type=int, default=2048)
    parser.add_argument('--memory-vocab', type=int, default=128256)
    args = parse_args(
        parser,
        {
            'vocab': 1024, 'teacher_hidden_size': 128, 'teacher_layers': 2, 'student_hidden_size': 64,
            'student_layers': 1, 'batch_size': 2, 'seq_len': 32, 'repeats': 1, 'memory_seq_len': 512,
            'memory_vocab': 32768,
        },
    )
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    step_times(args, device, dtype)
    print()
    loss_memory(args, device, torch.bfloat16 if args.dtype == 'fp32' else dtype)


if __name__ == '__main__':
    main()
