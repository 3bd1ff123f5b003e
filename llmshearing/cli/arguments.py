"""Argument types and the hook every command's parser shares."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from llmshearing.choices import DEFAULT_EVAL_DEVICE, DEFAULT_EVAL_DTYPE, EVAL_DTYPES, TARGET_FIELDS


def comma_separated(value: str) -> list[str]:
    """``'a,b'`` as ``['a', 'b']``."""
    return [item for item in value.split(',') if item]


def target_shape(value: str) -> dict[str, int]:
    """``hidden_size=384,num_attention_heads=6`` as ``{'hidden_size': 384, 'num_attention_heads': 6}``."""
    target = {}
    for item in value.split(','):
        name, _, number = item.partition('=')
        name = name.strip()
        if name not in TARGET_FIELDS:
            raise argparse.ArgumentTypeError(f'unknown target field {name!r}; expected some of {list(TARGET_FIELDS)}')
        try:
            target[name] = int(number)
        except ValueError:
            raise argparse.ArgumentTypeError(f'target {name} must be an integer, got {number!r}') from None
    return target


def add_device_and_dtype(parser: argparse.ArgumentParser) -> None:
    """``--device`` and ``--dtype`` of a command that runs Hugging Face models."""
    parser.add_argument('--device', default=DEFAULT_EVAL_DEVICE, help=f'cpu or cuda (default: {DEFAULT_EVAL_DEVICE})')
    parser.add_argument('--dtype', choices=EVAL_DTYPES, default=DEFAULT_EVAL_DTYPE,
                        help='float32 or bfloat16 weights, or amp_bf16: float32 weights, a bfloat16-autocast forward '
                        f'(default: {DEFAULT_EVAL_DTYPE})')


def set_run(parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], object]) -> None:
    """Make ``run`` the parser's action, and record the flag (or metavar) of each parameter for error messages.
    Each argument's ``dest`` is the name of the parameter of the command function it is passed to."""
    flags = {
        action.dest: action.option_strings[-1] if action.option_strings else action.metavar or action.dest.upper()
        for action in parser._actions
    }
    parser.set_defaults(run=run, flags=flags)
