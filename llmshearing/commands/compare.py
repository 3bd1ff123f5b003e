"""``llmshearing compare``: the pairwise win rate of one model's responses against another's, by a judge model."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from llmshearing.checks import ParameterError, check_model_settings, check_new_file, check_positive
from llmshearing.choices import DEFAULT_API_KEY_ENV, DEFAULT_EVAL_DEVICE, DEFAULT_EVAL_DTYPE, DEFAULT_JUDGE_BATCH_SIZE
from llmshearing.evaluation.pairwise import EndpointJudge, Judge, compare_outputs, model_name, shared_pairs
from llmshearing.evaluation.responses import read_model_outputs, write_json

log = logging.getLogger(__name__)


def is_endpoint(judge: str) -> bool:
    """Whether ``judge`` names an OpenAI-compatible endpoint rather than a local model folder."""
    return judge.startswith(('http://', 'https://'))


def compare(
    outputs_a: str | Path,
    outputs_b: str | Path,
    judge: str | Path,
    out: str | Path,
    *,
    judge_model: str | None = None,
    api_key_env: str = DEFAULT_API_KEY_ENV,
    batch_size: int = DEFAULT_JUDGE_BATCH_SIZE,
    dtype: str = DEFAULT_EVAL_DTYPE,
    device: str = DEFAULT_EVAL_DEVICE,
) -> dict[str, Any]:
    """Judge the responses of ``outputs_a`` against those of ``outputs_b`` (``model_outputs.json`` files) on the
    instructions they share, write the result to the new file ``out`` and return it
    (``llmshearing.evaluation.pairwise.compare_outputs``: the rule, the win rate of A and its interval).

    Args:
        judge: a local Hugging Face causal LM folder (verdicts from its answer log-probabilities; run with
            ``batch_size`` prompts per forward pass, in ``dtype`` on ``device``), or the address of an
            OpenAI-compatible endpoint (``http://`` or ``https://``; ``/v1/chat/completions`` is added to a base
            address), asked for the model ``judge_model`` with the API key in the environment variable
            ``api_key_env``.
    """
    outputs_a, outputs_b, judge, out = Path(outputs_a), Path(outputs_b), str(judge), Path(out)
    check_new_file(out, '.json')
    rows_a = read_model_outputs(outputs_a, 'outputs_a')
    rows_b = read_model_outputs(outputs_b, 'outputs_b')
    if not shared_pairs(rows_a, rows_b):
        raise ValueError(f'{outputs_a} and {outputs_b} share no instruction')
    check_positive(batch_size=batch_size)
    judge_runner = _endpoint_judge(judge, judge_model, api_key_env) if is_endpoint(judge) else _local_judge(
        judge, judge_model, batch_size, dtype, device,
    )
    result = {
        'a': {'file': str(outputs_a), 'generator': model_name(rows_a, outputs_a)},
        'b': {'file': str(outputs_b), 'generator': model_name(rows_b, outputs_b)},
    } | compare_outputs(rows_a, rows_b, judge_runner)
    write_json(out, result)
    shared = result['instructions']
    log.info(
        '%s against %s on %d shared instructions (%d only in A, %d only in B): win rate %.3f (95%% interval '
        '%.3f-%.3f), %d wins, %d ties, %d losses; position consistency %.3f',
        result['a']['generator'], result['b']['generator'], shared['shared'], shared['only_in_a'],
        shared['only_in_b'], result['win_rate'], *result['interval'], result['wins'], result['ties'],
        result['losses'], result['position_consistency'],
    )
    if 'summed_margins' in result:
        summed = result['summed_margins']
        log.info(
            'With the summed margins of both orders (position bias cancelled): win rate %.3f (95%% interval '
            '%.3f-%.3f), %d wins, %d ties, %d losses', summed['win_rate'], *summed['interval'], summed['wins'],
            summed['ties'], summed['losses'],
        )
    log.info('Wrote %s', out)
    return result


def _endpoint_judge(judge: str, judge_model: str | None, api_key_env: str) -> Judge:
    if not judge_model:
        raise ParameterError('judge_model', 'is needed with an endpoint judge: the model name to ask for')
    api_key = os.environ.get(api_key_env)
    if not api_key:
        raise ParameterError('api_key_env', f'names {api_key_env}, which is not set: it must hold the API key')
    return EndpointJudge(judge, judge_model, api_key)


def _local_judge(judge: str, judge_model: str | None, batch_size: int, dtype: str, device: str) -> Judge:
    if judge_model is not None:
        raise ParameterError('judge_model', 'applies only to an endpoint judge (http:// or https://)')
    if not (Path(judge) / 'config.json').is_file():
        raise ParameterError('judge', f'{judge}: neither an http:// or https:// address nor a model folder with '
                             'config.json')
    from llmshearing.evaluation.local_judge import LocalJudge

    check_model_settings(dtype, device)
    return LocalJudge(judge, batch_size, dtype, device)
