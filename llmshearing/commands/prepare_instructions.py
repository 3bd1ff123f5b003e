"""``llmshearing prepare-instructions``: ShareGPT, Alpaca or self-instruct data to llm-foundry's chat format. The
library's ``prepare_instructions`` is the command function: it checks its arguments, converts, splits and writes
the files and the manifest."""

from llmshearing.data.instructions import prepare_instructions

__all__ = ['prepare_instructions']
