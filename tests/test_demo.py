"""``llmshearing demo --quick`` end to end: the model of every stage, the report and its plots, and the report's
numbers against each stage's own files (its model's config, its evaluation, its metrics log) and the recipe."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from llmshearing import cli
from llmshearing.demo import DOMAINS, MIN_CHARACTERS_PER_DOMAIN, CorpusDomain, domain_texts
from llmshearing.report import PLOTS
from tests.paths import REPO

SOURCE_SHAPE = {'hidden_size': 64, 'num_attention_heads': 4, 'intermediate_size': 128, 'num_hidden_layers': 4}
PRUNED_SHAPE = {'hidden_size': 48, 'num_attention_heads': 2, 'intermediate_size': 64, 'num_hidden_layers': 3}
MODEL_SHAPES = {
    'source': SOURCE_SHAPE,
    'pruning': PRUNED_SHAPE,
    'continued_pretraining': PRUNED_SHAPE,
}
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
# The report's name of each model and stage -> the stage's output folder, and the batches --quick trains it.
MODEL_FOLDERS = {'source': 'source', 'pruned': 'pruning', 'continued': 'continued_pretraining'}
STAGE_BATCHES = {'source': ('source', 240), 'pruning': ('pruning', 60),
                 'continued pre-training': ('continued_pretraining', 60)}
EVAL_TOKENS_PER_DOMAIN = 32 * 63  # --quick's eval samples per domain x the predicted tokens of a 64-token sample


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
    for line, model in zip(lines[1:4], MODEL_FOLDERS):
        assert line.endswith(f'eval loss {mean_loss(stage_losses(output / MODEL_FOLDERS[model])):.3f}'), line
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


def llama_parameters(config: dict) -> int:
    """The parameters of an untied Llama with this config.json, counted by hand."""
    hidden, head_dim, vocab = config['hidden_size'], config['head_dim'], config['vocab_size']
    attention = 2 * hidden * head_dim * (config['num_attention_heads'] + config['num_key_value_heads'])
    layer = attention + 3 * hidden * config['intermediate_size'] + 2 * hidden
    return 2 * vocab * hidden + config['num_hidden_layers'] * layer + hidden


def count(cell: str) -> int:
    """A table cell's count with thousands separators."""
    return int(cell.replace(',', ''))


def stage_losses(stage_dir: Path) -> dict:
    """What a stage's evaluation of the model it wrote holds (its ``losses.json``)."""
    return json.loads((stage_dir / 'losses.json').read_text())


def mean_loss(evaluated: dict) -> float:
    """The loss over all domains' eval tokens of a ``losses.json``: the domains' losses weighted by their tokens."""
    losses, tokens = evaluated['losses'], evaluated['tokens']
    return sum(losses[domain] * tokens[domain] for domain in DOMAINS) / sum(tokens.values())


@pytest.mark.slow
def test_report_gives_each_models_shape_and_losses(demo_output, report_text):
    tables = _tables(report_text)
    header, *rows = tables['Models']
    assert [row[0] for row in rows] == list(MODEL_FOLDERS)
    for row in rows:
        folder = demo_output / MODEL_FOLDERS[row[0]] / 'huggingface' / 'final'
        config = json.loads((folder / 'config.json').read_text())
        cells = dict(zip(header, row))
        shape = [int(cells[name]) for name in ('hidden', 'heads', 'kv heads', 'MLP', 'layers')]
        assert shape == [config[field] for field in ('hidden_size', 'num_attention_heads', 'num_key_value_heads',
                                                      'intermediate_size', 'num_hidden_layers')], row
        parameters = llama_parameters(config)
        assert count(cells['parameters']) == parameters == stage_losses(folder.parents[1])['parameters'], row
        embeddings = 2 * config['vocab_size'] * config['hidden_size']
        assert count(cells['non-embedding parameters']) == parameters - embeddings, row
        assert cells['folder'] == f'`{folder}`'

    header, *rows = tables['Eval loss per domain']
    assert header == ['model', *DOMAINS, 'all domains']
    for model, *cells in rows:
        evaluated = stage_losses(demo_output / MODEL_FOLDERS[model])
        assert evaluated['tokens'] == dict.fromkeys(DOMAINS, EVAL_TOKENS_PER_DOMAIN)
        losses = [evaluated['losses'][domain] for domain in DOMAINS] + [mean_loss(evaluated)]
        assert cells == [f'{loss:.4f}' for loss in losses], model
    token_counts = ', '.join(f'{domain} {EVAL_TOKENS_PER_DOMAIN:,}' for domain in DOMAINS)
    assert f'Eval tokens per domain: {token_counts}.' in report_text
    losses = {row[0]: [float(cell) for cell in row[1:]] for row in rows}
    assert list(losses) == ['source', 'pruned', 'continued']
    assert all(0 < loss < math.log(259) for row in losses.values() for loss in row)
    # Continued pre-training starts from the pruned model and lowers its loss.
    assert losses['continued'][-1] < losses['pruned'][-1]


@pytest.mark.slow
def test_the_pruned_models_and_the_kept_layers_have_the_recipes_target(demo_output, report_text):
    target = yaml.safe_load((REPO / 'yamls' / 'tiny' / 'pruning.yaml').read_text())['algorithms']['shearing']['target']
    for stage in ('pruning', 'continued_pretraining'):
        config = json.loads((demo_output / stage / 'huggingface' / 'final' / 'config.json').read_text())
        assert {field: config[field] for field in target} == target, stage
    _, *rows = _tables(report_text)['Kept per layer by the final masks']
    assert [int(row[0]) for row in rows] == list(range(SOURCE_SHAPE['num_hidden_layers']))
    kept = [row for row in rows if row[1] == 'yes']
    assert len(kept) == target['num_hidden_layers']
    assert all(row[2:] == [str(target['num_attention_heads']), str(target['intermediate_size'])] for row in kept)


def logged_metrics(path: Path) -> list[tuple[int, dict[str, float]]]:
    """The records of a ``jsonl`` metrics log: (batch, metrics)."""
    return [(record['batch'], record['metrics']) for record in map(json.loads, path.read_text().splitlines())]


@pytest.mark.slow
def test_each_stage_logged_the_losses_and_weights_the_report_gives(demo_output, report_text):
    source_losses = stage_losses(demo_output / 'source')['losses']
    _, *rows = _tables(report_text)['Training stages']
    assert [row[0] for row in rows] == list(STAGE_BATCHES)
    for name, batches_cell, *weight_cells in rows:
        folder, batches = STAGE_BATCHES[name]
        records = logged_metrics(demo_output / folder / 'metrics.jsonl')
        assert int(batches_cell) == batches == max(batch for batch, _ in records), name
        batch, final = [record for record in records if 'dynamic_loading/loss/code' in record[1]][-1]
        assert batch == batches, name
        weights = [final[f'dynamic_loading/proportion/{domain}'] for domain in DOMAINS]
        assert weight_cells == [f'{weight:.3f}' for weight in weights] and sum(weights) == pytest.approx(1), name
        # The run's own evaluation at its last batch (Composer's eval loop; while pruning, the masked model) and the
        # separate evaluation of the model it wrote agree.
        evaluated = stage_losses(demo_output / folder)['losses']
        for domain in DOMAINS:
            assert final[f'dynamic_loading/loss/{domain}'] == pytest.approx(evaluated[domain], abs=1e-5), (name, domain)
            if name != 'source':  # dynamic loading aims at the source model's losses
                assert final[f'dynamic_loading/reference/{domain}'] == round(source_losses[domain], 6), (name, domain)


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
