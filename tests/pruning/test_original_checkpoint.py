"""``llmshearing export`` of checkpoints of the original LLM-Shearing code (princeton-nlp/LLM-Shearing).

The checkpoints are made here in the original layout: a Composer checkpoint whose ``state.model`` holds
``model.transformer.*`` weights and ``model.l0_module`` masks, with the run's ``config.pt`` beside it. The
reference is the original masked forward on its L0 path (the masks drawn by its ``l0_module`` after the
token embedding, as in every pruning run), built as a plain Hugging Face Llama with the masks multiplied into its
weights, and the original deterministic-mask rule, written out with tensor ops.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from llmshearing import cli
from llmshearing.pruning.l0_module import StructureMasks
from llmshearing.toy import byte_level_tokenizer
from tests.pruning.references import scaled_source

VOCAB_SIZE = len(byte_level_tokenizer())
SOURCE = {'d_model': 32, 'n_heads': 4, 'n_layers': 3, 'intermediate_size': 48}
TARGET = {'d_model': 24, 'n_heads': 3, 'n_layers': 2, 'intermediate_size': 32}
RUN_RMS_NORM_EPS = 1e-6  # the run config's; without one export assumes Llama-2's values
LLAMA2_RMS_NORM_EPS, LLAMA2_MAX_SEQ_LEN = 1e-5, 4096
MAX_SEQ_LEN = 64
CHECKPOINT_NAME = 'ep0-ba3200-rank0.pt'
SATURATED = 10.0  # beyond the clamp at ln 100: every such gate ties with the others


def original_weights() -> dict[str, torch.Tensor]:
    d_model, n_heads, intermediate = SOURCE['d_model'], SOURCE['n_heads'], SOURCE['intermediate_size']
    head_dim = d_model // n_heads
    weights = {
        'model.transformer.wte.weight': torch.randn(VOCAB_SIZE, d_model),
        'model.transformer.ln_f.weight': 1 + 0.1 * torch.randn(d_model),
        'model.transformer.output.weight': torch.randn(VOCAB_SIZE, d_model) / math.sqrt(d_model),
    }
    for block in range(SOURCE['n_layers']):
        prefix = f'model.transformer.blocks.{block}'
        for name in ('wq', 'wk', 'wv', 'out_proj'):
            weights[f'{prefix}.attn.{name}.weight'] = torch.randn(d_model, d_model) / math.sqrt(d_model)
        weights[f'{prefix}.attn.rotary_emb.inv_freq'] = 1.0 / 10000 ** (torch.arange(0, head_dim, 2).float() / head_dim)
        weights[f'{prefix}.mlp.gate_proj.weight'] = torch.randn(intermediate, d_model) / math.sqrt(d_model)
        weights[f'{prefix}.mlp.up_proj.weight'] = torch.randn(intermediate, d_model) / math.sqrt(d_model)
        weights[f'{prefix}.mlp.down_proj.weight'] = torch.randn(d_model, intermediate) / math.sqrt(intermediate)
        weights[f'{prefix}.ln_1.weight'] = 1 + 0.1 * torch.randn(d_model)
        weights[f'{prefix}.ln_2.weight'] = 1 + 0.1 * torch.randn(d_model)
    return weights


def trained_log_alphas() -> dict[str, torch.Tensor]:
    """Masks of a run with the default 7B recipe's kinds plus hidden: real-valued, some saturated."""
    hidden = torch.randn(SOURCE['d_model']) * 2 + 1
    hidden[:10] = -SATURATED  # 8 of the 10 tied lowest gates are dropped: which 8 is the rule's choice
    return {
        'hidden': hidden,
        'head': torch.randn(SOURCE['n_layers'], SOURCE['n_heads']) * 2 + 1,
        'intermediate': torch.randn(SOURCE['n_layers'], SOURCE['intermediate_size']) * 2 + 1,
        'head_layer': torch.tensor([2.0, -3.0, 0.5]),
        'mlp': torch.tensor([0.3, -2.0, 3.0]),
    }


def spread_hidden_log_alpha() -> torch.Tensor:
    """Hidden scores in [-1.5, 1]: every gate lies far from 1, between 0.14 and 0.77."""
    return torch.rand(SOURCE['d_model']) * 2.5 - 1.5


