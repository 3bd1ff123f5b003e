"""``llmshearing reference-loss eval|fit``: per-domain losses of a model, and scaling-law predictions of them, as
JSON files."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llmshearing.choices import DEFAULT_LOSS_EVAL_BATCH_SIZE, DEFAULT_LOSS_EVAL_DTYPE
from llmshearing.data.reference_loss import evaluate_domain_losses, predict_reference_losses
from llmshearing.evaluation.responses import write_json

log = logging.getLogger(__name__)


def reference_loss_eval(
    model_dir: str | Path,
    data_dir: str | Path,
    out: str | Path,
    *,
    domains: Sequence[str] | None = None,
    batch_size: int = DEFAULT_LOSS_EVAL_BATCH_SIZE,
    device: str | None = None,
    dtype: str = DEFAULT_LOSS_EVAL_DTYPE,
    max_samples: int | None = None,
) -> dict[str, Any]:
    """Write ``evaluate_domain_losses`` of ``model_dir`` on ``data_dir`` to ``out`` (JSON) and return it."""
    result = evaluate_domain_losses(
        model_dir, data_dir, domains=domains, batch_size=batch_size, device=device, dtype=dtype,
        max_samples=max_samples,
    )
    write_json(Path(out), result)
    log.info('wrote %s', out)
    return result


def reference_loss_fit(loss_files: Sequence[str | Path], target_parameters: float, out: str | Path) -> dict[str, Any]:
    """Write ``predict_reference_losses`` of ``loss_files`` at ``target_parameters`` to ``out`` (JSON) and return
    it."""
    result = predict_reference_losses(loss_files, target_parameters)
    write_json(Path(out), result)
    log.info('wrote %s', out)
    return result
