"""The one exception hierarchy of tuner: every error we raise on purpose derives from TunerError."""

from __future__ import annotations


class TunerError(Exception):
    """Base of every error tuner raises deliberately; the CLI maps it to a clean exit."""

    exit_code = 1


class ConfigError(TunerError):
    """A configuration file or value is wrong; the message names file, key and what is allowed."""

    exit_code = 2


class SecretFileError(TunerError):
    """A secret file (password, token, key) cannot be read and no earlier value is known; the
    message names the file, never its content."""


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


class QueryTimeoutError(QueryError):
    """A query ran past its deadline (Prometheus's ``query timed out in ...``)."""


class QueryTooLargeError(QueryError):
    """A query would hold more samples than the engine's limit (Prometheus's max_samples)."""


class ApiError(TunerError):
    """A request to the sidecar's Prometheus API failed; ``error_type`` is Prometheus's errorType
    (``bad_data``, ``execution``, ``timeout``, ``not_found``, ``internal``)."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type


class ProvisionError(TunerError):
    """Provisioning files could not be written (unwritable or foreign files in the way)."""


# -- rules (tuner.rules): rule files, templates, rule unit tests -----------------------------


class RuleError(TunerError):
    """A rule file, a rule unit-test file or a template is invalid; names file, group and rule."""

    exit_code = 2


class TemplateError(RuleError):
    """A Go template in a rule's labels or annotations cannot be parsed or expanded."""


# -- tuning: canaries, load runs, the search (tuner.canary, tuner.load, tuner.tune) ---------

#: Why a canary did not come up (``CanaryFailed.reason``).
CANARY_FAILURE_REASONS = ("exit", "oom", "health_timeout", "start_error", "flag_rejected")


class CanaryFailed(TunerError):
    """A canary did not come up: ``reason`` is one of CANARY_FAILURE_REASONS, ``log_tail`` its
    log end."""

    def __init__(self, reason: str, message: str, log_tail: str = "") -> None:
        if reason not in CANARY_FAILURE_REASONS:
            raise ValueError(f"unknown canary failure reason {reason!r}")
        detail = f"canary failed ({reason}): {message}"
        if log_tail:
            detail += "\n--- log tail ---\n" + log_tail
        super().__init__(detail)
        self.reason = reason
        self.message = message
        self.log_tail = log_tail


class LoadError(TunerError):
    """The load run could not start at all (bad spec, bad URL); per-request errors are records."""


class TuneError(TunerError):
    """A search could not run or continue (bad out dir, baseline that never starts, full disk)."""


class TuneInterrupted(TunerError):
    """SIGTERM or Ctrl-C: canaries stopped, finished trials persisted."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


# -- suggest (tuner/suggest/) ---------------------------------------------------------------


class SuggestError(TunerError):
    """suggest cannot run: bad --since/--until/--selector or launch value, or no data."""


# -- history sources (tuner.source) ------------------------------------------------------------


class SourceError(TunerError):
    """History could not be read from a source (Prometheus unreachable, query refused)."""
