"""Prometheus rule files: render, load and validate, evaluate, and unit-test them.

One module per job (a sample reaches an alert through ``files`` and ``engine``):

* ``render`` — the shipped rule templates (``templates/*.yaml``, package data) filled in with
  the config's SLO, thresholds snapped to vLLM bucket bounds (``render_rule_files``).
  ``rules/*.yaml`` in the repository is the rendering with the default SLO.
* ``files`` — ``Rule``/``RuleGroup``/``RuleSet``; loading Prometheus rule files and refusing
  what Prometheus would refuse, or what ``tuner.promql`` cannot evaluate (``RuleError``
  naming file, group and rule); ``tuner rules check``.
* ``templates`` — the Go text/template subset of labels and annotations (``humanize*``,
  ``printf``, ...).
* ``engine`` — ``RuleEngine``: recording rules and Prometheus's alert state machine
  (``AlertStatus``) over any ``tuner.promql.Querier``; alert state persisted in the store.
* ``promtool_tests`` — ``promtool test rules`` files run with this evaluator.

``render`` needs only ``tuner.config`` and ``tuner.signals``, never ``files`` or ``engine``:
``tuner.provision`` imports it (and nothing else of the evaluator) to ship the rules.
"""

from __future__ import annotations

from tuner.errors import RuleError, TemplateError
from tuner.rules.engine import (
    DEFAULT_RESEND_DELAY,
    RESOLVED_RETENTION,
    STATE_DOCUMENT_KIND,
    AlertState,
    AlertStatus,
    DocumentStore,
    EvalReport,
    RuleEngine,
    RuleStatus,
    SampleWriter,
    inline_recording_rules,
    local_engine,
    read_alert_states,
)
from tuner.rules.files import (
    CheckResult,
    Rule,
    RuleGroup,
    RuleKind,
    RuleSet,
    check_rule_files,
    expand_rule_paths,
    load_configured_rules,
    load_rule_files,
    load_rule_texts,
    parse_rule_text,
)
from tuner.rules.promtool_tests import UnitTestResult, expand_values, parse_series, run_test_files
from tuner.rules.render import (
    GENERATED_MARKERS,
    TEMPLATE_NAMES,
    SnappedSLO,
    read_template,
    render_rule_files,
    snap_slo,
)
from tuner.rules.templates import (
    GoTemplate,
    expand_template,
    go_float,
    go_printf,
    humanize,
    humanize1024,
    humanize_duration,
    humanize_percentage,
    humanize_timestamp,
    parse_template,
)

__all__ = [
    "DEFAULT_RESEND_DELAY",
    "GENERATED_MARKERS",
    "RESOLVED_RETENTION",
    "STATE_DOCUMENT_KIND",
    "TEMPLATE_NAMES",
    "AlertState",
    "AlertStatus",
    "CheckResult",
    "DocumentStore",
    "EvalReport",
    "GoTemplate",
    "Rule",
    "RuleEngine",
    "RuleError",
    "RuleGroup",
    "RuleKind",
    "RuleSet",
    "RuleStatus",
    "SampleWriter",
    "SnappedSLO",
    "TemplateError",
    "UnitTestResult",
    "check_rule_files",
    "expand_rule_paths",
    "expand_template",
    "expand_values",
    "go_float",
    "go_printf",
    "humanize",
    "humanize1024",
    "humanize_duration",
    "humanize_percentage",
    "humanize_timestamp",
    "inline_recording_rules",
    "load_configured_rules",
    "load_rule_files",
    "load_rule_texts",
    "local_engine",
    "parse_rule_text",
    "parse_series",
    "parse_template",
    "read_alert_states",
    "read_template",
    "render_rule_files",
    "run_test_files",
    "snap_slo",
]
