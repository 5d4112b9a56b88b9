"""``tuner tune`` results as files: trials.csv, best.json, report.md, the serve line, a k8s patch.

Functions take the finished records of ``tuner.tune`` and return strings (or write files).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from tuner.report.latency import render_latency_section
from tuner.report.plots import write_tune_plots
from tuner.signals import dollars_per_mtok
from tuner.tune import Candidate, Knob, Measurement, Trial, TuneOutcome

_TUNE_CSV_METRICS = (
    "output_tok_per_s",
    "goodput_tok_per_s",
    "ttft_p50",
    "ttft_p99",
    "itl_p50",
    "itl_p99",
    "e2e_p99",
    "error_rate",
    "requests",
    "errors",
    "rejections",
    "rejection_rate",
    "server_rejections",
    "preemptions",
    "preemptions_per_1k_requests",
    "kv_usage_max",
    "kv_usage_mean",
    "spec_decode_acceptance",
    "tpot_p50",
    "tpot_p99",
    "max_stall_p99",
    "tokens_per_chunk",
    "server_ttft_p50",
    "server_ttft_p99",
    "server_itl_p50",
    "server_itl_p99",
    "server_itl_mean",
    "server_queue_p50",
    "server_queue_p99",
)


def fmt_number(v: object, digits: int = 4) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if v != v or v in (float("inf"), float("-inf")):
            return ""
        return f"{v:.{digits}g}"
    return str(v)


def _count_of(m: Measurement | None, name: str) -> str:
    """``n/requests`` for a trial's rejections or errors ("-" without a measurement)."""
    if m is None:
        return "-"
    return f"{getattr(m, name)}/{m.requests}"


def render_tune_csv(outcome: TuneOutcome) -> str:
    """``trials.csv``: one row per trial (number, kind, state, reason, knobs, flags, metrics)."""
    import csv
    import io
    import json

    knobs = [k.name for k in outcome.config.space.knobs]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["number", "kind", "state", "reason", *knobs, "objective", "loss",
                *_TUNE_CSV_METRICS, "start_s", "load_s", "total_s", "flags", "notes"])
    for t in outcome.trials:
        m = t.measurement
        point = t.point
        w.writerow([
            t.number, t.kind, t.state, t.reason,
            *(fmt_number(point.get(k)) if k in point else fmt_number(t.flags.get(
                next(kn.flag for kn in outcome.config.space.knobs if kn.name == k)))
              for k in knobs),
            fmt_number(t.objective, 6), fmt_number(t.loss, 6),
            *(fmt_number(getattr(m, f), 6) if m is not None else "" for f in _TUNE_CSV_METRICS),
            fmt_number(t.timings.get("start_s"), 4), fmt_number(t.timings.get("load_s"), 4),
            fmt_number(t.timings.get("total_s"), 4),
            json.dumps(dict(t.flags), sort_keys=True), "; ".join(t.notes),
        ])
    return buf.getvalue()


def _cand_json(c: Candidate | None) -> dict[str, Any] | None:
    if c is None:
        return None
    vals = c.values
    return {
        "point": dict(c.point),
        "flags": dict(c.flags),
        "trials": [t.number for t in c.runs],
        "objective_mean": _finite(c.mean),
        "objective_median": _finite(c.median),
        "objective_mad": _finite(c.mad),
        "objective_stdev": _finite(c.stdev),
        "objective_runs": vals,
        "feasible": c.feasible,
    }


def _finite(v: Any) -> Any:
    if isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))):
        return None
    return v


def tune_best_json(outcome: TuneOutcome) -> dict[str, Any]:
    """``best.json``: the flags to use (winner, or the baseline when nothing beat the SLO)."""
    cfg = outcome.config
    cmp_ = outcome.comparison
    return {
        "model": cfg.launch.model,
        "flags": dict(outcome.best_flags),
        "args": list(outcome.best_args),
        "vllm_serve": vllm_serve_command(outcome),
        "source": outcome.recommend,
        "slo_met": outcome.winner is not None,
        "objective": {"kind": cfg.objective.kind, "unit": cfg.objective.unit},
        "winner": _cand_json(outcome.winner),
        "baseline": _cand_json(outcome.baseline),
        "gain": None if cmp_ is None else {
            "fraction": _finite(cmp_.gain),
            "low": _finite(cmp_.gain_low),
            "high": _finite(cmp_.gain_high),
            "significant": cmp_.significant,
            "verdict": cmp_.verdict,
        },
        "best_infeasible": [_cand_json(c) for c in outcome.best_infeasible],
        "trials": len(outcome.trials),
        "complete": outcome.complete,
        "workload": dict(outcome.workload) if outcome.workload is not None else None,
    }


