"""Load and validate tuner's YAML configuration.

Every error names the file, the key (as a dotted path) and what is allowed, and is raised
before anything starts. Durations use Prometheus syntax (``30s``, ``5m``, ``1h30m``, ``7d``);
sizes accept plain bytes or ``KiB/MiB/GiB`` (and ``KB/MB/GB``) suffixes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tuner.errors import ConfigError
from tuner.httpconfig import (
    DEFAULT_HTTP_CONFIG,
    HTTP_CONFIG_KEYS,
    HTTPClientConfig,
    parse_http_config,
)
from tuner.units import (
    format_duration,
    parse_duration,
    parse_size,
    split_host_port,
)

TARGET_KINDS = ("vllm", "dcgm", "other")


@dataclass(frozen=True)
class Target:
    """One scrape target. ``job`` and ``instance`` become labels on every stored sample."""

    name: str
    url: str
    kind: str = "vllm"
    labels: Mapping[str, str] = field(default_factory=dict)
    timeout: float | None = None
    http: HTTPClientConfig = DEFAULT_HTTP_CONFIG  # tls_config, credentials, proxy, headers

    @property
    def job(self) -> str:
        return self.kind

    @property
    def target_labels(self) -> dict[str, str]:
        """Labels the scraper attaches, like Prometheus's ``job`` and ``instance``."""
        return {"job": self.kind, "instance": self.name, **self.labels}


@dataclass(frozen=True)
class StoreConfig:
    path: Path = Path("tuner.db")
    retention: float = 7 * 86400.0
    max_bytes: int = 2 * 1024**3


@dataclass(frozen=True)
class Alertmanager:
    url: str
    timeout: float = 10.0
    http: HTTPClientConfig = DEFAULT_HTTP_CONFIG


# vLLM histogram bucket bounds in seconds (REFERENCE.md); an SLO threshold should sit on one,
# so that "fraction of requests under the threshold" is exact from the buckets.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
               10.0, 20.0, 40.0, 80.0)
# e2e, queue, prefill and decode time
REQUEST_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
                   60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)


def snap_to_bucket(value: float, bounds: Sequence[float]) -> float:
    """The largest bound not above ``value`` (stricter, never later), or the smallest bound."""
    below = [b for b in bounds if b <= value * (1 + 1e-12)]
    return max(below) if below else min(bounds)


@dataclass(frozen=True)
class SLO:
    """Latency objectives. Thresholds should sit on vLLM histogram bucket bounds."""

    ttft_p99_seconds: float = 1.0
    itl_p99_seconds: float = 0.1
    e2e_p99_seconds: float = 20.0
    queue_p99_seconds: float = 1.0
    error_rate: float = 0.01
    objective: float = 0.99
    defaulted: bool = True


@dataclass(frozen=True)
class Cost:
    dollars_per_hour: float = 0.0
    defaulted: bool = True


@dataclass(frozen=True)
class SuggestSchedule:
    schedule: str | None = None
    since: float = 86400.0
    keep: int = 24


@dataclass(frozen=True)
class TuneWindow:
    """A tuning window run by the daemon: ``tuner tune`` on a cron schedule, canaries only."""

    config: Path | None = None
    schedule: str | None = None
    trials: int | None = None
    out: Path = Path("tune-runs")


#: Workload drift (``tuner.drift``): the default threshold in doublings, and its allowed range.
DRIFT_THRESHOLD = 1.0
DRIFT_THRESHOLD_RANGE = (0.05, 10.0)


@dataclass(frozen=True)
class DriftConfig:
    """``drift``: compare production's workload with the one the flags were tuned for.

    ``tune_result`` is a ``best.json`` (or a tune output directory holding one); without it the
    daemon follows the tuning window's latest run (``tune.out``). Drift is checked every
    ``interval`` over the last ``window``; a window with fewer than ``min_requests`` finished
    requests is not compared (too little traffic to say).
    """

    enabled: bool = False
    tune_result: Path | None = None
    threshold: float = DRIFT_THRESHOLD
    window: float = 3600.0
    interval: float = 300.0
    min_requests: int = 50


@dataclass(frozen=True)
class QueryConfig:
    """Limits of the sidecar's Prometheus API (Prometheus's --query.* flags and defaults)."""

    timeout: float = 120.0
    max_samples: int = 50_000_000
    max_concurrency: int = 1  # query worker processes (1 leaves a core to scraping)
    lookback_delta: float = 300.0


