"""``llmshearing export``: a pruning checkpoint as a pruned Hugging Face model. The library's ``export`` is the
command function: it checks its arguments, reads the checkpoint and writes the model."""

from llmshearing.pruning.export import export

__all__ = ['export']
