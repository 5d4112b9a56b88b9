"""Fixtures for prometheus (filled in by its owner)."""
