"""The status page without a browser: escaping, links, charts, a locked store, routes, suggest.

Stores are real SQLite files filled by a real daemon scraping real loopback servers (a
recorded vLLM 0.32 exposition and the DCGM-exporter stand-in); the page is served by the real
listener. The browser tests are tests/integration/test_status_page_browser.py.
"""

from __future__ import annotations

import math
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.dcgm import DcgmExporter
from tests.support.page import RecordedVllmTarget, filled_daemon, page_config
from tuner.daemon import Daemon
from tuner.rules import AlertState, AlertStatus
from tuner.signals import STATUS_SIGNALS
from tuner.web import PageSources, Request, StatusPage, WebServer
from tuner.web.charts import line_segments, sparkline_svg
from tuner.web.page_html import PageData, SignalChart, render_page, safe_href

XSS = "<script>window.__xss=1</script>"


def alert(name: str, state: AlertStatus, **annotations: str) -> AlertState:
    return AlertState(alertname=name, group="g", source="f", labels={"alertname": name,
                      "model_name": XSS}, annotations=annotations, state=state, value=1.0,
                      active_at=1000.0)


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A stopped daemon's store with 40 scrapes of a recorded vLLM and the DCGM stand-in."""
    tmp = tmp_path_factory.mktemp("pagestore")
    vllm, dcgm = RecordedVllmTarget(), DcgmExporter(gpus=2).start()
    try:
        cfg = page_config(tmp, [{"name": "vllm-0", "url": vllm.url},
                                {"name": "gpu-node", "url": dcgm.url, "kind": "dcgm"}])
        daemon = filled_daemon(cfg, steps=40, every=30.0)
        daemon.stop()
    finally:
        vllm.close()
        dcgm.close()
    return cfg


def serve(page: StatusPage) -> tuple[WebServer, str]:
    server = WebServer("127.0.0.1", 0, page.routes())
    server.start()
    host, port = server.address
    return server, f"http://{host}:{port}"


def test_sparkline_breaks_at_nan_scales_and_escapes() -> None:
    pts = [(0.0, 1.0), (10.0, 3.0), (20.0, math.nan), (30.0, 2.0), (40.0, 2.5)]
    segments, bounds = line_segments(pts, 0.0, 40.0, 100, 20)
    assert bounds == (1.0, 3.0)
    assert [len(s) for s in segments] == [2, 2]
    assert segments[0][0][0] < segments[0][1][0] < segments[1][0][0]  # time runs left to right
    assert segments[0][1][1] < segments[0][0][1]  # higher value, smaller y
    svg = sparkline_svg(pts, 0.0, 40.0, 'a "<b>" chart')
    assert svg.count("<polyline") == 2 and "<b>" not in svg and "&lt;b&gt;" in svg
    assert "no data" in sparkline_svg([(0.0, math.nan)], 0.0, 1.0, "x")
    assert "<circle" in sparkline_svg([(5.0, 1.0)], 0.0, 10.0, "x")


def test_links_are_only_absolute_http() -> None:
    assert safe_href("https://runbooks.example/x#a") == "https://runbooks.example/x#a"
    for bad in ("javascript:alert(1)", " JavaScript:alert(1)", "data:text/html,x",
                "rules/RUNBOOK.md#x", "//evil.example/x", ""):
        assert safe_href(bad) is None, bad


def test_label_values_and_annotations_are_escaped() -> None:
    sig = STATUS_SIGNALS[0]
    data = PageData(
        now=2000.0, chart_start=2000.0 - 3600,
        charts={XSS: (SignalChart(sig, 3.0, ((1900.0, 1.0), (1960.0, 3.0))),)},
        alerts=(alert("Firing", AlertStatus.FIRING, summary=XSS,
                      runbook_url="javascript:window.__xss=2"),
                alert("Pending", AlertStatus.PENDING, runbook_url="https://rb.example/p"),
                alert("Gone", AlertStatus.RESOLVED)))
    html = render_page(data)
    assert "<script>" not in html and "&lt;script&gt;window.__xss=1&lt;/script&gt;" in html
    assert 'href="javascript' not in html and "javascript:window.__xss=2" in html
    assert 'href="https://rb.example/p"' in html
    assert "(1 firing, 1 pending)" in html and "Gone" not in html  # resolved is not shown
    assert '<meta name="viewport"' in html and 'http-equiv="refresh"' in html
    # nothing to fetch from elsewhere: every link and source is the sidecar's, or the runbook
    refs = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert refs and all(r.startswith("/") or r == "https://rb.example/p" for r in refs), refs
    assert "<link" not in html and "<script" not in html and "@import" not in html


def test_page_and_routes_over_a_real_store(filled: Any) -> None:
    page = StatusPage(PageSources(filled, filled.store.path), cache_seconds=0)
    server, url = serve(page)
    try:
        r = httpx.get(url + "/", trust_env=False)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert 'data-target="vllm-0"' in r.text and 'data-instance="gpu-node"' in r.text
        assert r.text.count("<polyline") >= 5
        nope = httpx.get(url + "/nope", trust_env=False)
        assert nope.status_code == 404 and "not found: /nope (try /, /ui/tune/)" in nope.text
        for bad in ("/ui/tune/x/report.md", "/ui/tune/../tuner.db", "/ui/tune/..%2F/a.png",
                    "/ui/tune/nope/convergence.png"):
            assert httpx.get(url + bad, trust_env=False).status_code == 404, bad
        # handlers are pure functions of the request too
        assert page.plot(Request("GET", "/ui/tune/../convergence.png")).status == 404
    finally:
        server.stop()
        page.close()


