"""Regenerate the committed generated files: dashboards/, rules/, deploy/kubernetes/base/.

    python dashboards/generate.py          # write them
    python dashboards/generate.py --check  # exit 1 and name the files that differ

The dashboards are defined in the tuner/dashboards/ package; the rule files are
tuner/rules/templates/ rendered with the default SLO (`tuner rules render` writes those alone); the
PrometheusRule, rules ConfigMap and dashboard ConfigMaps come from tuner/provision.py. Do not edit
the generated files by hand.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tuner.generated import sync_generated  # noqa: E402
from tuner.provision import repo_files  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare, write nothing")
    args = parser.parse_args(argv)
    result = sync_generated(ROOT, repo_files(), check=args.check)
    verb = "out of date" if args.check else "written"
    for rel in result.stale:
        print(f"{verb}: {rel}")
    return 1 if (args.check and result.stale) else 0


if __name__ == "__main__":
    raise SystemExit(main())
