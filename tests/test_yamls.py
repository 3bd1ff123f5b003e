"""Every shipped YAML parses, llm-foundry accepts its keys, and its model, algorithms (a distillation teacher
too), loaders and callbacks build (7B-sized sources and teachers on the meta device); the instruction-tuning
recipes' finetuning loaders read chat examples in the layout of ``prepare-instructions``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from composer.algorithms import GradientClipping
from llmfoundry.data.dataloader import build_dataloader
from llmfoundry.utils.builders import (
    build_algorithm,
    build_callback,
    build_composer_model,
    build_icl_evaluators,
    build_tokenizer,
)
from omegaconf import DictConfig
from omegaconf import OmegaConf as om
from streaming import MDSWriter
from transformers import AutoConfig

from llmshearing.cpu_autocast import CPUAutocast
from llmshearing.distillation import Distillation
from llmshearing.distillation.algorithm import load_teacher
from llmshearing.preflight import check_train_config, load_train_config
from llmshearing.pruning import Shearing, apply_shearing
from llmshearing.toy import byte_level_tokenizer, save_toy_model
from tests.paths import REPO, SHARED
from tests.streaming_memory import close_streaming_shared_memory

YAMLS = sorted(path for path in (REPO / 'yamls').glob('*/*.yaml') if path.parent.name != 'launch')
DOMAINS = ['cc', 'github', 'book', 'stackexchange', 'wiki', 'arxiv', 'c4-rp']
SEQ_LEN = 32
INSTRUCTION_SEQ_LEN = 256  # the byte-level tokenizer spends ~100 tokens on the recipes' chat template
CONVERSATION = [
    {'role': 'user', 'content': 'Name a colour.'}, {'role': 'assistant', 'content': 'Blue.'},
    {'role': 'user', 'content': 'Another?'}, {'role': 'assistant', 'content': 'Red.'},
]

SOURCES = {
    'llama2_7b': dict(
        model_type='llama',
        hidden_size=4096,
        num_attention_heads=32,
        num_hidden_layers=32,
        intermediate_size=11008,
        vocab_size=32000,
    ),
    'llama3_8b': dict(
        model_type='llama',
        hidden_size=4096,
        num_attention_heads=32,
        num_key_value_heads=8,
        num_hidden_layers=32,
        intermediate_size=14336,
        vocab_size=128256,
        rope_theta=500000.0,
    ),
    'mistral_7b': dict(
        model_type='mistral',
        hidden_size=4096,
        num_attention_heads=32,
        num_key_value_heads=8,
        num_hidden_layers=32,
        intermediate_size=14336,
        vocab_size=32000,
    ),
    'qwen2.5_7b': dict(
        model_type='qwen2',
        hidden_size=3584,
        num_attention_heads=28,
        num_key_value_heads=4,
        num_hidden_layers=28,
        intermediate_size=18944,
        vocab_size=152064,
    ),
    'llama2_2.7b': dict(
        model_type='llama',
        hidden_size=2560,
        num_attention_heads=20,
        num_hidden_layers=32,
        intermediate_size=6912,
        vocab_size=32000,
    ),
    'llama2_1.3b': dict(
        model_type='llama',
        hidden_size=2048,
        num_attention_heads=16,
        num_hidden_layers=24,
        intermediate_size=5504,
        vocab_size=32000,
    ),
    'llama2_370m': dict(
        model_type='llama',
        hidden_size=1024,
        num_attention_heads=8,
        num_hidden_layers=24,
        intermediate_size=2816,
        vocab_size=32000,
    ),
}


@pytest.fixture(autouse=True)
def _close_shared_memory_after_each_recipe():
    """Each recipe builds its loaders' datasets: close their shared memory before the next (see conftest)."""
    yield
    close_streaming_shared_memory()


def test_launch_yamls_parse_and_run_a_recipe():
    for path in (REPO / 'yamls' / 'launch').glob('*.yaml'):
        recipe = next(word for word in om.load(path).command.split() if word.startswith('yamls/'))
        assert (REPO / recipe).is_file(), f'{path.name} runs {recipe}, which does not exist'


def _source_key(yaml_path: Path) -> str | None:
    if yaml_path.parent.name == 'tiny':
        return None
    return next(key for key in SOURCES if yaml_path.stem.startswith(key))


