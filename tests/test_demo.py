"""``llmshearing demo --quick`` end to end: the model of every stage, the report and its plots."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from llmshearing import cli
from llmshearing.demo import DOMAINS, MIN_CHARACTERS_PER_DOMAIN, CorpusDomain, domain_texts
from llmshearing.report import PLOTS

SOURCE_SHAPE = {'hidden_size': 64, 'num_attention_heads': 4, 'intermediate_size': 128, 'num_hidden_layers': 4}
PRUNED_SHAPE = {'hidden_size': 48, 'num_attention_heads': 2, 'intermediate_size': 64, 'num_hidden_layers': 3}
MODEL_SHAPES = {
    'source': SOURCE_SHAPE,
    'pruning': PRUNED_SHAPE,
    'continued_pretraining': PRUNED_SHAPE,
}
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


@pytest.fixture(scope='module')
def demo_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The output folder and the finished process of ``llmshearing demo --quick``, run from an unrelated folder."""
    root = tmp_path_factory.mktemp('demo')
    (root / 'elsewhere').mkdir()
    output = root / 'output'
    command = [str(Path(sys.executable).with_name('llmshearing')), 'demo', '--quick', '--output', str(output)]
    # Bytes, not text: text mode would turn the bars' carriage returns into line ends.
    result = subprocess.run(command, cwd=root / 'elsewhere', capture_output=True)
    assert result.returncode == 0, (result.stdout[-3000:] + result.stderr[-3000:]).decode(errors='replace')
    return output, result


@pytest.fixture(scope='module')
def demo_output(demo_run) -> Path:
    return demo_run[0]


@pytest.fixture(scope='module')
def report_text(demo_output) -> str:
    return (demo_output / 'report' / 'README.md').read_text()


def _tables(report_text: str) -> dict[str, list[list[str]]]:
    """The report's markdown tables by section title: header and body rows, as lists of cells."""
    tables = {}
    for section in report_text.split('\n## ')[1:]:
        title, *lines = section.splitlines()
        rows = [[cell.strip() for cell in line.strip('|').split('|')] for line in lines if line.startswith('| ')]
        if rows:
            tables[title] = rows
    return tables


@pytest.mark.slow
def test_the_console_shows_one_line_per_stage_and_the_logs_hold_the_rest(demo_run):
    output, result = demo_run
    # A bar redraws its line after carriage returns; what stays on the screen is the text after the last one.
    lines = [line.split('\r')[-1] for line in result.stdout.decode().split('\n') if line]
    report = re.escape(str(output / 'report' / 'README.md'))
    expected_endings = [
        r'4/4 steps \[\d\d:\d\d\], [\d,]+ train and [\d,]+ eval tokens',
        r'240/240 batches \[\d\d:\d\d\], eval loss \d+\.\d{3}',
        r'60/60 batches \[\d\d:\d\d\], kept hidden 48, heads 2, kv heads 2, MLP 64, layers 3; eval loss \d+\.\d{3}',
        r'60/60 batches \[\d\d:\d\d\], eval loss \d+\.\d{3}',
        rf'1/1 steps \[\d\d:\d\d\], {report} \(the demo took \d+ s\)',
    ]
    assert len(lines) == len(expected_endings), lines
    for index, (line, ending) in enumerate(zip(lines, expected_endings), start=1):
        assert line.startswith(f'[{index}/5] ') and re.search(ending + '$', line), line
    assert result.stderr == b''
    for stage in ('corpus', 'source', 'pruning', 'continued_pretraining', 'report'):
        assert (output / stage / 'log.txt').is_file(), stage
    for stage in ('source', 'pruning', 'continued_pretraining'):
        log_text = (output / stage / 'log.txt').read_text()
        assert '[batch=' in log_text and 'llmfoundry.command_utils.train' in log_text, stage


@pytest.mark.slow
@pytest.mark.parametrize('stage', MODEL_SHAPES)
def test_every_stage_writes_a_model_of_its_shape(demo_output, stage):
    model = AutoModelForCausalLM.from_pretrained(demo_output / stage / 'huggingface' / 'final').eval()
    for field, size in MODEL_SHAPES[stage].items():
        assert getattr(model.config, field) == size, field
    with torch.no_grad():
        logits = model(torch.randint(3, 259, (1, 16))).logits
    assert torch.isfinite(logits).all()


@pytest.mark.slow
def test_report_has_its_plots_and_only_finite_numbers(demo_output, report_text):
    for file_name in PLOTS:
        assert (demo_output / 'report' / file_name).read_bytes().startswith(PNG_SIGNATURE), file_name
        assert f']({file_name})' in report_text
    assert not re.search(r'\b(nan|inf|infinity)\b', report_text, re.IGNORECASE)
    tables = _tables(report_text)
    assert set(tables) == {'Models', 'Eval loss per domain', 'Training stages', 'Kept per layer by the final masks'}
    for title, (_, *rows) in tables.items():
        for row in rows:
            numbers = [cell for cell in row[1:] if not cell.startswith('`') and cell not in ('yes', 'no')]
            assert numbers and all(math.isfinite(float(cell.replace(',', ''))) for cell in numbers), (title, row)


@pytest.mark.slow
def test_report_gives_each_models_shape_and_losses(report_text):
    tables = _tables(report_text)
    header, *rows = tables['Models']
    columns = [header.index(name) for name in ('hidden', 'heads', 'MLP', 'layers')]
    shapes = {row[0]: [int(row[column]) for column in columns] for row in rows}
    assert shapes == {
        'source': list(SOURCE_SHAPE.values()),
        'pruned': list(PRUNED_SHAPE.values()),
        'continued': list(PRUNED_SHAPE.values()),
    }
    header, *rows = tables['Eval loss per domain']
    assert header == ['model', *DOMAINS, 'all domains']
    losses = {row[0]: [float(cell) for cell in row[1:]] for row in rows}
    assert list(losses) == ['source', 'pruned', 'continued']
    assert all(0 < loss < math.log(259) for row in losses.values() for loss in row)
    # Continued pre-training starts from the pruned model and lowers its loss.
    assert losses['continued'][-1] < losses['pruned'][-1]


def test_a_non_empty_output_folder_is_refused(tmp_path, capsys):
    output = tmp_path / 'output'
    output.mkdir()
    (output / 'keep.txt').write_text('mine')
    assert cli.main(['demo', '--quick', '--output', str(output)]) == 2
    assert str(output) in capsys.readouterr().err
    assert [path.name for path in output.iterdir()] == ['keep.txt']
    assert (output / 'keep.txt').read_text() == 'mine'


def test_a_domain_with_too_little_text_is_an_error_naming_it():
    domain = CorpusDomain('docs', 'two READMEs', lambda: iter(['a short README', 'another']))
    message = rf"domain 'docs' \(two READMEs\) has 21 characters .* at least {MIN_CHARACTERS_PER_DOMAIN}"
    with pytest.raises(ValueError, match=message):
        domain_texts(domain, MIN_CHARACTERS_PER_DOMAIN)
