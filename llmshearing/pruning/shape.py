"""The shape of a Llama-family decoder and its exact non-embedding parameter count."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from llmshearing.choices import TARGET_FIELDS


@dataclasses.dataclass(frozen=True)
class ModelShape:
    """Sizes of a Llama-layout decoder, in Hugging Face config names.

    ``qkv_bias``, ``o_bias`` and ``mlp_bias`` say which projections carry biases (Qwen2: q/k/v only).
    """

    hidden_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    num_hidden_layers: int
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False

    @classmethod
    def from_config(cls, config: Any) -> ModelShape:
        """Read the shape from a transformers config (Llama, Mistral, Qwen2)."""
        heads = config.num_attention_heads
        kv_heads = getattr(config, 'num_key_value_heads', None) or heads
        head_dim = getattr(config, 'head_dim', None) or config.hidden_size // heads
        attention_bias = bool(getattr(config, 'attention_bias', False))
        is_qwen2 = config.model_type == 'qwen2'
        return cls(
            hidden_size=config.hidden_size,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            head_dim=head_dim,
            intermediate_size=config.intermediate_size,
            num_hidden_layers=config.num_hidden_layers,
            qkv_bias=attention_bias or is_qwen2,
            o_bias=attention_bias and not is_qwen2,
            mlp_bias=bool(getattr(config, 'mlp_bias', False)),
        )

    def __str__(self) -> str:
        return (
            f'hidden {self.hidden_size}, heads {self.num_attention_heads} (kv {self.num_key_value_heads}) x '
            f'{self.head_dim}, intermediate {self.intermediate_size}, layers {self.num_hidden_layers}'
        )

    @property
    def num_query_groups(self) -> int:
        """Query heads per key/value head (1 for multi-head attention)."""
        return self.num_attention_heads // self.num_key_value_heads

    @property
    def is_multi_head(self) -> bool:
        return self.num_attention_heads == self.num_key_value_heads

    def with_target(self, target: Mapping[str, int]) -> ModelShape:
        """This shape with the target's sizes; a multi-head source stays multi-head."""
        unknown = sorted(set(target) - set(TARGET_FIELDS))
        if unknown:
            raise ValueError(f'Unknown target field(s) {unknown}; expected a subset of {list(TARGET_FIELDS)}')
        sizes = {name: getattr(self, name) for name in TARGET_FIELDS}
        sizes.update(target)
        if self.is_multi_head and 'num_key_value_heads' not in target:
            sizes['num_key_value_heads'] = sizes['num_attention_heads']
        return dataclasses.replace(self, **sizes)

    def num_non_embedding_params(self) -> int:
        """Exact parameter count without the token embeddings and the LM head."""
        hidden, q_width, kv_width = (
            self.hidden_size,
            self.num_attention_heads * self.head_dim,
            self.num_key_value_heads * self.head_dim,
        )
        attention = hidden * (2 * q_width + 2 * kv_width)
        attention += self.qkv_bias * (q_width + 2 * kv_width) + self.o_bias * hidden
        mlp = 3 * hidden * self.intermediate_size + self.mlp_bias * (2 * self.intermediate_size + hidden)
        norms = 2 * hidden
        return self.num_hidden_layers * (attention + mlp + norms) + hidden

    def config_updates(self) -> dict[str, int]:
        """The config fields a model of this shape sets."""
        return {name: getattr(self, name) for name in TARGET_FIELDS} | {'head_dim': self.head_dim}
