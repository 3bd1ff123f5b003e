"""Knowledge distillation from a frozen teacher: the chunked KD loss and the ``distillation`` Composer algorithm.

``kd_loss`` needs only torch; the Composer algorithm (``Distillation``, ``distill_loss``) loads Composer and
llm-foundry on first use.
"""

from typing import Any

from llmshearing.distillation.loss import kd_loss

__all__ = ['Distillation', 'distill_loss', 'kd_loss']


def __getattr__(name: str) -> Any:
    if name in ('Distillation', 'distill_loss'):
        from llmshearing.distillation import algorithm

        return getattr(algorithm, name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
