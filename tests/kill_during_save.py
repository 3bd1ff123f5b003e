"""A callback for the kill-during-save test, loaded through llm-foundry's ``code_paths``: when the environment
variable ``KILL_DURING_SAVE`` names a checkpoint file, the run writes the first half of that checkpoint and kills
itself with SIGKILL, as a preemption in the middle of Composer's save would (no timing involved)."""

from __future__ import annotations

import io
import os
import signal
from pathlib import Path

import composer.utils.checkpoint as composer_checkpoint
import torch
from composer.core import Callback, State
from composer.loggers import Logger
from llmfoundry.registry import callbacks

KILL_DURING_SAVE = 'KILL_DURING_SAVE'


class KillDuringSave(Callback):
    def init(self, state: State, logger: Logger) -> None:
        name = os.environ.get(KILL_DURING_SAVE)
        if not name:
            return
        write = composer_checkpoint._write_checkpoint_file

        def write_half_then_die(state_dict: dict, filename: str) -> None:
            if Path(filename).name != name:
                write(state_dict, filename)
                return
            buffer = io.BytesIO()
            torch.save(state_dict, buffer)
            with open(filename, 'wb') as file:
                file.write(buffer.getbuffer()[: buffer.tell() // 2])
                file.flush()
                os.fsync(file.fileno())
            os.kill(os.getpid(), signal.SIGKILL)

        composer_checkpoint._write_checkpoint_file = write_half_then_die


callbacks.register('kill_during_save', func=KillDuringSave)
