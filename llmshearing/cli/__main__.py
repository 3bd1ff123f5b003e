"""``python -m llmshearing.cli``: the ``llmshearing`` command."""

import sys

from llmshearing.cli import main

sys.exit(main())
