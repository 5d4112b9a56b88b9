"""Test support: fixtures that start real processes (vLLM CPU, Prometheus, Alertmanager) and the DCGM stand-in."""
