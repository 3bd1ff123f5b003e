"""Transformers' warning that ``lm_head.weight`` is "newly initialized" when the model ties it to the input
embeddings (``tie_word_embeddings``, e.g. SmolLM2): llm-foundry loads the model once on the meta device, where the
tie is not seen, and ties the weights afterwards, so the warning is wrong there. ``drop_tied_head_warning``
replaces it by one line of our own per model folder; the warning stays for every other missing weight."""

from __future__ import annotations

import logging
import re

from transformers import AutoConfig

log = logging.getLogger(__name__)

TRANSFORMERS_LOADER = 'transformers.modeling_utils'
TIED_HEAD_WARNING = re.compile(
    r"^Some weights of \w+ were not initialized from the model checkpoint at (?P<folder>.+) and are newly "
    r"initialized: \['lm_head\.weight'\]\n",
)


class TiedHeadWarningFilter(logging.Filter):
    """Drop transformers' "newly initialized: ['lm_head.weight']" warning for a model folder whose config ties
    ``lm_head.weight`` to the input embeddings, saying once per folder that the head is tied instead."""

    def __init__(self):
        super().__init__()
        self.reported: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        match = TIED_HEAD_WARNING.match(record.getMessage())
        if match is None:
            return True
        folder = match['folder']
        try:
            tied = AutoConfig.from_pretrained(folder).tie_word_embeddings
        except (OSError, ValueError):
            return True
        if not tied:
            return True
        if folder not in self.reported:
            self.reported.add(folder)
            log.info(
                '%s ties lm_head.weight to the input embeddings: the weight is not newly initialized (transformers '
                'warns so when the model is loaded on the meta device, before the tie)', folder,
            )
        return False


def drop_tied_head_warning() -> None:
    """Install ``TiedHeadWarningFilter`` on transformers' model loader (once per process)."""
    loader = logging.getLogger(TRANSFORMERS_LOADER)
    if not any(isinstance(existing, TiedHeadWarningFilter) for existing in loader.filters):
        loader.addFilter(TiedHeadWarningFilter())
