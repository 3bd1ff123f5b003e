"""The ``--quick`` flag that every benchmark has: its smallest form, which checks in seconds that it runs (its figures
mean nothing at those sizes). ``scripts/bench/run_all --quick`` passes it to each, and tests/scripts/test_bench.py
runs each so."""

from __future__ import annotations

import argparse
from typing import Any


def parse_args(parser: argparse.ArgumentParser, quick: dict[str, Any]) -> argparse.Namespace:
    """The command line's arguments, with a ``--quick`` flag that makes ``quick`` (destination: value) the defaults;
    flags given on the command line still win."""
    settings = ', '.join(f'--{name.replace("_", "-")} {value}' for name, value in quick.items())
    parser.add_argument(
        '--quick', action='store_true', help=f'the smallest form, to check that it runs ({settings})',
    )
    if parser.parse_known_args()[0].quick:
        parser.set_defaults(**quick)
    return parser.parse_args()
