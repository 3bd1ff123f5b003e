"""Targeted structured pruning: hard-concrete masks, the Lagrangian, the Composer algorithm, physical pruning."""

from llmshearing.pruning.algorithm import Shearing, apply_shearing
from llmshearing.pruning.l0_module import PRUNING_MODULES, L0Module, StructureMasks
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
    'prune_model',
]
