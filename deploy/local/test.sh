#!/usr/bin/env bash
# Run every tier: lint + types, unit, integration (real Prometheus/promtool/Alertmanager),
# e2e (real vLLM CPU on the generated tiny model). A missing dependency fails; nothing skips.
set -euo pipefail
cd "$(dirname "$0")/../.."
export VLLM_CACHE_ROOT="${VLLM_CACHE_ROOT:-$PWD/.cache/vllm}"
echo "== ruff"; ruff check tuner tests benchmarks
echo "== mypy"; mypy tuner
echo "== import layers"; lint-imports --no-cache
echo "== pytest (unit, integration, e2e)"
python3 -m pytest -p no:cacheprovider --durations=15 "$@"
