"""``llmshearing demo``: the whole pruning pipeline on a toy model and text already on this machine.

Offline: the corpus is the Python standard library's own source, the tokenizer is byte-level, and the
source model is a small random Llama.
"""

from __future__ import annotations

import argparse
import logging
import sysconfig
from pathlib import Path

import numpy as np
from tqdm import tqdm

from llmshearing.toy import byte_level_tokenizer, save_toy_model, write_token_shards

log = logging.getLogger(__name__)

REPO_YAMLS = Path(__file__).resolve().parents[1] / 'yamls'
SEQ_LEN = 64


def stdlib_token_samples(max_files: int, seq_len: int = SEQ_LEN) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Token samples of the standard library's ``.py`` files: every tenth file goes to eval."""
    tokenizer = byte_level_tokenizer()
    files = sorted(Path(sysconfig.get_paths()['stdlib']).glob('*.py'))[:max_files]
    train, evaluation = [], []
    for index, path in enumerate(tqdm(files, desc='tokenising the standard library', unit='file')):
        ids = [tokenizer.bos_token_id, *tokenizer(path.read_text(errors='replace'))['input_ids'], tokenizer.eos_token_id]
        samples = [np.asarray(ids[start:start + seq_len]) for start in range(0, len(ids) - seq_len + 1, seq_len)]
        (evaluation if index % 10 == 0 else train).extend(samples)
    return train, evaluation


def run_demo(output_dir: str | Path, quick: bool = False) -> Path:
    """Build data and a toy source model, prune it with the tiny recipe, export the result."""
    from llmfoundry.command_utils import train_from_yaml

    from llmshearing.pruning.export import export

    output_dir = Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()):
        raise FileExistsError(f'output folder {output_dir} is not empty; choose another with --output')
    train, evaluation = stdlib_token_samples(max_files=40 if quick else 200)
    write_token_shards(output_dir / 'data' / 'train', train)
    write_token_shards(output_dir / 'data' / 'eval', evaluation)
    source = save_toy_model(output_dir / 'source')
    overrides = [
        f'variables.model_path={source}',
        f'variables.data_local={output_dir / "data"}',
        f'save_folder={output_dir / "pruning" / "checkpoints"}',
        f'max_duration={24 if quick else 200}ba',
    ]
    train_from_yaml(str(REPO_YAMLS / 'tiny' / 'pruning.yaml'), overrides)
    return export(output_dir / 'pruning' / 'checkpoints', output_dir / 'pruned', dtype='fp32')


def add_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser('demo', help='Run the pruning pipeline end to end on a toy model, offline')
    parser.add_argument('--output', default='outputs/demo', help='folder for data, checkpoints and the pruned model')
    parser.add_argument('--quick', action='store_true', help='a shorter run (a couple of minutes on 2 cores)')
    parser.set_defaults(run=lambda args: run_demo(args.output, args.quick))
