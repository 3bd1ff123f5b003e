"""``python -m scripts.mutation_check``: its table fits the code (every snippet once in its module, every test in its
file), and on a small checkout of its own it tells killed, survived and timed-out mutants apart, refuses failing
unmutated tests, and leaves the checkout as it was; one real mutant end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.mutation_check import (
    KILLED,
    MUTANTS,
    SURVIVED,
    TIMED_OUT,
    Mutant,
    TableError,
    check_table,
    check_tests,
    copy_checkout,
    main,
    mutated_source,
    run_check,
    run_mutant,
)
from tests.paths import REPO

ARITHMETIC = '''def mean(values):
    return sum(values) / len(values)


def answer():
    return 42
'''
ARITHMETIC_TESTS = '''from llmshearing.arithmetic import answer, mean


def test_mean():
    assert mean([1, 2, 6]) == 3


def test_answer():
    assert answer() == 42
'''
TESTS = ('tests/test_arithmetic.py',)
KILLED_MUTANT = Mutant('mean-off-by-one', 'llmshearing/arithmetic.py', '/ len(values)', '/ (len(values) - 1)', TESTS)
SURVIVING_MUTANT = Mutant('answer-as-float', 'llmshearing/arithmetic.py', 'return 42', 'return 42.0', TESTS)
HANGING_MUTANT = Mutant(
    'answer-hangs', 'llmshearing/arithmetic.py', 'return 42', "return __import__('time').sleep(600)", TESTS,
)


@pytest.mark.parametrize('mutant', MUTANTS, ids=[mutant.name for mutant in MUTANTS])
def test_every_snippet_occurs_once_in_its_module_and_every_test_exists(mutant: Mutant):
    source, mutated = mutated_source(mutant, REPO)
    assert source.count(mutant.original) == 1 and mutated != source
    check_tests(mutant, REPO)


def test_mutant_names_are_unique():
    assert len({mutant.name for mutant in MUTANTS}) == len(MUTANTS)


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A git checkout with an ``llmshearing`` package of one module and its tests."""
    root = tmp_path / 'checkout'
    (root / 'llmshearing').mkdir(parents=True)
    (root / 'tests').mkdir()
    (root / 'llmshearing' / '__init__.py').write_text('')
    (root / 'llmshearing' / 'arithmetic.py').write_text(ARITHMETIC)
    (root / 'tests' / 'test_arithmetic.py').write_text(ARITHMETIC_TESTS)
    subprocess.run(['git', 'init', '-q'], cwd=root, check=True)
    return root


def test_killed_and_surviving_mutants_are_told_apart_and_the_checkout_is_untouched(checkout: Path):
    report = run_check([KILLED_MUTANT, SURVIVING_MUTANT], timeout_s=300, root=checkout)
    assert [(result['name'], result['result']) for result in report['mutants']] == [
        ('mean-off-by-one', KILLED), ('answer-as-float', SURVIVED),
    ]
    assert (report['killed'], report['total'], report['survived'], report['timed_out']) == (
        1, 2, ['answer-as-float'], [],
    )
    assert (checkout / 'llmshearing' / 'arithmetic.py').read_text() == ARITHMETIC


def test_a_mutant_past_its_time_is_stopped_and_its_module_restored(checkout: Path, tmp_path: Path):
    copy = tmp_path / 'copy'
    copy_checkout(checkout, copy)
    result = run_mutant(HANGING_MUTANT, copy, timeout_s=2)
    assert result['result'] == TIMED_OUT and result['seconds'] < 60
    assert (copy / 'llmshearing' / 'arithmetic.py').read_text() == ARITHMETIC


def test_failing_unmutated_tests_are_an_error(checkout: Path):
    (checkout / 'llmshearing' / 'arithmetic.py').write_text(ARITHMETIC.replace('sum(values)', '1 + sum(values)'))
    with pytest.raises(TableError, match=r'^the unmutated tests do not pass \(pytest exit 1\): '
                                         r'FAILED tests/test_arithmetic.py::test_mean - '):
        run_check([KILLED_MUTANT], timeout_s=300, root=checkout)


