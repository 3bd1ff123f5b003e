"""Composer callbacks of llm-shearing."""
