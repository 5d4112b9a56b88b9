"""Issue 10's signals (tuner.signals) on recorded real vLLM 0.32 expositions and on bad input.

Each recorded ``-after`` scrape is stored as the state of a server at t1, with a fresh server
(every counter 0, the same gauges) five scrapes before it, so a rate over the window sees
exactly what the real server counted. Ratios are then exact: both sides of a division are
extrapolated alike. The same expressions run against a real Prometheus in
tests/integration/test_signals_prometheus.py.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tuner.exposition import labels_of, parse_exposition
from tuner.promql import Engine
from tuner.signals import (
    ABORTED_RATIO,
    HTTP_5XX_RATIO,
    KV_CAPACITY_TOKENS,
    REJECTIONS_PER_1000,
    REJECTIONS_PER_1000_BY_REASON,
    REQUEST_OUTCOME_SIGNALS,
    STATUS_SIGNALS,
    WAITING_BY_REASON,
    WINDOW_TOTALS,
    Signal,
    evaluate_signals,
    format_signal,
    kv_capacity_from_info,
    render_rule_expr,
    render_signal,
)
from tuner.store import Store

DATA = Path(__file__).parent / "data" / "expositions"
T1 = 1_800_000_300.0
COUNTER_SUFFIXES = ("_total", "_bucket", "_count", "_sum")


def stored_server(tmp_path: Path, *modes: str, drop: tuple[str, ...] = ()) -> Store:
    """A store holding each recorded mode's after-load scrape as instance ``<mode>`` at T1."""
    store = Store(tmp_path / "s.db", retention=3650 * 86400.0)
    points = []
    for mode in modes:
        text = (DATA / f"vllm-0.32-{mode}-after.txt").read_text()
        for s in parse_exposition(text).samples:
            if s.name.startswith(drop):
                continue
            labels = labels_of({**dict(s.labels), "instance": mode, "job": "vllm"})
            counter = s.name.endswith(COUNTER_SUFFIXES)
            for k in range(6):  # six scrapes 15 s apart, the last one the recording
                ts = T1 - 75 + 15 * k
                value = s.value if (not counter or k == 5) else 0.0
                points.append((s.name, labels, int(ts * 1000), value))
    store.append_points(points)
    return store


def at(store: Store, sig: Signal, by: str = "instance", **kw: str) -> dict[str, float]:
    """One value per instance (and reason, for by-reason signals) at T1 over 2m."""
    res = Engine(store).instant(render_signal(sig, by=by, window="2m", **kw), T1)
    out = {}
    for el in res.vector:
        key = el.labels.get("instance", "")
        for extra in ("reason", "finished_reason"):
            if extra in el.labels:
                key += "/" + el.labels[extra]
        assert key not in out, f"{sig.name}: two series for {key}"
        out[key] = el.value
    return out


def test_admission_control_rejections_per_1000_by_reason(tmp_path: Path) -> None:
    """--max-num-queued-reqs 2: 46 of 48 requests refused (client saw 46 x 503)."""
    store = stored_server(tmp_path, "admission-nostream", "admission-tokens", "api2-admission")
    total = at(store, REJECTIONS_PER_1000)
    assert total["admission-nostream"] == pytest.approx(1000 * 46 / 48)
    assert total["api2-admission"] == pytest.approx(1000 * 46 / 48)  # two API servers, once
    by_reason = at(store, REJECTIONS_PER_1000_BY_REASON)
    assert by_reason["admission-nostream/max_num_queued_reqs"] == pytest.approx(1000 * 46 / 48)
    assert by_reason["admission-nostream/max_num_queued_tokens"] == 0
    # --max-num-queued-tokens 512: 38 refused, 10 finished
    assert by_reason["admission-tokens/max_num_queued_tokens"] == pytest.approx(1000 * 38 / 48)
    # the HTTP view agrees: 46 answered 503 of 48
    assert at(store, HTTP_5XX_RATIO)["admission-nostream"] == pytest.approx(46 / 48)


