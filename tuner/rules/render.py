"""The shipped rule files: the templates in ``templates/`` filled in with the config's SLO.

``render_rule_files(slo)`` returns file name -> YAML text for ``vllm.yaml``, ``slo.yaml`` and
``gpu.yaml`` (package data next to this module, read with ``importlib.resources``). Latency
thresholds are snapped to vLLM histogram bucket bounds first (``snap_slo``) so every ``le``
matcher selects an exact bucket; ``rules/*.yaml`` in the repository is the rendering with
the default SLO (``tuner rules render`` writes it, ``tuner.provision`` ships it).

Placeholders in the templates are ``@NAME@`` tokens (``@TTFT@``, ``@TTFT_LE@``,
``@BURN_14_4@``, ...), replaced as plain text. ``@SIGNAL:<name>:<window>[:<matchers>]@`` is
replaced by the rule form of that signal of ``tuner.signals`` (the one place derived
expressions live): ``without`` the replica labels, over ``window``, with the matchers (e.g.
``job=~".*vllm.*"``) on every series. This module renders only: it does not load,
validate or evaluate rules, so ``tuner.provision`` can import it without the evaluator.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from importlib import resources

from tuner.config import ITL_BUCKETS, REQUEST_BUCKETS, SLO, TTFT_BUCKETS, snap_to_bucket
from tuner.signals import le_regex, render_rule_expr, signal_template

log = logging.getLogger(__name__)

# The shipped rule files, in evaluation order (later groups may use earlier recorded series).
TEMPLATE_NAMES = ("vllm.yaml", "slo.yaml", "gpu.yaml")
# Each rendered file says in its first lines that it is generated (the second form is how
# files rendered before `tuner rules render` existed say it); anything else is someone's own.
GENERATED_MARKERS = ("Written by `tuner rules render`", "Rendered by tuner.rules.render_rule_files")


@dataclass(frozen=True)
class SnappedSLO:
    """SLO thresholds as rendered into the rules, each on a bucket bound."""

    ttft_seconds: float
    itl_seconds: float
    queue_seconds: float
    error_rate: float
    objective: float
    notes: tuple[str, ...] = ()


def snap_slo(slo: SLO) -> SnappedSLO:
    """Snap the SLO's latency thresholds to vLLM bucket bounds; ``notes`` says what moved."""
    notes = []
    out = {}
    for key, bounds, metric in (
        ("ttft_p99_seconds", TTFT_BUCKETS, "vllm:time_to_first_token_seconds"),
        ("itl_p99_seconds", ITL_BUCKETS, "vllm:inter_token_latency_seconds"),
        ("queue_p99_seconds", REQUEST_BUCKETS, "vllm:request_queue_time_seconds"),
    ):
        want = float(getattr(slo, key))
        got = snap_to_bucket(want, bounds)
        if not math.isclose(got, want, rel_tol=1e-12):
            notes.append(
                f"slo.{key} {_num(want)}s is not a bucket bound of {metric}; "
                f"the rules use {_num(got)}s"
            )
        out[key] = got
    return SnappedSLO(out["ttft_p99_seconds"], out["itl_p99_seconds"], out["queue_p99_seconds"],
                      float(slo.error_rate), float(slo.objective), tuple(notes))


def _num(x: float) -> str:
    """A threshold as PromQL/YAML text: shortest form, no float noise (0.144, 1, 0.06)."""
    r = float(f"{x:.12g}")
    return str(int(r)) if r == int(r) and abs(r) < 1e15 else repr(r)


def render_rule_files(slo: SLO | None = None) -> dict[str, str]:
    """The shipped rule files (file name -> YAML text) with ``slo``'s thresholds.

    Latency thresholds are snapped to bucket bounds (``snap_slo``); when that moves a value the
    rendered ``slo.yaml`` carries a comment saying so and a warning is logged.
    """
    s = snap_slo(slo or SLO())
    budget = 1.0 - s.objective
    values = {
        "@TTFT_LE@": le_regex(s.ttft_seconds),
        "@TTFT@": _num(s.ttft_seconds),
        "@ITL@": _num(s.itl_seconds),
        "@QUEUE@": _num(s.queue_seconds),
        "@ERR@": _num(s.error_rate),
        "@ERR_PCT@": _num(s.error_rate * 100),
        "@OBJ_PCT@": _num(s.objective * 100),
        "@BURN_14_4@": _num(14.4 * budget),
        "@BURN_6@": _num(6 * budget),
        "@BURN_3@": _num(3 * budget),
        "@BURN_1@": _num(budget),
    }
    out = {}
    for name in TEMPLATE_NAMES:
        text = read_template(name)
        for k, v in values.items():
            text = text.replace(k, v)
        text = _SIGNAL_RE.sub(_signal_expr, text)
        if name == "slo.yaml" and s.notes:
            for note in s.notes:
                log.warning("rules: %s", note)
            notes = "".join(f"# NOTE: {n}\n" for n in s.notes)
            text = text.replace("\ngroups:\n", "\n" + notes + "groups:\n", 1)
        out[name] = text
    return out


_SIGNAL_RE = re.compile(r"@SIGNAL:([a-z0-9_]+):([0-9]+[smhd])(?::([^@]+))?@")


def _signal_expr(m: re.Match[str]) -> str:
    selector = "{" + m.group(3) + "}" if m.group(3) else ""
    return render_rule_expr(signal_template(m.group(1)), m.group(2), selector)


def read_template(name: str) -> str:
    """The text of one shipped rule template (``templates/<name>``, package data)."""
    return resources.files("tuner.rules").joinpath("templates", name).read_text(encoding="utf-8")