def saturated_hidden_log_alpha() -> torch.Tensor:
    """``TARGET['d_model']`` hidden scores beyond the upper clamp (gates 0.996), the others beyond the lower one."""
    num_kept = TARGET['d_model']
    log_alpha = torch.cat([torch.full((num_kept,), SATURATED), torch.full((SOURCE['d_model'] - num_kept,), -SATURATED)])
    return log_alpha[torch.randperm(SOURCE['d_model'])]


def save_original_checkpoint(
    folder: Path,
    log_alphas: dict[str, torch.Tensor],
    target: dict[str, int] | None = TARGET,
    with_run_config: bool = True,
) -> Path:
    """A checkpoint and ``config.pt`` as the original ``train.py`` writes them into its save folder."""
    folder.mkdir(parents=True)
    lambdas = {f'model.l0_module.lambdas.lambda_{i}': torch.tensor(0.0) for i in (1, 2)}
    if target is not None:
        for kind in log_alphas:
            lambdas |= {f'model.l0_module.lambdas.lambda_{i}_{kind}': torch.tensor(0.5) for i in (1, 2)}
    masks = {f'model.l0_module.masks.{kind}.z_loga': log_alpha for kind, log_alpha in log_alphas.items()}
    state = {'model': original_weights() | masks | lambdas, 'optimizers': {}, 'timestamp': {}, 'run_name': 'pruning'}
    torch.save({'state': state, 'rng': []}, folder / CHECKPOINT_NAME)
    if with_run_config:
        run_config = OmegaConf.create({
            'max_seq_len': MAX_SEQ_LEN,
            'model': {
                'name': 'mosaic_llama2_7b',
                'max_seq_len': '${max_seq_len}',
                'vocab_size': VOCAB_SIZE,
                'rms_norm_eps': RUN_RMS_NORM_EPS,
                'l0_module': {'pruning_modules': list(log_alphas), 'target_model': target},
                **SOURCE,
            },
        })
        torch.save(run_config, folder / 'config.pt')
    return folder / CHECKPOINT_NAME


def original_deterministic_z(z_loga: torch.Tensor, num_kept: int | None) -> torch.Tensor:
    """The original ``Mask.deterministic_z`` after ``constrain_parameters``: every row is one group."""
    z_loga = z_loga.clamp(math.log(1e-2), math.log(1e2))
    z = torch.sigmoid(z_loga / (2 / 3) * 0.8)
    for row_loga, row in zip(z_loga.reshape(-1, z_loga.shape[-1]), z.view(-1, z.shape[-1])):
        if num_kept is None:
            zero_logit = math.log(0.1 / 1.2) - math.log(1 - 0.1 / 1.2)
            expected_kept = 1 - torch.sigmoid(zero_logit * (2 / 3) - row_loga).clamp(1e-6, 1 - 1e-6)
            num_zeros = round(row_loga.numel() - expected_kept.sum().item())
        else:
            num_zeros = row_loga.numel() - num_kept
        if num_zeros > 0:
            row[torch.topk(row, k=num_zeros, largest=False).indices] = 0.0
    return z


def original_zs(log_alphas: dict[str, torch.Tensor], target: dict[str, int] | None) -> dict[str, torch.Tensor]:
    """The eval masks per kind; the layer kinds keep ``n_layers``."""
    field = {'hidden': 'd_model', 'head': 'n_heads', 'intermediate': 'intermediate_size'}
    return {
        kind: original_deterministic_z(z_loga, target[field.get(kind, 'n_layers')] if target else None)
        for kind, z_loga in log_alphas.items()
    }


HF_NAMES = {
    'model.transformer.wte.weight': 'model.embed_tokens.weight',
    'model.transformer.ln_f.weight': 'model.norm.weight',
    'model.transformer.output.weight': 'lm_head.weight',
}
HF_BLOCK_NAMES = {
    'ln_1': 'input_layernorm', 'ln_2': 'post_attention_layernorm', 'attn.wq': 'self_attn.q_proj',
    'attn.wk': 'self_attn.k_proj', 'attn.wv': 'self_attn.v_proj', 'attn.out_proj': 'self_attn.o_proj',
    'mlp.gate_proj': 'mlp.gate_proj', 'mlp.up_proj': 'mlp.up_proj', 'mlp.down_proj': 'mlp.down_proj',
}


