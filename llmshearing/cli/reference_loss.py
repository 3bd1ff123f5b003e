"""``llmshearing reference-loss eval|fit``."""

from __future__ import annotations

import argparse
from pathlib import Path

from llmshearing.choices import DEFAULT_LOSS_EVAL_BATCH_SIZE, DEFAULT_LOSS_EVAL_DTYPE, LOSS_EVAL_DTYPES
from llmshearing.cli.arguments import comma_separated, set_run

DESCRIPTION = """\
Per-domain reference losses for dynamic batch loading.

eval measures a Hugging Face causal LM's mean loss per predicted token on each DATA_DIR/eval/<domain> (as
prepare-data writes it). fit fits the scaling law L(N) = E + A*N^-alpha per domain through three or more
(parameter count, per-domain losses) points, the JSON files eval writes or hand-written ones, and predicts each
domain's loss at a target parameter count; its "reference" list goes into callbacks.dynamic_loading.reference."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        'reference-loss', help='per-domain losses of a model, or scaling-law predictions of them',
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest='action', required=True, metavar='ACTION')

    evaluate = actions.add_parser('eval', help="a model's mean token loss on each DATA_DIR/eval/<domain>")
    evaluate.add_argument('model_dir', metavar='MODEL', type=Path, help='Hugging Face causal LM folder')
    evaluate.add_argument('data_dir', metavar='DATA_DIR', type=Path, help='prepare-data output')
    evaluate.add_argument('--out', required=True, type=Path, help='JSON file to write')
    evaluate.add_argument('--domains', type=comma_separated, help='comma-separated domains (default: all)')
    evaluate.add_argument('--batch-size', type=int, default=DEFAULT_LOSS_EVAL_BATCH_SIZE,
                          help=f'samples per forward pass (default: {DEFAULT_LOSS_EVAL_BATCH_SIZE})')
    evaluate.add_argument('--device', help='torch device (default: cuda if available, else cpu)')
    evaluate.add_argument('--dtype', choices=LOSS_EVAL_DTYPES, default=DEFAULT_LOSS_EVAL_DTYPE,
                          help=f'dtype of the model while evaluating (default: {DEFAULT_LOSS_EVAL_DTYPE})')
    evaluate.add_argument('--max-samples', type=int, help='at most this many samples per domain (default: all)')
    set_run(evaluate, run_eval)

    fit = actions.add_parser('fit', help='fit L(N) = E + A*N^-alpha per domain and predict losses at a target size')
    fit.add_argument('loss_files', metavar='LOSSES.json', nargs='+', type=Path, help='three or more eval outputs')
    fit.add_argument('--target-params', dest='target_parameters', required=True, type=float,
                     help='parameter count to predict losses for')
    fit.add_argument('--out', required=True, type=Path, help='JSON file to write')
    set_run(fit, run_fit)


def run_eval(args: argparse.Namespace) -> None:
    from llmshearing.commands.reference_loss import reference_loss_eval

    reference_loss_eval(
        args.model_dir, args.data_dir, args.out, domains=args.domains, batch_size=args.batch_size,
        device=args.device, dtype=args.dtype, max_samples=args.max_samples,
    )


def run_fit(args: argparse.Namespace) -> None:
    from llmshearing.commands.reference_loss import reference_loss_fit

    reference_loss_fit(args.loss_files, args.target_parameters, args.out)
