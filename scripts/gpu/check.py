"""The GPU path in one command: pruning overhead at 7B width, Composer pruning runs, throughput at the paper's recipe.

Each part runs in its own process, so that one that fails (an import, an out-of-memory error, a crash) leaves
the others running; the summary goes to OUTPUT_DIR/gpu_check.json, each part's log to OUTPUT_DIR/<part>.log.

- ``environment``: versions, the GPU, whether Composer, llm-foundry and Streaming import on this torch and
  whether the plugin is registered.
- ``pure_pytorch`` (torch + transformers, no Composer): Llama stacks of Llama-2-7B and Llama-3-8B width, bf16
  autocast, SDPA, non-reentrant activation checkpointing; masked training step / plain training step timed
  interleaved (medians), tokens per second and peak memory of both; the masked eval forward against
  ``prune_model``'s forward.
- ``composer_train``: ``python train.py yamls/tiny/pruning.yaml`` (amp_bf16 on a GPU): masks at the target
  shape, the FIT_END export loads and matches the masked model, a run killed mid-way and resumed equals the
  uninterrupted run.
- ``composer_fsdp``: the ``shearing`` algorithm in Composer's Trainer with FSDP FULL_SHARD, amp_bf16,
  non-reentrant activation checkpointing and ``use_orig_params`` (llm-foundry's ``train`` turns FSDP off on a
  single GPU, Composer's Trainer does not): masks at the target shape, the export under ``summon_full_params``.
- ``scaled_throughput``: the pruning step of Llama-2-7B to 2.7B at the recipe's per-GPU batch (32 x 4096
  tokens over 8 GPUs: 4 x 4096 per GPU), tokens/s/GPU against the original code's 1,844 tokens/s per A100.

    scripts/gpu/check.sh [--dry-run] [--output-dir DIR] [--parts NAME ...]

``--dry-run`` runs every part at toy sizes on the CPU, to check the script itself.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import importlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from llmshearing.pruning import attach_masks, prune_model  # torch and transformers only, no Composer
from scripts.bench.pruning_step import interleaved_times, timed, training_step

REPO = Path(__file__).resolve().parents[2]

TINY_PRUNING_YAML = REPO / 'yamls' / 'tiny' / 'pruning.yaml'
SUMMARY_FILE = 'gpu_check.json'
PARTS = ('environment', 'pure_pytorch', 'composer_train', 'composer_fsdp', 'scaled_throughput')
PRUNING_MODULES = ['layer', 'head', 'intermediate', 'hidden']

# Peak dense bf16 matrix throughput by the vendors' datasheets (SXM parts), in FLOP/s.
H200_PEAK_BF16 = 989e12
A100_PEAK_BF16 = 312e12
# The original LLM-Shearing code's published pruning throughput for Llama-2-7B, tokens/s per A100-80GB.
ORIGINAL_TOKENS_PER_A100 = 1844
# |masked - pruned| / max |masked| of bf16 logits, and of weights between two bf16 runs that should agree.
BF16_RELATIVE_TOLERANCE = 2e-2
# Invariant 1 of the design, for fp32 logits.
FP32_TOLERANCE = 1e-5

LLAMA2_7B = dict(
    vocab_size=32000, hidden_size=4096, num_attention_heads=32, num_key_value_heads=32, intermediate_size=11008
)
LLAMA3_8B = dict(
    vocab_size=128256, hidden_size=4096, num_attention_heads=32, num_key_value_heads=8, intermediate_size=14336,
    rope_theta=500000.0,
)
TO_2_7B = dict(hidden_size=2560, num_attention_heads=20, intermediate_size=6912)
TO_3B = dict(hidden_size=3072, num_attention_heads=24, intermediate_size=8192)


@dataclasses.dataclass(frozen=True)
class Family:
    """A source model's config (``LlamaConfig`` fields) and the pruning target for it."""

    config: dict[str, Any]
    target: dict[str, int]


@dataclasses.dataclass(frozen=True)
class Settings:
    """Sizes and limits of one check: the H200's (``GPU``) or toy ones for a CPU (``DRY_RUN``)."""

    families: dict[str, Family]
    batch_size: int
    seq_len: int
    repeats: int
    eval_len: int
    composer_batches: int
    scaled: Family
    scaled_layers: tuple[int, ...]
    scaled_repeats: int
    matmul_size: int
    timeouts: dict[str, int]