@pytest.fixture(scope='module')
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp('yamls')
    save_toy_model(root / 'models' / 'toy')
    for key, sizes in SOURCES.items():
        folder = root / 'models' / key
        AutoConfig.for_model(**sizes).save_pretrained(folder)
        byte_level_tokenizer().save_pretrained(folder)
    rng = np.random.default_rng(0)
    for split, count in (('train', 16), ('eval', 4)):
        for domain in DOMAINS:
            with MDSWriter(
                out=str(root / 'data' / split / domain), columns={'tokens': 'ndarray:uint16', 'domain': 'str'}
            ) as writer:
                for _ in range(count):
                    writer.write({'tokens': rng.integers(3, 259, SEQ_LEN, dtype=np.uint16), 'domain': domain})
        examples = [{'messages': CONVERSATION[: 2 + 2 * (index % 2)]} for index in range(count)]
        (root / 'data' / 'instructions').mkdir(exist_ok=True)
        (root / 'data' / 'instructions' / f'{split}.jsonl').write_text(''.join(json.dumps(e) + '\n' for e in examples))
    return root


def _is_instruction_tuning(recipe: DictConfig) -> bool:
    return recipe.train_loader.name == 'finetuning'


def expected_pruning(
    shearing: DictConfig, source: dict
) -> tuple[dict[str, tuple[tuple[int, ...], int]], dict[str, int]]:
    """From a recipe's ``algorithms.shearing`` and the source's ``config.json`` alone: each pruning module's mask shape
    and the number of gates it keeps per row, and the sizes of the pruned model (the source's where the target
    names none)."""
    layers, heads, hidden = source['num_hidden_layers'], source['num_attention_heads'], source['hidden_size']
    kv_heads = source.get('num_key_value_heads') or heads
    sizes = {field: source[field] for field in ('hidden_size', 'intermediate_size', 'num_hidden_layers')}
    sizes |= {'num_attention_heads': heads, 'num_key_value_heads': kv_heads} | dict(shearing.target)
    if kv_heads == heads and 'num_key_value_heads' not in shearing.target:  # multi-head attention stays so
        sizes['num_key_value_heads'] = sizes['num_attention_heads']
    head_mask = (
        ((layers, heads), sizes['num_attention_heads']) if kv_heads == heads
        else ((layers, kv_heads, heads // kv_heads), sizes['num_attention_heads'] // sizes['num_key_value_heads'])
    )
    masks = {
        'layer': ((layers,), sizes['num_hidden_layers']),
        'head': head_mask,
        'kv_head': ((layers, kv_heads), sizes['num_key_value_heads']),
        'intermediate': ((layers, source['intermediate_size']), sizes['intermediate_size']),
        'hidden': ((hidden,), sizes['hidden_size']),
    }
    return {module: masks[module] for module in shearing.pruning_modules}, sizes


@pytest.mark.parametrize('yaml_path', YAMLS, ids=[f'{p.parent.name}/{p.stem}' for p in YAMLS])
def test_yaml_builds(yaml_path, workspace, monkeypatch):
    monkeypatch.chdir(workspace)
    source = _source_key(yaml_path)
    model_path = workspace / 'models' / (source or 'toy')
    recipe = om.load(yaml_path)
    instruction_tuning = _is_instruction_tuning(recipe)
    seq_len = INSTRUCTION_SEQ_LEN if instruction_tuning else SEQ_LEN
    data_local = workspace / 'data' / ('instructions' if instruction_tuning else '')
    overrides = [
        f'variables.model_path={model_path}', f'variables.data_local={data_local}',
        f'save_folder={workspace / "runs" / yaml_path.stem}', f'max_seq_len={seq_len}',
    ]
    variables = recipe.get('variables', {})
    if 'output_dir' in variables:
        overrides.append(f'variables.output_dir={workspace / "runs" / yaml_path.stem}')
    if 'teacher_path' in variables:
        # The distillation recipes' teacher: the pruning source (the toy source for the tiny ones).
        overrides.append(f'variables.teacher_path={workspace / "models" / ("llama2_7b" if source else "toy")}')
    if source is None and 'domains' in variables:
        overrides.append(f'variables.domains=[{",".join(DOMAINS[:len(variables.domains)])}]')
    train_config = check_train_config(load_train_config(yaml_path, overrides))

    tokenizer = build_tokenizer(train_config.tokenizer['name'], train_config.tokenizer.get('kwargs', {}))
    model_config = dict(train_config.model) | {'init_device': 'meta' if source else 'cpu', 'pretrained': not source}
    model = build_composer_model(model_config.pop('name'), model_config, tokenizer)
    if source:
        assert next(model.parameters()).device == torch.device('meta')

    for name, kwargs in (train_config.algorithms or {}).items():
        algorithm = build_algorithm(name, kwargs)
        if isinstance(algorithm, Distillation):
            teacher = load_teacher(algorithm.teacher_folder, torch.bfloat16, device='meta' if source else 'cpu')
            assert teacher.config.vocab_size == model.model.config.vocab_size
            continue
        if isinstance(algorithm, GradientClipping):
            assert (algorithm.clipping_type, algorithm.clipping_threshold) == ('norm', 1.0)
            continue
        if isinstance(algorithm, CPUAutocast):  # amp_bf16 on this CPU machine
            assert (recipe.precision, train_config.precision) == ('amp_bf16', 'fp32')
            continue
        assert isinstance(algorithm, Shearing)
        l0_module = apply_shearing(model.model, None, **{k: v for k, v in algorithm.mask_config().items()})
        source_config = json.loads((model_path / 'config.json').read_text())
        masks, final_sizes = expected_pruning(recipe.algorithms.shearing, source_config)
        assert {kind: (mask.shape, mask.num_kept) for kind, mask in l0_module.masks.items()} == masks
        final_shape = l0_module.final_shape()
        assert {field: getattr(final_shape, field) for field in final_sizes} == final_sizes

    if source is not None:  # the real recipes clip as the original recipe does
        assert 'gradient_clipping' in train_config.algorithms
    for name, kwargs in (train_config.callbacks or {}).items():
        build_callback(name, kwargs, train_config)

    device_batch_size = 2
    train_loader = build_dataloader(
        train_config.train_loader | {'num_workers': 0, 'persistent_workers': False, 'prefetch_factor': None},
        tokenizer,
        device_batch_size,
    )
    batch = next(iter(train_loader.dataloader))
    assert batch['input_ids'].shape == (device_batch_size, seq_len)
    if train_config.eval_loader is not None:
        build_dataloader(
            train_config.eval_loader | {'num_workers': 0, 'persistent_workers': False, 'prefetch_factor': None},
            tokenizer,
            device_batch_size,
        )


EVAL_TASKS = SHARED / 'data' / 'eval-tasks'


@pytest.mark.skipif(not EVAL_TASKS.is_dir(), reason=f'no shared task folder {EVAL_TASKS}')
def test_icl_tasks_are_off_by_default_in_the_tiny_recipes_and_on_with_a_task_folder(workspace, tmp_path):
    """variables.eval_tasks_dir switches the icl_tasks block of every recipe but the instruction-tuning ones; switched
    on, llm-foundry builds its evaluators from the shared task files (one task of each kind here)."""
    for yaml_path in (path for path in YAMLS if not _is_instruction_tuning(om.load(path))):
        overrides = [
            f'variables.model_path={workspace / "models" / "toy"}',
            f'variables.data_local={workspace / "data"}',
        ]
        if yaml_path.parent.name == 'tiny':
            assert load_train_config(yaml_path, overrides).icl_tasks == [], yaml_path.name
        tasks = load_train_config(yaml_path, overrides + [f'variables.eval_tasks_dir={EVAL_TASKS}']).icl_tasks
        assert sorted(Path(task['dataset_uri']) for task in tasks) == sorted(EVAL_TASKS.glob('*.jsonl')), yaml_path.name

    config = load_train_config(REPO / 'yamls/tiny/pruning.yaml', [f'variables.eval_tasks_dir={EVAL_TASKS}'])
    kinds = {task['icl_task_type']: task for task in om.to_container(config.icl_tasks, resolve=True)}
    tokenizer = byte_level_tokenizer()
    evaluators, _ = build_icl_evaluators(
        list(kinds.values()), tokenizer, config.icl_seq_len, 4, destination_dir=str(tmp_path)
    )
    assert [evaluator.label for evaluator in evaluators] == [f'{task["label"]}/0-shot' for task in kinds.values()]
