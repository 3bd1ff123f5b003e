"""Checkpoints that are verified before a run trusts them.

Composer writes a monolithic checkpoint straight to its final name (``open(name, 'wb')`` and ``torch.save``), then
replaces the ``latest-rank0.pt`` symlink. A run killed while writing leaves a partial file newer than ``latest``;
Composer's ``CheckpointSaver`` then refuses to start (``FileExistsError ... may conflict with a future checkpoint``),
and nothing checks that the file ``latest`` names is whole before it is loaded.

So every save gets a sidecar ``NAME.sha256`` (the ``sha256sum`` format) written by ``CheckpointChecksums`` once
Composer has written the file, and before a resume ``repair_checkpoint_folder`` finds the newest checkpoint that
passes its check, moves every newer one aside into ``incomplete/`` (named in the log, never deleted), and points
``latest`` at it. A file without a sidecar (written before checksums existed, or a run killed between the save and its
checksum) is checked against the CRC-32 of every entry of its zip archive, which ``torch.save`` writes.

Covered: monolithic checkpoints in a local save folder, under Composer's default names. Sharded (FSDP state-dict)
checkpoints are folders of per-rank files and are neither hashed nor checked; checkpoints under another
``save_filename`` are not checked, and ``latest`` is then left as Composer wrote it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import zipfile
from pathlib import Path

from composer.callbacks import CheckpointSaver
from composer.core import Callback, State
from composer.loggers import Logger
from llmfoundry.registry import callbacks

from llmshearing.pruning.export import LATEST_MONOLITHIC

log = logging.getLogger(__name__)

CHECKSUM_SUFFIX = '.sha256'
INCOMPLETE_FOLDER = 'incomplete'
"""Where checkpoints that fail their check are moved, inside the save folder."""
CHECKPOINT_NAME = re.compile(r'^ep(?P<epoch>\d+)-ba(?P<batch>\d+)-rank0\.pt$')
"""Rank 0's monolithic checkpoint under llm-foundry's default ``save_filename``."""
CALLBACK_NAME = 'checkpoint_checksums'
"""The callback's name in ``callbacks:``; ``train.py`` adds it to every run that saves to a local folder."""
_CHUNK = 1 << 20


def sha256_of(path: Path) -> str:
    """The hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open('rb') as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def checksum_path(checkpoint: Path) -> Path:
    """The sidecar holding a checkpoint's sha256."""
    return checkpoint.with_name(checkpoint.name + CHECKSUM_SUFFIX)


def write_checksum(checkpoint: Path) -> None:
    """Write ``checkpoint``'s sidecar (``sha256sum -c`` reads it), through a temporary file so that it is whole."""
    sidecar = checksum_path(checkpoint)
    partial = sidecar.with_name(sidecar.name + '.partial')
    partial.write_text(f'{sha256_of(checkpoint)}  {checkpoint.name}\n')
    os.replace(partial, sidecar)


def checkpoint_problem(checkpoint: Path) -> str | None:
    """Why ``checkpoint`` cannot be trusted, or None when it passes: its sha256 against its sidecar, or for a file
    without one, that it is a whole zip archive whose entries match their CRC-32."""
    if checkpoint.stat().st_size == 0:
        return 'is empty'
    sidecar = checksum_path(checkpoint)
    if sidecar.is_file():
        expected = sidecar.read_text().split()[:1]
        return None if [sha256_of(checkpoint)] == expected else f'does not match its sha256 ({sidecar.name})'
    try:
        with zipfile.ZipFile(checkpoint) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        return f'has no sha256 and is not a whole checkpoint ({error})'
    return None if damaged is None else f'has no sha256 and its entry {damaged} is damaged'


def _checkpoints_newest_first(folder: Path) -> list[Path]:
    found = [
        (int(match['batch']), path)
        for path in folder.iterdir()
        if (match := CHECKPOINT_NAME.match(path.name)) and path.is_file() and not path.is_symlink()
    ]
    return [path for _, path in sorted(found, reverse=True)]


def _free_name(folder: Path, name: str) -> Path:
    """``folder/name``, or ``folder/name.N`` with the first free N: a file moved aside never replaces another."""
    path, number = folder / name, 1
    while path.exists():
        path, number = folder / f'{name}.{number}', number + 1
    return path


