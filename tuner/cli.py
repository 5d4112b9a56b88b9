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
    p.add_argument(
        "--prometheus",
        metavar="URL",
        help="fleet mode: evaluate the rules against this Prometheus (overrides prometheus_url)",
    )
    p.add_argument("--http-config-file", metavar="FILE",
                   help="TLS, credentials and headers for the Prometheus, in promtool's "
                        "--http.config.file format (overrides prometheus_http_config)")
    p.add_argument("--web-config-file", metavar="FILE",
                   help="the listener's TLS and basic auth, in Prometheus's web config format "
                        "(overrides web_config_file)")
    p.set_defaults(handler=_cmd_run)


def _cmd_run(args: argparse.Namespace) -> int:
    from tuner.config import (
        load_config,
        with_http_config_file,
        with_prometheus_url,
        with_web_config_file,
    )
    from tuner.daemon import run_daemon

    config = load_config(args.config)
    if args.prometheus:
        config = with_prometheus_url(config, args.prometheus, "--prometheus")
    if args.web_config_file:
        config = with_web_config_file(config, args.web_config_file)
    if args.http_config_file:
        config = with_http_config_file(config, args.http_config_file)
    return run_daemon(config)


def _add_status(sub: Any) -> None:
    p = sub.add_parser("status", help="targets up/down and live signals from the store")
    p.add_argument("--config", "-c", default="tuner.yaml", help="tuner.yaml (default: %(default)s)")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(handler=_cmd_status)


def _cmd_status(args: argparse.Namespace) -> int:
    from tuner.config import load_config
    from tuner.report import render_status
    from tuner.status import read_status

    status = read_status(load_config(args.config))
    if args.format == "json":
        print(json.dumps(status.to_json(), indent=2, sort_keys=True))
    else:
        print(render_status(status))
    return 0


def _add_provision(sub: Any) -> None:
    p = sub.add_parser(
        "provision",
        help="write Grafana dashboards and provisioning, Prometheus and Alertmanager config",
    )
    p.add_argument("--config", "-c", required=True, help="tuner.yaml (targets, slo, cost)")
    p.add_argument("--out", "-o", required=True, help="output directory (created if missing)")
    p.add_argument("--force", action="store_true",
                   help="replace files at tuner's paths that tuner did not write")
    p.set_defaults(handler=_cmd_provision)


def _cmd_provision(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tuner.config import load_config
    from tuner.provision import provision

    result = provision(load_config(args.config), Path(args.out), force=args.force)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"{result.out}: {len(result.written)} file(s) written, "
          f"{len(result.unchanged)} unchanged")
    for path in result.written:
        print(f"  wrote {path.relative_to(result.out)}")
    return 0


def _add_tune(sub: Any) -> None:
    p = sub.add_parser("tune", help="Bayesian search over vLLM flags on canary servers")
    p.add_argument("--config", "-c", required=True, help="tune.yaml")
    p.add_argument("--trials", type=int, default=None, help="search trials (default: budget)")
    p.add_argument("--resume", action="store_true", help="continue the search in --out")
    p.add_argument("--out", default=None, help="output directory (default: the config's out)")
    p.add_argument("--parallel", type=int, default=1, help="canaries at a time (default: 1)")
    p.set_defaults(handler=_cmd_tune)


