"""Logit distillation loss: KL(teacher ‖ student) over next-token distributions, computed in chunks of tokens.

The two logits tensors ``[..., vocab]`` are the only full-size tensors it keeps: the forward pass and the
gradient are computed one chunk of positions at a time in fp32, so a long, large-vocabulary microbatch needs
one chunk of fp32 log-probabilities beside them, not a full fp32 copy (autograd would save one per chunk).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
DEFAULT_CHUNK_SIZE = 1024


def _chunks(num_positions: int, chunk_size: int | None) -> list[slice]:
    step = num_positions if chunk_size is None else chunk_size
    return [slice(start, start + step) for start in range(0, num_positions, max(step, 1))]


class _ChunkedKLDivergence(torch.autograd.Function):
    """Sum over kept positions of ``KL(softmax(t / T) ‖ softmax(s / T))``; the backward recomputes per chunk."""

    @staticmethod
    def forward(ctx, student_logits, teacher_logits, kept, temperature, chunk_size):
        ctx.save_for_backward(student_logits, teacher_logits, kept)
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        total = torch.zeros((), dtype=torch.float32, device=student_logits.device)
        for chunk in _chunks(student_logits.shape[0], chunk_size):
            teacher_log_probs = F.log_softmax(teacher_logits[chunk].float() / temperature, dim=-1)
            student_log_probs = F.log_softmax(student_logits[chunk].float() / temperature, dim=-1)
            # KL per position = sum_v p_t (log p_t - log p_s); teacher_log_probs is reused in place.
            kl = teacher_log_probs.exp().mul_(teacher_log_probs.sub_(student_log_probs)).sum(dim=-1)
            total += (kl * kept[chunk]).sum()
        return total

    @staticmethod
    def backward(ctx, grad_total):
        student_logits, teacher_logits, kept = ctx.saved_tensors
        temperature = ctx.temperature
        grad_student = torch.empty_like(student_logits)
        for chunk in _chunks(student_logits.shape[0], ctx.chunk_size):
            # d KL / d s = (softmax(s / T) - softmax(t / T)) / T
            student_probs = F.softmax(student_logits[chunk].float() / temperature, dim=-1)
            student_probs.sub_(F.softmax(teacher_logits[chunk].float() / temperature, dim=-1))
            scale = (kept[chunk] * (grad_total / temperature)).unsqueeze(-1)
            grad_student[chunk] = student_probs.mul_(scale)
        return grad_student, None, None, None, None


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
        raise ValueError(f'student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ in shape')
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
        student_logits.reshape(-1, vocab_size), teacher_logits.detach().reshape(-1, vocab_size), kept, temperature, chunk_size,
    )
    return kl_sum * temperature**2 / kept.sum().clamp(min=1)
