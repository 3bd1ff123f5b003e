"""The ``llmshearing`` command: argument parsing only. Each command's module holds its parser and a ``run(args)``
that calls the typed function of ``llmshearing.commands``, which loads the heavy libraries when it runs."""

from __future__ import annotations

import argparse
import logging
import sys
from types import ModuleType

from llmshearing.checks import OutputExistsError, ParameterError
from llmshearing.cli import (
    compare,
    demo,
    evaluate,
    export,
    generate,
    prepare_data,
    prepare_instructions,
    prune_oneshot,
    reference_loss,
)

DESCRIPTION = """\
Sheared-LLaMA: a strong small language model from a strong large one, by targeted structured pruning (hard-concrete
masks over layers, heads, MLP channels and the hidden width, learned to a chosen shape) and continued pre-training,
both with dynamic batch loading over the data's domains. Training runs as Composer/llm-foundry recipes:
composer train.py yamls/<stage>/<name>.yaml.

The pipeline, in order:
  prepare-data      per-domain JSON lines to MDS shards
  reference-loss    per-domain reference losses for dynamic batch loading
  (pruning)         composer train.py yamls/pruning/<name>.yaml, or prune-oneshot without training
  export            a pruning checkpoint as a pruned Hugging Face model
  (continued)       composer train.py yamls/continued_pretraining/<name>.yaml
  evaluate          downstream task accuracy
  prepare-instructions  instruction data (ShareGPT, Alpaca, self-instruct) for instruction tuning
  (instruction)     composer train.py yamls/instruction_tuning/<name>.yaml
  generate          responses to instruction prompts (AlpacaEval's model_outputs.json)
  compare           pairwise win rate of two models' responses, by a judge model
demo runs the whole pipeline on a toy model on one CPU, offline."""

COMMANDS: tuple[ModuleType, ...] = (
    prepare_data, reference_loss, prune_oneshot, export, evaluate, prepare_instructions, generate, compare, demo,
)
"""The commands' modules, in pipeline order."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='llmshearing', description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument('--log-level', default='INFO', help='log level: DEBUG, INFO, WARNING or ERROR (default: INFO)')
    subparsers = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def error_message(error: Exception, flags: dict[str, str]) -> str:
    """The error as the command line says it: a parameter that the error names is called by its flag."""
    if isinstance(error, (ParameterError, OutputExistsError)):
        return error.named(flags.get(error.parameter, error.parameter))
    return str(error)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format='%(asctime)s %(levelname)s %(name)s: %(message)s')
    try:
        args.run(args)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        sys.stderr.write(f'llmshearing {args.command}: error: {error_message(error, args.flags)}\n')
        return 2
    return 0
