"""Downstream evaluation on the paper's tasks (llm-foundry ICL files) with lm-evaluation-harness."""

from llmshearing.evaluation.harness import evaluate_models, write_outputs
from llmshearing.evaluation.tasks import PAPER_TASKS, Task, load_tasks

__all__ = ['PAPER_TASKS', 'Task', 'evaluate_models', 'load_tasks', 'write_outputs']
