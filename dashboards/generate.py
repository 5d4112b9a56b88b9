"""Regenerate the committed generated files: dashboards/*.json and deploy/kubernetes/base/*.

    python dashboards/generate.py          # write them
    python dashboards/generate.py --check  # exit 1 and name the files that differ

The dashboards are defined in the tuner/dashboards/ package; the PrometheusRule, rules ConfigMap and
dashboard ConfigMaps in tuner/provision.py. Do not edit the generated files by hand.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tuner.provision import repo_files  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare, write nothing")
    args = parser.parse_args(argv)
    stale = []
    for rel, text in sorted(repo_files().items()):
        path = ROOT / rel
        current = path.read_text() if path.exists() else None
        if current == text:
            continue
        stale.append(rel)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    verb = "out of date" if args.check else "written"
    for rel in stale:
        print(f"{verb}: {rel}")
    return 1 if (args.check and stale) else 0


if __name__ == "__main__":
    raise SystemExit(main())
