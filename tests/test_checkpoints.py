"""Checkpoints are verified before a resume trusts them: sha256 sidecars at save (and gone with their checkpoint),
partial files moved aside, a damaged newest checkpoint passed over for the previous good one, other names left alone
(checkpoint files made here, no training)."""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from composer.callbacks import CheckpointSaver

from llmshearing.checkpoints import (
    INCOMPLETE_FOLDER,
    CheckpointChecksums,
    checksum_path,
    repair_checkpoint_folder,
    write_checksum,
)
from llmshearing.pruning.export import LATEST_MONOLITHIC


def _checkpoint(folder: Path, batch: int, checksum: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f'ep0-ba{batch}-rank0.pt'
    torch.save({'state': {'weights': torch.full((64, 64), float(batch))}}, path)
    if checksum:
        write_checksum(path)
    return path


def _point_latest(folder: Path, checkpoint: Path) -> None:
    latest = folder / LATEST_MONOLITHIC
    if latest.is_symlink():
        latest.unlink()
    latest.symlink_to(checkpoint.name)


def _flip_bytes(path: Path, offset: int, count: int = 16) -> None:
    data = bytearray(path.read_bytes())
    data[offset : offset + count] = bytes(255 - value for value in data[offset : offset + count])
    path.write_bytes(bytes(data))


def test_the_sidecar_is_what_sha256sum_checks(tmp_path):
    _checkpoint(tmp_path, 4)
    result = subprocess.run(
        ['sha256sum', '-c', 'ep0-ba4-rank0.pt.sha256'], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == 'ep0-ba4-rank0.pt: OK'


def test_a_partial_file_newer_than_latest_is_moved_aside(tmp_path, caplog):
    older, newest = _checkpoint(tmp_path, 4), _checkpoint(tmp_path, 8)
    _point_latest(tmp_path, newest)
    partial = tmp_path / 'ep0-ba12-rank0.pt'
    partial.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    empty = tmp_path / 'ep0-ba16-rank0.pt'
    empty.touch()
    with caplog.at_level(logging.WARNING):
        assert repair_checkpoint_folder(tmp_path) == newest
    aside = tmp_path / INCOMPLETE_FOLDER
    assert sorted(path.name for path in aside.iterdir()) == ['ep0-ba12-rank0.pt', 'ep0-ba16-rank0.pt']
    assert (aside / 'ep0-ba12-rank0.pt').stat().st_size == newest.stat().st_size // 2
    assert str(aside / 'ep0-ba12-rank0.pt') in caplog.text and str(aside / 'ep0-ba16-rank0.pt') in caplog.text
    assert os.readlink(tmp_path / LATEST_MONOLITHIC) == newest.name
    assert older.exists()


@pytest.mark.parametrize('damage', ['flipped', 'truncated'])
def test_a_damaged_newest_checkpoint_gives_way_to_the_previous_one(tmp_path, caplog, damage):
    older, newest = _checkpoint(tmp_path, 4), _checkpoint(tmp_path, 8)
    _point_latest(tmp_path, newest)
    if damage == 'flipped':
        _flip_bytes(newest, newest.stat().st_size // 2)
    else:
        os.truncate(newest, 4096)
    with caplog.at_level(logging.WARNING):
        assert repair_checkpoint_folder(tmp_path) == older
    assert os.readlink(tmp_path / LATEST_MONOLITHIC) == older.name
    assert f'resuming from {older}' in caplog.text
    assert f'{newest} does not match its sha256' in caplog.text
    assert (tmp_path / INCOMPLETE_FOLDER / newest.name).exists()
    assert (tmp_path / INCOMPLETE_FOLDER / checksum_path(newest).name).exists()
    assert not newest.exists()


def test_a_truncated_checkpoint_with_nothing_older_is_an_error_naming_it(tmp_path):
    only = _checkpoint(tmp_path, 4)
    _point_latest(tmp_path, only)
    os.truncate(only, 1000)
    with pytest.raises(ValueError, match=f'save_folder: {only} failed its sha256 check') as error:
        repair_checkpoint_folder(tmp_path)
    assert 'no older checkpoint passes; restore it, or move it away to start over' in str(error.value)
    assert only.stat().st_size == 1000 and os.readlink(tmp_path / LATEST_MONOLITHIC) == only.name


def test_a_checkpoint_without_a_sidecar_is_checked_by_its_zip_crcs(tmp_path):
    older, newest = _checkpoint(tmp_path, 4, checksum=False), _checkpoint(tmp_path, 8, checksum=False)
    _point_latest(tmp_path, newest)
    assert repair_checkpoint_folder(tmp_path) == newest
    # torch.save stores tensors uncompressed, so flipped bytes in the middle land in an entry and break its CRC-32
    _flip_bytes(newest, newest.stat().st_size // 2)
    assert repair_checkpoint_folder(tmp_path) == older
    assert (tmp_path / INCOMPLETE_FOLDER / newest.name).exists()


def test_a_killed_first_save_leaves_a_fresh_start(tmp_path):
    (tmp_path / 'ep0-ba4-rank0.pt').touch()
    assert repair_checkpoint_folder(tmp_path) is None
    assert (tmp_path / INCOMPLETE_FOLDER / 'ep0-ba4-rank0.pt').exists()
    assert not (tmp_path / LATEST_MONOLITHIC).is_symlink()


def test_a_file_moved_aside_never_replaces_an_earlier_one(tmp_path):
    _point_latest(tmp_path, _checkpoint(tmp_path, 4))
    for size in (100, 200):
        (tmp_path / 'ep0-ba8-rank0.pt').write_bytes(b'x' * size)
        repair_checkpoint_folder(tmp_path)
    aside = tmp_path / INCOMPLETE_FOLDER
    assert (aside / 'ep0-ba8-rank0.pt').stat().st_size == 100
    assert (aside / 'ep0-ba8-rank0.pt.1').stat().st_size == 200


def test_checkpoints_under_other_names_leave_latest_alone(tmp_path):
    custom = tmp_path / 'step-8.pt'
    torch.save({'state': {}}, custom)
    _point_latest(tmp_path, custom)
    assert repair_checkpoint_folder(tmp_path) is None
    assert os.readlink(tmp_path / LATEST_MONOLITHIC) == custom.name
    older = _checkpoint(tmp_path, 4)
    assert repair_checkpoint_folder(tmp_path) == older
    assert os.readlink(tmp_path / LATEST_MONOLITHIC) == custom.name


def test_the_sidecar_of_a_rotated_checkpoint_is_deleted(tmp_path):
    older, newer = _checkpoint(tmp_path, 4, checksum=False), _checkpoint(tmp_path, 8, checksum=False)
    saver = CheckpointSaver(folder=str(tmp_path))
    state = SimpleNamespace(callbacks=[saver])
    CheckpointChecksums().init(state, None)
    writer = state.callbacks[-1]
    saver.saved_checkpoints = [str(older)]
    writer.batch_checkpoint(state, None)
    assert checksum_path(older).is_file()
    # what Composer's CheckpointSaver does with save_num_checkpoints_to_keep: 1
    saver.saved_checkpoints = [str(newer)]
    older.unlink()
    writer.batch_checkpoint(state, None)
    assert not checksum_path(older).exists() and checksum_path(newer).is_file()
