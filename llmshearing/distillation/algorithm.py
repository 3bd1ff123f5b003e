"""The ``distillation`` Composer algorithm: logit distillation from a frozen teacher (Minitron-style recovery).

``distill_loss`` is the functional form (the run's loss in, the mixed loss out); ``Distillation`` only loads
the teacher at INIT and mixes its KD term into every training microbatch's loss at BEFORE_BACKWARD. That
event comes after every algorithm's AFTER_LOSS, so the mix is the same whatever the order of
``algorithms:``: with ``shearing`` the Lagrangian stays added to the total and ``lm`` stays the LM loss.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from composer.core import Algorithm, Event, Precision, State
from composer.devices import Device
from composer.distributed import prepare_fsdp_module
from composer.distributed.fsdp2_utils import generate_composer_model_policy
from composer.distributed.prepare_distributed import parallelize_model
from composer.loggers import Logger
from composer.utils import FSDP2Config, dist
from llmfoundry.models.hf.hf_fsdp import prepare_hf_model_for_fsdp
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from llmshearing.callbacks.dynamic_loading import next_token_targets
from llmshearing.cpu_autocast import forward_precision, forward_precision_context
from llmshearing.distillation.loss import DEFAULT_CHUNK_SIZE, kd_loss

log = logging.getLogger(__name__)

KEY = 'algorithms.distillation'
TEACHER_DTYPES = {
    Precision.FP32: torch.float32,
    Precision.AMP_FP16: torch.float16,
    Precision.AMP_BF16: torch.bfloat16,
    Precision.AMP_FP8: torch.bfloat16,
}
TEACHER_INPUTS = ('input_ids', 'attention_mask', 'position_ids')


def check_settings(teacher: str | Path, temperature: float, alpha: float) -> Path:
    """The teacher folder, after checking that it holds an HF config and that ``temperature`` and ``alpha`` are
    valid."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f'{KEY}.alpha must be in [0, 1], got {alpha}')
    if temperature <= 0:
        raise ValueError(f'{KEY}.temperature must be positive, got {temperature}')
    folder = Path(teacher).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f'{KEY}.teacher: {teacher} does not exist')
    if not (folder / 'config.json').is_file():
        raise FileNotFoundError(f'{KEY}.teacher: {teacher} has no config.json (not a Hugging Face model folder)')
    return folder


def check_teacher_matches(
    teacher: str | Path, student_config: PretrainedConfig, student_tokenizer: PreTrainedTokenizerBase
) -> None:
    """Raise ``ValueError`` naming ``algorithms.distillation.teacher`` unless the teacher has the student's
    vocabulary size and a tokenizer with the same vocabulary and special tokens."""
    teacher_config = AutoConfig.from_pretrained(teacher)
    if teacher_config.vocab_size != student_config.vocab_size:
        raise ValueError(
            f'{KEY}.teacher: the vocabulary of {teacher} ({teacher_config.vocab_size}) differs from the '
            f"student's ({student_config.vocab_size})",
        )
    try:
        teacher_tokenizer = AutoTokenizer.from_pretrained(teacher)
    except (OSError, ValueError) as error:
        raise ValueError(f"{KEY}.teacher: {teacher} has no tokenizer to compare with the student's: {error}") from error
    if teacher_tokenizer.get_vocab() != student_tokenizer.get_vocab() or (
        teacher_tokenizer.all_special_tokens != student_tokenizer.all_special_tokens
    ):
        raise ValueError(f"{KEY}.teacher: the tokenizer of {teacher} differs from the student's")


def load_teacher(
    folder: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = 'cpu'
) -> PreTrainedModel:
    """The teacher: an HF causal LM with frozen weights of ``dtype``, in eval mode (on the meta device when asked)."""
    if torch.device(device).type == 'meta':
        with torch.device('meta'):
            teacher = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder), torch_dtype=dtype)
    else:
        teacher = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=dtype).to(device)
    return teacher.requires_grad_(False).eval()


def reads_teacher_weights() -> bool:
    """Whether this rank reads the teacher's weights from its folder: only global rank 0 does (as llm-foundry
    loads the student with ``init_device: mixed``); the other ranks build the teacher on the meta device and
    receive the weights from rank 0."""
    return dist.get_global_rank() == 0


def share_teacher(teacher: PreTrainedModel, device: Device) -> PreTrainedModel:
    """The teacher with global rank 0's weights on every rank, on ``device``: the ranks that built it on the
    meta device allocate it there (empty, with its tied weights tied again), then every parameter and buffer is
    broadcast from rank 0. For runs without FSDP, where each rank needs the whole teacher."""
    if any(tensor.is_meta for tensor in [*teacher.parameters(), *teacher.buffers()]):
        teacher = teacher.to_empty(device=device.tensor_to_device(torch.empty(0)).device)
        teacher.tie_weights()
    else:
        teacher = device.module_to_device(teacher)
    for tensor in [*teacher.parameters(), *teacher.buffers()]:
        dist.broadcast(tensor.data, src=0)
    return teacher


