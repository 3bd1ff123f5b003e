"""``llmshearing generate``."""

from __future__ import annotations

import argparse
from pathlib import Path

from llmshearing.choices import (
    DEFAULT_EVAL_SEED,
    DEFAULT_GENERATE_BATCH_SIZE,
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_P,
)
from llmshearing.cli.arguments import add_device_and_dtype, set_run

DESCRIPTION = """\
A model's responses to instruction prompts, written in AlpacaEval's model_outputs.json format: a JSON list of
{"instruction", "output", "generator", "dataset"}. With API access, `alpaca_eval --model_outputs OUTPUTS.json`
judges the file; `llmshearing compare` judges two such files offline.

Prompt files are a JSON list or JSON lines of rows with an instruction (AlpacaEval), a prompt (IFEval) or turns
(MT-bench style: the first turn). The prompt goes through the tokenizer's chat template when it has one. Decoding is
greedy unless --sample is given."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        'generate', help="a model's responses to instruction prompts (AlpacaEval's model_outputs.json)",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument('model', metavar='MODEL', help='Hugging Face causal LM folder')
    parser.add_argument('--prompts', required=True, type=Path, metavar='FILE',
                        help='JSON or JSON lines file of rows with instruction, prompt or turns')
    parser.add_argument('--limit', type=int, help='respond to the first N prompts (default: all)')
    parser.add_argument('--max-new-tokens', type=int, default=DEFAULT_MAX_NEW_TOKENS,
                        help=f'most tokens of a response (default: {DEFAULT_MAX_NEW_TOKENS})')
    parser.add_argument('--batch-size', type=int, default=DEFAULT_GENERATE_BATCH_SIZE,
                        help=f'prompts per batch (default: {DEFAULT_GENERATE_BATCH_SIZE})')
    parser.add_argument('--sample', action='store_true', help='sample with --temperature and --top-p (default: greedy)')
    parser.add_argument('--temperature', type=float,
                        help=f'sampling temperature, with --sample (default: {DEFAULT_TEMPERATURE})')
    parser.add_argument('--top-p', type=float, help=f'nucleus sampling mass, with --sample (default: {DEFAULT_TOP_P})')
    parser.add_argument('--seed', type=int, default=DEFAULT_EVAL_SEED,
                        help=f'seed of sampling (default: {DEFAULT_EVAL_SEED})')
    parser.add_argument('--generator', help="the model's name in the file (default: the MODEL folder's name)")
    add_device_and_dtype(parser)
    parser.add_argument('--out', required=True, type=Path, metavar='OUTPUTS.json', help='a new JSON file')
    set_run(parser, run)


def run(args: argparse.Namespace) -> None:
    from llmshearing.commands.generate import generate

    generate(
        args.model, args.prompts, args.out, limit=args.limit, max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size, sample=args.sample, temperature=args.temperature, top_p=args.top_p,
        seed=args.seed, generator=args.generator, dtype=args.dtype, device=args.device,
    )
