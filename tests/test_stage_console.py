"""A command's stage on the console: one line with its bar and key figure, its whole output in its ``log.txt``."""

from __future__ import annotations

import logging

import pytest

from llmshearing.stage_console import StageProgress, console_stage

log = logging.getLogger('tests.stage_console')


def _screen_lines(text: str) -> list[str]:
    """What a terminal shows: each line's text after its last carriage return."""
    return [line.split('\r')[-1] for line in text.split('\n') if line]


class Clock:
    """The progress bars' clock, set by the test: wall time plays no part in what a line shows."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = 1000.0
        monkeypatch.setattr('tqdm.std.time', lambda: self.now)


def test_a_quiet_stage_shows_one_line_and_logs_everything(tmp_path, capsys, monkeypatch):
    clock = Clock(monkeypatch)
    with console_stage('[1/2] training', tmp_path / 'stage', total=3, unit='batches') as stage:
        print('per-batch metrics')
        log.info('a record')
        for _ in range(3):
            StageProgress().batch_end(None, None)
        stage.figure = 'eval loss 2.500'
        clock.now += 75
    captured = capsys.readouterr()
    (line,) = _screen_lines(captured.out)
    assert line.startswith('[1/2] training ') and line.endswith('| 3/3 batches [01:15], eval loss 2.500')
    assert captured.err == ''
    log_text = (tmp_path / 'stage' / 'log.txt').read_text()
    assert 'per-batch metrics\n' in log_text
    assert 'INFO tests.stage_console: a record' in log_text


def test_a_verbose_stage_shows_everything_and_logs_it_too(tmp_path, capsys):
    with console_stage('[1/1] training', tmp_path, total=1, unit='batches', verbose=True) as stage:
        print('per-batch metrics')
        stage.bar.update(1)
    assert 'per-batch metrics' in capsys.readouterr().out
    assert 'per-batch metrics' in (tmp_path / 'log.txt').read_text()


def test_a_failing_stage_shows_the_error_and_the_log_path(tmp_path, capsys, monkeypatch):
    clock = Clock(monkeypatch)
    with pytest.raises(ValueError, match='variables.model_path: /nowhere does not exist'):
        with console_stage('[2/5] source model', tmp_path, total=4, unit='batches'):
            clock.now += 3725
            raise ValueError('variables.model_path: /nowhere does not exist')
    lines = _screen_lines(capsys.readouterr().out)
    assert lines[0].startswith('[2/5] source model ') and lines[0].endswith('0/4 batches [1:02:05], failed')
    assert lines[1:] == [
        '[2/5] source model failed: variables.model_path: /nowhere does not exist',
        f'full log: {tmp_path / "log.txt"}',
    ]
    log_text = (tmp_path / 'log.txt').read_text()
    assert 'ERROR llmshearing.stage_console: [2/5] source model failed' in log_text
    assert 'Traceback' in log_text


def test_progress_outside_a_stage_does_nothing():
    StageProgress().batch_end(None, None)