def vllm_serve_command(outcome: TuneOutcome) -> str:
    """A ready ``vllm serve MODEL --flag value ...`` command line (shell-quoted)."""
    import shlex

    args = list(outcome.best_args)
    if args[:1] == ["--model"] and len(args) > 1:  # vllm serve takes the model positionally
        args = [args[1], *args[2:]]
    return "vllm serve " + " ".join(shlex.quote(a) for a in args)


def kubernetes_patch(outcome: TuneOutcome) -> dict[str, Any]:
    """A strategic-merge patch for the production Deployment: the vLLM container's args.

    Containers merge by name, and ``args`` is replaced as a whole, so the patch carries every
    argument (model and all flags) that the tuned server needs.
    """
    return {
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {"name": outcome.config.container_name, "args": list(outcome.best_args)}
                    ]
                }
            }
        }
    }


def fmt_value(v: Any, unit: str) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "-"
    if unit == "$/Mtok":
        return f"${v:,.4f}"
    return f"{v:,.1f}"


def fmt_ms(v: Any) -> str:
    if v is None or (isinstance(v, float) and (v != v or v == float("inf"))):
        return "-"
    return f"{v * 1000:,.0f} ms"


def _mean_metric(c: Candidate, name: str) -> float | None:
    vals = [getattr(t.measurement, name) for t in c.runs if t.measurement is not None]
    vals = [v for v in vals if isinstance(v, int | float) and v == v]
    return sum(vals) / len(vals) if vals else None


def knob_cell(trial: Trial, knob: Knob) -> str:
    """A knob's value in a trial: the searched value, else the launch flag, else vLLM's default."""
    point = trial.point
    if knob.name in point:
        return fmt_number(point[knob.name])
    value = trial.flags.get(knob.flag)
    return fmt_number(value) if value is not None else "default"


def search_lines(outcome: TuneOutcome) -> list[str]:
    """The ``## Search`` section: the initial design, what the KV bound ruled out or made
    unlikely, the verdict's statistics, the start-up share and the early stops."""
    cfg = outcome.config
    lines = ["## Search", ""]
    bound = outcome.bound
    design = outcome.design
    lines.append(f"- initial design: {cfg.optimizer.initial_design}, {len(design)} points"
                 + (" over the likely part of the space" if bound is not None and bound.likely
                    else " over the whole space"))
    if bound is None:
        lines.append("- KV bound: none (the baseline's KV capacity was not measured)")
    for note in bound.notes if bound is not None else ():
        lines.append(f"- {note}")
    if outcome.comparison is not None and outcome.comparison.method:
        lines.append(f"- verdict: {outcome.comparison.method}")
    if outcome.trial_s > 0:
        starts = [t.timings["start_s"] for t in outcome.trials if "start_s" in t.timings]
        later = sorted(starts[1:])
        lines.append(
            f"- start-up: {outcome.startup_s:.0f} s of {outcome.trial_s:.0f} s of trials "
            f"({outcome.startup_s / outcome.trial_s:.0%})"
            + (f"; first {starts[0]:.0f} s, later median {later[len(later) // 2]:.0f} s "
               "(vLLM's compile cache, VLLM_CACHE_ROOT, is shared by the trials)"
               if later else ""))
    stopped = [t for t in outcome.trials if t.state == "stopped"]
    if stopped:
        lines.append(f"- stopped early: {len(stopped)} trial{'s' if len(stopped) > 1 else ''}, "
                     f"{outcome.saved_s:.0f} s of load saved (trials "
                     f"{', '.join(str(t.number) for t in stopped)})")
    lines.append("")
    return lines


