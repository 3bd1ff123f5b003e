"""Markdown tables, for the reports and the evaluation results."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """The lines of a markdown table."""
    lines = ['| ' + ' | '.join(headers) + ' |', '|' + '---|' * len(headers)]
    return lines + ['| ' + ' | '.join(str(cell) for cell in row) + ' |' for row in rows]
