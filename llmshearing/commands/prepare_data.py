"""``llmshearing prepare-data``: per-domain JSON lines to MDS shards. The library's ``prepare_data`` is the command
function: it checks its arguments, tokenises and writes the shards and the manifest."""

from llmshearing.data.prepare import prepare_data

__all__ = ['prepare_data']
