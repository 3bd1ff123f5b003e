"""The console of a command made of stages: one line per stage, with a progress bar, its wall time and its key
figure, while everything the stage logs or prints goes to the stage's ``log.txt`` (and to the console as well when
verbose)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from composer.core import Callback, State
from composer.loggers import Logger
from tqdm import tqdm

log = logging.getLogger(__name__)

LOG_FILE_NAME = 'log.txt'
LOG_FORMAT = '%(asctime)s %(levelname)s %(name)s: %(message)s'
BAR_FORMAT = '{desc:<46} |{bar:20}| {n_fmt}/{total_fmt} {unit} [{elapsed}]{postfix}'
PROGRESS_CALLBACK = 'stage_progress'
"""The name of ``StageProgress`` in llm-foundry's callback registry (see ``register_stage_progress``)."""


class Tee:
    """A text stream that writes to several streams."""

    def __init__(self, *streams: TextIO):
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()

    def isatty(self) -> bool:
        return False


@dataclass
class Stage:
    """A stage in progress: its progress bar, its log file, and the key figure its line ends with."""

    bar: tqdm
    log_path: Path
    figure: str = ''


_stages_in_progress: list[Stage] = []


def register_stage_progress() -> str:
    """Register ``StageProgress`` in llm-foundry's callback registry; return its name there."""
    from llmfoundry.registry import callbacks

    callbacks.register(PROGRESS_CALLBACK, func=StageProgress)
    return PROGRESS_CALLBACK


@contextmanager
def _output_to(log_file: TextIO, verbose: bool) -> Iterator[None]:
    """Send the root logger's records and everything printed to ``log_file``; to the console as well if
    ``verbose``."""
    root = logging.getLogger()
    handler = logging.StreamHandler(log_file)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handlers, level = root.handlers[:], root.level
    root.handlers = [*handlers, handler] if verbose else [handler]
    root.setLevel(min(level, logging.INFO))
    stdout = Tee(log_file, sys.stdout) if verbose else log_file
    stderr = Tee(log_file, sys.stderr) if verbose else log_file
    try:
        with redirect_stdout(stdout), redirect_stderr(stderr):
            yield
    finally:
        root.handlers = handlers
        root.setLevel(level)


@contextmanager
def console_stage(label: str, folder: Path, total: int, unit: str, verbose: bool = False) -> Iterator[Stage]:
    """Run the block as a stage: its line on the console (``label``, a bar of ``total`` ``unit``, then the wall
    time and ``Stage.figure``), its output in ``folder/log.txt``. If the block raises, the line says so and the
    console gets the error's message and the log's path; the error propagates."""
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / LOG_FILE_NAME
    console = sys.stdout
    bar = tqdm(total=total, desc=label, unit=unit, file=console, bar_format=BAR_FORMAT)
    stage = Stage(bar, log_path)
    with log_path.open('a', encoding='utf-8') as log_file:
        _stages_in_progress.append(stage)
        try:
            with _output_to(log_file, verbose):
                try:
                    yield stage
                except BaseException:
                    log.exception('%s failed', label)
                    raise
        except BaseException as error:
            bar.set_postfix_str('failed', refresh=False)
            bar.close()
            console.write(f'{label} failed: {error}\nfull log: {log_path}\n')
            console.flush()
            raise
        finally:
            _stages_in_progress.remove(stage)
    bar.set_postfix_str(stage.figure, refresh=False)
    bar.close()


class StageProgress(Callback):
    """Advances the progress bar of the console stage in progress, if any, by one at the end of every training
    batch (llm-foundry builds callbacks by name, so it finds the stage rather than being given it)."""

    def batch_end(self, state: State, logger: Logger) -> None:
        if _stages_in_progress:
            _stages_in_progress[-1].bar.update(1)
