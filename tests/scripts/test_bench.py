"""Every benchmark of scripts/bench/ runs in its smallest form (``--quick``) and prints its figures, and
``scripts/bench/run_all`` runs every one of them."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys

import pytest

from tests.paths import REPO, SHARED

BENCH = REPO / 'scripts' / 'bench'
NUMBER = r'([-+]?(?:\d[\d.,]*(?:e[-+]?\d+)?|nan|inf))'
EXPORT_MEMORY = rf'checkpoint .*: export peak RSS / weights {NUMBER}, \(peak - RSS before export\) / weights {NUMBER} '
# The lines that carry each benchmark's figures: every pattern must match, and the numbers it captures be finite and
# positive. A pattern without a number is a check the benchmark prints (the outputs of the two sides are equal).
FIGURES = {
    'pruning_step': [rf'^pruning step / plain step: {NUMBER} '],
    'cpu_bf16': [
        rf'^train step: .*; fp32 / bf16 = {NUMBER} ',
        rf'^eval forward: .*; fp32 / bf16 = {NUMBER}$',
        rf'^pruning step under bf16 autocast: .*; pruning / plain = {NUMBER} ',
    ],
    'distillation_step': [
        rf'^distillation step / plain step: +{NUMBER}$',
        rf'^measured / predicted: {NUMBER} ',
        rf'^distillation - plain - teacher forward: .* ms; kd_loss forward \+ backward alone: {NUMBER} ms$',
        rf'^measured / predicted with the KD loss, .*: {NUMBER}$',
        rf'^kd_loss \(chunked\) peak / LM loss peak: {NUMBER}$',
    ],
    'teacher_memory': [
        rf'^every rank reads the file: rank 0 peak {NUMBER} MiB \({NUMBER} × teacher\), rank 1 peak {NUMBER} MiB',
        rf'^rank 0 reads, rank 1 receives: rank 0 peak {NUMBER} MiB \({NUMBER} × teacher\), rank 1 peak {NUMBER} MiB',
        rf'^rank 1 peak / teacher bytes: every rank reads {NUMBER}, rank 0 reads {NUMBER}; ',
    ],
    'dynamic_loader': [
        rf'^num_workers=0: dynamic {NUMBER} samples/s, stock {NUMBER} samples/s .* median {NUMBER} of rounds',
        rf'^num_workers=2: dynamic {NUMBER} samples/s, stock {NUMBER} samples/s .* median {NUMBER} of rounds',
        rf'^state after +1,000 samples .*: {NUMBER} bytes pickled$',
        rf'^state after 1,000,000 samples .*: {NUMBER} bytes pickled$',
    ],
    'prepare_data': [
        r'^identical samples from both tools: True$',
        rf'^llm-foundry convert_dataset_json +{NUMBER} s +{NUMBER} k tokens/s +ratio +{NUMBER}$',
        rf'^prepare-data --workers 1 +{NUMBER} s +{NUMBER} k tokens/s +ratio +{NUMBER}$',
        rf'^prepare-data --workers 2 +{NUMBER} s +{NUMBER} k tokens/s +ratio +{NUMBER}$',
    ],
    'export_memory': [
        rf'^ +full {EXPORT_MEMORY}',
        rf'^sharded {EXPORT_MEMORY}',
        r'^the two exports are equal: True$',
    ],
    'evaluate_throughput': [
        rf'^llmshearing evaluate / llm-foundry ICL, max_seq_len \d+: {NUMBER} ',
        rf'^llmshearing evaluate / llm-foundry ICL, max_seq_len \d+ \(longest row\): {NUMBER} ',
    ],
    'eval_batch': [
        rf'^  before \(cross-entropy 3 times \+ token accuracy\): {NUMBER} s$',
        rf'^  after \(cross-entropy once \+ token accuracy\): {NUMBER} s$',
        rf'^  before / after: {NUMBER}x$',
    ],
}
SLOW = {'export_memory', 'evaluate_throughput'}  # over about 20 s on 2 busy cores
NEEDS = {'evaluate_throughput': SHARED / 'data' / 'eval-tasks' / 'arc_easy.jsonl'}


def benchmark_modules() -> set[str]:
    """The modules of scripts/bench/ that run as a program (the others are their helpers)."""
    return {path.stem for path in BENCH.glob('*.py') if "if __name__ == '__main__':" in path.read_text()}


def run_all_benchmarks() -> list[str]:
    (names,) = re.findall(r'^BENCHMARKS=\((.*)\)$', (BENCH / 'run_all').read_text(), re.MULTILINE)
    return names.split()


@pytest.mark.parametrize(
    'name', [pytest.param(name, marks=[pytest.mark.slow] if name in SLOW else []) for name in FIGURES],
)
def test_benchmark_runs_in_its_smallest_form_and_prints_its_figures(name: str):
    if name in NEEDS and not NEEDS[name].is_file():
        pytest.skip(f'scripts.bench.{name} needs {NEEDS[name]}')
    result = subprocess.run(
        [sys.executable, '-m', f'scripts.bench.{name}', '--quick'], cwd=REPO, capture_output=True, text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for pattern in FIGURES[name]:
        match = re.search(pattern, result.stdout, re.MULTILINE)
        assert match, f'no line matches {pattern!r} in:\n{result.stdout}'
        numbers = [float(number.replace(',', '')) for number in match.groups()]
        assert all(math.isfinite(number) and number > 0 for number in numbers), match.group(0)


def test_run_all_and_these_tests_name_every_benchmark():
    assert sorted(run_all_benchmarks()) == sorted(benchmark_modules()) == sorted(FIGURES)


def test_run_all_quick_passes_quick_to_every_benchmark():
    result = subprocess.run(
        [str(BENCH / 'run_all'), '--quick', '--pruning_step', '--repeats', '2'], capture_output=True, text=True,
        env=os.environ | {'PYTHON': 'echo'},
    )
    assert result.returncode == 0, result.stderr
    commands = [line for line in result.stdout.splitlines() if line.startswith('-m ')]
    assert commands == [
        f'-m scripts.bench.{name} --quick' + (' --repeats 2' if name == 'pruning_step' else '')
        for name in run_all_benchmarks()
    ]