GPU = Settings(
    families={
        'llama2_7b_width': Family(LLAMA2_7B | dict(num_hidden_layers=8), TO_2_7B | dict(num_hidden_layers=6)),
        'llama3_8b_width': Family(LLAMA3_8B | dict(num_hidden_layers=8), TO_3B | dict(num_hidden_layers=7)),
    },
    batch_size=4,
    seq_len=4096,
    repeats=6,
    eval_len=512,
    composer_batches=32,
    scaled=Family(LLAMA2_7B | dict(num_hidden_layers=32), TO_2_7B | dict(num_hidden_layers=32)),
    scaled_layers=(32, 16),
    scaled_repeats=3,
    matmul_size=8192,
    timeouts={
        'environment': 40,
        'pure_pytorch': 100,
        'composer_train': 180,
        'composer_fsdp': 70,
        'scaled_throughput': 90,
    },
)
TINY = dict(vocab_size=256, hidden_size=64, intermediate_size=176, num_hidden_layers=2)
TINY_MHA = TINY | dict(num_attention_heads=4, num_key_value_heads=4)
TINY_TARGET = dict(hidden_size=40, num_attention_heads=2, intermediate_size=112)
DRY_RUN = Settings(
    families={
        'llama2_7b_width': Family(TINY_MHA, TINY_TARGET | dict(num_hidden_layers=1)),
        'llama3_8b_width': Family(
            TINY | dict(num_attention_heads=8, num_key_value_heads=2, rope_theta=500000.0),
            dict(hidden_size=48, num_attention_heads=4, intermediate_size=128, num_hidden_layers=1),
        ),
    },
    batch_size=2,
    seq_len=32,
    repeats=2,
    eval_len=16,
    composer_batches=4,
    scaled=Family(TINY_MHA, TINY_TARGET | dict(num_hidden_layers=2)),
    scaled_layers=(2,),
    scaled_repeats=2,
    matmul_size=256,
    timeouts=dict.fromkeys(PARTS, 240),
)


def _device() -> torch.device:
    return torch.device('cuda' if torch.cuda.is_available() else 'cpu')


def _bf16_autocast(device: torch.device) -> torch.autocast:
    # Without the weight-cast cache, as under FSDP's bf16 mixed precision, where each layer gathers bf16 weights.
    return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)


def _gib(num_bytes: int) -> float:
    return round(num_bytes / 2**30, 2)


def _relative_difference(expected: torch.Tensor, actual: torch.Tensor) -> float:
    expected, actual = expected.float(), actual.float()
    return (expected - actual).abs().max().item() / max(expected.abs().max().item(), 1e-12)


def _state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    parameters = sum(p.numel() * p.element_size() for p in model.parameters())
    optimizer_state = sum(
        value.numel() * value.element_size()
        for state in optimizer.state.values()
        for value in state.values()
        if isinstance(value, torch.Tensor)
    )
    return parameters + optimizer_state


def _step_peak_bytes(step: Callable[[], None], device: torch.device) -> int | None:
    """The most memory ``step`` allocates on the GPU above what was allocated before it (None on a CPU)."""
    if device.type != 'cuda':
        step()
        return None
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def model_flops_per_token(config: dict[str, Any], seq_len: int) -> float:
    """Model FLOPs of one training token (forward and backward, no recomputation): 6 per matmul weight,
    plus 12 * layers * attention width * seq_len for the attention scores and their use."""
    hidden, layers = config['hidden_size'], config['num_hidden_layers']
    head_dim = hidden // config['num_attention_heads']
    query_width = config['num_attention_heads'] * head_dim
    key_value_width = config['num_key_value_heads'] * head_dim
    per_layer = hidden * (2 * query_width + 2 * key_value_width) + 3 * hidden * config['intermediate_size']
    matmul_weights = layers * per_layer + hidden * config['vocab_size']
    return 6 * matmul_weights + 12 * layers * query_width * seq_len


def _llama(config: dict[str, Any], device: torch.device) -> LlamaForCausalLM:
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(LlamaConfig(**config, max_position_embeddings=4096, attn_implementation='sdpa'))
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={'use_reentrant': False})
    return model.train()


def _adamw(model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == 'cuda')


# ---------------------------------------------------------------------------------------------- environment


