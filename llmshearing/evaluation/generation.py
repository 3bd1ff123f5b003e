"""Responses of a Hugging Face causal LM to instructions (``llmshearing generate``), and the model loading that the
local judge of ``llmshearing compare`` and ``llmshearing evaluate`` share.

Each instruction is handed to the model through its tokenizer's chat template when it has one (one user message, the
generation prompt added), else as it is. Prompts are generated in batches of similar length, left-padded, greedy or
sampled, until EOS or the token limit; the responses are the new tokens, decoded without special tokens, with
leading and trailing whitespace stripped.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError
from tqdm import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from llmshearing.checks import ParameterError, check_model_settings, check_positive
from llmshearing.choices import (
    DEFAULT_EVAL_DEVICE,
    DEFAULT_EVAL_DTYPE,
    DEFAULT_EVAL_SEED,
    DEFAULT_GENERATE_BATCH_SIZE,
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_P,
)

log = logging.getLogger(__name__)


def load_tokenizer(folder: str | Path, command: str) -> PreTrainedTokenizerBase:
    """The tokenizer in the model folder ``folder``; a folder without one is a ``ValueError`` saying that ``command``
    needs its files."""
    try:
        return AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, TypeError) as error:
        raise ValueError(
            f'model folder {folder}: its tokenizer cannot be loaded ({type(error).__name__}); {command} needs the '
            "model's tokenizer files (tokenizer_config.json and tokenizer.json or tokenizer.model) in the folder",
        ) from None


def load_weights(folder: str | Path, dtype: str, device: str) -> PreTrainedModel:
    """The causal LM in ``folder`` on ``device`` in eval mode (float32 weights for ``amp_bf16``); weights that do not
    load are a ``ValueError`` naming the folder."""
    weights_dtype = torch.float32 if dtype == 'amp_bf16' else getattr(torch, dtype)
    try:
        return AutoModelForCausalLM.from_pretrained(folder, torch_dtype=weights_dtype).to(device).eval()
    except (OSError, ValueError, RuntimeError, SafetensorError) as error:
        raise ValueError(f'model folder {folder}: its weights cannot be loaded: {error}') from None


def load_model(
    folder: str | Path, dtype: str, device: str, command: str,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """``load_weights`` and ``load_tokenizer`` of ``folder`` (tokenizer first, the lighter), with the tokenizer's EOS
    (else UNK) token as the pad token when it has none."""
    tokenizer = load_tokenizer(folder, command)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
    if tokenizer.pad_token is None:
        raise ValueError(f'the tokenizer of {folder} has no pad, EOS or UNK token to pad batches with')
    return load_weights(folder, dtype, device), tokenizer


def forward_context(dtype: str, device: str) -> contextlib.AbstractContextManager:
    """Where the model runs: under bfloat16 autocast for ``amp_bf16``, without gradients."""
    stack = contextlib.ExitStack()
    stack.enter_context(torch.inference_mode())
    if dtype == 'amp_bf16':
        stack.enter_context(torch.autocast(torch.device(device).type, dtype=torch.bfloat16))
    return stack


def model_prompt(tokenizer: PreTrainedTokenizerBase, instruction: str) -> str:
    """The text handed to the model for ``instruction``: its chat template applied to one user message with the
    generation prompt, or the instruction itself when the tokenizer has no template."""
    if tokenizer.chat_template is None:
        return instruction
    return tokenizer.apply_chat_template(
        [{'role': 'user', 'content': instruction}], tokenize=False, add_generation_prompt=True,
    )


def encode_prompts(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of ``model_prompt`` texts: a chat template writes its own special tokens, a plain prompt gets the
    tokenizer's (a BOS token, for most)."""
    add_special_tokens = tokenizer.chat_template is None
    return [tokenizer(text, add_special_tokens=add_special_tokens).input_ids for text in texts]


def warn_beyond_positions(model: PreTrainedModel, tokens: int, what: str) -> None:
    """Log a warning when ``what`` takes more ``tokens`` than the model's ``max_position_embeddings`` (nothing is
    truncated)."""
    positions = getattr(model.config, 'max_position_embeddings', None)
    if positions is not None and tokens > positions:
        log.warning('%s take up to %d tokens, beyond the %d positions of %s; nothing is truncated', what, tokens,
                    positions, model.name_or_path)