def test_streamed_refusals_count_in_rejections_not_all_in_http_5xx(tmp_path: Path) -> None:
    """Streamed requests refused mid-stream are HTTP 200 with an error event: the admission
    counter sees all 46, http_requests_total only the 24 refused before the stream began."""
    store = stored_server(tmp_path, "admission")
    assert at(store, REJECTIONS_PER_1000)["admission"] == pytest.approx(1000 * 46 / 48)
    assert at(store, HTTP_5XX_RATIO)["admission"] == pytest.approx(24 / 48)


def test_plain_server_has_zero_5xx_not_unknown_and_a_4xx(tmp_path: Path) -> None:
    """The plain recording has 2xx and 4xx series but no 5xx series: 0, not missing."""
    store = stored_server(tmp_path, "plain")
    sig = evaluate_signals(Engine(store), STATUS_SIGNALS, T1)["plain"]
    assert sig["http_5xx_ratio"] == 0.0
    assert sig["http_4xx_ratio"] == pytest.approx(1 / 19)
    assert sig["rejections_per_1000"] == 0.0
    assert sig["kv_capacity_tokens"] == 131072
    assert sig["aborted_ratio"] == pytest.approx(
        at(store, ABORTED_RATIO)["plain"])  # status and window forms agree


def test_server_without_http_requests_total_has_unknown_error_rate(tmp_path: Path) -> None:
    store = stored_server(tmp_path, "admission-nostream", drop=("http_",))
    sig = evaluate_signals(Engine(store), STATUS_SIGNALS, T1)["admission-nostream"]
    assert "http_5xx_ratio" not in sig and "http_4xx_ratio" not in sig  # unknown, never 0
    assert sig["rejections_per_1000"] == pytest.approx(1000 * 46 / 48)
    assert format_signal(HTTP_5XX_RATIO, sig.get("http_5xx_ratio")) == "unknown"
    totals = {s.name: s for s in WINDOW_TOTALS}
    res = Engine(store).instant(render_signal(totals["http_5xx"], by="instance", window="2m"), T1)
    assert not res.vector


def test_data_parallel_kv_capacity_and_waiting_by_reason(tmp_path: Path) -> None:
    """dp2: kv_cache_size_tokens 131072 on each engine; num_gpu_blocks 2048 is the DP sum."""
    store = stored_server(tmp_path, "dp2", "plain")
    sig = evaluate_signals(Engine(store), STATUS_SIGNALS, T1)
    assert sig["dp2"]["kv_capacity_tokens"] == 2 * 131072
    assert sig["plain"]["kv_capacity_tokens"] == 131072
    waiting = at(store, WAITING_BY_REASON)
    assert {k for k in waiting if k.startswith("dp2")} == {"dp2/capacity", "dp2/deferred"}


def test_kv_capacity_from_info_labels() -> None:
    # recent: per engine, summed over distinct engines (a pid duplicate counted once)
    assert kv_capacity_from_info([
        {"engine": "0", "kv_cache_size_tokens": "1000", "num_gpu_blocks": "20", "block_size": "100"},
        {"engine": "1", "kv_cache_size_tokens": "1000", "num_gpu_blocks": "20", "block_size": "100"},
        {"engine": "1", "kv_cache_size_tokens": "1000", "pid": "7"},
    ]) == 2000
    # older: blocks x block size once (num_gpu_blocks is already the DP sum)
    assert kv_capacity_from_info([
        {"engine": "0", "num_gpu_blocks": "24", "block_size": "16"},
        {"engine": "1", "num_gpu_blocks": "24", "block_size": "16"},
    ]) == 384
    # "None" (vLLM's str(None)) or no labels: unknown
    assert kv_capacity_from_info([{"num_gpu_blocks": "None", "block_size": "16"}]) is None
    assert kv_capacity_from_info([]) is None


