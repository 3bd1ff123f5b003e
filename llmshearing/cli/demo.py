"""``llmshearing demo``."""

from __future__ import annotations

import argparse

from llmshearing.choices import DEFAULT_DEMO_OUTPUT
from llmshearing.cli.arguments import set_run

DESCRIPTION = """\
The whole Sheared-LLaMA pipeline on one CPU, offline, on text already on this machine.

1. A corpus of three domains (the standard library's Python modules, the language reference, the installed packages'
   READMEs), prepared as MDS shards with a byte-level tokenizer.
2. A small Llama pre-trained on it from scratch.
3. The source pruned to a smaller shape with dynamic batch loading.
4. Continued pre-training of the pruned model.
5. Per-domain eval losses of the three models, and a report folder with a summary and plots.

The console shows one line per stage; each stage's whole log is in OUTPUT/<stage>/log.txt."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        'demo', help='run the whole pipeline on a toy model (corpus, source, pruning, continued pre-training, report)',
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument('--output', dest='output_dir', default=DEFAULT_DEMO_OUTPUT,
                        help=f'a new or empty folder for everything the demo writes (default: {DEFAULT_DEMO_OUTPUT})')
    parser.add_argument('--quick', action='store_true', help='less text, fewer batches: one to two minutes on 2 cores')
    parser.add_argument('--verbose', action='store_true',
                        help="show each stage's whole log on the console as well (always in OUTPUT/<stage>/log.txt)")
    set_run(parser, run)


def run(args: argparse.Namespace) -> None:
    from llmshearing.commands.demo import demo

    demo(args.output_dir, quick=args.quick, verbose=args.verbose)
