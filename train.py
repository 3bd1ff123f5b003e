"""Train with llm-foundry and the llm-shearing plugins: ``composer train.py YAML [key=value ...]``.

The config is checked first (paths, model and tokenizer, the pruning target, checkpoint folders), so a
wrong setting fails in seconds with a message naming its key.
"""

import sys

from llmfoundry.command_utils import train

from llmshearing.preflight import check_train_config, load_train_config
from llmshearing.tied_embeddings import drop_tied_head_warning

if __name__ == '__main__':
    if len(sys.argv) < 2:
        sys.exit('usage: composer train.py YAML [key=value ...]')
    config = load_train_config(sys.argv[1], sys.argv[2:])
    try:
        check_train_config(config)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        sys.exit(f'error: {error}')
    drop_tied_head_warning()
    train(config)
