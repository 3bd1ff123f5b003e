"""``llmshearing export``."""

from __future__ import annotations

import argparse

from llmshearing.choices import DEFAULT_WEIGHT_DTYPE, WEIGHT_DTYPES
from llmshearing.cli.arguments import set_run

DESCRIPTION = """\
Export a pruning checkpoint as a plain, pruned Hugging Face model (safetensors, config and tokenizer).

It reads checkpoints of this package's runs and of the original LLM-Shearing code, monolithic or sharded (FSDP with
state_dict_type: sharded), on a CPU. Only the model's weights, the mask configuration and the Hugging Face state are
read, never the optimizer's, so the peak memory is about the source model's weights plus the pruned model's."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        'export', help='export a pruning checkpoint as a pruned Hugging Face model', description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        'checkpoint_path', metavar='CHECKPOINT',
        help='Composer checkpoint: a file, a sharded checkpoint folder, or a save folder (its latest-rank0.pt or '
        'latest-sharded-rank0)',
    )
    parser.add_argument('output_dir', metavar='OUT_DIR', help='folder for the pruned model, config and tokenizer')
    parser.add_argument('--dtype', choices=WEIGHT_DTYPES, default=DEFAULT_WEIGHT_DTYPE,
                        help=f'weight dtype (default: {DEFAULT_WEIGHT_DTYPE})')
    parser.add_argument('--overwrite', action='store_true', help='replace files in a non-empty OUT_DIR')
    parser.add_argument(
        '--tokenizer', dest='tokenizer_path', metavar='PATH',
        help="tokenizer folder to save with the model (default: the checkpoint's; original LLM-Shearing checkpoints "
        'have none)',
    )
    set_run(parser, run)


def run(args: argparse.Namespace) -> None:
    from llmshearing.commands.export import export

    export(args.checkpoint_path, args.output_dir, args.dtype, args.overwrite, args.tokenizer_path)
