"""Loading a tied-embedding model the way llm-foundry does (on the meta device first) no longer warns that
``lm_head.weight`` is newly initialized; one line says it is tied instead; the warning stays for an untied model
whose checkpoint lacks the head."""

from __future__ import annotations

import logging

import pytest
import transformers
from accelerate import init_empty_weights
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from llmshearing.tied_embeddings import TRANSFORMERS_LOADER, drop_tied_head_warning, log
from llmshearing.toy import save_toy_model

NEWLY_INITIALIZED = "are newly initialized: ['lm_head.weight']"


@pytest.fixture
def transformers_records(caplog):
    transformers.logging.enable_propagation()
    caplog.set_level(logging.INFO)
    yield caplog
    transformers.logging.disable_propagation()
    logging.getLogger(TRANSFORMERS_LOADER).filters.clear()


def _load_on_meta(folder) -> None:
    with init_empty_weights(include_buffers=False):
        AutoModelForCausalLM.from_pretrained(folder)


def test_a_tied_head_is_said_to_be_tied_once_not_newly_initialized(tmp_path, transformers_records):
    folder = save_toy_model(tmp_path / 'tied', tie_word_embeddings=True)
    _load_on_meta(folder)
    assert NEWLY_INITIALIZED in transformers_records.text, 'transformers warns without the filter'
    transformers_records.clear()

    drop_tied_head_warning()
    drop_tied_head_warning()
    _load_on_meta(folder)
    _load_on_meta(folder)

    assert NEWLY_INITIALIZED not in transformers_records.text
    ours = [record.getMessage() for record in transformers_records.records if record.name == log.name]
    assert ours == [
        f'{folder} ties lm_head.weight to the input embeddings: the weight is not newly initialized (transformers '
        'warns so when the model is loaded on the meta device, before the tie)'
    ]


def test_an_untied_model_without_its_head_still_warns(tmp_path, transformers_records):
    folder = save_toy_model(tmp_path / 'untied')
    weights = load_file(folder / 'model.safetensors')
    del weights['lm_head.weight']
    save_file(weights, folder / 'model.safetensors', metadata={'format': 'pt'})
    drop_tied_head_warning()
    _load_on_meta(folder)
    assert NEWLY_INITIALIZED in transformers_records.text
