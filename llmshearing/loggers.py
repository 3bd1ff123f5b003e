"""``jsonl``: a Composer logger destination that appends every logged metric to a JSON-lines file.

One line per ``log_metrics`` call: ``{"batch": N, "metrics": {name: value, ...}}`` with full float
precision, written by global rank 0. Reports, plots and resume checks read it back.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from composer.core import State
from composer.loggers import Logger, LoggerDestination
from composer.utils import dist


class JSONLinesLogger(LoggerDestination):
    """Append metrics to ``path`` (``{run_name}`` is replaced by the run's name)."""

    def __init__(self, path: str = '{run_name}/metrics.jsonl'):
        self.path_template = path
        self.path: Path | None = None
        self._state: State | None = None

    def init(self, state: State, logger: Logger) -> None:
        self._state = state
        if dist.get_global_rank() == 0:
            self.path = Path(self.path_template.format(run_name=state.run_name))
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        if self.path is None:
            return
        batch = step if step is not None else int(self._state.timestamp.batch)
        values = {name: _plain(value) for name, value in metrics.items()}
        with self.path.open('a') as file:
            file.write(json.dumps({'batch': batch, 'metrics': values}) + '\n')


def _plain(value: Any) -> float | None:
    number = float(value.item() if hasattr(value, 'item') else value)
    return number if math.isfinite(number) else None


def read_metrics(path: str | Path) -> dict[str, list[tuple[int, float | None]]]:
    """The metrics of a ``jsonl`` log: name -> [(batch, value), ...] in logging order."""
    series: dict[str, list[tuple[int, float | None]]] = {}
    for line in Path(path).read_text().splitlines():
        record = json.loads(line)
        for name, value in record['metrics'].items():
            series.setdefault(name, []).append((record['batch'], value))
    return series
