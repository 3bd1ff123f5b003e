"""The ``llmshearing`` command: one sub-command per module that provides ``add_command(subparsers)``."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

COMMAND_MODULES = (
    'llmshearing.pruning.export',
    'llmshearing.pruning.importance',
    'llmshearing.data.prepare',
    'llmshearing.data.reference_loss',
    'llmshearing.evaluation.harness',
    'llmshearing.demo',
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='llmshearing', description=__doc__)
    parser.add_argument('--log-level', default='INFO', help='Python log level (default: INFO)')
    subparsers = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).add_command(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format='%(asctime)s %(levelname)s %(name)s: %(message)s')
    try:
        args.run(args)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        print(f'llmshearing {args.command}: error: {error}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