def _cmd_tune(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tuner.report import TuneLiveView, write_tune_outputs
    from tuner.tune import TuneOptions, load_tune_config, planned_total, run_tune

    cfg = load_tune_config(args.config)
    out = Path(args.out) if args.out else cfg.out
    options = TuneOptions(out=out, trials=args.trials, resume=args.resume, parallel=args.parallel)
    with TuneLiveView(cfg, planned_total(cfg, args.trials)) as view:
        outcome = run_tune(cfg, options, observers=[view])
    paths = write_tune_outputs(outcome, out)
    if outcome.comparison is not None:
        print(outcome.comparison.verdict)
    elif outcome.winner is None:
        print("no searched configuration met the SLO; see report.md for the closest ones")
    print(f"recommended ({outcome.recommend}): " + " ".join(outcome.best_args))
    for path in paths:
        print(f"wrote {path}")
    return 0


def _add_suggest(sub: Any) -> None:
    p = sub.add_parser(
        "suggest", help="flag recommendations with evidence from the last window of metrics"
    )
    p.add_argument("--since", default="24h", help="window length, e.g. 10m, 24h, 7d (default: 24h)")
    p.add_argument("--until", default=None,
                   help="window end: now, unix seconds, ISO 8601, or a duration ago (default: now)")
    p.add_argument("--config", "-c", default=None,
                   help="tuner.yaml (store, SLOs, cost, launch flags; default: ./tuner.yaml)")
    p.add_argument("--prometheus", default=None,
                   help="read history from this Prometheus (fleet mode) instead of the store")
    p.add_argument("--http-config-file", metavar="FILE",
                   help="TLS, credentials and headers for the Prometheus, in promtool's "
                        "--http.config.file format (overrides prometheus_http_config)")
    p.add_argument("--selector", default=None, help="vLLM series to consider, e.g. "
                   "'{model_name=\"x\"}'")
    p.add_argument("--format", choices=("table", "json", "markdown"), default="table")
    p.set_defaults(handler=_cmd_suggest)


def _cmd_suggest(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tuner.config import Config, load_config, with_http_config_file
    from tuner.errors import ConfigError
    from tuner.report import render_suggest_markdown, render_suggest_table
    from tuner.suggest import check_arguments, run_suggest

    check_arguments(args.since, args.until, args.selector)
    path = args.config or ("tuner.yaml" if Path("tuner.yaml").exists() else None)
    if path is None and not args.prometheus:
        raise ConfigError("suggest: no --config given and no ./tuner.yaml here; "
                          "give --config FILE (the sidecar's store) or --prometheus URL")
    config = load_config(path) if path else None
    if args.http_config_file:
        config = with_http_config_file(config or Config(), args.http_config_file)
    report = run_suggest(config, args.since, args.until, args.prometheus, args.selector)
    if args.format == "json":
        print(json.dumps(report, indent=2, sort_keys=True))
    elif args.format == "markdown":
        print(render_suggest_markdown(report), end="")
    else:
        print(render_suggest_table(report))
    return 0


def _add_rules(sub: Any) -> None:
    p = sub.add_parser(
        "rules", help="write the shipped rule files, check rule files, run rule unit tests"
    )
    rsub = p.add_subparsers(dest="rules_command", required=True, metavar="ACTION")
    t = rsub.add_parser("test", help="run promtool-format rule unit tests with tuner's evaluator")
    t.add_argument("files", nargs="+", metavar="FILE", help="unit-test files (globs allowed)")
    t.set_defaults(handler=_cmd_rules_test)
    c = rsub.add_parser("check", help="validate rule files (tuner's subset; promtool if installed)")
    c.add_argument("files", nargs="+", metavar="FILE", help="rule files (globs allowed)")
    c.add_argument("--no-promtool", action="store_true", help="skip promtool even if installed")
    c.set_defaults(handler=_cmd_rules_check)
    r = rsub.add_parser("render", help="write rules/*.yaml from tuner's rule templates")
    r.add_argument("--out", "-o", default=None,
                   help="directory to write (default: the repository's rules/ in a checkout)")
    r.add_argument("--config", "-c", default=None,
                   help="tuner.yaml whose slo section fills the thresholds (default: the "
                   "default SLO)")
    r.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 and name the files that differ")
    r.add_argument("--force", action="store_true",
                   help="replace files in --out that the renderer did not write")
    r.set_defaults(handler=_cmd_rules_render)


def _cmd_rules_test(args: argparse.Namespace) -> int:
    from tuner.rules import run_test_files

    failed = 0
    for res in run_test_files(args.files):
        print(f"Unit Testing:  {res.path}")
        if res.ok:
            print(f"  SUCCESS ({res.tests} test groups)")
        else:
            failed += 1
            print("  FAILED:")
            for f in res.failures:
                print(f"    {f}")
        print()
    return 1 if failed else 0


def _cmd_rules_check(args: argparse.Namespace) -> int:
    from tuner.rules import check_rule_files

    failed = 0
    for res in check_rule_files(args.files, use_promtool=not args.no_promtool):
        print(f"Checking {res.path}")
        print(f"  {'SUCCESS' if res.ok else 'FAILED'}: {res.message}")
        if res.promtool is None and not args.no_promtool:
            print("  (promtool not installed: checked with tuner's evaluator only)")
        failed += not res.ok
    return 1 if failed else 0


def _cmd_rules_render(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tuner.config import SLO, load_config
    from tuner.provision import render_rules

    slo = load_config(args.config).slo if args.config else SLO()
    result = render_rules(slo, Path(args.out) if args.out else None, check=args.check,
                          force=args.force)
    for rel in result.stale:
        print(f"{'out of date' if result.checked else 'wrote'} {result.root / rel}")
    if result.checked:
        print(f"{result.root}: {len(result.stale)} of {len(result.paths)} rule file(s) "
              "differ from the templates" + (" (run `tuner rules render`)" if result.stale else ""))
        return 1 if result.stale else 0
    print(f"{result.root}: {len(result.stale)} file(s) written, "
          f"{len(result.paths) - len(result.stale)} unchanged")
    return 0


def _add_alerts(sub: Any) -> None:
    p = sub.add_parser("alerts", help="list current alert states (pending, firing, resolved)")
    p.add_argument("--config", "-c", default="tuner.yaml", help="tuner.yaml (default: %(default)s)")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(handler=_cmd_alerts)


def _cmd_alerts(args: argparse.Namespace) -> int:
    import time

    from tuner.config import load_config
    from tuner.report import render_table
    from tuner.rules import read_alert_states
    from tuner.store import Store

    config = load_config(args.config)
    with Store(config.store.path, read_only=True) as store:
        alerts = read_alert_states(store)
    if args.format == "json":
        print(json.dumps([a.to_json() for a in alerts], indent=2, sort_keys=True))
        return 0
    if not alerts:
        print("no alerts")
        return 0
    now = time.time()
    rows = []
    for a in alerts:
        since = a.resolved_at if a.state == "resolved" else a.active_at
        labels = ",".join(f"{k}={v}" for k, v in sorted(a.labels.items())
                          if k not in ("alertname", "severity"))
        rows.append([a.alertname, a.state, a.labels.get("severity", ""),
                     f"{max(0.0, now - since):.0f}s ago", labels,
                     a.annotations.get("summary", "")])
    print(render_table(["ALERT", "STATE", "SEVERITY", "SINCE", "LABELS", "SUMMARY"], rows))
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
ADDERS: list[Callable[[Any], None]] = [
    _add_run,
    _add_status,
    _add_tune,
    _add_provision,
    _add_suggest,
    _add_rules,
    _add_alerts,
]


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
