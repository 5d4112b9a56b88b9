"""Evaluating rules as Prometheus's rule manager does: recording rules and the alert state machine.

``RuleEngine`` evaluates a ``RuleSet`` at given times through any ``tuner.promql.Querier``
(the local ``tuner.promql.Engine`` over the store, or a Prometheus-backed source).
Recording rules write their results back (so later rules see them, as in Prometheus);
alerting rules run Prometheus's state machine (``AlertStatus``: inactive → pending →
firing → inactive, reported as resolved; ``for``, ``keep_firing_for``, resolved alerts
kept 15m and resent, ``ALERTS``/``ALERTS_FOR_STATE`` series) and expand their label and
annotation templates. Each evaluation returns an ``EvalReport`` with the alerts to send.

Alert state persists as store documents (kind ``alert_rule_state``, one per rule) so a
restarted daemon keeps ``activeAt`` and ``tuner alerts`` (``read_alert_states``) sees what
the daemon sees.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import quote

from tuner.errors import QueryError, TemplateError, TunerError
from tuner.promql import Engine, Querier, QueryResult
from tuner.rules.alerts import AlertState, AlertStatus, RuleStatus, json_float, unjson_float
from tuner.rules.files import Rule, RuleGroup, RuleKind, RuleSet
from tuner.rules.templates import GoTemplate, parse_template
from tuner.store import STALE_NAN, Store

RESOLVED_RETENTION = 15 * 60.0  # Prometheus keeps resolved alerts this long (and resends them)
DEFAULT_RESEND_DELAY = 60.0  # Prometheus's --rules.alert.resend-delay
STATE_DOCUMENT_KIND = "alert_rule_state"

LabelPairs = tuple[tuple[str, str], ...]


class SampleWriter(Protocol):
    """Where recording-rule results and ``ALERTS`` series go (``tuner.store.Store``)."""

    def append_points(self, points: Iterable[tuple[str, LabelPairs, int, float]]) -> int: ...


class DocumentStore(Protocol):
    """Where alert state persists (``tuner.store.Store``)."""

    def put_document(self, kind: str, key: str, body: Any, ts: float | None = None) -> None: ...

    def documents(self, kind: str) -> list[tuple[str, float, Any]]: ...


@dataclass
class _Alert:
    """Mutable state of one alert instance (the fields of Prometheus's rules.Alert)."""

    labels: dict[str, str]
    annotations: dict[str, str]
    state: AlertStatus  # pending, firing or inactive
    active_at: float
    value: float
    fired_at: float = 0.0
    resolved_at: float = 0.0
    last_sent_at: float = 0.0
    valid_until: float = 0.0
    keep_firing_since: float = 0.0

    def to_json(self) -> dict[str, Any]:
        d = self.__dict__.copy()
        d["value"] = json_float(self.value)
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> _Alert:
        a = cls(labels=dict(d["labels"]), annotations=dict(d["annotations"]),
                state=AlertStatus(d["state"]),
                active_at=float(d["active_at"]), value=unjson_float(d.get("value")))
        for k in ("fired_at", "resolved_at", "last_sent_at", "valid_until", "keep_firing_since"):
            setattr(a, k, float(d.get(k, 0.0)))
        return a


@dataclass(frozen=True)
class EvalReport:
    """What one ``RuleEngine.evaluate`` call did."""

    ts: float
    groups: int
    rules: int
    samples_written: int
    errors: tuple[str, ...]
    to_send: tuple[AlertState, ...]


@dataclass
class _RuleState:
    rule: Rule
    group: RuleGroup
    expr: str  # what is queried (recorded names inlined when nothing can be written back)
    label_templates: dict[str, GoTemplate]
    annotation_templates: dict[str, GoTemplate]
    active: dict[LabelPairs, _Alert] = field(default_factory=dict)
    written: set[LabelPairs] = field(default_factory=set)  # series written last time
    last_error: str = ""
    last_doc: str = ""
    last_eval: float = 0.0  # unix seconds of the last evaluation, 0 = never
    eval_seconds: float = 0.0  # how long it took

    @property
    def key(self) -> str:
        return f"{self.group.source}|{self.group.name}|{self.rule.index}|{self.rule.name}"


def vector_of(result: QueryResult, what: str) -> list[tuple[dict[str, str], float]]:
    if result.kind == "vector":
        return [(dict(e.labels), e.value) for e in result.vector]
    if result.kind == "scalar":
        return [({}, float(result.scalar if result.scalar is not None else math.nan))]
    raise QueryError(f"{what}: rule result is a {result.kind}, not a vector or scalar")


def label_pairs(labels: Mapping[str, str]) -> LabelPairs:
    """Labels as the sorted tuple of pairs that keys series and alerts."""
    return tuple(sorted(labels.items()))


def inline_recording_rules(rules: RuleSet) -> dict[tuple[str, str, int], str]:
    """Expressions with recorded names replaced by their defining expression.

    Used when recording-rule results cannot be written back (fleet mode, querying a
    Prometheus that may not run these recording rules): a bare reference ``name`` becomes
    ``(expr)``. References with matchers or ranges, and recording rules that add labels,
    are left alone. Keys are (source, group, rule index).
    """
    defs: dict[str, str] = {}
    out: dict[tuple[str, str, int], str] = {}
    for g in rules.groups:
        for r in g.rules:
            expr = r.expr
            for name, body in defs.items():
                pattern = re.compile(r"(?<![\w:])" + re.escape(name) + r"(?![\w:])(?!\s*[{\[])")
                expr = pattern.sub("(" + body.strip().replace("\\", "\\\\") + ")", expr)
            out[(g.source, g.name, r.index)] = expr
            if r.kind is RuleKind.RECORD and not r.labels and r.name not in defs:
                defs[r.name] = expr
    return out


class RuleEngine:
    """Evaluates rule groups at given times, like Prometheus's rule manager.

    ``querier`` answers the queries. ``writer`` (the store) receives recording-rule results
    and ``ALERTS``/``ALERTS_FOR_STATE`` series with stale markers for vanished series; without
    one (fleet mode) recorded names are inlined into the expressions that use them.
    ``documents`` persists alert state (``restore()`` reloads it). Not thread-safe: call
    ``evaluate`` from one thread.
    """

    def __init__(
        self,
        rules: RuleSet,
        querier: Querier,
        *,
        writer: SampleWriter | None = None,
        documents: DocumentStore | None = None,
        default_interval: float = 15.0,
        external_labels: Mapping[str, str] | None = None,
        external_url: str = "",
        resend_delay: float = DEFAULT_RESEND_DELAY,
        resolved_retention: float = RESOLVED_RETENTION,
    ) -> None:
        self.querier = querier
        self.writer = writer
        self.documents = documents
        self.default_interval = default_interval
        self.external_labels = dict(external_labels or {})
        self.external_url = external_url.rstrip("/")
        self.resend_delay = resend_delay
        self.resolved_retention = resolved_retention
        self.rules = rules
        self._states: list[_RuleState] = []
        self._next_due: dict[tuple[str, str], float] = {}
        self._alerts_written: set[LabelPairs] = set()
        self._build(rules)

    # -- setup ---------------------------------------------------------------------------

    def _build(self, rules: RuleSet) -> None:
        inlined = inline_recording_rules(rules) if self.writer is None else {}
        old = {s.key: s for s in self._states}
        states = []
        for g in rules.groups:
            for r in g.rules:
                expr = inlined.get((g.source, g.name, r.index), r.expr)
                label_t = {k: parse_template(v) for k, v in r.labels.items()}
                st = _RuleState(
                    r, g, expr, label_t if r.kind is RuleKind.ALERT else {},
                    {k: parse_template(v) for k, v in r.annotations.items()},
                )
                prev = old.get(st.key)
                if prev is not None and prev.rule.kind == r.kind:
                    st.active, st.written, st.last_doc = prev.active, prev.written, prev.last_doc
                states.append(st)
        self._states = states
        self.rules = rules

    def replace_rules(self, rules: RuleSet) -> None:
        """Swap in new rules (reload); alerts of rules that kept their identity keep state."""
        self._build(rules)
        self._next_due.clear()

    def interval_of(self, group: RuleGroup) -> float:
        return group.interval or self.default_interval

    # -- persistence ---------------------------------------------------------------------

    def restore(self) -> int:
        """Reload alert state saved by a previous process; returns how many alerts came back."""
        if self.documents is None:
            return 0
        saved = {key: body for key, _ts, body in self.documents.documents(STATE_DOCUMENT_KIND)}
        n = 0
        for st in self._states:
            body = saved.get(st.key)
            if st.rule.kind is not RuleKind.ALERT or not body:
                continue
            for d in body.get("alerts", []):
                try:
                    a = _Alert.from_json(d)
                except (KeyError, TypeError, ValueError):
                    continue
                st.active[label_pairs(a.labels)] = a
                n += 1
            st.last_doc = json.dumps(body, sort_keys=True)
        return n

    def _persist(self, st: _RuleState, ts: float) -> None:
        if self.documents is None or st.rule.kind is not RuleKind.ALERT:
            return
        body = {
            "alertname": st.rule.name,
            "group": st.group.name,
            "source": st.group.source,
            "for": st.rule.for_seconds,
            "keep_firing_for": st.rule.keep_firing_for,
            "generator_url": self._generator_url(st),
            "alerts": [a.to_json() for a in st.active.values()],
        }
        text = json.dumps(body, sort_keys=True)
        if text == st.last_doc or (not st.active and not st.last_doc):
            return
        self.documents.put_document(STATE_DOCUMENT_KIND, st.key, body, ts=ts)
        st.last_doc = text

    # -- evaluation ----------------------------------------------------------------------

    def evaluate(self, ts: float, force: bool = False) -> EvalReport:
        """Evaluate every group that is due at ``ts`` (all of them when ``force``)."""
        errors: list[str] = []
        to_send: list[AlertState] = []
        written = 0
        groups = 0
        rules = 0
        points: list[tuple[str, LabelPairs, int, float]] = []
        alert_series: set[LabelPairs] = set()
        for g in self.rules.groups:
            gkey = (g.source, g.name)
            interval = self.interval_of(g)
            due = self._next_due.get(gkey, -math.inf)
            if not force and ts + 1e-6 < due:
                continue
            self._next_due[gkey] = ts + interval
            groups += 1
            for st in self._states:
                if st.group is not g:
                    continue
                rules += 1
                st.last_eval, started = ts, time.monotonic()
                if st.rule.kind is RuleKind.RECORD:
                    pts, err = self._eval_record(st, ts)
                    if pts and self.writer is not None:
                        # later rules of this group must see the result: write now
                        written += self.writer.append_points(pts)
                else:
                    err = self._eval_alert(st, ts)
                    to_send.extend(self._needs_sending(st, ts, interval))
                    self._persist(st, ts)
                st.eval_seconds = time.monotonic() - started
                if err:
                    errors.append(err)
        if self.writer is not None:
            points, alert_series = self._alerts_series(ts)
            if points:
                written += self.writer.append_points(points)
            self._alerts_written = alert_series
        return EvalReport(ts, groups, rules, written, tuple(errors), tuple(to_send))

    def _where(self, st: _RuleState) -> str:
        return f"{st.group.source}: group {st.group.name!r}: {st.rule.kind} {st.rule.name!r}"

    def _query(self, st: _RuleState, ts: float) -> list[tuple[dict[str, str], float]]:
        return vector_of(self.querier.instant(st.expr, ts), self._where(st))

    def _eval_record(self, st: _RuleState, ts: float) -> tuple[list[Any], str]:
        ts_ms = round(ts * 1000)
        try:
            vec = self._query(st, ts)
        except TunerError as exc:
            st.last_error = f"{self._where(st)}: {exc}"
            return [], st.last_error
        points = []
        seen: set[LabelPairs] = set()
        for labels, value in vec:
            labels.pop("__name__", None)
            labels.update(st.rule.labels)
            key = label_pairs(labels)
            if key in seen:
                st.last_error = (f"{self._where(st)}: vector contains metrics with the same "
                                 "labelset after applying rule labels")
                return [], st.last_error
            seen.add(key)
            points.append((st.rule.name, key, ts_ms, value))
        if st.group.limit and len(points) > st.group.limit:
            st.last_error = (f"{self._where(st)}: exceeded limit of {st.group.limit} "
                             f"with {len(points)} series")
            return [], st.last_error
        for key in st.written - seen:
            points.append((st.rule.name, key, ts_ms, STALE_NAN))
        st.written = seen
        st.last_error = ""
        return points, ""

    def _eval_alert(self, st: _RuleState, ts: float) -> str:
        rule = st.rule
        try:
            vec = self._query(st, ts)
        except TunerError as exc:
            st.last_error = f"{self._where(st)}: {exc}"
            return st.last_error
        fresh: dict[LabelPairs, _Alert] = {}
        try:
            for labels, value in vec:
                labels.pop("__name__", None)
                data = {"labels": labels, "value": value, "externalLabels": self.external_labels,
                        "externalURL": self.external_url}
                lb = dict(labels)
                for k, t in st.label_templates.items():
                    lb[k] = t.expand(data)
                lb["alertname"] = rule.name
                annotations = {k: t.expand(data) for k, t in st.annotation_templates.items()}
                key = label_pairs(lb)
                if key in fresh:
                    st.last_error = (f"{self._where(st)}: vector contains metrics with the same "
                                     "labelset after applying alert labels")
                    return st.last_error
                fresh[key] = _Alert(lb, annotations, AlertStatus.PENDING, ts, value)
        except TemplateError as exc:
            st.last_error = f"{self._where(st)}: template error: {exc}"
            return st.last_error
        for key, a in fresh.items():
            cur = st.active.get(key)
            if cur is not None and cur.state is not AlertStatus.INACTIVE:
                cur.value = a.value
                cur.annotations = a.annotations
                continue
            st.active[key] = a
        for key in list(st.active):
            a = st.active[key]
            if key not in fresh:
                keep_firing = False
                if a.state is AlertStatus.FIRING and rule.keep_firing_for > 0:
                    if a.keep_firing_since == 0:
                        a.keep_firing_since = ts
                    if ts - a.keep_firing_since < rule.keep_firing_for:
                        keep_firing = True
                if a.state is AlertStatus.PENDING or (
                    a.resolved_at and ts - a.resolved_at > self.resolved_retention
                ):
                    del st.active[key]
                if a.state is not AlertStatus.INACTIVE and not keep_firing:
                    a.state = AlertStatus.INACTIVE
                    a.resolved_at = ts
                if not keep_firing:
                    continue
            else:
                a.keep_firing_since = 0.0
            if a.state is AlertStatus.PENDING and ts - a.active_at >= rule.for_seconds:
                a.state = AlertStatus.FIRING
                a.fired_at = ts
        active = sum(1 for a in st.active.values() if a.state is not AlertStatus.INACTIVE)
        if st.group.limit and active > st.group.limit:
            st.active.clear()  # as Prometheus does: the rule's alerts are dropped
            st.last_error = (f"{self._where(st)}: exceeded limit of {st.group.limit} "
                             f"with {active} alerts")
            return st.last_error
        st.last_error = ""
        return ""

    def _needs_sending(self, st: _RuleState, ts: float, interval: float) -> list[AlertState]:
        out = []
        for a in st.active.values():
            if a.state is AlertStatus.PENDING:
                continue
            if not (a.resolved_at > a.last_sent_at or a.last_sent_at + self.resend_delay < ts):
                continue
            a.last_sent_at = ts
            a.valid_until = ts + 4 * max(self.resend_delay, interval)
            labels = dict(a.labels)
            for k, v in self.external_labels.items():
                labels.setdefault(k, v)
            out.append(self._snapshot(st, a, labels))
        return out

    def _snapshot(self, st: _RuleState, a: _Alert, labels: Mapping[str, str] | None = None
                  ) -> AlertState:
        return AlertState(
            alertname=st.rule.name, group=st.group.name, source=st.group.source,
            labels=dict(labels if labels is not None else a.labels),
            annotations=dict(a.annotations),
            state=a.state.reported(), value=a.value,
            active_at=a.active_at, fired_at=a.fired_at, resolved_at=a.resolved_at,
            valid_until=a.valid_until, generator_url=self._generator_url(st),
        )

    def _generator_url(self, st: _RuleState) -> str:
        return f"{self.external_url}/graph?g0.expr={quote(st.rule.expr)}&g0.tab=1"

    def _alerts_series(self, ts: float) -> tuple[list[tuple[str, LabelPairs, int, float]],
                                                   set[LabelPairs]]:
        ts_ms = round(ts * 1000)
        points: list[tuple[str, LabelPairs, int, float]] = []
        current: set[LabelPairs] = set()
        for st in self._states:
            for a in st.active.values():
                if a.state is AlertStatus.INACTIVE:
                    continue
                alerts_key = label_pairs(
                    {**a.labels, "alertstate": a.state.value, "__name__": "ALERTS"})
                for_key = label_pairs({**a.labels, "__name__": "ALERTS_FOR_STATE"})
                current.update((alerts_key, for_key))
                points.append(("ALERTS", _strip_name(alerts_key), ts_ms, 1.0))
                points.append(("ALERTS_FOR_STATE", _strip_name(for_key), ts_ms, a.active_at))
        for key in self._alerts_written - current:
            name = dict(key)["__name__"]
            points.append((name, _strip_name(key), ts_ms, STALE_NAN))
        return points, current

    # -- reading -------------------------------------------------------------------------

    def alerts(self, include_resolved: bool = True) -> list[AlertState]:
        """Every pending/firing alert (and resolved ones still retained), rule order."""
        out = []
        for st in self._states:
            for a in st.active.values():
                if a.state is AlertStatus.INACTIVE and not include_resolved:
                    continue
                out.append(self._snapshot(st, a))
        return out

    def rule_statuses(self) -> list[RuleStatus]:
        """Every rule with its health, last evaluation and alerts, group and rule order."""
        return [RuleStatus(st.group, st.rule, st.last_error, st.last_eval, st.eval_seconds,
                           tuple(self._snapshot(st, a) for a in st.active.values()
                                 if a.state is not AlertStatus.INACTIVE))
                for st in self._states]

    def firing(self, alertname: str) -> list[AlertState]:
        return [a for a in self.alerts(False) if a.alertname == alertname
                and a.state is AlertStatus.FIRING]


def _strip_name(key: LabelPairs) -> LabelPairs:
    return tuple((k, v) for k, v in key if k != "__name__")


def read_alert_states(documents: DocumentStore) -> list[AlertState]:
    """Alert states persisted by a running daemon (for ``tuner alerts``), rule order kept."""
    out = []
    for _key, _ts, body in documents.documents(STATE_DOCUMENT_KIND):
        for d in body.get("alerts", []):
            try:
                a = _Alert.from_json(d)
            except (KeyError, TypeError, ValueError):
                continue
            out.append(AlertState(
                alertname=str(body.get("alertname", a.labels.get("alertname", ""))),
                group=str(body.get("group", "")), source=str(body.get("source", "")),
                labels=a.labels, annotations=a.annotations,
                state=a.state.reported(), value=a.value,
                active_at=a.active_at, fired_at=a.fired_at, resolved_at=a.resolved_at,
                valid_until=a.valid_until, generator_url=str(body.get("generator_url", "")),
            ))
    order = {AlertStatus.FIRING: 0, AlertStatus.PENDING: 1, AlertStatus.RESOLVED: 2}
    return sorted(out, key=lambda a: (order.get(a.state, 3), a.alertname, sorted(a.labels.items())))


def local_engine(store: Store, lookback_delta: float = 300.0,
                 subquery_step: float = 60.0) -> Engine:
    """The in-process PromQL evaluator over ``store`` (a ``tuner.promql.Querier``); subqueries
    without a step use ``subquery_step`` (the evaluation interval)."""
    return Engine(reader=store, lookback_delta=lookback_delta, subquery_step=subquery_step)

