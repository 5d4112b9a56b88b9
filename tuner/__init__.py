"""tuner: an observability, alerting and flag-tuning sidecar for vLLM servers."""

__version__ = "0.1.0"
