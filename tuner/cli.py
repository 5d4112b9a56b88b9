"""The ``tuner`` command: parse arguments, call one function, map errors to exit codes.

No logic lives here. Each subcommand has an ``_add_<name>`` function that declares its
arguments and a ``_cmd_<name>`` handler that calls into the module that does the work and
prints (or hands to ``report``) the result. ``TunerError`` becomes a one-line message on
stderr and its ``exit_code``; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from tuner import __version__
from tuner.errors import TunerError

Handler = Callable[[argparse.Namespace], int]


def _add_run(sub: Any) -> None:
    p = sub.add_parser("run", help="run the sidecar daemon (scrape, store, rules, alerts)")
    p.add_argument("--config", "-c", required=True, help="tuner.yaml")
    p.set_defaults(handler=_cmd_run)


def _cmd_run(args: argparse.Namespace) -> int:
    from tuner.config import load_config
    from tuner.daemon import run_daemon

    return run_daemon(load_config(args.config))


def _add_status(sub: Any) -> None:
    p = sub.add_parser("status", help="targets up/down and live signals from the store")
    p.add_argument("--config", "-c", default="tuner.yaml", help="tuner.yaml (default: %(default)s)")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(handler=_cmd_status)


def _cmd_status(args: argparse.Namespace) -> int:
    from tuner.config import load_config
    from tuner.daemon import read_status
    from tuner.report import render_status

    status = read_status(load_config(args.config))
    if args.format == "json":
        print(json.dumps(status.to_json(), indent=2, sort_keys=True))
    else:
        print(render_status(status))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tuner",
        description="Observe, alert on and tune vLLM servers (sidecar, suggest, tune, provision).",
    )
    parser.add_argument("--version", action="version", version=f"tuner {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in ADDERS:
        add(sub)
    return parser


# Subcommands register here; keep each one's parser next to its handler above.
ADDERS: list[Callable[[Any], None]] = [_add_run, _add_status]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except TunerError as exc:
        print(f"tuner {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"tuner {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