def _move_aside(checkpoint: Path, problem: str) -> Path:
    aside = checkpoint.parent / INCOMPLETE_FOLDER
    aside.mkdir(exist_ok=True)
    moved = _free_name(aside, checkpoint.name)
    sidecar = checksum_path(checkpoint)
    if sidecar.exists():
        shutil.move(str(sidecar), checksum_path(moved))
    shutil.move(str(checkpoint), moved)
    log.warning('checkpoint %s %s: moved to %s, not loaded', checkpoint, problem, moved)
    return moved


def repair_checkpoint_folder(folder: Path) -> Path | None:
    """The newest checkpoint in ``folder`` that passes ``checkpoint_problem``; every newer file is moved to
    ``folder/incomplete/`` and, when files were moved, ``latest-rank0.pt`` points at it (or is removed: only partial
    ones, the run starts over). None when the folder holds no checkpoint under the default names. A checkpoint that
    once was whole (it has a sha256) and fails with no older one to fall back on is an error naming it, and stays
    where it is."""
    if not folder.is_dir():
        return None
    latest = folder / LATEST_MONOLITHIC
    failed: list[tuple[Path, str]] = []
    for checkpoint in _checkpoints_newest_first(folder):
        problem = checkpoint_problem(checkpoint)
        if problem is None:
            break
        failed.append((checkpoint, problem))
    else:
        checkpoint = None
        damaged = [str(path) for path, _ in failed if checksum_path(path).is_file()]
        if damaged:
            raise ValueError(
                f'save_folder: {", ".join(damaged)} failed its sha256 check (damaged or truncated) and no older '
                'checkpoint passes; restore it, or move it away to start over (or use a new save_folder)',
            )
    for path, problem in failed:
        _move_aside(path, problem)
    if not failed:
        return checkpoint
    if checkpoint is None:
        latest.unlink(missing_ok=True)
        return None
    if not latest.is_symlink() or os.readlink(latest) != checkpoint.name:
        latest.unlink(missing_ok=True)
        latest.symlink_to(checkpoint.name)
        log.warning('resuming from %s, the newest checkpoint that passes its check', checkpoint)
    return checkpoint


class _ChecksumWriter(Callback):
    """Hash each checkpoint Composer's ``CheckpointSaver`` has saved in this process (replacing the sidecar of a
    file that ``save_overwrite`` replaced), and delete the sidecar of one it has rotated away
    (``save_num_checkpoints_to_keep``)."""

    def __init__(self) -> None:
        self._hashed: set[str] = set()

    def _write_new_checksums(self, state: State) -> None:
        savers = [callback for callback in state.callbacks if isinstance(callback, CheckpointSaver)]
        saved_checkpoints = [saved for saver in savers for saved in saver.saved_checkpoints]
        for rotated in self._hashed.difference(saved_checkpoints):
            if not Path(rotated).exists():
                checksum_path(Path(rotated)).unlink(missing_ok=True)
            self._hashed.discard(rotated)
        for saved in saved_checkpoints:
            path = Path(saved)
            if saved not in self._hashed and path.is_file() and CHECKPOINT_NAME.match(path.name):
                write_checksum(path)
                self._hashed.add(saved)

    def batch_checkpoint(self, state: State, logger: Logger) -> None:
        self._write_new_checksums(state)

    def epoch_checkpoint(self, state: State, logger: Logger) -> None:
        self._write_new_checksums(state)

    def iteration_checkpoint(self, state: State, logger: Logger) -> None:
        self._write_new_checksums(state)

    def fit_end(self, state: State, logger: Logger) -> None:
        self._write_new_checksums(state)


class CheckpointChecksums(Callback):
    """Write a sha256 sidecar next to every monolithic checkpoint once Composer has written it.

    Composer runs callbacks in list order and appends its ``CheckpointSaver`` after the recipe's callbacks, so at
    ``INIT`` this callback appends a writer behind the saver: at each checkpoint event the writer runs after the save.
    """

    def init(self, state: State, logger: Logger) -> None:
        state.callbacks.append(_ChecksumWriter())


callbacks.register(CALLBACK_NAME, func=CheckpointChecksums)
