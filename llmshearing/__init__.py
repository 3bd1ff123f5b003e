"""llm-shearing: Sheared-LLaMA (targeted structured pruning and dynamic batch loading) for Composer and LLM-Foundry."""

__version__ = '0.1.0'
