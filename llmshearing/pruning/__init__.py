"""Targeted structured pruning: hard-concrete masks, the Lagrangian, the Composer algorithm, physical pruning.

The masks and physical pruning need only torch and transformers; the Composer algorithm (``Shearing``,
``apply_shearing``) loads Composer on first use.
"""

from typing import Any

from llmshearing.pruning.importance import importance_masks
from llmshearing.pruning.l0_module import PRUNING_MODULES, L0Module, StructureMasks, default_pruning_modules
from llmshearing.pruning.llama_layout import attach_masks, prune_model
from llmshearing.pruning.shape import ModelShape

__all__ = [
    'PRUNING_MODULES',
    'L0Module',
    'ModelShape',
    'Shearing',
    'StructureMasks',
    'apply_shearing',
    'attach_masks',
    'default_pruning_modules',
    'importance_masks',
    'prune_model',
]


def __getattr__(name: str) -> Any:
    if name in ('Shearing', 'apply_shearing'):
        from llmshearing.pruning import algorithm

        return getattr(algorithm, name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