def original_as_hf(weights: dict[str, torch.Tensor], zs: dict[str, torch.Tensor], eps: float) -> LlamaForCausalLM:
    """The original ``LlamaModel.forward`` on its L0 path with the eval masks ``zs``, as a plain HF Llama.

    The original layers are Llama layers (``wq`` is ``q_proj``, ...); its L0 path scales each head's attention context
    by ``head_z`` and the MLP's up projection by ``intermediate_z``, a layer's attention output by ``head_layer_z``
    and its MLP output by ``mlp_z`` (``layer_z`` both), every RMSNorm's output and residual branch by ``hidden_z``,
    and it normalises over the kept hidden dimensions. It draws the masks after the token embedding, so the
    embedding stays unscaled. Multiplied into the HF weights by ``scaled_source``: scaling the up projection's
    output is scaling the down projection's input columns, and a layer gate scales its branch's output rows.
    """
    layers, heads = SOURCE['n_layers'], SOURCE['n_heads']
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE, hidden_size=SOURCE['d_model'], intermediate_size=SOURCE['intermediate_size'],
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads, rms_norm_eps=eps,
        rope_theta=10000.0, max_position_embeddings=MAX_SEQ_LEN, tie_word_embeddings=False,
        attn_implementation='eager',
    )
    state = {}
    for name, tensor in weights.items():
        if name in HF_NAMES:
            state[HF_NAMES[name]] = tensor
        elif name.startswith('model.transformer.blocks.') and name.endswith('.weight'):
            block, module = name.removeprefix('model.transformer.blocks.').removesuffix('.weight').split('.', 1)
            state[f'model.layers.{block}.{HF_BLOCK_NAMES[module]}.weight'] = tensor
    source = LlamaForCausalLM(config)
    source.load_state_dict(state, strict=True)
    attention_gate = zs.get('head_layer', zs.get('layer', torch.ones(layers)))
    mlp_gate = zs.get('mlp', zs.get('layer', torch.ones(layers)))
    masks = StructureMasks(
        layer=torch.ones(layers),
        query_heads=zs.get('head', torch.ones(layers, heads)) * attention_gate.unsqueeze(-1),
        intermediate=zs.get('intermediate', torch.ones(layers, SOURCE['intermediate_size'])) * mlp_gate.unsqueeze(-1),
        hidden=zs.get('hidden', torch.ones(SOURCE['d_model'])),
    )
    return scaled_source(source, masks, scale_embedding=False)


@pytest.fixture
def tokenizer_dir(tmp_path) -> Path:
    path = tmp_path / 'tokenizer'
    byte_level_tokenizer().save_pretrained(path)
    return path


def _export(checkpoint: Path, output: Path, *options: str) -> int:
    return cli.main(['export', str(checkpoint), str(output), '--dtype', 'fp32', *options])


def max_logit_difference(pruned: LlamaForCausalLM, checkpoint: Path, zs: dict[str, torch.Tensor], eps: float) -> float:
    """Max |logit difference| between an exported model and the original L0 forward on random tokens."""
    input_ids = torch.randint(3, VOCAB_SIZE, (2, 24))
    weights = torch.load(checkpoint, weights_only=False)['state']['model']
    with torch.no_grad():
        expected = original_as_hf(weights, zs, eps)(input_ids).logits
        return (pruned(input_ids).logits - expected).abs().max().item()


def test_export_equals_the_original_masked_forward(tmp_path, tokenizer_dir):
    log_alphas = trained_log_alphas()
    checkpoint = save_original_checkpoint(tmp_path / 'run', log_alphas)
    zs = original_zs(log_alphas, TARGET)
    kept = zs['hidden'][zs['hidden'] != 0]
    assert ((kept > 0.05) & (kept < 0.95)).any(), 'the test needs mask values that are not just 0 and 1'

    output = tmp_path / 'pruned'
    assert _export(checkpoint, output, '--tokenizer', str(tokenizer_dir)) == 0
    pruned = AutoModelForCausalLM.from_pretrained(output).eval()
    assert isinstance(pruned, LlamaForCausalLM)
    config = pruned.config
    assert (config.hidden_size, config.num_attention_heads, config.num_key_value_heads) == (24, 3, 3)
    assert (config.num_hidden_layers, config.intermediate_size, config.head_dim) == (2, 32, 8)
    assert (config.rms_norm_eps, config.max_position_embeddings) == (RUN_RMS_NORM_EPS, MAX_SEQ_LEN)
    assert config.rope_theta == 10000.0
    assert len(AutoTokenizer.from_pretrained(output)) == VOCAB_SIZE
    assert max_logit_difference(pruned, checkpoint, zs, RUN_RMS_NORM_EPS) <= 1e-5


