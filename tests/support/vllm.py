"""Fixtures for vllm (filled in by its owner)."""
