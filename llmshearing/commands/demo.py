"""``llmshearing demo``: the whole pipeline on one CPU, offline (``llmshearing.demo``)."""

from __future__ import annotations

from pathlib import Path

from llmshearing.choices import DEFAULT_DEMO_OUTPUT
from llmshearing.demo import run_demo


def demo(output_dir: str | Path = DEFAULT_DEMO_OUTPUT, *, quick: bool = False, verbose: bool = False) -> Path:
    """Run the demo into ``output_dir`` (new or empty); return its report folder."""
    return run_demo(output_dir, quick, verbose)
