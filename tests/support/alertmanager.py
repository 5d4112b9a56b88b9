"""Fixtures for alertmanager (filled in by its owner)."""
