"""Train with llm-foundry and the llm-shearing plugins: ``composer train.py YAML [key=value ...]``.

The config is checked first (paths, model and tokenizer, the pruning target, checkpoint folders), so a
wrong setting fails in seconds with a message naming its key. Global rank 0 then makes the save folder safe to
resume (partial or damaged checkpoints moved aside, the run record compared: llmshearing/run_record.py), and every
run that saves locally writes a sha256 next to each checkpoint (llmshearing/checkpoints.py).
"""

import sys

from composer.utils import dist
from llmfoundry.command_utils import train

from llmshearing.checkpoints import CALLBACK_NAME
from llmshearing.preflight import check_train_config, load_train_config, local_save_folder
from llmshearing.run_record import (
    ACCEPT_CHANGED_RUN,
    RunFinished,
    check_not_finished,
    pop_run_options,
    prepare_save_folder,
)
from llmshearing.tied_embeddings import drop_tied_head_warning

if __name__ == '__main__':
    if len(sys.argv) < 2:
        sys.exit('usage: composer train.py YAML [key=value ...]')
    try:
        config = load_train_config(sys.argv[1], sys.argv[2:])
        options = pop_run_options(config)
        train_config = check_train_config(config)
        if dist.get_global_rank() == 0:
            prepare_save_folder(config, train_config, accept_changed_run=bool(options.get(ACCEPT_CHANGED_RUN)))
        check_not_finished(train_config)
    except RunFinished as finished:
        print(finished, file=sys.stderr)
        sys.exit(0)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        sys.exit(f'error: {error}')
    if local_save_folder(train_config) is not None:
        if config.get('callbacks') is None:
            config.callbacks = {}
        config.callbacks[CALLBACK_NAME] = {}
    drop_tied_head_warning()
    train(config)
