"""Fixtures for dcgm (filled in by its owner)."""