@pytest.mark.parametrize(
    ('mutant', 'message'),
    [
        (Mutant('gone', 'llmshearing/arithmetic.py', 'return 41', 'return 40', TESTS),
         "mutant gone: 'return 41' occurs 0 times in llmshearing/arithmetic.py, not once"),
        (Mutant('twice', 'llmshearing/arithmetic.py', 'return', 'yield', TESTS),
         "mutant twice: 'return' occurs 2 times in llmshearing/arithmetic.py, not once"),
        (Mutant('broken', 'llmshearing/arithmetic.py', 'return 42', 'return 42)', TESTS),
         'mutant broken: the mutated llmshearing/arithmetic.py does not compile: '),
        (Mutant('no-module', 'llmshearing/geometry.py', 'return 42', 'return 41', TESTS),
         'mutant no-module: llmshearing/geometry.py does not exist'),
        (Mutant('no-test', 'llmshearing/arithmetic.py', 'return 42', 'return 41', (f'{TESTS[0]}::test_median',)),
         'mutant no-test: tests/test_arithmetic.py has no test test_median'),
        (Mutant('no-test-file', 'llmshearing/arithmetic.py', 'return 42', 'return 41', ('tests/test_geometry.py',)),
         'mutant no-test-file: test file tests/test_geometry.py does not exist'),
    ],
    ids=lambda value: value.name if isinstance(value, Mutant) else '',
)
def test_a_mutant_that_does_not_fit_is_named(checkout: Path, mutant: Mutant, message: str):
    with pytest.raises(TableError) as raised:
        check_table([mutant], checkout)
    assert str(raised.value).startswith(message)


def test_a_name_used_twice_is_an_error(checkout: Path):
    with pytest.raises(TableError, match=r"^mutant names repeated: \['mean-off-by-one'\]$"):
        check_table([KILLED_MUTANT, KILLED_MUTANT], checkout)


@pytest.mark.parametrize(
    ('argv', 'message'),
    [
        (['--only', 'no-such-mutant'], "error: --only: unknown mutant(s) ['no-such-mutant']; --list shows them\n"),
        (['--timeout', '0'], 'error: --timeout must be positive, got 0\n'),
        (['--out', 'results.txt'], 'error: --out must name a .json file, got results.txt\n'),
    ],
)
def test_bad_arguments_are_a_one_line_error(capsys, argv: list[str], message: str):
    assert main(argv) == 2
    assert capsys.readouterr().err == message


def test_an_existing_out_file_is_kept(tmp_path: Path, capsys):
    out = tmp_path / 'results.json'
    out.write_text('{}')
    assert main(['--out', str(out)]) == 2
    assert capsys.readouterr().err == f'error: --out: {out} exists; give a new file (it is never overwritten)\n'
    assert out.read_text() == '{}'


def test_list_prints_every_mutant(capsys):
    assert main(['--list']) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(' | ')[0].removeprefix('| ') for line in lines[2:]] == [mutant.name for mutant in MUTANTS]


@pytest.mark.slow  # the unmutated tests and the mutant's run the L0 module's tests: about 20 s on 2 cores
def test_a_real_mutant_is_killed_end_to_end(tmp_path: Path):
    module = REPO / 'llmshearing' / 'pruning' / 'hard_concrete.py'
    before = module.read_text()
    out = tmp_path / 'mutation.json'
    result = subprocess.run(
        [sys.executable, '-m', 'scripts.mutation_check', '--only', 'hc-keep-probability-sign', '--out', str(out)],
        cwd=REPO, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[-1].startswith('killed 1/1 (survived 0, timed out 0; unmutated tests ')
    report = json.loads(out.read_text())
    assert [(mutant['name'], mutant['result']) for mutant in report['mutants']] == [
        ('hc-keep-probability-sign', KILLED),
    ]
    assert module.read_text() == before
