"""``llmshearing generate``: a model's responses to a prompt file, in AlpacaEval's ``model_outputs.json`` format."""

from __future__ import annotations

import logging
from pathlib import Path

from llmshearing.checks import ParameterError, check_new_file, check_positive
from llmshearing.choices import (
    DEFAULT_EVAL_DEVICE,
    DEFAULT_EVAL_DTYPE,
    DEFAULT_EVAL_SEED,
    DEFAULT_GENERATE_BATCH_SIZE,
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_P,
)
from llmshearing.evaluation.responses import read_prompts, write_json

log = logging.getLogger(__name__)


def generate(
    model: str | Path,
    prompts: str | Path,
    out: str | Path,
    *,
    limit: int | None = None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    batch_size: int = DEFAULT_GENERATE_BATCH_SIZE,
    sample: bool = False,
    temperature: float | None = None,
    top_p: float | None = None,
    seed: int = DEFAULT_EVAL_SEED,
    generator: str | None = None,
    dtype: str = DEFAULT_EVAL_DTYPE,
    device: str = DEFAULT_EVAL_DEVICE,
) -> Path:
    """Write ``model``'s response to each of the first ``limit`` prompts of the file ``prompts`` to the new file
    ``out``, a JSON list of ``{"instruction", "output", "generator", "dataset"}``; return ``out``.

    ``generator`` names the model in the file (default: its folder's name); ``temperature`` (default
    ``DEFAULT_TEMPERATURE``) and ``top_p`` (default ``DEFAULT_TOP_P``) apply only with ``sample``. The other
    arguments are ``generate_responses``'s.
    """
    model, out = Path(model), Path(out)
    check_new_file(out, '.json')
    if not (model / 'config.json').is_file():
        raise FileNotFoundError(f'model folder {model} does not exist or has no config.json')
    check_positive(limit=limit, max_new_tokens=max_new_tokens, batch_size=batch_size)
    for name, value in (('temperature', temperature), ('top_p', top_p)):
        if value is not None and not sample:
            raise ParameterError(name, 'applies only when sampling')
    rows = read_prompts(prompts, limit)

    from llmshearing.evaluation.generation import generate_responses

    log.info('Generating responses of %s to %d prompts of %s', model, len(rows), prompts)
    responses = generate_responses(
        model, [row.instruction for row in rows], max_new_tokens=max_new_tokens, batch_size=batch_size, sample=sample,
        temperature=DEFAULT_TEMPERATURE if temperature is None else temperature,
        top_p=DEFAULT_TOP_P if top_p is None else top_p, seed=seed, dtype=dtype, device=device,
    )
    name = generator or model.resolve().name
    write_json(out, [
        {'instruction': row.instruction, 'output': response, 'generator': name, 'dataset': row.dataset}
        for row, response in zip(rows, responses)
    ])
    log.info('Wrote %s', out)
    return out
