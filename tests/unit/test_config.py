"""Config loading: valid files, durations, and errors that name file, key and what is allowed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tuner.config import load_config, parse_config
from tuner.errors import ConfigError
from tuner.units import format_duration, parse_duration, parse_duration_ms, parse_size

EXAMPLE = """
targets:
  - {name: vllm-0, url: http://127.0.0.1:8000/metrics, kind: vllm}
  - {name: gpu-node, url: http://127.0.0.1:9400/metrics, kind: dcgm}
scrape_interval: 5s
store: {path: ./tuner.db, retention: 7d}
listen: 127.0.0.1:9464
"""


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("5m", 300),
        ("24h", 86400),
        ("7d", 604800),
        ("1h30m", 5400),
        ("250ms", 0.25),
        ("1w", 604800),
        ("1y", 31536000),
        (15, 15.0),
    ],
)
def test_parse_duration_prometheus_syntax(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "5", "5x", "m5", "1m1h", "-5s", "5 m", "1.5h"])
def test_parse_duration_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_parse_duration_ms_is_prometheus_complete() -> None:
    assert parse_duration_ms("1d2h3m4s5ms") == 93_784_005
    assert parse_duration_ms("0") == 0  # Prometheus accepts a bare zero
    assert parse_duration("0") == 0.0
    assert parse_duration_ms("292y") == 292 * 365 * 86_400_000
    with pytest.raises(ValueError, match="out of range"):
        parse_duration_ms("300000000y")  # beyond Go's time.Duration, as Prometheus refuses
    with pytest.raises(ValueError, match="out of order or repeated"):
        parse_duration_ms("1m1m")
    with pytest.raises(ValueError, match="not a Prometheus duration"):
        parse_duration_ms("00")


def test_format_duration_round_trips() -> None:
    for s in ["5m", "1h30m", "7d", "250ms", "1d2h3m4s"]:
        assert format_duration(parse_duration(s)) == s


def test_parse_size() -> None:
    assert parse_size("10MiB") == 10 * 1024 * 1024
    assert parse_size("2GB") == 2_000_000_000
    assert parse_size(4096) == 4096
    with pytest.raises(ValueError):
        parse_size("lots")


def test_example_config_loads(tmp_path: Path) -> None:
    f = tmp_path / "tuner.yaml"
    f.write_text(EXAMPLE)
    cfg = load_config(f)
    assert [t.name for t in cfg.targets] == ["vllm-0", "gpu-node"]
    assert cfg.targets[1].kind == "dcgm"
    assert cfg.scrape_interval == 5.0
    assert cfg.store.retention == 7 * 86400
    assert cfg.store.path == tmp_path / "tuner.db"  # relative to the config file
    assert cfg.listen_host_port == ("127.0.0.1", 9464)
    assert cfg.targets[0].target_labels == {"job": "vllm", "instance": "vllm-0"}
    assert cfg.slo.defaulted and cfg.cost.defaulted


@pytest.mark.parametrize(
    ("yaml_text", "key", "allowed"),
    [
        ("targets: []\nscrape_intervl: 5s\n", "scrape_intervl", "allowed keys here"),
        ("scrape_interval: fast\n", "scrape_interval", "30s, 5m"),
        ("targets:\n  - {name: a}\n", "targets[0].url", "is required"),
        ("targets:\n  - {name: a, url: ftp://x}\n", "targets[0].url", "http(s) URL"),
        ("targets:\n  - {name: a, url: 'http://x', kind: gpu}\n", "targets[0].kind", "vllm"),
        ("targets:\n  - {name: a, url: 'http://x', color: red}\n", "targets[0].color", "kind"),
        ("store: {path: x.db, retention: forever}\n", "store.retention", "duration"),
        ("store: {path: x.db, size: 1GiB}\n", "store.size", "max_size"),
        ("listen: nowhere\n", "listen", "host:port"),
        ("scrape_interval: 5s\nscrape_timeout: 10s\n", "scrape_timeout", "not longer"),
        ("slo: {ttft_p99_seconds: -1}\n", "slo.ttft_p99_seconds", "positive"),
        ("suggest: {schedule: 'every hour'}\n", "suggest.schedule", "cron"),
        ("query: {timeout: soon}\n", "query.timeout", "duration"),
        ("query: {timeout: 0s}\n", "query.timeout", "greater than 0s"),
        ("query: {max_samples: 0}\n", "query.max_samples", "positive integer"),
        ("query: {max_concurrency: many}\n", "query.max_concurrency", "positive integer"),
        ("query: {limit: 5}\n", "query.limit", "max_samples"),
    ],
)
def test_config_errors_name_file_key_and_allowed(
    tmp_path: Path, yaml_text: str, key: str, allowed: str
) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(yaml_text)
    with pytest.raises(ConfigError) as err:
        load_config(f)
    msg = str(err.value)
    assert str(f) in msg
    assert key in msg
    assert allowed in msg


def test_query_limits_default_to_prometheus_and_are_configurable() -> None:
    q = parse_config({}).query
    assert (q.timeout, q.max_samples, q.lookback_delta) == (120.0, 50_000_000, 300.0)
    q = parse_config({"query": {"timeout": "10s", "max_samples": 1000, "max_concurrency": 2}}).query
    assert (q.timeout, q.max_samples, q.max_concurrency) == (10.0, 1000, 2)


def test_unreadable_and_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.yaml")
    f = tmp_path / "broken.yaml"
    f.write_text("targets: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(f)


def test_duplicate_target_names() -> None:
    with pytest.raises(ConfigError, match="duplicate target name"):
        parse_config(
            {"targets": [{"name": "a", "url": "http://x"}, {"name": "a", "url": "http://y"}]}
        )


def test_run_with_bad_config_exits_nonzero_before_starting(tmp_path: Path) -> None:
    """`tuner run` refuses a bad config with a message and creates no store."""
    f = tmp_path / "bad.yaml"
    f.write_text(
        "targets:\n  - {name: a, url: 'http://127.0.0.1:1/metrics'}\n"
        "store: {path: store.db}\nscrape_interval: 5 seconds\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "tuner", "run", "--config", str(f)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "scrape_interval" in proc.stderr and str(f) in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "store.db").exists()


def test_prometheus_flag_overrides_and_is_validated(tmp_path: Path) -> None:
    from tuner.config import with_prometheus_url

    cfg = parse_config({"prometheus_url": "http://a:9090/"})
    assert cfg.prometheus_url == "http://a:9090"
    assert with_prometheus_url(cfg, "http://b:9090/").prometheus_url == "http://b:9090"
    with pytest.raises(ConfigError, match="--prometheus: 'b:9090' is not an http"):
        with_prometheus_url(cfg, "b:9090", "--prometheus")
    f = tmp_path / "t.yaml"
    f.write_text("targets: []\n")
    proc = subprocess.run([sys.executable, "-m", "tuner", "run", "--config", str(f),
                           "--prometheus", "not-a-url"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--prometheus" in proc.stderr
