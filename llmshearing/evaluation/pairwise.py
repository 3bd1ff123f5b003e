"""Pairwise judging of two models' responses to the same instructions (``llmshearing compare``), with the standard
library only: the judging prompt, the verdict rule, the win rate and its interval, and the OpenAI-compatible endpoint
judge (the local judge, which needs torch, is ``llmshearing.evaluation.local_judge``).

Each instruction both files share is judged in both orders, A's response as response 1 and then B's. A judge reads
``JUDGE_PROMPT`` and prefers response 1, response 2 or neither; each order's preference is mapped back to A or B. A
pair is a win of A when both orders prefer A, a loss when both prefer B, and a tie otherwise (the orders disagree:
position-inconsistent, or an order has no preference). The judge sees each distinct prompt once, so identical
responses, whose two orders are the same prompt, get the same preferred position in both orders and so a tie:
comparing a file with itself gives a win rate of exactly 0.5. A local judge's log-probability margins give a second
verdict that cancels its position bias (``SUMMED_MARGINS_RULE``), with the same two properties.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from statistics import NormalDist
from typing import Any, Protocol

log = logging.getLogger(__name__)

JUDGE_PROMPT = """\
Below are an instruction and two responses to it. Which response follows the instruction better: more helpful, more \
correct, more relevant?

### Instruction:
{instruction}

### Response 1:
{first}

### Response 2:
{second}

Answer with the number of the better response, 1 or 2."""
"""The text every judge reads, for one order of one pair."""

RULE = (
    'each shared instruction is judged twice, A first and B first; a win of A when both orders prefer A, a loss when '
    'both prefer B, else a tie (position-inconsistent, or no preference); win rate of A = (wins + ties / 2) / pairs'
)
SUMMED_MARGINS_RULE = (
    "a local judge's second verdict, which cancels its position bias: margin_of_a = the a_first margin - the b_first "
    "margin (A's log-probability advantage summed over both orders); a win of A when positive, a loss when negative, "
    'a tie at 0'
)
INTERVAL_METHOD = 'Wilson score interval, 95%, of the win rate over the shared instructions (ties as half a win)'

ORDERS = {'a_first': {1: 'A', 2: 'B'}, 'b_first': {1: 'B', 2: 'A'}}
"""The model each position holds in each order."""

ENDPOINT_PATH = '/v1/chat/completions'
ENDPOINT_MAX_TOKENS = 16
ENDPOINT_ATTEMPTS = 3
"""Tries of a request answered with HTTP 429 or 5xx or not answered, 1, 2, 4... seconds apart."""
ENDPOINT_TIMEOUT_S = 120


class Judge(Protocol):
    """Something that judges ``JUDGE_PROMPT`` texts."""

    description: dict[str, Any]
    """What the result file says about the judge."""

    def judge(self, prompts: Sequence[str]) -> list[dict[str, Any]]:
        """One judgment per prompt: ``position`` (1, 2 or None for no preference) and the judge's raw output."""


def judge_prompt(instruction: str, first: str, second: str) -> str:
    """``JUDGE_PROMPT`` for one order of one pair."""
    return JUDGE_PROMPT.format(instruction=instruction, first=first, second=second)


