"""Invariant 1 on real pretrained weights: SmolLM2-135M (grouped-query attention, tied embeddings) masked to a GQA
target computes what its pruned model computes, with mask values that are not just 0 and 1."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmshearing.pruning import attach_masks, prune_model

TARGET = {'hidden_size': 384, 'num_attention_heads': 6, 'num_key_value_heads': 3, 'intermediate_size': 1024,
          'num_hidden_layers': 20}
MODULES = ['layer', 'head', 'kv_head', 'intermediate', 'hidden']
TEXT = ['The capital of France is Paris, and the capital of Italy is Rome.',
        'def add(a, b):\n    return a + b\n']


def test_smollm2_masked_eval_forward_equals_the_pruned_model(smollm2: Path):
    model = AutoModelForCausalLM.from_pretrained(smollm2, torch_dtype=torch.float32, attn_implementation='eager')
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    l0_module = attach_masks(model, TARGET, MODULES)
    with torch.no_grad():
        for mask in l0_module.masks.values():
            mask.log_alpha.uniform_(-2.0, 2.0)  # kept scores in (0.08, 0.92)
    model.eval()
    encoded = [tokenizer(text).input_ids for text in TEXT]
    length = min(len(ids) for ids in encoded)
    input_ids = torch.tensor([ids[:length] for ids in encoded])  # (2, length)
    with torch.no_grad():
        masked_logits = model(input_ids).logits
        pruned = prune_model(model)
        pruned_logits = pruned(input_ids).logits

    config = pruned.config
    assert (config.hidden_size, config.num_attention_heads, config.num_key_value_heads, config.intermediate_size,
            config.num_hidden_layers, config.head_dim) == (384, 6, 3, 1024, 20, 64)
    assert pruned.lm_head.weight.data_ptr() == pruned.model.embed_tokens.weight.data_ptr()
    # Relative to the logits (about 30 here): 30 layers of fp32 rounding with mask scales in (0.08, 0.92). In
    # float64 the gap falls to about 1e-5, the precision of the fp32 softmax that eager attention keeps.
    difference = (masked_logits - pruned_logits).abs().max().item()
    scale = masked_logits.abs().max().item()
    assert difference <= 2e-5 * scale, (difference, scale)