def part_environment(settings: Settings, work_dir: Path) -> dict[str, Any]:
    device = _device()
    result: dict[str, Any] = {
        'python': platform.python_version(),
        'torch': torch.__version__,
        'cuda': torch.version.cuda,
        'transformers': transformers.__version__,
        'device': torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu',
        'device_memory_gib': _gib(torch.cuda.get_device_properties(0).total_memory) if device.type == 'cuda' else None,
        'imports': {},
    }
    for module in ('composer', 'llmfoundry', 'streaming'):
        start = time.perf_counter()
        try:
            version = importlib.import_module(module).__version__
        except Exception as error:  # noqa: BLE001 - what failed is the finding
            result['imports'][module] = {'ok': False, 'error': f'{type(error).__name__}: {error}'}
        else:
            result['imports'][module] = {
                'ok': True,
                'version': version,
                'seconds': round(time.perf_counter() - start, 1),
            }
    registered = False
    if result['imports']['llmfoundry']['ok']:
        from llmfoundry.registry import algorithms, callbacks, dataloaders

        registered = 'shearing' in algorithms and 'dynamic_loading' in callbacks and 'dynamic_text' in dataloaders
    result['plugin_registered'] = registered
    result['checks'] = {name: entry['ok'] for name, entry in result['imports'].items()} | {
        'plugin_registered': registered
    }
    imports = ', '.join(
        f"{name} {entry['version']}" if entry['ok'] else f"{name} FAILED ({entry['error']})"
        for name, entry in result['imports'].items()
    )
    result['summary'] = [
        f"{result['device']}, torch {result['torch']} (CUDA {result['cuda']}), transformers {result['transformers']}, "
        f"Python {result['python']}",
        f"{imports}; plugin {'registered' if registered else 'NOT registered'}",
    ]
    return result


# --------------------------------------------------------------------------------------------- pure PyTorch


def _training_step_overhead(
    family: Family, settings: Settings, device: torch.device
) -> tuple[nn.Module, torch.Tensor, dict[str, Any]]:
    """Time and measure a masked training step against a plain one; return the masked model (its optimizer and the
    plain model are freed on return), the step's input ids and the figures."""
    plain = _llama(family.config, device)
    masked = copy.deepcopy(plain)
    l0_module = attach_masks(masked, family.target, PRUNING_MODULES)
    plain_optimizer, masked_optimizer = _adamw(plain, device), _adamw(masked, device)
    input_ids = torch.randint(0, family.config['vocab_size'], (settings.batch_size, settings.seq_len), device=device)

    def plain_step() -> None:
        with _bf16_autocast(device):
            training_step(plain, plain_optimizer, input_ids)

    def masked_step() -> None:
        with _bf16_autocast(device):
            training_step(masked, masked_optimizer, input_ids, l0_module)

    plain_times, masked_times = interleaved_times(plain_step, masked_step, settings.repeats, device)
    plain_peak, masked_peak = _step_peak_bytes(plain_step, device), _step_peak_bytes(masked_step, device)
    tokens = settings.batch_size * settings.seq_len
    ratio = statistics.median(masked / plain for plain, masked in zip(plain_times, masked_times))
    result: dict[str, Any] = {
        'config': family.config,
        'target': family.target,
        'tokens_per_step': tokens,
        'masked_over_plain': round(ratio, 3),
        'plain_ms': round(statistics.median(plain_times) * 1e3, 1),
        'masked_ms': round(statistics.median(masked_times) * 1e3, 1),
        'plain_tokens_per_s': round(tokens / statistics.median(plain_times)),
        'masked_tokens_per_s': round(tokens / statistics.median(masked_times)),
    }
    if plain_peak is not None:
        plain_state, masked_state = _state_bytes(plain, plain_optimizer), _state_bytes(masked, masked_optimizer)
        result |= {
            'plain_peak_gib': _gib(plain_state + plain_peak),
            'masked_peak_gib': _gib(masked_state + masked_peak),
            'plain_step_activations_gib': _gib(plain_peak),
            'masked_step_activations_gib': _gib(masked_peak),
        }
    return masked, input_ids, result


def _overhead_of_family(family: Family, settings: Settings, device: torch.device) -> dict[str, Any]:
    masked, input_ids, result = _training_step_overhead(family, settings, device)
    _free_memory()

    masked.eval()
    eval_ids = input_ids[:1, : settings.eval_len]
    with torch.no_grad(), _bf16_autocast(device):
        masked_logits = masked(eval_ids).logits
    pruned = prune_model(masked).to(device)
    with torch.no_grad(), _bf16_autocast(device):
        pruned_logits = pruned(eval_ids).logits
    result['eval_relative_difference'] = _relative_difference(masked_logits, pruned_logits)
    result['pruned_config'] = {field: getattr(pruned.config, field) for field in family.target}
    result['checks'] = {
        'pruned_shape_is_target': result['pruned_config'] == family.target,
        'eval_matches_pruned': result['eval_relative_difference'] <= BF16_RELATIVE_TOLERANCE,
    }
    return result


