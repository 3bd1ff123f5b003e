"""A callback for the killed-and-resumed tests, loaded through llm-foundry's ``code_paths``: when the environment
variable ``KILL_AFTER_BATCH`` holds a batch number N, the run kills itself with SIGKILL as the batch after N starts,
once batch N's evaluation and checkpoint are written, as a preemption at that point would (no timing involved)."""

from __future__ import annotations

import os
import signal

from composer.core import Callback, State
from composer.loggers import Logger
from llmfoundry.registry import callbacks

KILL_AFTER_BATCH = 'KILL_AFTER_BATCH'


class KillAfterBatch(Callback):
    def batch_start(self, state: State, logger: Logger) -> None:
        batch = os.environ.get(KILL_AFTER_BATCH)
        if batch and int(state.timestamp.batch) == int(batch):
            os.kill(os.getpid(), signal.SIGKILL)


callbacks.register('kill_after_batch', func=KillAfterBatch)
