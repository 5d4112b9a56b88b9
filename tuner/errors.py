"""The one exception hierarchy of tuner: every error we raise on purpose derives from TunerError."""

from __future__ import annotations


class TunerError(Exception):
    """Base of every error tuner raises deliberately; the CLI maps it to a clean exit."""

    exit_code = 1


class ConfigError(TunerError):
    """A configuration file or value is wrong; the message names file, key and what is allowed."""

    exit_code = 2


class ExpositionError(TunerError):
    """A /metrics body could not be parsed (malformed, truncated)."""


class ScrapeError(TunerError):
    """A target could not be scraped; ``kind`` is a short, stable error class for metrics."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class StoreError(TunerError):
    """The embedded store cannot be opened or written."""


class QueryError(TunerError):
    """A PromQL expression is outside the supported subset or failed to evaluate."""


class ProvisionError(TunerError):
    """Provisioning files could not be written (unwritable or foreign files in the way)."""


# -- history sources (tuner.source) ------------------------------------------------------------


class SourceError(TunerError):
    """History could not be read from a source (Prometheus unreachable, query refused)."""
