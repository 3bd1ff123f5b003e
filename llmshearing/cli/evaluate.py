"""``llmshearing evaluate``."""

from __future__ import annotations

import argparse
from pathlib import Path

from llmshearing.choices import DEFAULT_EVAL_BATCH_SIZE, DEFAULT_EVAL_SEED
from llmshearing.cli.arguments import add_device_and_dtype, set_run
from llmshearing.evaluation.tasks import PAPER_TASKS

DESCRIPTION = """\
Downstream accuracy of Hugging Face models with lm-evaluation-harness, offline.

Each model is evaluated on the same rows of each task (a seeded subset with --limit); the result is a JSON file, a
markdown table beside it, a PNG bar chart with two or more models, and every row's scores as jsonl.

--tasks ifeval runs lm-evaluation-harness's IFEval task on TASK_DIR/ifeval.jsonl (the rows of google/IFEval):
greedy responses, checked for the prompts' verifiable instructions; prompt- and instruction-level accuracy, strict
and loose, reported apart from the average."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        'evaluate', help='downstream task accuracy of Hugging Face models (lm-evaluation-harness, offline)',
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument('models', metavar='MODEL', nargs='+', help='Hugging Face causal LM folders')
    parser.add_argument(
        '--tasks', required=True,
        help=f"paper (each of {', '.join(PAPER_TASKS)} that --task-dir holds, with the paper's shots and metric) "
        'or a comma-separated list of names (ifeval among them); NAME is TASK_DIR/NAME.jsonl',
    )
    parser.add_argument('--task-dir', required=True, type=Path,
                        help="folder of task files in llm-foundry ICL format and of IFEval's ifeval.jsonl")
    parser.add_argument('--limit', type=int, help='evaluate this many rows per task, drawn with --seed (default: all)')
    parser.add_argument('--seed', type=int, default=DEFAULT_EVAL_SEED,
                        help=f'seed of the row subset and the few-shot examples (default: {DEFAULT_EVAL_SEED})')
    parser.add_argument('--num-fewshot', type=int,
                        help="shots for every task but IFEval, which is zero-shot (default: each task's own)")
    parser.add_argument('--batch-size', type=int, default=DEFAULT_EVAL_BATCH_SIZE,
                        help=f'requests per forward pass (default: {DEFAULT_EVAL_BATCH_SIZE})')
    add_device_and_dtype(parser)
    parser.add_argument('--max-new-tokens', type=int,
                        help="cap on the tokens of an IFEval response (default: the task's own, 1280)")
    parser.add_argument('--no-chat-template', dest='chat_template', action='store_false',
                        help="give IFEval's prompts as raw text, not through the model's chat template (default: the "
                        'template, where the tokenizer has one)')
    parser.add_argument('--out', required=True, type=Path,
                        help='FILE.json; FILE.md, FILE.png and FILE.samples.jsonl go beside it')
    parser.add_argument('--overwrite', action='store_true', help='replace existing output files')
    set_run(parser, run)


def run(args: argparse.Namespace) -> None:
    from llmshearing.commands.evaluate import evaluate

    evaluate(
        args.models, args.tasks, args.task_dir, args.out, limit=args.limit, seed=args.seed,
        num_fewshot=args.num_fewshot, batch_size=args.batch_size, device=args.device, dtype=args.dtype,
        max_new_tokens=args.max_new_tokens, chat_template=args.chat_template, overwrite=args.overwrite,
    )