def pad_batch(
    sequences: Sequence[Sequence[int]], pad_token_id: int, side: str, device: str,
) -> dict[str, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` on ``device`` of token sequences padded to the longest on the ``left`` or
    ``right``."""
    longest = max(len(sequence) for sequence in sequences)
    input_ids = torch.full((len(sequences), longest), pad_token_id)
    attention_mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        columns = slice(longest - len(sequence), longest) if side == 'left' else slice(0, len(sequence))
        input_ids[row, columns] = torch.tensor(sequence)
        attention_mask[row, columns] = 1
    return {'input_ids': input_ids.to(device), 'attention_mask': attention_mask.to(device)}


def length_batches(lengths: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Indices of ``lengths`` in batches of ``batch_size``, longest first, so that a batch holds similar lengths; ties
    keep their order."""
    order = sorted(range(len(lengths)), key=lambda index: -lengths[index])
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]


def _eos_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    configured = model.generation_config.eos_token_id
    ids = configured if isinstance(configured, list) else [configured]
    return sorted({token for token in [*ids, tokenizer.eos_token_id] if token is not None})


def generate_responses(
    model_dir: str | Path,
    instructions: Sequence[str],
    *,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    batch_size: int = DEFAULT_GENERATE_BATCH_SIZE,
    sample: bool = False,
    temperature: float = DEFAULT_TEMPERATURE,
    top_p: float = DEFAULT_TOP_P,
    seed: int = DEFAULT_EVAL_SEED,
    dtype: str = DEFAULT_EVAL_DTYPE,
    device: str = DEFAULT_EVAL_DEVICE,
) -> list[str]:
    """The model's response to each instruction, in order.

    Args:
        model_dir: a Hugging Face causal LM folder with its tokenizer.
        instructions: the prompts, handed to the model as ``model_prompt`` writes them.
        max_new_tokens: the most tokens of a response; generation stops earlier at an EOS token (the tokenizer's and
            the model's generation config's).
        batch_size: prompts per batch, left-padded.
        sample: sample with ``temperature`` and ``top_p`` (no top-k) after ``torch.manual_seed(seed)``, so that the
            same seed, prompts and batch size give the same responses; greedy decoding when False.
        dtype: ``float32`` or ``bfloat16`` weights, or ``amp_bf16`` (float32 weights, bfloat16 autocast).
        device: ``cpu`` or ``cuda``.
    """
    check_positive(max_new_tokens=max_new_tokens, batch_size=batch_size)
    if sample and temperature <= 0:
        raise ParameterError('temperature', f'must be positive, got {temperature}')
    if sample and not 0 < top_p <= 1:
        raise ParameterError('top_p', f'must be in (0, 1], got {top_p}')
    check_model_settings(dtype, device)
    model, tokenizer = load_model(model_dir, dtype, device, 'generate')
    eos_token_ids = _eos_token_ids(model, tokenizer)
    settings = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=sample,
        temperature=temperature if sample else None,
        top_p=top_p if sample else None,
        top_k=None,
        eos_token_id=eos_token_ids,
        pad_token_id=tokenizer.pad_token_id,
    )
    prompts = encode_prompts(tokenizer, [model_prompt(tokenizer, instruction) for instruction in instructions])
    warn_beyond_positions(model, max(len(ids) for ids in prompts) + max_new_tokens, 'prompts and responses')
    responses: list[str] = [''] * len(prompts)
    if sample:
        torch.manual_seed(seed)
    with forward_context(dtype, device), tqdm(total=len(prompts), desc='generating', unit='prompt') as progress:
        for batch in length_batches([len(ids) for ids in prompts], batch_size):
            inputs = pad_batch([prompts[index] for index in batch], tokenizer.pad_token_id, 'left', device)
            output = model.generate(**inputs, generation_config=settings, use_model_defaults=False)
            for index, tokens in zip(batch, output[:, inputs['input_ids'].shape[1]:].tolist()):
                end = next((position for position, token in enumerate(tokens) if token in eos_token_ids), len(tokens))
                responses[index] = tokenizer.decode(tokens[:end], skip_special_tokens=True).strip()
            progress.update(len(batch))
    log.info('Generated %d responses with %s', len(responses), model_dir)
    return responses
