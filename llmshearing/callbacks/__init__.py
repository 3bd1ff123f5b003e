"""Composer callbacks of llm-shearing."""

from llmshearing.callbacks.dynamic_loading import DynamicLoading

__all__ = ['DynamicLoading']