def part_pure_pytorch(settings: Settings, work_dir: Path) -> dict[str, Any]:
    device = _device()
    result: dict[str, Any] = {'device': str(device), 'families': {}, 'checks': {}, 'summary': []}
    for name, family in settings.families.items():
        try:
            measured = _overhead_of_family(family, settings, device)
        except Exception as error:  # noqa: BLE001 - one family failing (say, out of memory) leaves the other
            measured = {'error': f'{type(error).__name__}: {error}', 'checks': {'ran': False}}
        _free_memory()
        result['families'][name] = measured
        result['checks'] |= {f'{name}/{check}': ok for check, ok in measured['checks'].items()}
        if 'error' in measured:
            result['summary'].append(f"{name}: {measured['error']}")
            continue
        memory = (
            f", peak {measured['masked_peak_gib']} / {measured['plain_peak_gib']} GiB"
            if 'masked_peak_gib' in measured
            else ''
        )
        result['summary'].append(
            f"{name} ({family.config['num_hidden_layers']} layers, {settings.batch_size} x {settings.seq_len}): "
            f"masked / plain step {measured['masked_over_plain']:.3f} (median of {settings.repeats}; goal <= 1.05), "
            f"{measured['masked_tokens_per_s']:,} / {measured['plain_tokens_per_s']:,} tokens/s{memory}; "
            f"eval vs prune_model rel. diff {measured['eval_relative_difference']:.1e}",
        )
    return result


# ------------------------------------------------------------------------------------------------- Composer


def _tiny_pruning_target() -> dict[str, int]:
    from omegaconf import OmegaConf

    return dict(OmegaConf.load(TINY_PRUNING_YAML).algorithms.shearing.target)


def _mask_counts(checkpoint_dir: Path) -> tuple[dict[str, Any], Any]:
    """Structures the deterministic masks of a run's last checkpoint keep, in HF config names, and the model."""
    from llmshearing.pruning.export import masked_model_from_checkpoint

    model, _ = masked_model_from_checkpoint(checkpoint_dir)
    masks = model.l0_module.deterministic_masks()
    counts = {
        'hidden_size': int((masks.hidden != 0).sum()),
        'num_attention_heads': sorted(set((masks.query_heads != 0).sum(-1).tolist())),
        'intermediate_size': sorted(set((masks.intermediate != 0).sum(-1).tolist())),
        'num_hidden_layers': int((masks.layer != 0).sum()),
    }
    return counts, model


def _counts_match(counts: dict[str, Any], target: dict[str, int]) -> bool:
    return all(counts[field] in (size, [size]) for field, size in target.items())


def _export_difference(masked_model: nn.Module, export_dir: Path, target: dict[str, int]) -> dict[str, Any]:
    """Load the exported model in plain transformers and compare its logits with the masked model's (CPU)."""
    exported = AutoModelForCausalLM.from_pretrained(export_dir).eval()
    input_ids = torch.randint(3, masked_model.config.vocab_size, (2, 32))
    with torch.no_grad():
        masked_logits, exported_logits = masked_model(input_ids).logits, exported(input_ids).logits.float()
    return {
        'saved_dtype': json.loads((export_dir / 'config.json').read_text())['torch_dtype'],
        'config_is_target': all(getattr(exported.config, field) == size for field, size in target.items()),
        'relative_difference': _relative_difference(masked_logits, exported_logits),
        'absolute_difference': (masked_logits - exported_logits).abs().max().item(),
    }


def _train_command(assets: Path, output_dir: Path, batches: int, precision: str) -> list[str]:
    return [
        sys.executable, str(REPO / 'train.py'), str(TINY_PRUNING_YAML),
        f'variables.model_path={assets / "source"}', f'variables.data_local={assets / "data"}',
        f'variables.output_dir={output_dir}', f'algorithms.shearing.export_dir={output_dir / "pruned"}',
        f'max_duration={batches}ba', f'eval_interval={batches // 2}ba', f'save_interval={batches // 2}ba',
        f'precision={precision}',
    ]


