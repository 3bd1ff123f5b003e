"""Offline toy assets for demos and tests: a byte-level tokenizer, small random Llama models, token shards.

Nothing here downloads anything.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
from streaming import MDSWriter
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIAL_TOKENS = ('<unk>', '<s>', '</s>')


def byte_level_tokenizer() -> PreTrainedTokenizerFast:
    """A tokenizer whose pieces are the 256 bytes (plus ``<unk>``, ``<s>``, ``</s>``): 259 ids."""
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS)}
    for character in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[character] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token='<unk>'))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token='<unk>',
        bos_token='<s>',
        eos_token='</s>',
        pad_token='</s>',
        model_max_length=1 << 20,
        model_input_names=['input_ids', 'attention_mask'],
    )


def llama_config(vocab_size: int, **sizes: int) -> LlamaConfig:
    """A small Llama config; ``sizes`` override hidden/heads/layers/intermediate."""
    defaults = dict(
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=128,
        num_hidden_layers=4,
        max_position_embeddings=1024,
    )
    return LlamaConfig(vocab_size=vocab_size, **(defaults | sizes))


def save_toy_model(output_dir: str | Path, seed: int = 0, **sizes: int) -> Path:
    """Write a random Llama (with the byte-level tokenizer) as a Hugging Face folder."""
    import torch

    output_dir = Path(output_dir)
    tokenizer = byte_level_tokenizer()
    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config(len(tokenizer), **sizes))
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return output_dir


def write_token_shards(output_dir: str | Path, samples: Iterable[np.ndarray], domain: str | None = None) -> Path:
    """Write token samples as MDS: a ``tokens`` column (``ndarray:uint16``), as llm-foundry's ``text`` loader
    reads, and with ``domain`` a ``domain`` column naming it, as ``prepare-data`` writes."""
    output_dir = Path(output_dir)
    columns = {'tokens': 'ndarray:uint16'} | ({'domain': 'str'} if domain is not None else {})
    with MDSWriter(out=str(output_dir), columns=columns) as writer:
        for sample in samples:
            writer.write(
                {'tokens': np.asarray(sample, dtype=np.uint16)} | ({'domain': domain} if domain is not None else {})
            )
    return output_dir


def write_random_domain_data(
    root: str | Path, domains: Iterable[str], train_samples: int, eval_samples: int, seq_len: int, seed: int = 0
) -> Path:
    """Random-token ``train/<domain>`` and ``eval/<domain>`` shards, laid out as ``prepare-data`` lays them out."""
    root = Path(root)
    vocab_size = len(byte_level_tokenizer())
    for index, domain in enumerate(domains):
        for split, count in (('train', train_samples), ('eval', eval_samples)):
            samples = random_token_samples(count, seq_len, vocab_size, seed=seed + 2 * index + (split == 'eval'))
            write_token_shards(root / split / domain, samples, domain=domain)
    return root


def random_token_samples(num_samples: int, seq_len: int, vocab_size: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(len(SPECIAL_TOKENS), vocab_size, seq_len, dtype=np.uint16) for _ in range(num_samples)]
