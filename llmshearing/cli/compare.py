"""``llmshearing compare``."""

from __future__ import annotations

import argparse
from pathlib import Path

from llmshearing.choices import DEFAULT_API_KEY_ENV, DEFAULT_JUDGE_BATCH_SIZE
from llmshearing.cli.arguments import add_device_and_dtype, set_run

DESCRIPTION = """\
The pairwise win rate of model A's responses against model B's (two files that `llmshearing generate` writes, or any
AlpacaEval model_outputs.json), by a judge: a local Hugging Face model (its verdict read from the log-probabilities
of the answers 1 and 2) or an OpenAI-compatible endpoint.

The instructions both files share are judged in both orders (A's response first, then B's): a win of A when both
orders prefer A, a loss when both prefer B, else a tie. The result: the win rate of A with ties as half a win and
its 95% Wilson interval, the position-consistency rate, and each row's verdict with both orders' judge outputs."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        'compare', help="pairwise win rate of one model's responses against another's, by a judge model",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument('outputs_a', metavar='A.json', type=Path, help="model A's responses (model_outputs.json)")
    parser.add_argument('outputs_b', metavar='B.json', type=Path, help="model B's responses (model_outputs.json)")
    parser.add_argument(
        '--judge', required=True,
        help='Hugging Face causal LM folder, or an OpenAI-compatible endpoint: http(s)://HOST[/v1] (the path '
        '/v1/chat/completions is added) or the whole chat completions address',
    )
    parser.add_argument('--judge-model', help='the model name to ask an endpoint judge for')
    parser.add_argument('--api-key-env', default=DEFAULT_API_KEY_ENV,
                        help=f"the environment variable holding an endpoint judge's API key "
                        f'(default: {DEFAULT_API_KEY_ENV})')
    parser.add_argument('--batch-size', type=int, default=DEFAULT_JUDGE_BATCH_SIZE,
                        help=f'prompts per forward pass of a local judge (default: {DEFAULT_JUDGE_BATCH_SIZE})')
    add_device_and_dtype(parser)
    parser.add_argument('--out', required=True, type=Path, metavar='RESULT.json', help='a new JSON file')
    set_run(parser, run)


def run(args: argparse.Namespace) -> None:
    from llmshearing.commands.compare import compare

    compare(
        args.outputs_a, args.outputs_b, args.judge, args.out, judge_model=args.judge_model,
        api_key_env=args.api_key_env, batch_size=args.batch_size, dtype=args.dtype, device=args.device,
    )
