"""``llmshearing demo --quick`` end to end: the model of every stage, the report and its plots."""

from __future__ import annotations

import math
import re
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
def demo_output(tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp('demo') / 'output'
    assert cli.main(['demo', '--quick', '--output', str(output)]) == 0
    return output


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
