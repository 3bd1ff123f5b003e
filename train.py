"""Train with llm-foundry and the llm-shearing plugins: ``composer train.py YAML [key=value ...]``."""

import sys

from llmfoundry.command_utils import train_from_yaml

if __name__ == '__main__':
    if len(sys.argv) < 2:
        sys.exit('usage: composer train.py YAML [key=value ...]')
    train_from_yaml(sys.argv[1], sys.argv[2:])
