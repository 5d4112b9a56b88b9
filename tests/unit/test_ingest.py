"""The one ingest step (tuner.ingest): scrape outcome -> stored series, for the daemon's targets
and for every canary trial (tuner.tune.trial.CanaryScraper, the code run_trial scrapes with).

Real scrapes of real HTTP servers on loopback (the scripted-target fixture, which produces
bodies and failures on demand), a real SQLite store, a real store lock for the write failures.
The daemon's use of the same step is tests/unit/test_daemon.py; real vLLM canaries are
tests/e2e/test_tune_e2e.py.
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.dcgm import ScriptedTarget
from tuner.config import Target
from tuner.ingest import Ingest
from tuner.scrape import ScrapeOutcome, make_client, scrape_target
from tuner.store import Matcher, SeriesData, Store, is_stale
from tuner.tune import CanaryScraper, server_signals


def series(store: Store, name: str, **labels: str) -> list[SeriesData]:
    ms = [Matcher("__name__", "=", name)] + [Matcher(k, "=", v) for k, v in labels.items()]
    return store.select(ms, 0, 2**62)


def only(store: Store, name: str, **labels: str) -> SeriesData:
    (s,) = series(store, name, **labels)
    return s


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    c = make_client(4)
    yield c
    c.close()


def scrape(client: httpx.Client, target: Target) -> ScrapeOutcome:
    time.sleep(0.002)  # distinct millisecond timestamps
    return scrape_target(client, target, 2.0, 1 << 20)


def test_up_scrape_series_stale_markers_and_the_scrape_log(
    tmp_path: Path, scripted_target: ScriptedTarget, client: httpx.Client
) -> None:
    store = Store(tmp_path / "s.db")
    ingest = Ingest(store)
    target = Target(name="v", url=scripted_target.url)
    bodies = ['a_total 1\nb{x="1"} 5\n', 'a_total 2\nb{x="1"} 6\nc 7\n', "a_total 3\n"]
    for body in bodies:
        scripted_target.set(body)
        report = ingest.ingest([scrape(client, target)])
        assert report.failures == () and report.pending == 0 and report.stored > 3
    up = only(store, "up", instance="v", job="vllm")
    assert list(up.values) == [1.0, 1.0, 1.0]
    assert list(only(store, "scrape_samples_scraped", instance="v").values) == [2.0, 3.0, 1.0]
    assert all(v > 0 for v in only(store, "scrape_duration_seconds", instance="v").values)
    b = only(store, "b").values
    assert list(b[:2]) == [5.0, 6.0] and is_stale(b[2])  # vanished at the third scrape
    c = only(store, "c").values
    assert c[0] == 7.0 and is_stale(c[1])
    # a failed scrape: up=0 and every series of the target goes stale at once
    scripted_target.set("", status=503)
    report = ingest.ingest([scrape(client, target)])
    assert report.failures == ()
    assert only(store, "up", instance="v").values[-1] == 0.0
    assert is_stale(only(store, "a_total").values[-1])
    assert only(store, "scrape_samples_scraped", instance="v").values[-1] == 0.0
    (last,) = store.last_scrapes()
    assert (last.target, last.up, last.error_kind) == ("v", False, "http_status")
    store.close()


def test_failed_writes_wait_in_the_bounded_retry_buffer(
    tmp_path: Path, scripted_target: ScriptedTarget, client: httpx.Client
) -> None:
    path = tmp_path / "s.db"
    store = Store(path, busy_timeout=0.1)
    ingest = Ingest(store, retry_batches=2)
    target = Target(name="v", url=scripted_target.url)
    scripted_target.set("m 0\n")
    ingest.ingest([scrape(client, target)])
    locker = sqlite3.connect(path)
    locker.execute("BEGIN EXCLUSIVE")
    reports = []
    for i in range(1, 5):
        scripted_target.set(f"m {i}\n")
        reports.append(ingest.ingest([scrape(client, target)]))
    assert [r.pending for r in reports] == [1, 2, 2, 2]
    assert [r.stored for r in reports] == [0, 0, 0, 0]
    # the scrape-log row and the batch both failed, and both say so
    assert {f.target for f in reports[0].failures} == {"v", ""}
    assert "keeping 1 scrapes to retry" in reports[0].failures[-1].message
    # full buffer: the oldest batch (m, up, scrape_duration_seconds, scrape_samples_scraped)
    # is dropped for each newer one
    assert [r.dropped for r in reports] == [0, 0, 4, 4]
    locker.rollback()
    locker.close()
    report = ingest.flush()
    assert report.pending == 0 and report.stored == 8 and report.failures == ()
    assert list(only(store, "m").values) == [0.0, 3.0, 4.0]  # in order, nothing but the drops lost
    store.close()


def test_retire_marks_all_series_of_a_target_stale_once(
    tmp_path: Path, scripted_target: ScriptedTarget, client: httpx.Client
) -> None:
    store = Store(tmp_path / "s.db")
    ingest = Ingest(store)
    target = Target(name="gone", url=scripted_target.url)
    scripted_target.set("g 1\n")
    ingest.ingest([scrape(client, target)])
    ingest.retire("gone", 0.0)  # a clock behind the last scrape: stale markers still after it
    for name in ("g", "up", "scrape_duration_seconds", "scrape_samples_scraped"):
        s = only(store, name)
        assert len(s.values) == 2 and is_stale(s.values[1]), name
        assert s.timestamps[1] > s.timestamps[0]
    assert ingest.retire("gone", time.time()).stored == 0  # forgotten: nothing more to write
    assert ingest.retire("never-seen", time.time()).stored == 0
    store.close()


def test_a_canary_trials_scrapes_go_through_ingest(
    tmp_path: Path, scripted_target: ScriptedTarget, client: httpx.Client
) -> None:
    """CanaryScraper (what run_trial scrapes a canary with) into a search store: up, scrape_*,
    stale markers for a vanished series and for a failed scrape, the retry buffer while the
    store is locked, every series stale once the canary is retired; server_signals still reads
    the window."""
    path = tmp_path / "tune.db"
    store = Store(path, busy_timeout=0.1)
    ingest = Ingest(store)
    lab = 'model_name="m"'
    scripted_target.set(
        f"vllm:kv_cache_usage_perc{{{lab}}} 0.25\nvllm:num_preemptions_total{{{lab}}} 1\n"
        f"vllm:request_success_total{{{lab},finished_reason=\"length\"}} 10\n"
    )
    scraper = CanaryScraper(client, ingest, scripted_target.url, "trial-7", interval=3600.0)
    t0 = int(time.time() * 1000)
    scraper.start()  # one scrape now; the interval keeps the thread from scraping again
    time.sleep(0.01)
    scripted_target.set(  # the KV gauge vanishes; counters go on
        f"vllm:num_preemptions_total{{{lab}}} 3\n"
        f"vllm:request_success_total{{{lab},finished_reason=\"length\"}} 30\n"
    )
    locker = sqlite3.connect(path)
    locker.execute("BEGIN EXCLUSIVE")
    scraper.scrape_once()  # cannot be written yet: kept
    assert ingest.pending == 1 and "write failed" in scraper.error
    locker.rollback()
    locker.close()
    time.sleep(0.01)
    scripted_target.set("", status=500)
    scraper.scrape_once()  # the canary's /metrics fails: up=0, everything stale
    assert ingest.pending == 0 and "HTTP 500" in scraper.error
    scripted_target.set(f"vllm:num_preemptions_total{{{lab}}} 4\n")
    scraper.finish()
    t1 = int(time.time() * 1000)
    assert scraper.scrapes == 3

    up = only(store, "up", instance="trial-7", job="vllm")
    assert list(up.values[:4]) == [1.0, 1.0, 0.0, 1.0] and is_stale(up.values[4])
    kv = only(store, "vllm:kv_cache_usage_perc", instance="trial-7")
    assert kv.values[0] == 0.25 and is_stale(kv.values[1]) and len(kv.values) == 2
    pre = only(store, "vllm:num_preemptions_total", instance="trial-7").values
    assert list(pre[:2]) == [1.0, 3.0] and is_stale(pre[2]) and pre[3] == 4.0
    assert is_stale(pre[4])  # retired with the canary
    assert all(is_stale(s.values[-1]) for s in series(store, "scrape_duration_seconds"))
    sig = server_signals(store, "trial-7", t0, t1)
    # the counter went 1 -> 3 -> 4 across a failed scrape; its stale markers are not values
    # (increase extrapolates to the window's edges, so it is at least the raw 3)
    assert 3.0 <= sig["preemptions"] < 6.0
    assert sig["kv_usage_max"] == pytest.approx(0.25)
    assert math.isnan(sig["spec_decode_acceptance"])
    store.close()
