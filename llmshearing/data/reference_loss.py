"""Per-domain reference losses for dynamic batch loading (``llmshearing reference-loss``).

``evaluate_domain_losses`` (``eval``) measures a Hugging Face causal LM's mean loss per predicted token on each
``DATA_DIR/eval/<domain>`` (as ``prepare-data`` writes it). ``predict_reference_losses`` (``fit``) fits the scaling
law L(N) = E + A·N^(−α) per domain through several (parameter count, per-domain losses) points, the JSON files
``eval`` writes or hand-written ones, and predicts each domain's loss at a target parameter count; its ``reference``
list goes into ``callbacks.dynamic_loading.reference``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from streaming import LocalDataset
from transformers import AutoModelForCausalLM, PreTrainedModel

from llmshearing.checks import ParameterError
from llmshearing.choices import DEFAULT_LOSS_EVAL_BATCH_SIZE, DEFAULT_LOSS_EVAL_DTYPE, LOSS_EVAL_DTYPES
from llmshearing.data.prepare import EVAL_MERGE

log = logging.getLogger(__name__)

ALPHA_RANGE = (1e-3, 3.0)
ALPHA_GRID_POINTS = 300


def _eval_domains(data_dir: Path, domains: Sequence[str] | None) -> list[str]:
    eval_dir = data_dir / 'eval'
    if not eval_dir.is_dir():
        raise FileNotFoundError(f'eval folder {eval_dir} does not exist')
    if domains is None:
        domains = sorted(path.name for path in eval_dir.iterdir() if path.is_dir() and path.name != EVAL_MERGE)
        if not domains:
            raise FileNotFoundError(f'eval folder {eval_dir} has no domain folders')
    for domain in domains:
        if not (eval_dir / domain / 'index.json').is_file():
            raise FileNotFoundError(f'eval split {eval_dir / domain} does not exist (no index.json)')
    return list(domains)


def _domain_loss(
    model: PreTrainedModel, split_dir: Path, batch_size: int, device: torch.device, max_samples: int | None
) -> tuple[float, int]:
    """Sum of the next-token cross-entropies over the samples of ``split_dir`` and the number of predicted tokens."""
    samples = LocalDataset(str(split_dir))
    if len(samples) == 0:
        raise ValueError(f'eval split {split_dir} has no samples')
    num_samples = len(samples) if max_samples is None else min(max_samples, len(samples))
    loss_sum, num_tokens = 0.0, 0
    for start in range(0, num_samples, batch_size):
        batch = np.stack([samples[index]['tokens'] for index in range(start, min(start + batch_size, num_samples))])
        if batch.max() >= model.config.vocab_size:
            raise ValueError(
                f'eval split {split_dir} has token id {batch.max()}, outside the vocabulary of the model'
                f' ({model.config.vocab_size} tokens): prepare the data with the model\'s tokenizer'
            )
        input_ids = torch.from_numpy(batch.astype(np.int64)).to(device)
        logits = model(input_ids=input_ids).logits[:, :-1].float()
        targets = input_ids[:, 1:]
        loss_sum += torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction='sum').item()
        num_tokens += targets.numel()
    return loss_sum, num_tokens


@torch.inference_mode()
def evaluate_domain_losses(
    model_dir: str | Path,
    data_dir: str | Path,
    domains: Sequence[str] | None = None,
    batch_size: int = DEFAULT_LOSS_EVAL_BATCH_SIZE,
    device: str | None = None,
    dtype: str = DEFAULT_LOSS_EVAL_DTYPE,
    max_samples: int | None = None,
) -> dict[str, Any]:
    """Mean loss per predicted token of ``model_dir`` on each ``data_dir/eval/<domain>``.

    Args:
        model_dir: a Hugging Face causal LM folder.
        data_dir: prepared data with ``eval/<domain>/`` MDS folders (column ``tokens``).
        domains: the domains to evaluate, in this order (default: every eval folder but ``eval_merge``, by name).
        batch_size: samples per forward pass.
        device: torch device (default: ``cuda`` when available, else ``cpu``).
        dtype: the model's torch dtype while evaluating, e.g. ``float32`` or ``bfloat16``.
        max_samples: evaluate at most this many samples per domain.

    Returns:
        ``{'model', 'parameters', 'losses': {domain: loss}, 'tokens': {domain: predicted tokens}}``.
    """
    model_dir, data_dir = Path(model_dir), Path(data_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f'model folder {model_dir} does not exist')
    for name, value in (('batch_size', batch_size), ('max_samples', 1 if max_samples is None else max_samples)):
        if value < 1:
            raise ParameterError(name, f'must be at least 1, got {value}')
    if dtype not in LOSS_EVAL_DTYPES:
        raise ParameterError('dtype', f'must be one of {list(LOSS_EVAL_DTYPES)}, got {dtype!r}')
    domains = _eval_domains(data_dir, domains)
    torch_device = torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=getattr(torch, dtype)).to(torch_device).eval()
    result: dict[str, Any] = {
        'model': str(model_dir.resolve()),
        'parameters': sum(parameter.numel() for parameter in model.parameters()),
        'losses': {},
        'tokens': {},
    }
    for domain in domains:
        loss_sum, num_tokens = _domain_loss(model, data_dir / 'eval' / domain, batch_size, torch_device, max_samples)
        result['losses'][domain] = loss_sum / num_tokens
        result['tokens'][domain] = num_tokens
        log.info('%s: loss %.4f over %d tokens', domain, loss_sum / num_tokens, num_tokens)
    return result


@dataclass(frozen=True)
class ScalingLaw:
    """L(N) = E + A·N^(−α): the loss of a model with N parameters."""

    E: float
    A: float
    alpha: float

    def __call__(self, parameters: float) -> float:
        return self.E + self.A * parameters ** -self.alpha


def fit_scaling_law(parameters: Sequence[float], losses: Sequence[float]) -> ScalingLaw:
    """Least-squares fit of L(N) = E + A·N^(−α), α in ``ALPHA_RANGE``, through at least three distinct sizes.

    For a fixed α the law is linear in (E, A), so only α is searched: on a grid, then refined with Brent's
    method around the best grid point. Sizes are measured relative to their geometric mean while fitting.
    """
    sizes, targets = np.asarray(parameters, np.float64), np.asarray(losses, np.float64)
    if len(np.unique(sizes)) < 3:
        distinct = sorted(set(sizes.tolist()))
        raise ValueError(f'a scaling law fit needs at least 3 distinct parameter counts, got {distinct}')
    if np.any(sizes <= 0) or not np.all(np.isfinite(targets)):
        raise ValueError(
            f'parameter counts must be positive and losses finite, got {sizes.tolist()} and {targets.tolist()}'
        )
    reference_size = np.exp(np.log(sizes).mean())
    log_relative_sizes = np.log(sizes / reference_size)

    def solve(alpha: float) -> tuple[np.ndarray, float]:
        design = np.stack([np.ones_like(sizes), np.exp(-alpha * log_relative_sizes)], axis=1)
        coefficients = np.linalg.lstsq(design, targets, rcond=None)[0]
        residuals = design @ coefficients - targets
        return coefficients, float(residuals @ residuals)

    grid = np.linspace(*ALPHA_RANGE, ALPHA_GRID_POINTS)
    best = int(np.argmin([solve(alpha)[1] for alpha in grid]))
    bracket = (grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)])
    alpha = minimize_scalar(lambda a: solve(a)[1], bounds=bracket, method='bounded', options={'xatol': 1e-12}).x
    (irreducible, relative_coefficient), _ = solve(alpha)
    if relative_coefficient <= 0:
        raise ValueError(f'losses {targets.tolist()} do not decrease with the parameter count {sizes.tolist()}')
    return ScalingLaw(float(irreducible), float(relative_coefficient * reference_size**alpha), float(alpha))


def _read_point(path: Path) -> tuple[float, dict[str, float]]:
    if not path.is_file():
        raise FileNotFoundError(f'losses file {path} does not exist')
    try:
        point = json.loads(path.read_text())
    except ValueError as error:
        raise ValueError(f'{path}: not valid JSON ({error})') from error
    for key, kind in (('parameters', (int, float)), ('losses', dict)):
        if not isinstance(point, dict) or key not in point:
            raise ValueError(f'{path}: missing key {key!r}')
        if not isinstance(point[key], kind) or isinstance(point[key], bool):
            raise ValueError(f'{path}: {key!r} must be a {"number" if key == "parameters" else "mapping"}')
    for domain, loss in point['losses'].items():
        if not isinstance(loss, (int, float)) or isinstance(loss, bool):
            raise ValueError(f'{path}: losses[{domain!r}] must be a number, got {loss!r}')
    return float(point['parameters']), {domain: float(loss) for domain, loss in point['losses'].items()}


def predict_reference_losses(loss_files: Sequence[str | Path], target_parameters: float) -> dict[str, Any]:
    """Fit a scaling law per domain through the points in ``loss_files`` and predict losses at ``target_parameters``.

    Each file holds ``{'parameters': N, 'losses': {domain: loss}}`` (what ``evaluate_domain_losses`` returns),
    all with the same domains. Returns ``{'parameters', 'losses', 'reference', 'scaling_laws', 'points'}``;
    ``reference`` lists the predicted losses in the domain order of the first file.
    """
    if target_parameters <= 0:
        raise ParameterError('target_parameters', f'must be positive, got {target_parameters}')
    paths = [Path(file) for file in loss_files]
    points = [_read_point(path) for path in paths]
    if len(points) < 3:
        raise ValueError(f'a scaling law fit needs at least 3 losses files, got {len(points)}')
    domains = list(points[0][1])
    for path, (_, losses) in zip(paths[1:], points[1:]):
        if set(losses) != set(domains):
            raise ValueError(f'{path}: domains {sorted(losses)} differ from those of {paths[0]}: {sorted(domains)}')
    sizes = [size for size, _ in points]
    scaling_laws = {}
    for domain in domains:
        try:
            scaling_laws[domain] = fit_scaling_law(sizes, [losses[domain] for _, losses in points])
        except ValueError as error:
            raise ValueError(f'domain {domain!r}: {error}') from error
    predictions = {domain: law(target_parameters) for domain, law in scaling_laws.items()}
    return {
        'parameters': target_parameters,
        'losses': predictions,
        'reference': list(predictions.values()),
        'scaling_laws': {domain: asdict(law) for domain, law in scaling_laws.items()},
        'points': [str(path) for path in paths],
    }
