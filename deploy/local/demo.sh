#!/usr/bin/env bash
# The main job on the embedded default (see deploy/local/demo.py); vLLM runs one at a time.
set -euo pipefail
cd "$(dirname "$0")/../.."
exec flock /tmp/tuner-vllm.lock python3 deploy/local/demo.py "$@"
