"""``llmshearing export`` of checkpoints of the original LLM-Shearing code (princeton-nlp/LLM-Shearing).

The checkpoints are made here in the original layout: a Composer checkpoint whose ``state.model`` holds
``model.transformer.*`` weights and ``model.l0_module`` masks, with the run's ``config.pt`` beside it. The
reference is the original masked forward on its L0 path (the masks drawn by its ``l0_module`` after the
token embedding, as in every pruning run) and its deterministic-mask rule, written out with tensor ops.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from llmshearing import cli
from llmshearing.toy import byte_level_tokenizer

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


def original_rms_norm(x: torch.Tensor, weight: torch.Tensor, hidden_z: torch.Tensor | None, eps: float):
    """RMS over the kept hidden dimensions, then the weight and the hidden mask."""
    kept = x if hidden_z is None else x[..., hidden_z != 0]
    output = weight * (x * torch.rsqrt(kept.pow(2).mean(-1, keepdim=True) + eps))
    return output if hidden_z is None else output * hidden_z


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def original_masked_logits(
    weights: dict[str, torch.Tensor],
    zs: dict[str, torch.Tensor],
    input_ids: torch.Tensor,
    eps: float,
) -> torch.Tensor:
    """The original ``LlamaModel.forward`` on its L0 path with the eval masks ``zs``.

    The masks are drawn after the token embedding, so the residual stream starts from the unscaled
    embedding; each RMSNorm normalises over the kept hidden dimensions and multiplies its output by the
    hidden mask, and so do the attention and MLP outputs.
    """
    n_heads, head_dim = SOURCE['n_heads'], SOURCE['d_model'] // SOURCE['n_heads']
    batch, seq_len = input_ids.shape
    hidden_z = zs.get('hidden')
    head_layer_z, mlp_z = zs.get('head_layer', zs.get('layer')), zs.get('mlp', zs.get('layer'))
    inv_freq = 1.0 / 10000 ** (torch.arange(0, head_dim, 2).float() / head_dim)
    freqs = torch.outer(torch.arange(seq_len).float(), inv_freq)
    cos, sin = torch.cat((freqs, freqs), -1).cos(), torch.cat((freqs, freqs), -1).sin()
    causal = torch.full((seq_len, seq_len), float('-inf')).triu(1)

    x = weights['model.transformer.wte.weight'][input_ids]
    for block in range(SOURCE['n_layers']):
        w = {name.split(f'blocks.{block}.', 1)[1]: t for name, t in weights.items() if f'blocks.{block}.' in name}
        a = original_rms_norm(x, w['ln_1.weight'], hidden_z, eps)
        q, k, v = (
            (a @ w[f'attn.{name}.weight'].T).view(batch, seq_len, n_heads, head_dim).transpose(1, 2)
            for name in ('wq', 'wk', 'wv')
        )
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        context = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(head_dim) + causal, dim=-1) @ v
        if 'head' in zs:
            context = context * zs['head'][block].view(1, n_heads, 1, 1)
        attention = context.transpose(1, 2).reshape(batch, seq_len, -1) @ w['attn.out_proj.weight'].T
        if head_layer_z is not None:
            attention = attention * head_layer_z[block]
        if hidden_z is not None:
            attention = attention * hidden_z
        x = x + attention

        m = original_rms_norm(x, w['ln_2.weight'], hidden_z, eps)
        up = m @ w['mlp.up_proj.weight'].T
        if 'intermediate' in zs:
            up = up * zs['intermediate'][block]
        mlp = (F.silu(m @ w['mlp.gate_proj.weight'].T) * up) @ w['mlp.down_proj.weight'].T
        if mlp_z is not None:
            mlp = mlp * mlp_z[block]
        if hidden_z is not None:
            mlp = mlp * hidden_z
        x = x + mlp
    x = original_rms_norm(x, weights['model.transformer.ln_f.weight'], hidden_z, eps)
    return x @ weights['model.transformer.output.weight'].T


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
        expected = original_masked_logits(weights, zs, input_ids, eps)
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
