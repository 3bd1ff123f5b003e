"""Tiny random Hugging Face models of each supported family."""

from __future__ import annotations

from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

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