def test_unknown_reasons_are_kept_and_counted(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db", retention=3650 * 86400.0)
    base = {"instance": "a", "model_name": "m"}
    pts = []
    for k in range(6):
        ts = int((T1 - 75 + 15 * k) * 1000)
        for reason, per in (("max_num_queued_reqs", 2), ("max_num_queued_widgets", 1)):
            pts.append(("vllm:admission_rejections_total", labels_of({**base, "reason": reason}),
                        ts, float(per * k)))
        for reason, per in (("stop", 6), ("length", 0), ("timeout", 1)):
            pts.append(("vllm:request_success_total",
                        labels_of({**base, "engine": "0", "finished_reason": reason}),
                        ts, float(per * k)))
        for reason, n in (("capacity", 3), ("lora_budget", 2)):
            pts.append(("vllm:num_requests_waiting_by_reason",
                        labels_of({**base, "engine": "0", "reason": reason}), ts, float(n)))
    store.append_points(pts)
    by_reason = at(store, REJECTIONS_PER_1000_BY_REASON)
    # 3 rejected per 7 finished: 3/10 of arrivals, the unknown reason a third of them
    assert by_reason["a/max_num_queued_widgets"] == pytest.approx(100)
    assert by_reason["a/max_num_queued_reqs"] == pytest.approx(200)
    assert at(store, REJECTIONS_PER_1000)["a"] == pytest.approx(300)
    assert at(store, WAITING_BY_REASON) == {"a/capacity": 3, "a/lora_budget": 2}
    totals = {s.name: s for s in WINDOW_TOTALS}
    assert at(store, totals["admission_rejections"])["a"] == pytest.approx(15 * 1.2, rel=0.25)


def test_counter_reset_mid_window_is_not_a_negative_rate(tmp_path: Path) -> None:
    """A restart halfway: rejections 0,10,20 then 0,10,20 -> 40 in the window, not -0."""
    store = Store(tmp_path / "s.db", retention=3650 * 86400.0)
    base = {"instance": "a", "model_name": "m"}
    values = [0, 10, 20, 0, 10, 20, 30]
    pts = []
    for k, v in enumerate(values):
        ts = int((T1 - 90 + 15 * k) * 1000)
        pts.append(("vllm:admission_rejections_total",
                    labels_of({**base, "reason": "max_num_queued_reqs"}), ts, float(v)))
        pts.append(("vllm:request_success_total",
                    labels_of({**base, "engine": "0", "finished_reason": "stop"}), ts, float(v)))
    store.append_points(pts)
    totals = {s.name: s for s in WINDOW_TOTALS}
    res = Engine(store).instant(
        render_signal(totals["admission_rejections"], by="instance", window="90s"), T1)
    (el,) = res.vector
    assert el.value == pytest.approx(50.0, rel=0.2)  # 20 + 30 counted, extrapolated
    assert at(store, REJECTIONS_PER_1000)["a"] == pytest.approx(500)


def test_rule_form_drops_replica_and_local_labels_only() -> None:
    expr = render_rule_expr(REJECTIONS_PER_1000_BY_REASON)
    assert "$" not in expr
    assert "sum without (engine, pid, finished_reason) (rate(vllm:admission_rejections_total" \
        in expr  # keeps reason
    assert "ignoring (reason) group_left" in expr
    with pytest.raises(ValueError, match="labels"):
        render_rule_expr(KV_CAPACITY_TOKENS)
    for sig in REQUEST_OUTCOME_SIGNALS:
        if sig.from_labels is None:
            assert "by (" not in render_rule_expr(sig), sig.name


def test_user_selector_merges_into_template_matchers() -> None:
    expr = render_signal(HTTP_5XX_RATIO, '{instance="a", model_name="m"}', by="instance")
    # http_requests_total has no model_name: only the instance matcher applies to it
    assert 'http_requests_total{status=~"5..", instance="a"}' in expr
    assert "model_name" not in expr


def test_format_of_new_units() -> None:
    assert format_signal(REJECTIONS_PER_1000, 958.33) == "958.3"
    assert format_signal(KV_CAPACITY_TOKENS, 262144.0) == "262,144"
    assert format_signal(REJECTIONS_PER_1000, math.nan) == "n/a"
