"""``llmshearing prune-oneshot``."""

from __future__ import annotations

import argparse
from pathlib import Path

from llmshearing.choices import (
    DEFAULT_CALIBRATION_BATCH_SIZE,
    DEFAULT_CALIBRATION_SAMPLES,
    DEFAULT_IMPORTANCE,
    DEFAULT_WEIGHT_DTYPE,
    IMPORTANCE_METHODS,
    PRUNING_MODULES,
    WEIGHT_DTYPES,
)
from llmshearing.cli.arguments import comma_separated, set_run, target_shape

DESCRIPTION = """\
Prune a model once to a target shape by structure importance, without training.

Every layer, attention head, MLP channel and hidden dimension is scored once; the top-scoring structures of each
mask kind are kept at the target shape (the same widths in every layer). OUT_DIR gets the pruned Hugging Face model,
importance.json (every score; algorithms.shearing.importance_file reads it) and kept_structures.png.

Importance methods:
  activation  mean activation magnitudes on calibration tokens; layers by 1 - cos(layer input, output) (Minitron)
  taylor      |w * dL/dw| summed over each structure's weights, on calibration tokens (LLM-Pruner, first order)
  magnitude   the squared weight norm of each structure; needs no data"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        'prune-oneshot', help='prune a model once to a target shape by structure importance (no training)',
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument('model_dir', metavar='MODEL', type=Path, help='Hugging Face causal LM folder')
    parser.add_argument('output_dir', metavar='OUT_DIR', type=Path, help='folder for the pruned model')
    parser.add_argument('--data', dest='data_dir', type=Path,
                        help='prepare-data output; calibration samples come from its train/')
    parser.add_argument('--domains', type=comma_separated, help='comma-separated domains (default: all)')
    parser.add_argument('--target', required=True, type=target_shape,
                        help='target shape in HF config names, e.g. hidden_size=384,num_attention_heads=6,'
                        'num_key_value_heads=3,intermediate_size=1024,num_hidden_layers=20')
    parser.add_argument('--pruning-modules', type=comma_separated,
                        help=f'comma-separated mask kinds among {",".join(PRUNING_MODULES)} (default: all of them, '
                        'kv_head only for grouped-query attention)')
    parser.add_argument('--importance', choices=IMPORTANCE_METHODS, default=DEFAULT_IMPORTANCE,
                        help=f'how structures are scored (default: {DEFAULT_IMPORTANCE})')
    parser.add_argument('--calibration-samples', type=int, default=DEFAULT_CALIBRATION_SAMPLES,
                        help=f'samples to score on (default: {DEFAULT_CALIBRATION_SAMPLES})')
    parser.add_argument('--seq-len', type=int, help="tokens per calibration sample (default: the data's)")
    parser.add_argument('--batch-size', type=int, default=DEFAULT_CALIBRATION_BATCH_SIZE,
                        help=f'samples per forward pass (default: {DEFAULT_CALIBRATION_BATCH_SIZE})')
    parser.add_argument('--dtype', choices=WEIGHT_DTYPES, default=DEFAULT_WEIGHT_DTYPE,
                        help=f'weights of the written model (default: {DEFAULT_WEIGHT_DTYPE})')
    parser.add_argument('--overwrite', action='store_true', help='replace files in a non-empty OUT_DIR')
    set_run(parser, run)


def run(args: argparse.Namespace) -> None:
    from llmshearing.commands.prune_oneshot import prune_oneshot

    prune_oneshot(
        args.model_dir, args.output_dir, args.target, data_dir=args.data_dir, domains=args.domains,
        pruning_modules=args.pruning_modules, importance=args.importance,
        calibration_samples=args.calibration_samples, seq_len=args.seq_len, batch_size=args.batch_size,
        dtype=args.dtype, overwrite=args.overwrite,
    )