def _run_to_end(command: list[str], cwd: Path, log: Path) -> None:
    with log.open('w') as log_file:
        result = subprocess.run(command, cwd=cwd, stdout=log_file, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise RuntimeError(f'{" ".join(command[1:3])} exited with {result.returncode}:\n{_tail(log)}')


def _run_and_kill_after(command: list[str], cwd: Path, log: Path, checkpoint: Path, timeout_s: float = 600) -> None:
    """Run ``command`` (one process) until ``checkpoint`` is the latest checkpoint, then kill it with SIGKILL."""
    latest = checkpoint.parent / 'latest-rank0.pt'
    with log.open('w') as log_file:
        process = subprocess.Popen(command, cwd=cwd, stdout=log_file, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout_s
    while not (latest.is_symlink() and os.readlink(latest) == checkpoint.name):
        if process.poll() is not None:
            raise RuntimeError(f'the run ended before {checkpoint.name} was written:\n{_tail(log)}')
        if time.monotonic() > deadline:
            process.kill()
            raise TimeoutError(f'no {checkpoint.name} within {timeout_s} s')
        time.sleep(0.05)
    process.kill()
    process.wait()


def _final_state(checkpoint_dir: Path) -> dict[str, Any]:
    return torch.load(checkpoint_dir / 'latest-rank0.pt', map_location='cpu', weights_only=False)['state']


def _resume_differences(expected: dict[str, Any], resumed: dict[str, Any]) -> dict[str, Any]:
    weights = {
        name: _relative_difference(tensor, resumed['model'][name])
        for name, tensor in expected['model'].items()
        if tensor.is_floating_point() and name in resumed['model']
    }
    worst = max(weights, key=weights.get)
    expected_weights = expected['callbacks']['DynamicLoading']
    resumed_weights = resumed['callbacks']['DynamicLoading']
    return {
        'same_parameters': expected['model'].keys() == resumed['model'].keys(),
        'max_relative_difference': weights[worst],
        'worst_parameter': worst,
        'same_dataset_state': expected['dataset_state'] == resumed['dataset_state'],
        'same_domain_weights': json.dumps(expected_weights, default=str) == json.dumps(resumed_weights, default=str),
    }


def part_composer_train(settings: Settings, work_dir: Path) -> dict[str, Any]:
    from omegaconf import OmegaConf

    from llmshearing.loggers import read_metrics
    from llmshearing.toy import save_toy_model, write_random_domain_data

    device = _device()
    precision = 'amp_bf16' if device.type == 'cuda' else 'fp32'
    batches = settings.composer_batches
    target = _tiny_pruning_target()
    save_toy_model(work_dir / 'source')
    domains = list(OmegaConf.load(TINY_PRUNING_YAML).variables.domains)
    write_random_domain_data(work_dir / 'data', domains, train_samples=4 * batches, eval_samples=4, seq_len=64)

    uninterrupted = work_dir / 'uninterrupted'
    start = time.perf_counter()
    _run_to_end(_train_command(work_dir, uninterrupted, batches, precision), work_dir, work_dir / 'uninterrupted.log')
    run_seconds = time.perf_counter() - start
    counts, masked_model = _mask_counts(uninterrupted / 'checkpoints')
    export = _export_difference(masked_model, uninterrupted / 'pruned', target)
    losses = [value for _, value in read_metrics(uninterrupted / 'metrics.jsonl')['loss/train/total']]

    interrupted = work_dir / 'interrupted'
    command = _train_command(work_dir, interrupted, batches, precision)
    halfway = interrupted / 'checkpoints' / f'ep0-ba{batches // 2}-rank0.pt'
    _run_and_kill_after(command, work_dir, work_dir / 'killed.log', halfway)
    killed_before_the_end = not (interrupted / 'checkpoints' / f'ep0-ba{batches}-rank0.pt').exists()
    _run_to_end(command, work_dir, work_dir / 'resumed.log')
    resume = _resume_differences(_final_state(uninterrupted / 'checkpoints'), _final_state(interrupted / 'checkpoints'))

    return {
        'command': ' '.join(_train_command(work_dir, uninterrupted, batches, precision)),
        'precision': precision,
        'batches': batches,
        'run_seconds': round(run_seconds, 1),
        'first_and_last_loss': [losses[0], losses[-1]],
        'mask_counts': counts,
        'target': target,
        'export': export,
        'resume': resume,
        'checks': {
            'masks_at_target_shape': _counts_match(counts, target),
            'export_config_is_target': export['config_is_target'],
            'export_matches_masked_model': export['relative_difference'] <= BF16_RELATIVE_TOLERANCE,
            'killed_before_the_end': killed_before_the_end,
            'resume_same_parameters': resume['same_parameters'],
            'resume_weights_match': resume['max_relative_difference'] <= BF16_RELATIVE_TOLERANCE,
            'resume_same_samples': resume['same_dataset_state'],
        },
        'summary': [
            f'{batches} batches {precision} in {run_seconds:.0f} s (one process: llm-foundry runs it without FSDP), '
            f'loss {losses[0]:.2f} -> {losses[-1]:.2f}; masks keep {counts}',
            f"export ({export['saved_dtype']}) vs masked model rel. diff {export['relative_difference']:.1e}; "
            f"killed at batch {batches // 2} and resumed vs uninterrupted: weights rel. diff "
            f"{resume['max_relative_difference']:.1e} ({resume['worst_parameter']}), same samples "
            f"{resume['same_dataset_state']}, same domain weights {resume['same_domain_weights']}",
        ],
    }


def part_composer_fsdp(settings: Settings, work_dir: Path) -> dict[str, Any]:
    from composer import Trainer
    from composer.optim import DecoupledAdamW
    from composer.utils import FSDPConfig
    from llmfoundry.models.hf import ComposerHFCausalLM

    from llmshearing.pruning import Shearing
    from llmshearing.toy import random_token_samples, save_toy_model

    device = _device()
    on_gpu = device.type == 'cuda'
    batches = settings.composer_batches
    target = _tiny_pruning_target()
    source = save_toy_model(work_dir / 'source')
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = ComposerHFCausalLM(tokenizer=tokenizer, pretrained_model_name_or_path=str(source), use_train_metrics=False)
    samples = [
        torch.from_numpy(sample.astype('int64')) for sample in random_token_samples(4 * batches, 64, len(tokenizer))
    ]
    loader = DataLoader([{'input_ids': sample, 'labels': sample} for sample in samples], batch_size=4)
    fsdp = {
        'sharding_strategy': 'FULL_SHARD',
        'mixed_precision': 'DEFAULT',
        'activation_checkpointing': True,
        'activation_checkpointing_reentrant': False,
        'use_orig_params': True,
        'state_dict_type': 'full',
    }
    fsdp_config = FSDPConfig(**fsdp)  # built on a CPU too, so that a wrong key shows in the dry run
    trainer = Trainer(
        model=model,
        train_dataloader=loader,
        optimizers=DecoupledAdamW(model.parameters(), lr=1e-3),
        algorithms=[
            Shearing(
                target=target,
                lagrangian_warmup=f'{batches // 2}ba',
                export_dir=str(work_dir / 'pruned'),
                export_dtype='fp32',
            )
        ],
        max_duration=f'{batches}ba',
        device_train_microbatch_size=2,
        precision='amp_bf16' if on_gpu else 'fp32',
        parallelism_config={'fsdp': fsdp_config} if on_gpu else None,
        device='gpu' if on_gpu else 'cpu',
        save_folder=str(work_dir / 'checkpoints'),
        save_interval=f'{batches}ba',
        seed=17,
        progress_bar=False,
    )
    trainer.fit()
    fsdp_enabled = trainer.state.fsdp_enabled
    trainer.close()

    counts, masked_model = _mask_counts(work_dir / 'checkpoints')
    export = _export_difference(masked_model, work_dir / 'pruned', target)
    lambdas_moved = all(value.abs().sum().item() > 0 for value in masked_model.l0_module.lambdas.values())
    parallelism = (
        'FSDP FULL_SHARD, amp_bf16, non-reentrant activation checkpointing, use_orig_params'
        if fsdp_enabled
        else 'no FSDP (CPU)'
    )
    return {
        'fsdp': fsdp if fsdp_enabled else None,
        'batches': batches,
        'mask_counts': counts,
        'target': target,
        'export': export,
        'checks': {
            'fsdp_enabled': fsdp_enabled == on_gpu,
            'masks_at_target_shape': _counts_match(counts, target),
            'multipliers_trained': lambdas_moved,
            'export_config_is_target': export['config_is_target'],
            'export_matches_masked_model': export['absolute_difference'] <= FP32_TOLERANCE,
        },
        'summary': [
            f'{batches} batches, {parallelism}: '
            f'masks keep {counts}, multipliers trained {lambdas_moved}; FIT_END export (fp32) vs masked model '
            f'max |diff| {export["absolute_difference"]:.1e}',
        ],
    }


# -------------------------------------------------------------------------------------------- scaled throughput


def _matmul_flops_per_s(size: int, device: torch.device) -> float:
    """bf16 matrix-product throughput: the mean of ten products after three warm-ups."""
    dtype = torch.bfloat16 if device.type == 'cuda' else torch.float32
    left, right = (
        torch.randn(size, size, device=device, dtype=dtype),
        torch.randn(size, size, device=device, dtype=dtype),
    )
    for _ in range(3):
        left @ right
    seconds = timed(lambda: [left @ right for _ in range(10)], device)
    return 10 * 2 * size**3 / seconds


def _pruning_step_throughput(family: Family, layers: int, settings: Settings, device: torch.device) -> dict[str, Any]:
    config = family.config | {'num_hidden_layers': layers}
    target = family.target | {'num_hidden_layers': min(family.target['num_hidden_layers'], layers)}
    model = _llama(config, device)
    l0_module = attach_masks(model, target, PRUNING_MODULES)
    optimizer = _adamw(model, device)
    input_ids = torch.randint(0, config['vocab_size'], (settings.batch_size, settings.seq_len), device=device)

    def pruning_step() -> None:
        with _bf16_autocast(device):
            training_step(model, optimizer, input_ids, l0_module)

    pruning_step()  # warm-up; it also allocates the optimizer's state
    peak = _step_peak_bytes(pruning_step, device)
    seconds = statistics.median(timed(pruning_step, device) for _ in range(settings.scaled_repeats))
    tokens_per_s = settings.batch_size * settings.seq_len / seconds
    return {
        'layers': layers,
        'step_ms': round(seconds * 1e3, 1),
        'tokens_per_s': round(tokens_per_s),
        'model_flops_per_token': model_flops_per_token(config, settings.seq_len),
        'peak_gib': None if peak is None else _gib(_state_bytes(model, optimizer) + peak),
    }


def part_scaled_throughput(settings: Settings, work_dir: Path) -> dict[str, Any]:
    device = _device()
    family = settings.scaled
    matmul = _matmul_flops_per_s(settings.matmul_size, device)
    measured, out_of_memory = None, []
    for layers in settings.scaled_layers:
        try:
            measured = _pruning_step_throughput(family, layers, settings, device)
            break
        except torch.cuda.OutOfMemoryError as error:
            out_of_memory.append({'layers': layers, 'error': str(error).splitlines()[0]})
        _free_memory()  # after the except block, which keeps the failed attempt's tensors alive
    if measured is None:
        raise RuntimeError(f'out of memory at every size tried: {out_of_memory}')
    flops = measured['model_flops_per_token']
    reference_flops = model_flops_per_token(LLAMA2_7B | {'num_hidden_layers': 32}, 4096)
    result = {
        'model': family.config,
        'target': family.target,
        'batch': [settings.batch_size, settings.seq_len],
        'out_of_memory': out_of_memory,
        'matmul_tflops': round(matmul / 1e12, 1),
        **measured,
        'mfu_of_h200_datasheet': round(measured['tokens_per_s'] * flops / H200_PEAK_BF16, 3),
        'mfu_of_measured_matmul': round(measured['tokens_per_s'] * flops / matmul, 3),
        'original_tokens_per_a100': ORIGINAL_TOKENS_PER_A100,
        'original_mfu_of_a100_datasheet': round(ORIGINAL_TOKENS_PER_A100 * reference_flops / A100_PEAK_BF16, 3),
        'h200_peak_bf16_tflops': H200_PEAK_BF16 / 1e12,
        'a100_peak_bf16_tflops': A100_PEAK_BF16 / 1e12,
        'checks': {'measured_at_full_depth': measured['layers'] == settings.scaled_layers[0]},
    }
    depth = f"{measured['layers']} of {family.config['num_hidden_layers']} layers" + (
        ' (the full depth did not fit)' if out_of_memory else ''
    )
    peak = '' if measured['peak_gib'] is None else f", peak {measured['peak_gib']} GiB"
    result['summary'] = [
        f'pruning step {settings.batch_size} x {settings.seq_len} tokens, {depth}: '
        f'{measured["tokens_per_s"]:,} tokens/s/GPU, '
        f'{measured["step_ms"]:.0f} ms/step{peak}, MFU {result["mfu_of_h200_datasheet"]:.0%} of '
        f"the H200's {H200_PEAK_BF16 / 1e12:.0f} TFLOP/s ({result['mfu_of_measured_matmul']:.0%} of the "
        f'{result["matmul_tflops"]} TFLOP/s measured on a matrix product)',
        f'original code: {ORIGINAL_TOKENS_PER_A100:,} tokens/s per A100, MFU '
        f'{result["original_mfu_of_a100_datasheet"]:.0%} of its {A100_PEAK_BF16 / 1e12:.0f} TFLOP/s',
    ]
    return result


# -------------------------------------------------------------------------------------------------- runner

PART_FUNCTIONS: dict[str, Callable[[Settings, Path], dict[str, Any]]] = {
    'environment': part_environment,
    'pure_pytorch': part_pure_pytorch,
    'composer_train': part_composer_train,
    'composer_fsdp': part_composer_fsdp,
    'scaled_throughput': part_scaled_throughput,
}


def _tail(log: Path, lines: int = 15) -> str:
    return '\n'.join(log.read_text(errors='replace').splitlines()[-lines:]) if log.is_file() else ''


def run_part(name: str, settings: Settings, work_dir: Path, result_file: Path) -> None:
    """Run one part in this process and write its result (or the error that stopped it) as JSON."""
    start = time.perf_counter()
    try:
        result = PART_FUNCTIONS[name](settings, work_dir)
        result['status'] = 'ok' if all(result['checks'].values()) else 'failed'
    except Exception as error:  # noqa: BLE001 - the error is the part's result
        traceback.print_exc()
        result = {
            'status': 'error',
            'error': f'{type(error).__name__}: {error}',
            'summary': [f'{type(error).__name__}: {error}'],
        }
    result['seconds'] = round(time.perf_counter() - start, 1)
    result_file.write_text(json.dumps(result, indent=2, default=str))


def run_all(dry_run: bool, output_dir: Path, parts: list[str]) -> dict[str, Any]:
    """Run each part in a process of its own, within its time limit; gather their results."""
    settings = DRY_RUN if dry_run else GPU
    summary: dict[str, Any] = {'dry_run': dry_run, 'parts': {}}
    with tempfile.TemporaryDirectory(prefix='gpu-check-') as scratch:
        for name in parts:
            work_dir, result_file, log = (
                Path(scratch) / name,
                Path(scratch) / f'{name}.json',
                output_dir / f'{name}.log',
            )
            work_dir.mkdir()
            command = [
                sys.executable,
                '-m',
                __spec__.name,
                '--part',
                name,
                '--work-dir',
                str(work_dir),
                '--result',
                str(result_file),
            ]
            command += ['--dry-run'] if dry_run else []
            start = time.perf_counter()
            with log.open('w') as log_file:
                process = subprocess.Popen(
                    command, cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
                )
                try:
                    process.wait(timeout=settings.timeouts[name])
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
            if result_file.is_file():
                result = json.loads(result_file.read_text())
            else:
                stopped = 'timeout' if process.returncode == -signal.SIGKILL else 'crashed'
                ended = (
                    f'ran past {settings.timeouts[name]} s'
                    if stopped == 'timeout'
                    else f'exited with {process.returncode}'
                )
                result = {
                    'status': stopped,
                    'error': f'{ended}:\n{_tail(log)}',
                    'summary': [ended + '; see ' + log.name],
                }
                result['seconds'] = round(time.perf_counter() - start, 1)
            summary['parts'][name] = result
    summary['ok'] = all(part['status'] == 'ok' for part in summary['parts'].values())
    return summary


def summary_block(summary: dict[str, Any]) -> str:
    title = 'GPU check (dry run: toy sizes on the CPU)' if summary['dry_run'] else 'GPU check'
    lines = [f'==== {title} ====']
    for name, part in summary['parts'].items():
        failed = [check for check, ok in part.get('checks', {}).items() if not ok]
        status = part['status'] + (f" ({', '.join(failed)})" if failed else '')
        lines.append(f"{name:<18} {status}, {part['seconds']:.0f} s")
        lines += [f'    {line}' for line in part['summary']]
    lines.append(f"==== {'all parts ok' if summary['ok'] else 'NOT all parts ok'} ====")
    return '\n'.join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--dry-run', action='store_true', help='toy sizes on the CPU, to check the script itself')
    parser.add_argument(
        '--output-dir', type=Path, default=os.environ.get('OUT'), help='where the summary and logs go (default: $OUT)'
    )
    parser.add_argument(
        '--parts', nargs='+', choices=PARTS, default=list(PARTS), help='run only these parts (default: all)'
    )
    parser.add_argument('--part', choices=PARTS, help=argparse.SUPPRESS)
    parser.add_argument('--work-dir', type=Path, help=argparse.SUPPRESS)
    parser.add_argument('--result', type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    settings = DRY_RUN if args.dry_run else GPU
    if args.part is not None:
        run_part(args.part, settings, args.work_dir, args.result)
        return 0
    if args.output_dir is None:
        parser.error('--output-dir is required when $OUT is unset')
    if not args.dry_run and not torch.cuda.is_available():
        parser.error('no CUDA device: run on a GPU, or pass --dry-run')
    if (args.output_dir / SUMMARY_FILE).exists():
        parser.error(f'{args.output_dir / SUMMARY_FILE} already exists')
    args.output_dir.mkdir(parents=True, exist_ok=True)
    summary = run_all(args.dry_run, args.output_dir, args.parts)
    (args.output_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, default=str))
    print(summary_block(summary))
    print(f'written: {args.output_dir / SUMMARY_FILE}')
    return 0 if summary['ok'] else 1


if __name__ == '__main__':
    sys.exit(main())
