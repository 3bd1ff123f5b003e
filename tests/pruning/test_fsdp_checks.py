"""The shearing algorithm's FSDP checks that docs/configuration.md lists, in a real Trainer (Composer reaches the
algorithm's INIT on a CPU before it would need CUDA for FSDP): each fails before training with its message."""

from __future__ import annotations

import pytest

from llmshearing.pruning import Shearing
from tests.pruning.trainers import samples, trainer_with
from tests.tiny_models import tiny_llama


@pytest.mark.parametrize(
    ('shearing', 'fsdp', 'message'),
    [
        (
            {},
            {'use_orig_params': False},
            'fsdp_config.use_orig_params must be true: the masks are a separate parameter group',
        ),
        (
            {},
            {'activation_checkpointing': True, 'activation_checkpointing_reentrant': True},
            'fsdp_config.activation_checkpointing_reentrant must be false: reentrant checkpointing drops the '
            'gradients of the masks, which enter each layer from outside',
        ),
        (
            {'init': 'importance'},
            {},
            'algorithms.shearing.importance_file is needed with FSDP and init: importance (the model is sharded '
            'before the first batch): write one with llmshearing prune-oneshot',
        ),
    ],
    ids=['use_orig_params', 'reentrant_checkpointing', 'importance_without_file'],
)
def test_fsdp_settings_that_would_lose_the_masks_fail_before_training(shearing, fsdp, message):
    algorithm = Shearing({'num_attention_heads': 2}, ['head'], **shearing)
    with pytest.raises(ValueError) as raised:
        trainer_with(algorithm, tiny_llama(), samples(4), parallelism_config={'fsdp': fsdp})
    assert str(raised.value) == message
