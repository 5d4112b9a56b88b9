"""tuner.notify without an Alertmanager: payloads, the bounded coalescing queue, back-off.

Delivery to a real Alertmanager is in tests/integration/test_alertmanager_delivery.py.
"""

from __future__ import annotations

import random
import time

from tests.support.common import free_port
from tuner.notify import Notifier, alert_payload, rfc3339
from tuner.rules import AlertState


def _alert(i: int, state: str = "firing", resolved_at: float = 0.0) -> AlertState:
    return AlertState(
        alertname="A", group="g", source="f", labels={"alertname": "A", "i": str(i)},
        annotations={"summary": "s"}, state=state, value=1.0, active_at=1_700_000_000.0,
        fired_at=1_700_000_060.0, resolved_at=resolved_at, valid_until=1_700_000_300.0,
        generator_url="http://x/graph?g0.expr=up",
    )


def test_payload_is_alertmanager_v2_json() -> None:
    assert rfc3339(1_700_000_060.5) == "2023-11-14T22:14:20.500Z"
    assert alert_payload(_alert(1)) == {
        "labels": {"alertname": "A", "i": "1"},
        "annotations": {"summary": "s"},
        "startsAt": "2023-11-14T22:14:20.000Z",
        "endsAt": "2023-11-14T22:18:20.000Z",  # valid_until while firing
        "generatorURL": "http://x/graph?g0.expr=up",
    }
    resolved = alert_payload(_alert(1, "resolved", resolved_at=1_700_000_120.0))
    assert resolved["endsAt"] == "2023-11-14T22:15:20.000Z"


def test_queue_is_bounded_drops_oldest_and_coalesces_by_labels() -> None:
    n = Notifier(["http://127.0.0.1:1", "http://127.0.0.1:2"], capacity=3)  # worker not started
    assert n.send([_alert(i) for i in range(5)]) == 5
    for st in n.stats():
        assert (st.queued, st.dropped, st.sent) == (3, 2, 0)
    # a newer state of a queued alert replaces it instead of taking a slot
    n.send([_alert(4, "resolved", resolved_at=1_700_000_500.0)])
    st = n.stats()[0]
    assert (st.queued, st.dropped) == (3, 2)
    pending = n._targets[0].pending
    assert [dict(k)["i"] for k in pending] == ["2", "3", "4"]
    assert next(reversed(pending.values()))["endsAt"] == rfc3339(1_700_000_500.0)
    n.stop()


def test_backoff_grows_exponentially_with_bounded_jitter() -> None:
    n = Notifier([], backoff_initial=1.0, backoff_max=60.0, jitter=0.2, rng=random.Random(7))
    for failures, base in ((1, 1), (2, 2), (3, 4), (6, 32), (7, 60), (30, 60)):
        for _ in range(20):
            assert base * 0.8 <= n._backoff(failures) <= base * 1.2
    n.stop()


def test_unreachable_alertmanager_is_retried_and_never_blocks_the_caller() -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with Notifier([dead], timeout=0.5, backoff_initial=0.05, backoff_max=0.2) as n:
        for i in range(200):
            n.send([_alert(i)])  # returns at once: the worker does the HTTP
        deadline = time.monotonic() + 10
        while n.stats()[0].failed_attempts < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        st = n.stats()[0]
        assert st.failed_attempts >= 3 and st.consecutive_failures >= 3
        assert st.queued == 200 and st.sent == 0 and st.dropped == 0  # kept for the retry
        assert "ConnectError" in st.last_error
        assert not n.flush(0.2)