@dataclass(frozen=True)
class Config:
    """The validated configuration of a tuner daemon."""

    source: Path | None = None
    targets: tuple[Target, ...] = ()
    scrape_interval: float = 5.0
    scrape_timeout: float = 5.0
    max_exposition_bytes: int = 10 * 1024 * 1024
    store: StoreConfig = field(default_factory=StoreConfig)
    listen: str = "127.0.0.1:9464"
    evaluation_interval: float = 15.0
    rule_files: tuple[str, ...] = ()
    alertmanagers: tuple[Alertmanager, ...] = ()
    prometheus_url: str | None = None
    slo: SLO = field(default_factory=SLO)
    cost: Cost = field(default_factory=Cost)
    launch: Mapping[str, Any] = field(default_factory=dict)
    suggest: SuggestSchedule = field(default_factory=SuggestSchedule)
    tune: TuneWindow = field(default_factory=TuneWindow)
    query: QueryConfig = field(default_factory=QueryConfig)
    drift: DriftConfig = field(default_factory=DriftConfig)
    web_config_file: Path | None = None
    healthz_open: bool = True
    prometheus_http: HTTPClientConfig = DEFAULT_HTTP_CONFIG  # prometheus_http_config

    @property
    def listen_host_port(self) -> tuple[str, int]:
        return split_host_port(self.listen)


T = TypeVar("T")


