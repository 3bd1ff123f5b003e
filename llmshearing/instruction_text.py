"""Text rules that instruction data (``llmshearing.data.instructions``) and prompt files
(``llmshearing.evaluation.responses``) share, with the standard library only."""

from __future__ import annotations

import unicodedata


def blank(text: str) -> bool:
    """Whether ``text`` shows nothing: only whitespace and invisible format characters (zero-width spaces ...)."""
    return all(character.isspace() or unicodedata.category(character) == 'Cf' for character in text)


def alpaca_prompt(instruction: str, input_text: str) -> str:
    """The user message of an Alpaca row: the instruction, then its input after a blank line unless the input is
    ``blank``."""
    return instruction if blank(input_text) else f'{instruction}\n\n{input_text}'
