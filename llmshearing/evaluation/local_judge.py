"""A local Hugging Face causal LM as the judge of ``llmshearing compare``: its verdict is read from the
log-probabilities of the answers ``1`` and ``2`` at the position after the judging prompt, nothing is generated.

The prompt is ``JUDGE_PROMPT`` through the judge tokenizer's chat template (one user message, the generation prompt
added), the answers ``1`` and ``2`` following it; without a template, ``JUDGE_PROMPT`` then ``PLAIN_ANSWER_CUE``,
the answers `` 1`` and `` 2``. Where a tokenizer writes the two answers as tokens that share a first part (``▁``
then the digit, for Llama's), the shared part is added to the prompt and the distinct last tokens are compared.
The margin is log p(1) - log p(2): position 1 is preferred when it is positive, 2 when negative, neither at 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from llmshearing.evaluation.generation import (
    encode_prompts,
    forward_context,
    load_model,
    model_prompt,
    pad_batch,
    warn_beyond_positions,
)

PLAIN_ANSWER_CUE = '\nAnswer:'
"""What follows ``JUDGE_PROMPT`` for a judge whose tokenizer has no chat template."""
ANSWERS = ('1', '2')


class LocalJudge:
    """The causal LM in ``folder`` as a judge, reading ``batch_size`` prompts per forward pass (right-padded)."""

    def __init__(self, folder: str | Path, batch_size: int, dtype: str, device: str):
        self.model, self.tokenizer = load_model(folder, dtype, device, 'compare')
        self.batch_size = batch_size
        self.dtype = dtype
        self.device = device
        templated = self.tokenizer.chat_template is not None
        self.answers = ANSWERS if templated else tuple(f' {answer}' for answer in ANSWERS)
        self.description = {
            'kind': 'local', 'model': str(folder), 'dtype': dtype,
            'prompt_form': 'chat template, generation prompt added' if templated else
            f'plain, followed by {PLAIN_ANSWER_CUE!r}',
            'verdict': f'margin = log p({self.answers[0]!r}) - log p({self.answers[1]!r}) at the next position; '
            'position 1 when positive, 2 when negative, none at 0',
        }

    def _text(self, prompt: str) -> str:
        text = model_prompt(self.tokenizer, prompt)
        return text if self.tokenizer.chat_template is not None else text + PLAIN_ANSWER_CUE

    def encode(self, prompt: str) -> tuple[list[int], tuple[int, int]]:
        """The token ids the judge reads for ``prompt`` (with any first part the answers share) and the two answers'
        distinct last tokens."""
        text = self._text(prompt)
        context, *wholes = encode_prompts(self.tokenizer, [text, *(text + answer for answer in self.answers)])
        first, second = (whole[len(context):] for whole in wholes)
        if (
            any(whole[:len(context)] != context for whole in wholes) or not first or len(first) != len(second)
            or first[:-1] != second[:-1] or first[-1] == second[-1]
        ):
            raise ValueError(
                f'the judge tokenizer writes the answers {list(self.answers)} after the prompt as {first} and {second}:'
                ' they must differ in their last token only',
            )
        return context + first[:-1], (first[-1], second[-1])

    def judge(self, prompts: Sequence[str]) -> list[dict[str, Any]]:
        encoded = [self.encode(prompt) for prompt in prompts]
        warn_beyond_positions(self.model, max(len(ids) for ids, _ in encoded), 'judging prompts')
        judgments = []
        with forward_context(self.dtype, self.device):
            for start in tqdm(range(0, len(encoded), self.batch_size), desc='judging', unit='batch'):
                batch = encoded[start:start + self.batch_size]
                inputs = pad_batch([ids for ids, _ in batch], self.tokenizer.pad_token_id, 'right', self.device)
                # The output layer reads each row's last position only, not every position's vocabulary-wide logits.
                hidden = self.model.get_decoder()(**inputs).last_hidden_state
                last = inputs['attention_mask'].sum(dim=1) - 1
                logits = self.model.get_output_embeddings()(hidden[torch.arange(len(batch)), last])
                log_probs = logits.float().log_softmax(dim=-1)
                for row, (_, answers) in zip(log_probs, batch):
                    first, second = (row[token].item() for token in answers)
                    margin = first - second
                    position = 1 if margin > 0 else 2 if margin < 0 else None
                    judgments.append({'position': position, 'logprob_1': first, 'logprob_2': second, 'margin': margin})
        return judgments