class _Reader:
    """Walks a mapping and produces errors that name file and dotted key."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.source}: {key}: {message}")

    def mapping(self, value: Any, key: str, allowed: Mapping[str, str]) -> Mapping[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self.fail(key or "<top level>", f"must be a mapping, got {type(value).__name__}")
        for k in value:
            if k not in allowed:
                where = f"{key}.{k}" if key else str(k)
                raise self.fail(
                    where, f"unknown key; allowed keys here: {', '.join(sorted(allowed))}"
                )
        return value

    def convert(self, value: Any, key: str, fn: Callable[[Any], T], what: str) -> T:
        try:
            return fn(value)
        except (ValueError, TypeError) as exc:
            raise self.fail(key, f"{exc}; expected {what}") from None

    def duration(self, value: Any, key: str) -> float:
        return self.convert(value, key, parse_duration, "a duration like 30s, 5m, 24h, 7d")

    def positive(self, value: Any, key: str) -> float:
        def check(v: Any) -> float:
            if isinstance(v, bool) or not isinstance(v, int | float) or v <= 0:
                raise ValueError(f"{v!r} is not a positive number")
            return float(v)

        return self.convert(value, key, check, "a positive number")

    def positive_int(self, value: Any, key: str) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise self.fail(key, f"{value!r} is not a positive integer")
        return value

    def string(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(key, f"{value!r} is not a non-empty string")
        return value

    def url(self, value: Any, key: str) -> str:
        text = self.string(value, key)
        if not re.match(r"^https?://[^/\s]+", text):
            raise self.fail(key, f"{text!r} is not an http(s) URL")
        return text


_TOP_KEYS = {
    "targets": "list of scrape targets",
    "scrape_interval": "duration",
    "scrape_timeout": "duration",
    "max_exposition_bytes": "size",
    "store": "mapping",
    "listen": "host:port",
    "evaluation_interval": "duration",
    "rule_files": "list of globs",
    "alertmanagers": "list",
    "prometheus_url": "url",
    "prometheus_http_config": "http_config of prometheus_url (Prometheus's format)",
    "slo": "mapping",
    "cost": "mapping",
    "launch": "mapping",
    "suggest": "mapping",
    "tune": "mapping",
    "query": "mapping",
    "drift": "mapping",
    "web_config_file": "path of the listener's web config (TLS, basic auth users)",
    "healthz_open": "bool: /healthz answers without credentials",
}
_TARGET_KEYS = {"name": "", "url": "", "kind": "", "labels": "", "timeout": "",
                **dict.fromkeys(HTTP_CONFIG_KEYS, "")}
_STORE_KEYS = {"path": "", "retention": "", "max_size": ""}
_SLO_KEYS = {f.name: "" for f in SLO.__dataclass_fields__.values() if f.name != "defaulted"}
_COST_KEYS = {"dollars_per_hour": ""}
_SUGGEST_KEYS = {"schedule": "", "since": "", "keep": ""}
_AM_KEYS = {"url": "", "timeout": "", **dict.fromkeys(HTTP_CONFIG_KEYS, "")}
_TUNE_KEYS = {"config": "", "schedule": "", "trials": "", "out": ""}
_QUERY_KEYS = {"timeout": "", "max_samples": "", "max_concurrency": "", "lookback_delta": ""}
_DRIFT_KEYS = {"tune_result": "", "threshold": "", "window": "", "interval": "",
               "min_requests": ""}


def parse_config(data: Any, source: str = "<config>") -> Config:
    """Validate a parsed YAML document and build a Config; raises ConfigError."""
    r = _Reader(source)
    top = r.mapping(data, "", _TOP_KEYS)
    base_dir = Path(source).parent if source and not source.startswith("<") else Path(".")

    targets = _parse_targets(r, top.get("targets", []), base_dir)
    interval = r.duration(top.get("scrape_interval", "5s"), "scrape_interval")
    if interval <= 0:
        raise r.fail("scrape_interval", "must be greater than 0s")
    timeout = r.duration(top.get("scrape_timeout", min(interval, 10.0)), "scrape_timeout")
    if timeout <= 0 or timeout > interval:
        raise r.fail(
            "scrape_timeout", f"must be > 0 and not longer than scrape_interval ({interval:g}s)"
        )
    max_bytes = r.convert(
        top.get("max_exposition_bytes", 10 * 1024 * 1024),
        "max_exposition_bytes",
        parse_size,
        "a size like 10MiB",
    )

    store_map = r.mapping(top.get("store"), "store", _STORE_KEYS)
    store_path = Path(r.string(store_map.get("path", "tuner.db"), "store.path"))
    if not store_path.is_absolute():
        store_path = base_dir / store_path
    store = StoreConfig(
        path=store_path,
        retention=r.duration(store_map.get("retention", "7d"), "store.retention"),
        max_bytes=r.convert(
            store_map.get("max_size", "2GiB"), "store.max_size", parse_size, "a size like 2GiB"
        ),
    )
    if store.retention <= 0:
        raise r.fail("store.retention", "must be greater than 0s")

    listen = r.string(top.get("listen", "127.0.0.1:9464"), "listen")
    r.convert(listen, "listen", split_host_port, "host:port")

    eval_interval = r.duration(top.get("evaluation_interval", "15s"), "evaluation_interval")
    rule_files_raw = top.get("rule_files", [])
    if not isinstance(rule_files_raw, list):
        raise r.fail("rule_files", "must be a list of file paths or globs")
    rule_files = tuple(
        str(base_dir / r.string(v, f"rule_files[{i}]"))
        if not Path(str(v)).is_absolute()
        else str(v)
        for i, v in enumerate(rule_files_raw)
    )

    ams_raw = top.get("alertmanagers", [])
    if not isinstance(ams_raw, list):
        raise r.fail("alertmanagers", "must be a list of {url: http://host:9093}")
    ams = []
    for i, am in enumerate(ams_raw):
        key = f"alertmanagers[{i}]"
        if isinstance(am, str):
            am = {"url": am}
        m = r.mapping(am, key, _AM_KEYS)
        if "url" not in m:
            raise r.fail(f"{key}.url", "is required")
        ams.append(
            Alertmanager(
                url=r.url(m["url"], f"{key}.url").rstrip("/"),
                timeout=r.duration(m.get("timeout", "10s"), f"{key}.timeout"),
                http=parse_http_config(m, r.fail, key, base_dir),
            )
        )

    prom = top.get("prometheus_url")
    prometheus_url = r.url(prom, "prometheus_url").rstrip("/") if prom is not None else None
    prometheus_http = parse_http_config(
        r.mapping(top.get("prometheus_http_config"), "prometheus_http_config",
                  dict.fromkeys(HTTP_CONFIG_KEYS, "")),
        r.fail, "prometheus_http_config", base_dir)

    slo_map = r.mapping(top.get("slo"), "slo", _SLO_KEYS)
    slo_values = {k: r.positive(v, f"slo.{k}") for k, v in slo_map.items()}
    for k in ("error_rate", "objective"):
        if k in slo_values and slo_values[k] >= 1:
            raise r.fail(f"slo.{k}", "must be a fraction between 0 and 1")
    slo = SLO(**slo_values, defaulted="slo" not in top)

    cost_map = r.mapping(top.get("cost"), "cost", _COST_KEYS)
    cost = Cost(
        dollars_per_hour=(
            r.positive(cost_map["dollars_per_hour"], "cost.dollars_per_hour")
            if "dollars_per_hour" in cost_map
            else 0.0
        ),
        defaulted="dollars_per_hour" not in cost_map,
    )

    launch = top.get("launch", {}) or {}
    if not isinstance(launch, Mapping):
        raise r.fail("launch", "must be a mapping of vLLM flag -> value")

    sug_map = r.mapping(top.get("suggest"), "suggest", _SUGGEST_KEYS)
    schedule = sug_map.get("schedule")
    if schedule is not None:
        schedule = _cron(r, schedule, "suggest.schedule")
    keep = r.positive_int(sug_map.get("keep", 24), "suggest.keep")
    suggest = SuggestSchedule(
        schedule=schedule,
        since=r.duration(sug_map.get("since", "24h"), "suggest.since"),
        keep=keep,
    )

    tune = _parse_tune_window(r, top.get("tune"), base_dir)
    query = _parse_query(r, top.get("query"))
    drift = _parse_drift(r, top.get("drift"), base_dir, tune)
    web_config = top.get("web_config_file")
    web_config_file = (_relative(base_dir, r.string(web_config, "web_config_file"))
                       if web_config is not None else None)
    healthz_open = top.get("healthz_open", True)
    if not isinstance(healthz_open, bool):
        raise r.fail("healthz_open", f"{healthz_open!r} is not true or false")

    return Config(
        source=Path(source) if not source.startswith("<") else None,
        targets=targets,
        scrape_interval=interval,
        scrape_timeout=timeout,
        max_exposition_bytes=max_bytes,
        store=store,
        listen=listen,
        evaluation_interval=eval_interval,
        rule_files=rule_files,
        alertmanagers=tuple(ams),
        prometheus_url=prometheus_url,
        slo=slo,
        cost=cost,
        launch=dict(launch),
        suggest=suggest,
        tune=tune,
        query=query,
        drift=drift,
        web_config_file=web_config_file,
        healthz_open=healthz_open,
        prometheus_http=prometheus_http,
    )


def _parse_query(r: _Reader, raw: Any) -> QueryConfig:
    q = r.mapping(raw, "query", _QUERY_KEYS)
    out = QueryConfig(
        timeout=r.duration(q.get("timeout", "2m"), "query.timeout"),
        max_samples=r.positive_int(q.get("max_samples", 50_000_000), "query.max_samples"),
        max_concurrency=r.positive_int(q.get("max_concurrency", 1), "query.max_concurrency"),
        lookback_delta=r.duration(q.get("lookback_delta", "5m"), "query.lookback_delta"),
    )
    for key in ("timeout", "lookback_delta"):
        if getattr(out, key) <= 0:
            raise r.fail(f"query.{key}", "must be greater than 0s")
    return out


def _cron(r: _Reader, value: Any, key: str) -> str:
    text = r.string(value, key)
    if len(text.split()) != 5:
        raise r.fail(key, f"{text!r} is not a 5-field cron expression (e.g. '0 3 * * *')")
    return text


def _relative(base_dir: Path, text: str) -> Path:
    p = Path(text)
    return p if p.is_absolute() else base_dir / p


def _parse_tune_window(r: _Reader, raw: Any, base_dir: Path) -> TuneWindow:
    if raw is None:
        return TuneWindow()
    m = r.mapping(raw, "tune", _TUNE_KEYS)
    for required in ("config", "schedule"):
        if required not in m:
            raise r.fail(f"tune.{required}", "is required for a tuning window")
    trials = m.get("trials")
    if trials is not None:
        trials = r.positive_int(trials, "tune.trials")
    return TuneWindow(
        config=_relative(base_dir, r.string(m["config"], "tune.config")),
        schedule=_cron(r, m["schedule"], "tune.schedule"),
        trials=trials,
        out=_relative(base_dir, r.string(m.get("out", "tune-runs"), "tune.out")),
    )


def _parse_drift(r: _Reader, raw: Any, base_dir: Path, tune: TuneWindow) -> DriftConfig:
    """``drift``; on by default with a tuning window (which it then follows)."""
    if raw is None:
        return DriftConfig(enabled=tune.config is not None)
    m = r.mapping(raw, "drift", _DRIFT_KEYS)
    result = m.get("tune_result")
    if result is None and tune.config is None:
        raise r.fail("drift.tune_result", "is required without a tuning window (tune:): "
                     "the best.json of the tune run whose workload production is compared with")
    threshold = r.positive(m.get("threshold", DRIFT_THRESHOLD), "drift.threshold")
    lo, hi = DRIFT_THRESHOLD_RANGE
    if not lo <= threshold <= hi:
        raise r.fail("drift.threshold", f"{threshold:g} is out of range: allowed {lo:g} to "
                     f"{hi:g} doublings (1.0: a length quantile or the arrival rate doubled "
                     "or halved)")
    window = r.duration(m.get("window", "1h"), "drift.window")
    interval = r.duration(m.get("interval", "5m"), "drift.interval")
    if window < 60.0:
        raise r.fail("drift.window", f"{format_duration(window)} is too short: at least 1m")
    return DriftConfig(
        enabled=True,
        tune_result=_relative(base_dir, r.string(result, "drift.tune_result"))
        if result is not None else None,
        threshold=threshold, window=window, interval=interval,
        min_requests=r.positive_int(m.get("min_requests", 50), "drift.min_requests"),
    )


def _parse_targets(r: _Reader, raw: Any, base_dir: Path) -> tuple[Target, ...]:
    if not isinstance(raw, list):
        raise r.fail("targets", "must be a list of {name, url, kind}")
    targets = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        key = f"targets[{i}]"
        m = r.mapping(item, key, _TARGET_KEYS)
        for required in ("name", "url"):
            if required not in m:
                raise r.fail(f"{key}.{required}", "is required")
        name = r.string(m["name"], f"{key}.name")
        if name in seen:
            raise r.fail(f"{key}.name", f"duplicate target name {name!r}; names must be unique")
        seen.add(name)
        kind = m.get("kind", "vllm")
        if kind not in TARGET_KINDS:
            raise r.fail(f"{key}.kind", f"{kind!r} is not allowed; use one of {TARGET_KINDS}")
        labels = m.get("labels", {}) or {}
        if not isinstance(labels, Mapping) or not all(
            isinstance(k, str) and re.match(r"^[a-zA-Z_][a-zA-Z0-9_]*$", k) for k in labels
        ):
            raise r.fail(f"{key}.labels", "must map label names ([a-zA-Z_][a-zA-Z0-9_]*) to values")
        timeout = m.get("timeout")
        targets.append(
            Target(
                name=name,
                url=r.url(m["url"], f"{key}.url"),
                kind=kind,
                labels={str(k): str(v) for k, v in labels.items()},
                timeout=r.duration(timeout, f"{key}.timeout") if timeout is not None else None,
                http=parse_http_config(m, r.fail, key, base_dir),
            )
        )
    return tuple(targets)


def with_prometheus_url(config: Config, url: str, where: str = "prometheus_url") -> Config:
    """The config with ``prometheus_url`` replaced (e.g. from ``--prometheus``); validated."""
    checked = _Reader(where).url(url, where).rstrip("/")
    return replace(config, prometheus_url=checked)


def with_http_config_file(config: Config, path: str) -> Config:
    """The config with ``prometheus_http`` read from an http_config file (promtool's
    ``--http.config.file`` format), for ``--http-config-file``."""
    p = Path(path)
    data = read_yaml(p, "http config file")
    r = _Reader(str(p))
    m = r.mapping(data, "", dict.fromkeys(HTTP_CONFIG_KEYS, ""))
    return replace(config, prometheus_http=parse_http_config(m, r.fail, "", p.parent))


def with_web_config_file(config: Config, path: str) -> Config:
    """The config with ``web_config_file`` replaced (``--web-config-file``)."""
    return replace(config, web_config_file=Path(path))


def read_yaml(path: Path, what: str = "config file") -> Any:
    """The parsed YAML of a file; ConfigError naming the file if it cannot be read or parsed."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what}: {exc.strerror or exc}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML config file; raises ConfigError naming the file."""
    p = Path(path)
    return parse_config(read_yaml(p), str(p))