@pytest.mark.parametrize('hidden_log_alpha', [spread_hidden_log_alpha, saturated_hidden_log_alpha])
def test_hidden_only_export_equals_the_original_l0_forward(tmp_path, tokenizer_dir, hidden_log_alpha):
    """The kept embedding columns are not scaled: the original L0 forward never multiplies them by the mask."""
    log_alphas = {'hidden': hidden_log_alpha()}
    checkpoint = save_original_checkpoint(tmp_path / 'run', log_alphas)
    zs = original_zs(log_alphas, TARGET)

    output = tmp_path / 'pruned'
    assert _export(checkpoint, output, '--tokenizer', str(tokenizer_dir)) == 0
    pruned = AutoModelForCausalLM.from_pretrained(output).eval()
    config = pruned.config
    assert (config.hidden_size, config.num_attention_heads, config.num_hidden_layers) == (24, 4, 3)
    assert config.intermediate_size == SOURCE['intermediate_size']
    assert max_logit_difference(pruned, checkpoint, zs, RUN_RMS_NORM_EPS) <= 1e-5


def test_run_without_target_or_config_needs_only_the_weights(tmp_path, tokenizer_dir):
    """Sizes come from the tensors (heads from the rotary buffer) and the masks keep what they expect to."""
    channels = SATURATED * torch.tensor([1.0, 1.0, -1.0] * (SOURCE['intermediate_size'] // 3))
    log_alphas = {
        'layer': torch.tensor([3.0, -SATURATED, 2.0]),
        'intermediate': torch.stack([channels.roll(layer) for layer in range(SOURCE['n_layers'])]),
        'hidden': torch.randn(SOURCE['d_model']) * 2 + 1,
    }
    checkpoint = save_original_checkpoint(tmp_path / 'run', log_alphas, target=None, with_run_config=False)
    zs = original_zs(log_alphas, None)

    output = tmp_path / 'pruned'
    assert _export(checkpoint, output, '--tokenizer', str(tokenizer_dir)) == 0
    pruned = AutoModelForCausalLM.from_pretrained(output).eval()
    config = pruned.config
    assert (config.num_hidden_layers, config.num_attention_heads) == (2, SOURCE['n_heads'])
    assert (config.rms_norm_eps, config.max_position_embeddings) == (LLAMA2_RMS_NORM_EPS, LLAMA2_MAX_SEQ_LEN)
    assert config.hidden_size == int((zs['hidden'] != 0).sum())
    assert config.intermediate_size == int((zs['intermediate'][0] != 0).sum())
    assert max_logit_difference(pruned, checkpoint, zs, LLAMA2_RMS_NORM_EPS) <= 1e-5


def test_layer_masks_that_disagree_are_an_error_naming_the_layers(tmp_path, tokenizer_dir, capsys):
    log_alphas = trained_log_alphas() | {'mlp': torch.tensor([0.3, 2.0, -3.0])}  # head_layer drops layer 1
    checkpoint = save_original_checkpoint(tmp_path / 'run', log_alphas)
    output = tmp_path / 'pruned'
    assert _export(checkpoint, output, '--tokenizer', str(tokenizer_dir)) == 2
    assert 'disagree on layers [1, 2]' in capsys.readouterr().err
    assert not output.exists()


def test_checkpoint_without_tokenizer_needs_the_tokenizer_option(tmp_path, capsys):
    checkpoint = save_original_checkpoint(tmp_path / 'run', trained_log_alphas())
    output = tmp_path / 'pruned'
    assert _export(checkpoint, output) == 2
    assert '--tokenizer' in capsys.readouterr().err
    assert not output.exists()


def test_targeted_run_without_its_config_is_an_error_naming_the_file(tmp_path, tokenizer_dir, capsys):
    checkpoint = save_original_checkpoint(tmp_path / 'run', trained_log_alphas(), with_run_config=False)
    assert _export(checkpoint, tmp_path / 'pruned', '--tokenizer', str(tokenizer_dir)) == 2
    assert 'config.pt' in capsys.readouterr().err
