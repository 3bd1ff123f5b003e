"""Downstream evaluation on the paper's tasks (llm-foundry ICL files) with lm-evaluation-harness.

The task files and settings need only the standard library; the harness (``evaluate_models``, ``write_outputs``)
loads torch on first use.
"""

from typing import Any

from llmshearing.evaluation.tasks import PAPER_TASKS, Task, load_tasks

__all__ = ['PAPER_TASKS', 'Task', 'evaluate_models', 'load_tasks', 'write_outputs']


def __getattr__(name: str) -> Any:
    if name in ('evaluate_models', 'write_outputs'):
        from llmshearing.evaluation import harness

        return getattr(harness, name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