def shard_teacher(teacher: PreTrainedModel, state: State) -> torch.nn.Module:
    """Wrap ``teacher`` with FSDP the way Composer wraps the student (llm-foundry's wrap policy, the run's
    ``fsdp_config`` and precision; FSDP1 or FSDP2, as the run's config is), without activation checkpointing: the
    teacher never runs a backward. Ranks holding the teacher on the meta device get rank 0's weights (FSDP1's
    ``sync_module_states``; FSDP2 turns it on itself when some ranks are on the meta device).

    Returns the module holding the wrapped teacher under ``.teacher``.
    """
    prepare_hf_model_for_fsdp(teacher, init_device=None)
    holder = torch.nn.ModuleDict({'teacher': teacher})
    fsdp_config = dataclasses.replace(state.fsdp_config, activation_checkpointing=False, activation_cpu_offload=False)
    if isinstance(fsdp_config, FSDP2Config):
        parallelize_model(
            holder, fsdp_config, precision=state.precision, fsdp_wrap_policy=generate_composer_model_policy(holder),
        )
    else:
        fsdp_config.sync_module_states = True
        prepare_fsdp_module(holder, None, fsdp_config, state.precision, state.device)
    return holder


@torch.no_grad()
def teacher_logits(teacher: torch.nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
    """The teacher's logits on the batch's inputs, under ``torch.no_grad``."""
    inputs = {key: batch[key] for key in TEACHER_INPUTS if key in batch}
    return teacher(**inputs, use_cache=False).logits


def build_teacher(folder: str | Path, dtype: torch.dtype, state: State) -> torch.nn.Module:
    """The run's teacher, read from ``folder`` by global rank 0 only (``reads_teacher_weights``), on the run's
    device on every rank: sharded like the student under FSDP (``shard_teacher``), else whole on each rank
    (``share_teacher``)."""
    teacher = load_teacher(folder, dtype, device='cpu' if reads_teacher_weights() else 'meta')
    if state.fsdp_config is not None:
        return shard_teacher(teacher, state).teacher
    return share_teacher(teacher, state.device)


def distill_loss(
    loss: torch.Tensor | Mapping[str, torch.Tensor],
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    alpha: float = 1.0,
    temperature: float = 1.0,
    chunk_size: int | None = DEFAULT_CHUNK_SIZE,
) -> dict[str, torch.Tensor]:
    """Replace the LM part of a microbatch's loss by ``alpha * KD + (1 - alpha) * LM``.

    Args:
        loss: the LM loss, or a dict with ``total`` and, when other terms were added to it, ``lm`` (as
            ``shearing`` writes it: ``total = lm + lagrangian``). Those other terms stay in the total.
        student_logits, teacher_logits: ``[batch, seq_len, vocab]``.
        labels: ``[batch, seq_len]`` as the model takes them (position ``t`` predicts ``labels[:, t + 1]``),
            ``-100`` where the LM loss takes none; KD is averaged over the same predictions.

    Returns:
        The loss dict with ``total``, ``lm`` and ``kd`` (and the input's other keys).
    """
    losses = dict(loss) if isinstance(loss, Mapping) else {'total': loss}
    total = losses['total']
    language_model_loss = losses.get('lm', total)
    kd = kd_loss(student_logits, teacher_logits, next_token_targets(labels), temperature, chunk_size)
    mixed = alpha * kd + (1.0 - alpha) * language_model_loss
    if 'lm' in losses:
        mixed = mixed + (total - language_model_loss)  # the other terms, e.g. shearing's Lagrangian
    return losses | {'total': mixed, 'lm': language_model_loss, 'kd': kd}


class Distillation(Algorithm):
    """Train the model to match a frozen teacher's next-token distributions: ``loss = alpha * KD + (1 - alpha) * LM``.

    The teacher is loaded from its folder at INIT (so a resumed run re-loads it); it is not part of the model,
    the optimizer or the checkpoints, and under FSDP it is sharded like the model. Composer logs
    ``loss/train/kd``, ``loss/train/lm`` and ``loss/train/total``.

    Args:
        teacher: an HF model folder with the student's vocabulary and tokenizer (e.g. the pruning source).
        temperature: softens both distributions; KD is scaled by ``temperature**2``.
        alpha: weight of KD; ``1 - alpha`` weighs the LM loss.
        chunk_size: positions per fp32 chunk of the KD computation (``None``: all at once).
    """

    def __init__(
        self,
        teacher: str,
        temperature: float = 1.0,
        alpha: float = 1.0,
        chunk_size: int | None = DEFAULT_CHUNK_SIZE,
    ):
        self.teacher_folder = check_settings(teacher, temperature, alpha)
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f'{KEY}.chunk_size must be positive or null, got {chunk_size}')
        self.temperature = temperature
        self.alpha = alpha
        self.chunk_size = chunk_size
        self.teacher: torch.nn.Module | None = None

    def __repr__(self) -> str:
        return (
            f'{type(self).__name__}(teacher={str(self.teacher_folder)!r}, temperature={self.temperature}, '
            f'alpha={self.alpha}, chunk_size={self.chunk_size})'
        )

    def match(self, event: Event, state: State) -> bool:
        return event in (Event.INIT, Event.BEFORE_BACKWARD)

    def apply(self, event: Event, state: State, logger: Logger) -> None:
        if event == Event.INIT:
            student = state.model.model
            check_teacher_matches(self.teacher_folder, student.config, state.model.tokenizer)
            self.teacher = build_teacher(self.teacher_folder, TEACHER_DTYPES[forward_precision(state)], state)
            log.info('Distilling from %s (alpha %s, temperature %s)', self.teacher_folder, self.alpha, self.temperature)
        elif event == Event.BEFORE_BACKWARD:
            with forward_precision_context(state):
                logits = teacher_logits(self.teacher, state.batch)
            state.loss = distill_loss(
                state.loss,
                state.outputs.logits,
                logits,
                state.batch['labels'],
                self.alpha,
                self.temperature,
                self.chunk_size,
            )
