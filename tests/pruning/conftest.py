"""Fixtures of the pruning tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmshearing.toy import save_toy_model, write_random_domain_data


@pytest.fixture(scope='module')
def toy_source_and_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A saved toy grouped-query Llama (hidden 32, 4 heads in 2 kv groups, 48 MLP channels, 3 layers) and random
    prepared data of two domains (``alpha``, ``beta``), for ``prune-oneshot``."""
    root = tmp_path_factory.mktemp('oneshot')
    model = save_toy_model(root / 'source', hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                           intermediate_size=48, num_hidden_layers=3)
    data = write_random_domain_data(root / 'data', ['alpha', 'beta'], train_samples=8, eval_samples=2, seq_len=32)
    return model, data
