"""Logit distillation loss: KL(teacher ‖ student) over next-token distributions, computed in chunks of tokens.

Beside the two logits tensors ``[..., vocab]`` it holds only the gradient of the student logits (their size and
dtype, which any backward allocates) and the fp32 log-probabilities of one chunk of positions at a time, not a
full fp32 copy of the logits as the LM loss does (autograd alone would also save one per chunk).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

IGNORE_INDEX = -100
DEFAULT_CHUNK_SIZE = 256


def _chunks(num_positions: int, chunk_size: int | None) -> list[slice]:
    step = num_positions if chunk_size is None else chunk_size
    return [slice(start, start + step) for start in range(0, num_positions, max(step, 1))]


def _log_softmax(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    logits = logits.float()
    return F.log_softmax(logits if temperature == 1.0 else logits / temperature, dim=-1)


class _ChunkedKLDivergence(torch.autograd.Function):
    """Sum over kept positions of ``KL(softmax(t / T) ‖ softmax(s / T))``.

    Each chunk's gradient with respect to the student logits, ``kept * (softmax(s / T) - softmax(t / T)) / T``,
    is written in the forward while the chunk's probabilities are at hand, into one tensor of the logits' size
    and dtype: the tensor the backward returns (scaled), so it costs no more than a backward that recomputed it.
    """

    @staticmethod
    def forward(ctx, student_logits, teacher_logits, kept, temperature, chunk_size):
        gradient = torch.empty_like(student_logits) if ctx.needs_input_grad[0] else None
        total = torch.zeros((), dtype=torch.float32, device=student_logits.device)
        for chunk in _chunks(student_logits.shape[0], chunk_size):
            teacher_log_probs = _log_softmax(teacher_logits[chunk], temperature)
            student_log_probs = _log_softmax(student_logits[chunk], temperature)
            teacher_probs = teacher_log_probs.exp()
            if gradient is not None:
                student_probs = student_log_probs.exp().sub_(teacher_probs)
                gradient[chunk] = student_probs.mul_((kept[chunk] / temperature).unsqueeze(-1))
                del student_probs
            # KL per position = sum_v p_t (log p_t - log p_s)
            kl = teacher_probs.mul_(teacher_log_probs.sub_(student_log_probs)).sum(dim=-1)
            total += kl @ kept[chunk]
        ctx.save_for_backward(gradient)
        ctx.backpropagated = False
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_total):
        if ctx.backpropagated:
            raise RuntimeError('kd_loss backpropagates once (its gradient is scaled in place); compute it again')
        ctx.backpropagated = True
        (gradient,) = ctx.saved_tensors
        return gradient.mul_(grad_total.to(gradient.dtype)), None, None, None, None


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    temperature: float = 1.0,
    chunk_size: int | None = DEFAULT_CHUNK_SIZE,
) -> torch.Tensor:
    """Knowledge-distillation loss: ``KL(teacher ‖ student)`` at temperature ``T``, times ``T²``, averaged over
    the positions whose label is not ``-100``.

    Args:
        student_logits: ``[..., vocab]``; gradients flow into it.
        teacher_logits: ``[..., vocab]``, the same shape; treated as a constant.
        labels: ``student_logits.shape[:-1]``, aligned with the logits (the label *of that position's
            prediction*); ``-100`` excludes a position. ``None`` keeps every position.
        temperature: softens both distributions; must be positive.
        chunk_size: positions per fp32 chunk; ``None`` computes all positions at once.

    Returns:
        A scalar fp32 tensor (0 when no position is kept).
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f'student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} '
            'differ in shape'
        )
    if temperature <= 0:
        raise ValueError(f'temperature must be positive, got {temperature}')
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f'chunk_size must be positive or None, got {chunk_size}')
    vocab_size = student_logits.shape[-1]
    if labels is None:
        kept = torch.ones(student_logits.shape[:-1], dtype=torch.float32, device=student_logits.device)
    else:
        if labels.shape != student_logits.shape[:-1]:
            raise ValueError(f'labels {tuple(labels.shape)} do not match the logits {tuple(student_logits.shape)}')
        kept = (labels != IGNORE_INDEX).float()
    kept = kept.reshape(-1)
    kl_sum = _ChunkedKLDivergence.apply(
        student_logits.reshape(-1, vocab_size),
        teacher_logits.detach().reshape(-1, vocab_size),
        kept,
        temperature,
        chunk_size,
    )
    return kl_sum * temperature**2 / kept.sum().clamp(min=1)