def render_tune_report(outcome: TuneOutcome) -> str:
    """``report.md``: best flags against the baseline, the verdict, commands, every trial."""
    import json

    import yaml

    cfg = outcome.config
    unit = cfg.objective.unit
    dph = cfg.objective.dollars_per_hour
    lines = ["# vLLM flag tuning report", ""]
    lines.append(f"Model: `{cfg.launch.model}` · objective: **{cfg.objective.kind}** ({unit}) · "
                 f"{len(outcome.trials)} trials" + ("" if outcome.complete else " (incomplete)"))
    slo_parts = [f"{k} ≤ {v:g}" for k, v in vars(cfg.slo).items() if v is not None]
    lines.append(f"SLO: {', '.join(slo_parts) if slo_parts else 'none'}")
    lines.append("")
    states: dict[str, int] = {}
    for t in outcome.trials:
        states[t.state] = states.get(t.state, 0) + 1
    lines.append("Trials by state: " + ", ".join(f"{k} {v}" for k, v in sorted(states.items())))
    lines.append("")
    lines.append("## Verdict")
    lines.append("")
    if outcome.winner is None:
        lines.append("**No searched configuration met the SLO.** Keep the baseline flags"
                     + (" (the baseline met it)." if outcome.baseline is not None
                        and outcome.baseline.feasible else " (the baseline missed it too)."))
        if outcome.best_infeasible:
            lines += ["", "Best configurations that missed the SLO (closest first):", ""]
            lines.append("| point | objective | p99 TTFT | p99 ITL | error rate | missed |")
            lines.append("| --- | --- | --- | --- | --- | --- |")
            for c in outcome.best_infeasible:
                missed = sorted({k for t in c.runs for k in t.violations})
                lines.append(
                    f"| `{json.dumps(dict(c.point), sort_keys=True)}` | "
                    f"{fmt_value(c.mean, unit)} | {fmt_ms(_mean_metric(c, 'ttft_p99'))} | "
                    f"{fmt_ms(_mean_metric(c, 'itl_p99'))} | "
                    f"{fmt_number(_mean_metric(c, 'error_rate'), 3) or '-'} | {', '.join(missed)} |"
                )
    elif outcome.comparison is not None:
        if outcome.recommend == "baseline":
            lines.append("Keep the baseline flags: the best candidate did not beat them beyond "
                         "the noise.")
            lines.append("")
        confirmed = any(t.kind == "confirm" for t in outcome.trials)
        lines.append(f"**{outcome.comparison.verdict}** (winner vs baseline, "
                     f"{outcome.comparison.winner_n} vs {outcome.comparison.baseline_n} runs"
                     + (", re-measured interleaved)" if confirmed else
                        "; no interleaved re-measurement was configured)"))
    for note in outcome.edge_notes:
        lines += ["", f"Winner at the edge: {note}."]
    lines.append("")
    lines += search_lines(outcome)
    lines.append("## Best against baseline")
    lines.append("")
    lines.append("| | baseline | best candidate |")
    lines.append("| --- | --- | --- |")
    b, w = outcome.baseline, outcome.winner or outcome.baseline

    def pair(fn: Any) -> str:
        return f"{fn(b) if b is not None else '-'} | {fn(w) if w is not None else '-'}"

    def median_mad(c: Candidate) -> str:
        mad = c.mad
        return fmt_value(c.median, unit) + ("" if mad != mad else f" ± {fmt_value(mad, unit)}")

    lines.append(f"| {cfg.objective.kind} ({unit}), median ± MAD of fresh-canary runs | "
                 f"{pair(median_mad)} |")
    lines.append(f"| runs | {pair(lambda c: str(len(c.values)))} |")
    lines.append(f"| output tok/s | {pair(lambda c: fmt_value(_mean_metric(c, 'output_tok_per_s'), 'tok/s'))} |")  # noqa: E501
    lines.append(f"| p99 TTFT | {pair(lambda c: fmt_ms(_mean_metric(c, 'ttft_p99')))} |")
    lines.append(f"| p99 ITL | {pair(lambda c: fmt_ms(_mean_metric(c, 'itl_p99')))} |")
    lines.append(f"| p99 e2e | {pair(lambda c: fmt_ms(_mean_metric(c, 'e2e_p99')))} |")
    lines.append(f"| preemptions | {pair(lambda c: fmt_number(_mean_metric(c, 'preemptions'), 4) or '-')} |")  # noqa: E501
    if dph:
        def cost(c: Candidate) -> str:
            tps = _mean_metric(c, "output_tok_per_s")  # tokens in one second
            usd = dollars_per_mtok(dph, tps, 1.0) if tps else math.nan
            return f"${usd:,.4f}" if math.isfinite(usd) else "-"

        lines.append(f"| $/Mtok at ${dph:g}/h | {pair(cost)} |")
    if outcome.comparison is not None:
        cmp_ = outcome.comparison
        lines.append(f"| gain | | {cmp_.gain * 100:+.1f}% ({cmp_.gain_low * 100:+.1f}% .. "
                     f"{cmp_.gain_high * 100:+.1f}%) |")
    lines.append("")
    lines.append(f"Recommended flags ({outcome.recommend}): `"
                 + json.dumps(dict(outcome.best_flags), sort_keys=True) + "`")
    lines.append("")
    lines += render_latency_section(outcome.baseline, outcome.winner or outcome.baseline, cfg.slo)
    lines.append("## Apply")
    lines.append("")
    lines.append("```sh")
    lines.append(vllm_serve_command(outcome))
    lines.append("```")
    lines.append("")
    lines.append("Kubernetes (strategic-merge patch of the vLLM container; `args` is replaced "
                 "as a whole):")
    lines.append("")
    lines.append("```yaml")
    lines.append(yaml.safe_dump(kubernetes_patch(outcome), sort_keys=False).rstrip())
    lines.append("```")
    lines.append("")
    lines.append("## Trials")
    lines.append("")
    knobs = [k.name for k in cfg.space.knobs]
    lines.append("| # | kind | state | " + " | ".join(knobs) +
                 f" | {unit} | p99 TTFT | p99 ITL | rejected (503) | errors | reason |")
    lines.append("|" + " --- |" * (9 + len(knobs)))
    for t in outcome.trials:
        m = t.measurement
        vals = " | ".join(knob_cell(t, k) for k in cfg.space.knobs)
        lines.append(
            f"| {t.number} | {t.kind} | {t.state} | {vals} | {fmt_value(t.objective, unit)} | "
            f"{fmt_ms(m.ttft_p99 if m else None)} | {fmt_ms(m.itl_p99 if m else None)} | "
            f"{_count_of(m, 'rejections')} | {_count_of(m, 'errors')} | "
            f"{t.reason or ', '.join(sorted(t.violations))} |"
        )
    failed = [t for t in outcome.trials if t.state == "failed" and t.log_tail]
    if failed:
        lines += ["", "## Failed trials", ""]
        for t in failed:
            tail = "\n".join(t.log_tail.splitlines()[-8:])
            flags = json.dumps(dict(t.flags), sort_keys=True)
            lines += [f"Trial {t.number} ({t.reason}): `{flags}`", "", "```", tail, "```", ""]
    lines += ["", "Plots: `convergence.png`, `throughput_vs_ttft.png`, `objective_vs_knobs.png`."]
    return "\n".join(lines) + "\n"


def write_tune_outputs(outcome: TuneOutcome, out: Path) -> list[Path]:
    """Write trials.csv, best.json, report.md and the plots into ``out``; returns the paths.

    Raises TunerError naming the file when it cannot be written (e.g. a full disk).
    """
    import json

    from tuner.errors import TunerError

    files = {
        out / "trials.csv": render_tune_csv(outcome),
        out / "best.json": json.dumps(tune_best_json(outcome), indent=2, sort_keys=True) + "\n",
        out / "report.md": render_tune_report(outcome),
    }
    written = []
    try:
        for path, text in files.items():
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(text)
            tmp.replace(path)
            written.append(path)
        written += write_tune_plots(outcome, out)
    except OSError as exc:
        raise TunerError(f"cannot write tune results to {out}: {exc.strerror or exc} "
                         "(is the disk full?); the trials are safe in tune.db — free space "
                         "and rerun with --resume to write them") from None
    return written