def test_a_locked_store_gives_a_page_that_says_so_not_a_500(filled: Any) -> None:
    """Another connection holds SQLite's exclusive lock: the page is a readable 503."""
    firing = alert("StillShown", AlertStatus.FIRING, summary="alerts come from memory")
    page = StatusPage(PageSources(filled, filled.store.path, alerts=lambda: [firing]),
                      cache_seconds=0, busy_timeout=0.2)
    server, url = serve(page)
    locker = sqlite3.connect(filled.store.path, isolation_level=None)
    try:
        locker.execute("PRAGMA locking_mode=EXCLUSIVE")
        locker.execute("BEGIN EXCLUSIVE")
        locker.execute("INSERT INTO meta VALUES ('page-test', 'x')")
        r = httpx.get(url + "/", trust_env=False, timeout=30)
        assert r.status_code == 503 and r.headers["retry-after"] == "30"
        assert "The store cannot be read now" in r.text and "locked" in r.text
        assert "StillShown" in r.text and "alerts come from memory" in r.text
        assert "<html" in r.text and 'id="store-busy"' in r.text
        assert page._suggest_future is None  # no suggest run started against a locked store
        locker.execute("ROLLBACK")
        locker.close()  # exclusive mode keeps the lock until the connection closes
        r = httpx.get(url + "/", trust_env=False, timeout=30)
        assert r.status_code == 200 and 'data-target="vllm-0"' in r.text
    finally:
        locker.close()
        server.stop()
        page.close()


def test_a_missing_or_foreign_store_is_a_readable_page(tmp_path: Path, filled: Any) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database" * 100)
    for path in (tmp_path / "none.db", junk):
        page = StatusPage(PageSources(filled, path), cache_seconds=0)
        r = page.index(Request("GET", "/"))
        page.close()
        assert r.status == 503 and str(path).encode() in r.body


def test_suggest_report_scheduled_or_computed_in_the_background(tmp_path: Path,
                                                                filled: Any) -> None:
    page = StatusPage(PageSources(filled, filled.store.path), cache_seconds=0)
    try:
        first = page.index(Request("GET", "/")).body.decode()
        assert "Computing the first report" in first
        deadline = time.time() + 60
        while page._suggest_future is not None and not page._suggest_future.done():
            assert time.time() < deadline, "suggest did not finish in 60 s"
            time.sleep(0.1)
        second = page.index(Request("GET", "/")).body.decode()
        assert "computed by this page over the last hour" in second
        assert 'id="recommendations"' in second
        assert page._suggest_future is None  # not recomputed per request
    finally:
        page.close()
    # a scheduled report in the store wins over computing one
    from tuner.store import Store

    store = Store(filled.store.path)
    try:
        store.put_document("suggest_report", "2026-12-01T00:00:00Z", {
            "window": {"start": "S", "end": "E"}, "findings": [],
            "recommendations": [{"flag": "--max-num-seqs", "direction": "up", "current": 8,
                                 "suggested": 16, "confidence": "high",
                                 "reason": "queue <grows>"}]})
        page = StatusPage(PageSources(filled, filled.store.path), cache_seconds=0)
        html = page.index(Request("GET", "/")).body.decode()
        page.close()
        assert "from the daemon&#x27;s suggest.schedule" in html
        assert "8 → 16 ↑" in html and "queue &lt;grows&gt;" in html
        assert page._suggest_future is None
    finally:
        store.delete_documents("suggest_report", ["2026-12-01T00:00:00Z"])
        store.close()


def test_the_page_sits_behind_the_listeners_basic_auth(tmp_path: Path) -> None:
    import bcrypt

    hashed = bcrypt.hashpw(b"pw-for-page", bcrypt.gensalt(rounds=4)).decode()
    (tmp_path / "web.yml").write_text(f"basic_auth_users:\n  alice: '{hashed}'\n")
    cfg = page_config(tmp_path, [], web_config_file=str(tmp_path / "web.yml"))
    daemon = Daemon(cfg)
    daemon.start()
    try:
        host, port = daemon.address
        url = f"http://{host}:{port}"
        for path in ("/", "/ui/tune/run/convergence.png"):
            r = httpx.get(url + path, trust_env=False)
            assert r.status_code == 401 and "tuner sidecar" not in r.text, path
        r = httpx.get(url + "/", auth=("alice", "pw-for-page"), trust_env=False)
        assert r.status_code == 200 and "No targets configured" in r.text
        assert httpx.get(url + "/", auth=("alice", "wrong"), trust_env=False).status_code == 401
    finally:
        daemon.stop()


def test_charts_are_recomputed_once_a_minute_and_values_every_time(filled: Any) -> None:
    now = [time.time() // 60 * 60 + 1]
    page = StatusPage(PageSources(filled, filled.store.path, clock=lambda: now[0]),
                      cache_seconds=0)
    try:
        page.index(Request("GET", "/"))
        first = page._charts
        assert first is not None and first[0] == now[0] - 1
        now[0] += 30
        page.index(Request("GET", "/"))
        assert page._charts is first  # same minute: reused
        now[0] += 31
        page.index(Request("GET", "/"))
        assert page._charts is not first and page._charts is not None
        assert page._charts[0] == first[0] + 60
    finally:
        page.close()
