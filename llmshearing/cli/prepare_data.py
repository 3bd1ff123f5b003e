"""``llmshearing prepare-data``."""

from __future__ import annotations

import argparse
from pathlib import Path

from llmshearing.choices import DEFAULT_EVAL_SAMPLES
from llmshearing.cli.arguments import comma_separated, set_run

DESCRIPTION = """\
Tokenise per-domain JSON lines into MDS shards for training and evaluation.

INPUT_DIR holds one folder per domain of *.jsonl, *.jsonl.gz or *.jsonl.zst files whose records carry a "text"
field. Every document becomes BOS + tokens + EOS; a domain's documents are concatenated in file-name order and cut
into samples of --seq-len tokens. Evaluation takes each domain's first whole documents from its eval files (every
file but the last); the two splits share no document. OUTPUT_DIR gets train/<domain>/, eval/<domain>/,
eval/eval_merge/ and manifest.json."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        'prepare-data', help='tokenise per-domain JSON lines into MDS shards', description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument('input_dir', metavar='INPUT_DIR', type=Path, help='one folder of JSON-lines files per domain')
    parser.add_argument('output_dir', metavar='OUTPUT_DIR', type=Path, help='where train/, eval/ and manifest.json go')
    parser.add_argument(
        '--tokenizer', required=True, type=Path, help='Hugging Face tokenizer folder or SentencePiece tokenizer.model',
    )
    parser.add_argument('--seq-len', required=True, type=int, help='tokens per sample')
    parser.add_argument(
        '--eval-samples', type=int, default=DEFAULT_EVAL_SAMPLES,
        help=f'eval samples per domain, 0 for none (default: {DEFAULT_EVAL_SAMPLES})',
    )
    parser.add_argument('--workers', type=int, help='tokenising processes (default: the usable CPUs)')
    parser.add_argument('--overwrite', action='store_true', help='replace a non-empty OUTPUT_DIR')
    parser.add_argument('--domains', type=comma_separated, help='comma-separated domain folders (default: all)')
    parser.add_argument('--max-docs-per-domain', type=int, help='at most this many training documents per domain')
    set_run(parser, run)


def run(args: argparse.Namespace) -> None:
    from llmshearing.commands.prepare_data import prepare_data

    prepare_data(
        args.input_dir, args.output_dir, args.tokenizer, args.seq_len, eval_samples=args.eval_samples,
        workers=args.workers, overwrite=args.overwrite, domains=args.domains,
        max_docs_per_domain=args.max_docs_per_domain,
    )