def wilson_interval(successes: float, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of the proportion ``successes / trials`` (``successes`` may count halves)."""
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    proportion = successes / trials
    shrink = 1 + z * z / trials
    centre = (proportion + z * z / (2 * trials)) / shrink
    half_width = z / shrink * math.sqrt(proportion * (1 - proportion) / trials + z * z / (4 * trials * trials))
    return max(0.0, centre - half_width), min(1.0, centre + half_width)


def shared_pairs(
    rows_a: Sequence[dict[str, str]], rows_b: Sequence[dict[str, str]],
) -> list[tuple[str, str, str]]:
    """``(instruction, output of A, output of B)`` for each instruction of A that B has too, in A's order."""
    outputs_b = {row['instruction']: row['output'] for row in rows_b}
    return [
        (row['instruction'], row['output'], outputs_b[row['instruction']])
        for row in rows_a if row['instruction'] in outputs_b
    ]


def compare_outputs(
    rows_a: Sequence[dict[str, str]], rows_b: Sequence[dict[str, str]], judge: Judge,
) -> dict[str, Any]:
    """Judge A's against B's responses on their shared instructions (``RULE``); the summary and the per-row
    verdicts, each with both orders' judgments."""
    pairs = shared_pairs(rows_a, rows_b)
    if not pairs:
        raise ValueError('the two files share no instruction')
    orders = [
        {
            'a_first': judge_prompt(instruction, output_a, output_b),
            'b_first': judge_prompt(instruction, output_b, output_a),
        }
        for instruction, output_a, output_b in pairs
    ]
    distinct = sorted({prompt for prompts in orders for prompt in prompts.values()}, key=lambda text: (len(text), text))
    log.info('Judging %d pairs in both orders: %d distinct prompts', len(pairs), len(distinct))
    judgments = dict(zip(distinct, judge.judge(distinct)))
    rows = []
    for (instruction, output_a, output_b), prompts in zip(pairs, orders):
        row: dict[str, Any] = {'instruction': instruction, 'output_a': output_a, 'output_b': output_b}
        for order, prompt in prompts.items():
            judgment = judgments[prompt]
            row[order] = {'prefers': ORDERS[order].get(judgment['position'])} | judgment
        preferred = {row[order]['prefers'] for order in ORDERS}
        row['consistent'] = len(preferred) == 1 and None not in preferred
        row['verdict'] = row['a_first']['prefers'] if row['consistent'] else 'tie'
        rows.append(row)
    result = {
        'judge': judge.description | {'prompt': JUDGE_PROMPT},
        'rule': RULE,
        'instructions': {
            'shared': len(pairs), 'only_in_a': len(rows_a) - len(pairs), 'only_in_b': len(rows_b) - len(pairs),
        },
        **tally([row['verdict'] for row in rows]),
        'interval_method': INTERVAL_METHOD,
        'position_consistency': sum(row['consistent'] for row in rows) / len(pairs),
        'identical_outputs': sum(output_a == output_b for _, output_a, output_b in pairs),
    }
    if all('margin' in row[order] for row in rows for order in ORDERS):
        for row in rows:
            row['margin_of_a'] = row['a_first']['margin'] - row['b_first']['margin']
        margins = [row['margin_of_a'] for row in rows]
        result['summed_margins'] = {'rule': SUMMED_MARGINS_RULE} | tally(
            ['A' if margin > 0 else 'B' if margin < 0 else 'tie' for margin in margins],
        )
    return result | {'rows': rows}


def tally(verdicts: Sequence[str]) -> dict[str, Any]:
    """The win rate of A over ``verdicts`` (``A``, ``B`` or ``tie``) with ties as half a win, its Wilson interval
    and the counts."""
    wins, ties, losses = verdicts.count('A'), verdicts.count('tie'), verdicts.count('B')
    score = wins + ties / 2
    return {
        'win_rate': score / len(verdicts), 'interval': list(wilson_interval(score, len(verdicts))),
        'wins': wins, 'ties': ties, 'losses': losses,
    }


def chat_completions_url(judge: str) -> str:
    """The chat completions address of an endpoint given as its base (``https://host``, ``https://host/v1``) or in
    full (``.../chat/completions``)."""
    judge = judge.rstrip('/')
    if judge.endswith('/chat/completions'):
        return judge
    if judge.endswith('/v1'):
        return judge + '/chat/completions'
    return judge + ENDPOINT_PATH


def reply_position(reply: str) -> int | None:
    """The position a reply prefers: its first ``1`` or ``2`` that is not part of a longer number, else None."""
    match = re.search(r'(?<![0-9])[12](?![0-9])', reply)
    return None if match is None else int(match.group())


class EndpointJudge:
    """An OpenAI-compatible chat completions endpoint as the judge: each prompt one user message, temperature 0, at
    most ``ENDPOINT_MAX_TOKENS`` tokens of reply; the verdict is ``reply_position`` of the reply."""

    def __init__(self, judge: str, model: str, api_key: str, timeout_s: float = ENDPOINT_TIMEOUT_S):
        self.url = chat_completions_url(judge)
        self.model = model
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.description = {
            'kind': 'endpoint', 'url': self.url, 'model': model,
            'verdict': "the reply's first 1 or 2 that is not part of a longer number; neither: no preference",
        }

    def judge(self, prompts: Sequence[str]) -> list[dict[str, Any]]:
        replies = [self._reply(prompt) for prompt in prompts]
        return [{'position': reply_position(reply), 'reply': reply} for reply in replies]

    def _reply(self, prompt: str) -> str:
        body = {
            'model': self.model, 'messages': [{'role': 'user', 'content': prompt}], 'temperature': 0,
            'max_tokens': ENDPOINT_MAX_TOKENS,
        }
        request = urllib.request.Request(
            self.url, data=json.dumps(body).encode(), method='POST',
            headers={'Content-Type': 'application/json', 'Authorization': f'Bearer {self.api_key}'},
        )
        for attempt in range(ENDPOINT_ATTEMPTS):
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    raw = response.read()
                break
            except urllib.error.HTTPError as error:
                if (error.code != 429 and error.code < 500) or attempt == ENDPOINT_ATTEMPTS - 1:
                    raise ValueError(f'judge endpoint {self.url}: HTTP {error.code} {error.reason}') from None
            except (urllib.error.URLError, TimeoutError) as error:
                if attempt == ENDPOINT_ATTEMPTS - 1:
                    raise ValueError(f'judge endpoint {self.url}: {getattr(error, "reason", error)}') from None
            time.sleep(2 ** attempt)
        try:
            content = json.loads(raw)['choices'][0]['message']['content']
        except (ValueError, KeyError, IndexError, TypeError):
            content = None
        if not isinstance(content, str):
            raise ValueError(f'judge endpoint {self.url}: a reply without the text choices[0].message.content')
        return content


def model_name(rows: Sequence[dict[str, str]], path: Path) -> str:
    """The ``generator`` of a file's first row, else the file's name without its suffix."""
    generator = rows[0].get('generator')
    return generator if isinstance(generator, str) and generator else path.stem
