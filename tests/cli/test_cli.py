"""The ``llmshearing`` command line: its parser loads nothing heavy, its help is in one style, and errors that name a
parameter of a command function name its flag."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from llmshearing import cli
from llmshearing.checks import OutputExistsError, ParameterError

HEAVY_MODULES = ('torch', 'composer', 'transformers', 'llmfoundry', 'matplotlib', 'streaming', 'numpy')


def command_parsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Every command's parser by its full name (``reference-loss eval``)."""
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, subparser in action.choices.items():
                nested = command_parsers(subparser)
                found |= {f'{name} {inner}': value for inner, value in nested.items()} if nested else {name: subparser}
    return found


def test_building_the_parser_imports_nothing_heavy():
    code = (
        'import sys\n'
        'from llmshearing.cli import build_parser\n'
        'build_parser()\n'
        f'print(",".join(name for name in {HEAVY_MODULES!r} if name in sys.modules))\n'
    )
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ''


@pytest.mark.parametrize('arguments', [['--help'], ['prune-oneshot', '--help'], ['reference-loss', 'fit', '--help']])
def test_help_answers_without_heavy_imports(arguments: list[str]):
    code = (
        'import sys\n'
        'from llmshearing.cli import main\n'
        'try:\n'
        f'    main({arguments!r})\n'
        'except SystemExit:\n'
        f'    print("loaded:", ",".join(name for name in {HEAVY_MODULES!r} if name in sys.modules))\n'
    )
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().endswith('loaded:')
    assert 'usage: llmshearing' in result.stdout


def test_commands_are_listed_in_pipeline_order():
    names = list(command_parsers(cli.build_parser()))
    assert names == ['prepare-data', 'reference-loss eval', 'reference-loss fit', 'prune-oneshot', 'export',
                     'evaluate', 'prepare-instructions', 'generate', 'compare', 'demo']


def test_help_lines_share_one_style():
    """Lower-case start (but for names), no final period, defaults as ``(default: X)``."""
    for name, parser in command_parsers(cli.build_parser()).items():
        for action in parser._actions:
            text = action.help
            if text is None or action.dest == 'help':
                continue
            assert not text.endswith('.'), (name, action.dest, text)
            assert text[0].islower() or text.split()[0] in ('Hugging', 'Composer', 'JSON', 'FILE.json;'), (name, text)
            if 'default' in text:
                assert '(default: ' in text, (name, action.dest, text)


def test_error_messages_name_the_flag_of_the_parameter():
    flags = {'calibration_samples': '--calibration-samples', 'overwrite': '--overwrite'}
    error = ParameterError('calibration_samples', 'must be positive, got 0')
    assert str(error) == 'calibration_samples must be positive, got 0'
    assert cli.error_message(error, flags) == '--calibration-samples must be positive, got 0'
    exists = OutputExistsError('output folder out is not empty')
    assert str(exists) == 'output folder out is not empty; pass overwrite=True to replace its files'
    assert cli.error_message(exists, flags) == 'output folder out is not empty; pass --overwrite to replace its files'


def test_a_bad_argument_exits_with_status_2_naming_the_flag(tmp_path, capsys):
    command = ['reference-loss', 'fit', 'a.json', 'b.json', 'c.json', '--target-params', '0', '--out',
               str(tmp_path / 'out.json')]
    assert cli.main(command) == 2
    assert capsys.readouterr().err == 'llmshearing reference-loss: error: --target-params must be positive, got 0.0\n'
