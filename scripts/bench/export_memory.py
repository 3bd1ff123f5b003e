"""Peak memory of ``llmshearing export`` per checkpoint format, as a multiple of the source model's weight bytes.

Two-rank CPU pruning runs (FSDP2 over gloo, ``yamls/tiny/pruning.yaml`` with a larger toy Llama and a target of
about the 7B → 2.7B proportions) train ``--batches`` batches with the same seed, one saving a monolithic checkpoint
(``state_dict_type: full``) and one a sharded checkpoint; both hold the weights, the masks and Adam's two moments.
Each export (bf16, the default) runs in a process of its own, which reports its peak resident memory (``VmHWM``,
the pages of the memory-mapped checkpoint included) and its resident memory before the export began (Python with
torch, transformers and Composer imported). Printed: peak / weight bytes, and (peak - before) / weight bytes,
the memory the export itself takes (goal <= 2.0). The script checks that the two exports are equal. ``--quick``:
a smaller toy (hidden 256, 2 layers) trained 1 batch.

    .venv/bin/python -m scripts.bench.export_memory [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from scripts.bench.quick import parse_args

REPO_ROOT = Path(__file__).resolve().parents[2]
DOMAINS = ('code', 'reference', 'docs')
STATE_DICT_TYPES = ('full', 'sharded')
SHAPES = {  # source, target
    'full': (
        {'hidden_size': 1024, 'num_attention_heads': 16, 'num_key_value_heads': 16, 'intermediate_size': 2816},
        {'hidden_size': 640, 'num_attention_heads': 10, 'intermediate_size': 1792},
    ),
    'quick': (
        {'hidden_size': 256, 'num_attention_heads': 4, 'num_key_value_heads': 4, 'intermediate_size': 704},
        {'hidden_size': 160, 'num_attention_heads': 3, 'intermediate_size': 448},
    ),
}


def status_bytes(field: str) -> int:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in bytes."""
    for line in Path('/proc/self/status').read_text().splitlines():
        if line.startswith(f'{field}:'):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def measure_export(checkpoint: str, output_dir: str) -> None:
    """Export ``checkpoint`` and print the resident memory before and at the peak, as JSON."""
    from llmshearing.pruning.export import export

    before = status_bytes('VmRSS')
    export(checkpoint, output_dir)
    print(json.dumps({'before': before, 'peak': status_bytes('VmHWM')}))


def train(work: Path, state_dict_type: str, target_shape: dict[str, int], layers: int, batches: int) -> Path:
    """The save folder of a two-rank pruning run that saves ``state_dict_type`` checkpoints."""
    output_dir = work / state_dict_type
    target = [f'algorithms.shearing.target.{field}={size}' for field, size in target_shape.items()]
    command = [
        str(Path(sys.executable).with_name('composer')), '-n', '2', str(REPO_ROOT / 'train.py'),
        str(REPO_ROOT / 'yamls' / 'tiny' / 'pruning.yaml'), f'variables.model_path={work / "source"}',
        f'variables.data_local={work / "data"}', f'variables.output_dir={output_dir}', f'max_duration={batches}ba',
        f'eval_interval={batches}ba', f'save_interval={batches}ba',
        f'algorithms.shearing.target.num_hidden_layers={layers}', *target,
        # The masks start uniform at drop rate 0.5, as when the figures in docs/performance.md were measured: the
        # recipe's importance start needs an importance file under FSDP (a prune-oneshot run first), and the
        # checkpoint (weights, masks, Adam's moments) and so the export's memory are the same for every start.
        'algorithms.shearing.init=uniform',
        f'fsdp_config={{state_dict_type: {state_dict_type}}}',
    ]
    # Composer's FSDP1 needs CUDA; FSDP2 shards on CPU as well.
    result = subprocess.run(command, cwd=work, capture_output=True, text=True, env=os.environ | {'FSDP_VERSION': '2'})
    if result.returncode != 0:
        raise RuntimeError(f'the {state_dict_type} run failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}')
    return output_dir / 'checkpoints'


def exports_equal(first: Path, second: Path) -> bool:
    import torch
    from safetensors.torch import load_file

    first_weights, second_weights = load_file(first / 'model.safetensors'), load_file(second / 'model.safetensors')
    return first_weights.keys() == second_weights.keys() and all(
        torch.equal(tensor, second_weights[name]) for name, tensor in first_weights.items()
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--layers', type=int, default=8, help='layers of the toy source model (default: 8)')
    parser.add_argument('--batches', type=int, default=2, help='training batches before the checkpoint (default: 2)')
    parser.add_argument('--measure', nargs=2, metavar=('CHECKPOINT', 'OUT'), help=argparse.SUPPRESS)
    args = parse_args(parser, {'layers': 2, 'batches': 1})
    if args.measure:
        measure_export(*args.measure)
        return

    import torch
    from transformers import LlamaForCausalLM

    from llmshearing.toy import byte_level_tokenizer, llama_config, save_toy_model, write_random_domain_data

    source_shape, target_shape = SHAPES['quick' if args.quick else 'full']
    with tempfile.TemporaryDirectory(prefix='export-memory-') as work:
        work = Path(work)
        sizes = source_shape | {'num_hidden_layers': args.layers}
        save_toy_model(work / 'source', **sizes)
        write_random_domain_data(work / 'data', DOMAINS, train_samples=32, eval_samples=4, seq_len=64)
        with torch.device('meta'):
            source = LlamaForCausalLM(llama_config(len(byte_level_tokenizer()), **sizes))
        weight_bytes = sum(parameter.numel() * 4 for parameter in source.parameters())
        print(f'source model: {sizes}, {weight_bytes / 2**20:.0f} MiB of fp32 weights; target {target_shape}')

        exports = {}
        for state_dict_type in STATE_DICT_TYPES:
            save_folder = train(work, state_dict_type, target_shape, args.layers, args.batches)
            files = [path for path in save_folder.rglob('*') if path.is_file() and not path.is_symlink()]
            checkpoint_bytes = sum(path.stat().st_size for path in files)
            exports[state_dict_type] = work / f'{state_dict_type}-export'
            command = [
                sys.executable,
                '-m',
                __spec__.name,
                '--measure',
                str(save_folder),
                str(exports[state_dict_type]),
            ]
            result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
            if result.returncode != 0:
                raise RuntimeError(f'the export of the {state_dict_type} checkpoint failed:\n{result.stderr[-3000:]}')
            memory = json.loads(result.stdout.splitlines()[-1])
            print(
                f'{state_dict_type:>7} checkpoint ({checkpoint_bytes / weight_bytes:.2f} x weights on disk): '
                f'export peak RSS / weights {memory["peak"] / weight_bytes:.2f}, '
                f'(peak - RSS before export) / weights {(memory["peak"] - memory["before"]) / weight_bytes:.2f} '
                '(goal <= 2.0)'
            )
        print(f'the two exports are equal: {exports_equal(*exports.values())}')


if __name__ == '__main__':
    main()
